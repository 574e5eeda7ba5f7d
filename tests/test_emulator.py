"""Tests of the neural emulator: training on an analytic model, API, autograd, persistence, label range."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from specvit.errors import InputError, LabelRangeError
from specvit.labels import LABEL_NAMES
from specvit.spectra.emulator import SpectralEmulator, load_emulator
from specvit.spectra.emulator_train import EmulatorTrainConfig, train_emulator, validate
from specvit.spectra.synthesis.design import make_design

H_C_OVER_K_A_K = 1.438777e8


@pytest.fixture(scope="module")
def toy_data():
    from toymodel import ToyModel

    toy = ToyModel(wave_min=8400.0, wave_max=8800.0, step=0.4, n_lines=15, seed=3)
    d = make_design(400, seed=11, val_every=10)
    lab = d[list(LABEL_NAMES)].to_numpy()
    flux = toy.flux(lab, extrapolate=True)
    w = toy.wave[None, :]
    cont = 1e20 / (w ** 5 * (np.exp(H_C_OVER_K_A_K / (w * lab[:, :1])) - 1.0))
    return {"ids": d["id"].to_numpy(), "labels": lab, "norm": (flux / cont).astype(np.float32),
            "lncont": np.log(cont).astype(np.float32), "split": d["split"].to_numpy(), "wave": toy.wave}


@pytest.fixture(scope="module")
def toy_emulator(toy_data):
    cfg = EmulatorTrainConfig(seed=5, width=64, depth=2, epochs=1500, lr=5e-3, max_components=24,
                              n_cont_components=4)
    return train_emulator(toy_data, cfg, log=None)


def test_training_learns_the_analytic_model(toy_emulator, toy_data):
    rep = validate(toy_emulator, toy_data)
    rms = rep["overall"]["rms_norm_flux_mean"]
    # baseline: predicting the mean training spectrum
    tr = toy_data["split"] != "val"
    base = np.sqrt(np.mean((toy_data["norm"][~tr] - toy_data["norm"][tr].mean(0)) ** 2))
    assert rms < base / 5, (rms, base)
    assert rep["overall"]["rms_rel_continuum"] < 0.01
    assert rep["n"] == int((~tr).sum()) and "Teff>=5000" in rep["per_region"]


def test_training_is_deterministic(toy_data):
    cfg = EmulatorTrainConfig(seed=1, width=16, depth=1, epochs=50, max_components=8, n_cont_components=2)
    a = train_emulator(toy_data, cfg, log=None)
    b = train_emulator(toy_data, cfg, log=None)
    x = toy_data["labels"][:4]
    np.testing.assert_array_equal(a.flux(x, extrapolate=True), b.flux(x, extrapolate=True))


def test_numpy_and_torch_api_shapes_and_units(toy_emulator):
    x = np.array([[4500.0, 2.0, 0.0, 0.0, 0.0], [5500.0, 4.5, -1.0, 0.2, -0.3]])
    f = toy_emulator.flux(x)
    c = toy_emulator.continuum(x)
    n = toy_emulator.normalized_flux(x)
    assert isinstance(f, np.ndarray) and f.shape == (2, toy_emulator.n_wave) and f.dtype == np.float64
    np.testing.assert_allclose(f, n * c, rtol=1e-5)
    assert np.all(c > 0)
    f1 = toy_emulator.flux(x[0])  # (L,) accepted
    assert f1.shape == (1, toy_emulator.n_wave)
    ft = toy_emulator.flux(torch.tensor(x, dtype=torch.float64))
    assert isinstance(ft, torch.Tensor) and ft.dtype == torch.float64
    np.testing.assert_allclose(ft.numpy(), toy_emulator.flux(x, method="reference"), rtol=1e-6)
    np.testing.assert_allclose(ft.numpy(), f, rtol=5e-6)  # fast numpy path: float32 rounding
    assert toy_emulator.medium == "vacuum" and toy_emulator.differentiable
    assert toy_emulator.label_names == LABEL_NAMES


def test_autograd_matches_finite_differences(toy_emulator):
    x0 = torch.tensor([[4800.0, 3.0, -0.5, 0.1, 0.0]], dtype=torch.float64, requires_grad=True)
    f = toy_emulator.flux(x0)
    g = torch.autograd.grad(f[0, 100], x0)[0][0].numpy()
    steps = np.array([5.0, 0.01, 0.01, 0.01, 0.01])
    for j in range(5):
        xp, xm = x0.detach().clone(), x0.detach().clone()
        xp[0, j] += steps[j]
        xm[0, j] -= steps[j]
        fd = (toy_emulator.flux(xp)[0, 100] - toy_emulator.flux(xm)[0, 100]).item() / (2 * steps[j])
        assert g[j] == pytest.approx(fd, rel=0.05, abs=1e-3 * abs(f[0, 100].item()) / steps[j] * 1e-3), j
    # full Jacobian in one call
    jac = torch.autograd.functional.jacobian(lambda t: toy_emulator.flux(t)[0], x0.detach())
    assert jac.shape == (toy_emulator.n_wave, 1, 5)


def test_label_range_errors_and_extrapolate(toy_emulator):
    bad = np.array([[7000.0, 2.0, 0.0, 0.0, 0.0]])
    with pytest.raises(LabelRangeError, match="T_eff"):
        toy_emulator.flux(bad)
    with pytest.raises(LabelRangeError, match="log_g"):
        toy_emulator.flux(torch.tensor([[4500.0, 5.5, 0.0, 0.0, 0.0]]))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = toy_emulator.flux(bad, extrapolate=True)
    assert out.shape == (1, toy_emulator.n_wave) and any("extrapolating" in str(x.message) for x in w)
    with pytest.raises(InputError, match="M_H"):
        toy_emulator.flux(np.array([[4500.0, 2.0, np.nan, 0.0, 0.0]]))
    with pytest.raises(InputError, match="shape"):
        toy_emulator.flux(np.zeros((2, 4)))


def test_save_load_roundtrip_and_bad_files(toy_emulator, tmp_path):
    p = tmp_path / "emu.npz"
    toy_emulator.meta["version"] = "test"
    toy_emulator.save(p)
    back = load_emulator(p)
    assert isinstance(back, SpectralEmulator) and back.version == "test"
    x = np.array([[4500.0, 2.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(back.flux(x), toy_emulator.flux(x))
    np.testing.assert_array_equal(back.wave, toy_emulator.wave)
    d = dict(np.load(p))
    del d["norm_basis"]
    np.savez(tmp_path / "broken.npz", **d)
    with pytest.raises(InputError, match="norm_basis"):
        load_emulator(tmp_path / "broken.npz")
    d = dict(np.load(p))
    d["format_version"] = np.int32(99)
    np.savez(tmp_path / "future.npz", **d)
    with pytest.raises(InputError, match="format_version"):
        load_emulator(tmp_path / "future.npz")
    with pytest.raises(InputError):
        load_emulator(tmp_path / "missing.npz")


def test_describe_is_json(toy_emulator):
    d = toy_emulator.describe()
    json.dumps(d)
    assert d["medium"] == "vacuum" and d["n_components"] == toy_emulator.n_components


def test_cli_emulator_train_and_validate_on_spectrum_files(tmp_path, capsys):
    """`specvit emulator train` / `validate` on a directory of stored spectra (made from the toy model)."""
    from toymodel import ToyModel

    from specvit.cli import main
    from specvit.spectra.synthesis.design import write_design
    from specvit.spectra.synthesis.store import write_spectrum

    toy = ToyModel(n_lines=5, seed=1)
    dl = 1e-4
    toy.wave = 8400.0 * np.exp(np.arange(300) * dl)
    toy.sigma_A = toy.line_wave / toy.resolution / 2.3548
    d = make_design(40, seed=2)
    write_design(d, tmp_path / "design.csv")
    lab = d[list(LABEL_NAMES)].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flux = toy.flux(lab, extrapolate=True)
    cont = 1e20 / (toy.wave[None] ** 5 * (np.exp(H_C_OVER_K_A_K / (toy.wave[None] * lab[:, :1])) - 1.0))
    for i, sid in enumerate(d["id"][:36]):  # the last rows are "not finished yet"
        write_spectrum(tmp_path / "sp" / f"{sid}.npz", flux=flux[i], cont=cont[i], labels=lab[i],
                       label_names=LABEL_NAMES, wave_min_A=8400.0, dlnlam=dl, meta={"id": sid})
    w = tmp_path / "emu.npz"
    rc = main(["emulator", "train", "--spectra", str(tmp_path / "sp"), "--design", str(tmp_path / "design.csv"),
               "--out", str(w), "--epochs", "30", "--report", str(tmp_path / "rep.json")])
    assert rc == 0
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["train"]["n_train"] == 33 and rep["train"]["n_val"] == 3
    m = load_emulator(w)
    assert m.n_wave == 300 and m.meta["validation"]["n"] == 3
    capsys.readouterr()
    rc = main(["emulator", "validate", "--spectra", str(tmp_path / "sp"), "--design", str(tmp_path / "design.csv"),
               "--weights", str(w), "--out", str(tmp_path / "val.json"), "--figures", str(tmp_path / "fig")])
    assert rc == 0
    assert json.loads((tmp_path / "val.json").read_text())["n"] == 3
    from specvit.labels import c_to_o

    val = (d["split"] == "val").to_numpy()[:36]
    n_low = int((c_to_o(lab[:36][val]) < 0.3).sum())
    assert 0 < n_low < 3  # the toy design has held-out rows on both sides of C/O = 0.3
    rc = main(["emulator", "validate", "--spectra", str(tmp_path / "sp"), "--design", str(tmp_path / "design.csv"),
               "--weights", str(w), "--out", str(tmp_path / "val03.json"), "--max-c-to-o", "0.3"])
    assert rc == 0 and json.loads((tmp_path / "val03.json").read_text())["n"] == n_low
    assert (tmp_path / "fig" / "emulator_validation.png").exists()
    from specvit.spectra.emulator_train import CANDIDATES

    rc = main(["emulator", "train", "--spectra", str(tmp_path / "sp"), "--design", str(tmp_path / "design.csv"),
               "--out", str(tmp_path / "sel.npz"), "--epochs", "3", "--select", "--folds", "2", "--cv-rows", "inside",
               "--report", str(tmp_path / "sel.json")])
    assert rc == 0
    sel = json.loads((tmp_path / "sel.json").read_text())["train"]["config_selection"]
    assert sel["folds"] == 2 and sel["rows"] == "inside" and len(sel["cv_rms"]) == len(sel["candidates"]) == len(CANDIDATES)
    chosen = load_emulator(tmp_path / "sel.npz").meta
    best = CANDIDATES[int(np.argmin(sel["cv_rms"]))]
    assert chosen["train_config"]["width"] == best["width"] and chosen["train_config"]["depth"] == best["depth"]
    # the penalty's settings (emulator v4: --penalty-ceiling 1.01) reach the training config and the weights
    rc = main(["emulator", "train", "--spectra", str(tmp_path / "sp"), "--design", str(tmp_path / "design.csv"),
               "--out", str(tmp_path / "pen.npz"), "--epochs", "3", "--domain-penalty", "100",
               "--penalty-ceiling", "1.01", "--penalty-draws", "16"])
    assert rc == 0
    tc = load_emulator(tmp_path / "pen.npz").meta["train_config"]
    assert (tc["domain_penalty"], tc["norm_ceiling"], tc["penalty_draws"]) == (100.0, 1.01, 16)
    for flag, value, field in (("--penalty-ceiling", "0.98", "penalty_ceiling"), ("--penalty-draws", "0", "penalty_draws")):
        capsys.readouterr()
        rc = main(["emulator", "train", "--spectra", str(tmp_path / "sp"), "--design", str(tmp_path / "design.csv"),
                   "--out", str(tmp_path / "bad.npz"), "--epochs", "3", "--domain-penalty", "100", flag, value])
        err = capsys.readouterr().err
        assert rc == 2 and field in err and value in err, err
    assert not (tmp_path / "bad.npz").exists()


def test_config_selection_by_cross_validation_uses_training_rows_only(toy_data):
    from specvit.spectra.emulator_train import select_config

    good = EmulatorTrainConfig(seed=1, width=32, depth=2, epochs=150, lr=5e-3, max_components=8, n_cont_components=2)
    bad = EmulatorTrainConfig(seed=1, width=32, depth=2, epochs=1, lr=5e-3, max_components=8, n_cont_components=2)
    # poison the held-out rows: if CV looked at them, scores would be huge for both
    poisoned = dict(toy_data, norm=toy_data["norm"].copy())
    poisoned["norm"][toy_data["split"] == "val"] = 50.0
    best, scores = select_config(poisoned, [bad, good], folds=3, log=None)
    assert best is good and scores[1] < scores[0] < 1.0


def test_cross_validation_can_score_only_rows_inside_the_label_box(toy_data, monkeypatch):
    import specvit.spectra.emulator_train as et

    inside = et.inside_label_box(toy_data["labels"])
    train = toy_data["split"] != "val"
    assert (train & ~inside).sum() > 5 and (train & inside).sum() > 5  # the design's margin rows exist
    scored = []
    real_validate = et.validate

    def recording_validate(model, data, which="val"):
        scored.extend(np.flatnonzero(data["split"] == which).tolist())
        return real_validate(model, data, which=which)

    monkeypatch.setattr(et, "validate", recording_validate)
    cfg = EmulatorTrainConfig(seed=1, width=16, depth=2, epochs=2, max_components=4, n_cont_components=2)
    et.cross_validate(toy_data, cfg, folds=3, rows="inside")
    assert sorted(scored) == np.flatnonzero(train & inside).tolist()  # each inside training row once, nothing else
    scored.clear()
    et.cross_validate(toy_data, cfg, folds=3, rows="all")
    assert sorted(scored) == np.flatnonzero(train).tolist()
    with pytest.raises(InputError, match="cv_rows"):
        et.cross_validate(toy_data, cfg, folds=3, rows="margin")
    outside_only = dict(toy_data, split=np.where(inside, "val", toy_data["split"]))
    with pytest.raises(InputError, match="no training row"):
        et.cross_validate(outside_only, cfg, folds=3, rows="inside")


def test_domain_penalty_pool_is_in_the_domain_deterministic_and_reaches_the_edges():
    from specvit.labels import DEFAULT_LABEL_BOUNDS, outside_domain
    from specvit.spectra.emulator_train import domain_penalty_pool

    a = domain_penalty_pool(np.random.default_rng(3), 4000)
    np.testing.assert_array_equal(a, domain_penalty_pool(np.random.default_rng(3), 4000))
    assert a.shape == (4000, 5) and not outside_domain(a).any()
    lo = np.array([DEFAULT_LABEL_BOUNDS[k][0] for k in LABEL_NAMES])
    hi = np.array([DEFAULT_LABEL_BOUNDS[k][1] for k in LABEL_NAMES])
    assert np.all(a >= lo) and np.all(a <= hi)
    on_edge = (a == lo) | (a == hi)
    assert on_edge.all(axis=1).sum() > 50  # exact corners of the box are drawn
    assert 0.1 < on_edge.mean() < 0.5


def test_domain_penalty_keeps_the_raw_normalised_flux_within_floor_and_ceiling(toy_data):
    """Training data that overshoot the ceiling and undershoot the floor in a corner of the labels: without
    the penalty the emulator reproduces them at label sets of the domain (drawn independently of the training
    ones); with it the excursions beyond (floor, ceiling) shrink by more than 10x."""
    from specvit.spectra.emulator_train import domain_penalty_pool

    d = dict(toy_data, norm=toy_data["norm"].copy())
    hot = d["labels"][:, 0] > 5500
    d["norm"][hot] = d["norm"][hot] * 1.06                       # up to 1.06 of the continuum
    # line cores below zero in the metal-rich rows
    d["norm"] = np.where((d["labels"][:, 2:3] > 0.3) & (d["norm"] < 0.7), -0.05, d["norm"]).astype(np.float32)
    cfg = dict(seed=2, width=32, depth=2, epochs=400, lr=5e-3, max_components=16, n_cont_components=2)
    lab = domain_penalty_pool(np.random.default_rng(9), 300)

    def raw(m):
        with torch.no_grad():
            a, _ = m.coefficients(torch.as_tensor(lab, dtype=torch.float32))
            return (m.norm_mean + a @ m.norm_basis).numpy()

    def violation(n):  # the penalty's own measure: mean squared excursion beyond floor / ceiling
        return float(np.mean(np.maximum(0.01 - n, 0) ** 2 + np.maximum(n - 1.015, 0) ** 2))

    free = raw(train_emulator(d, EmulatorTrainConfig(**cfg), log=None))
    pen = train_emulator(d, EmulatorTrainConfig(**cfg, domain_penalty=10.0), log=None)
    held = raw(pen)
    print("free", free.min(), free.max(), violation(free), "penalised", held.min(), held.max(), violation(held))
    assert free.max() > 1.04 and free.min() < -0.03              # the data's violations are learned ...
    # ... and the penalty, against data that contradict it on purpose, pulls them back toward the bounds
    assert violation(held) < 0.1 * violation(free)
    assert held.max() < free.max() - 0.005 and held.min() > free.min() + 0.02
    assert pen.meta["train_config"]["domain_penalty"] == 10.0
    # a lower ceiling (v4's 1.01 instead of 1.015) pushes the overshoot further down, by about the difference
    low = raw(train_emulator(d, EmulatorTrainConfig(**cfg, domain_penalty=10.0, norm_ceiling=1.0), log=None))
    assert low.max() < held.max() - 0.005


def test_restrict_to_domain_drops_carbon_rich_rows_as_a_design_does():
    from specvit.labels import c_to_o
    from specvit.spectra.emulator_train import restrict_to_domain

    lab = np.array([[5000, 3, 0, 0.0, 0.0],      # C/O 0.54: kept
                    [5000, 3, 0, 0.0, 0.30],     # C/O 1.07: kept as training row (< 1.12), dropped if held out
                    [5000, 3, 0, 0.0, 0.30],
                    [5000, 3, 0, 0.0, 0.35]])    # C/O 1.20: dropped
    d = {"ids": np.array(["a", "b", "c", "d"]), "labels": lab, "split": np.array(["train", "train", "val", "train"]),
         "norm": np.zeros((4, 7)), "wave": np.arange(7.0)}
    assert np.allclose(c_to_o(lab)[1], 1.07, atol=0.01)
    out = restrict_to_domain(d, 1.0, log=None)
    assert out["ids"].tolist() == ["a", "b"] and out["norm"].shape == (2, 7) and len(out["wave"]) == 7
    assert out["excluded_outside_domain"] == ["c", "d"]
    assert restrict_to_domain(d, None) is d
