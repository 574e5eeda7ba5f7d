"""Refinement design by committee disagreement: scoring, greedy selection, the CLI, multi-design training."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from specvit.errors import InputError
from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES
from specvit.spectra.emulator_train import EmulatorTrainConfig
from specvit.spectra.synthesis.design import DEFAULT_MARGIN, make_design, read_design
from specvit.spectra.synthesis.refine import disagreement, greedy_select, refine_design

H_C_OVER_K_A_K = 1.438777e8
BOX = {k: (lo - DEFAULT_MARGIN[k], hi + DEFAULT_MARGIN[k]) for k, (lo, hi) in DEFAULT_LABEL_BOUNDS.items()}
FAST = EmulatorTrainConfig(width=32, depth=2, epochs=300, lr=5e-3, max_components=8, n_cont_components=3)


def toy_spectra(labels):
    from toymodel import ToyModel

    toy = ToyModel(wave_min=8500.0, wave_max=8600.0, step=0.5, n_lines=6, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flux = toy.flux(labels, extrapolate=True)
    w = toy.wave
    cont = 1e20 / (w[None] ** 5 * (np.exp(H_C_OVER_K_A_K / (w[None] * labels[:, :1])) - 1.0))
    return w, flux / cont, cont


def toy_data(n=60, seed=3, t_max=None):
    d = make_design(n, seed=seed, val_every=10)
    if t_max is not None:
        d = d[d["T_eff"] < t_max].reset_index(drop=True)
    lab = d[list(LABEL_NAMES)].to_numpy()
    w, norm, cont = toy_spectra(lab)
    return {"ids": d["id"].to_numpy(), "labels": lab, "norm": norm.astype(np.float32),
            "lncont": np.log(cont).astype(np.float32), "split": d["split"].to_numpy(), "wave": w,
            "resolution": 20000.0}, d


class Offset:
    def __init__(self, c):
        self.c = c

    def normalized_flux(self, labels, extrapolate=False):
        return np.full((len(labels), 7), 1.0 + self.c)


def test_disagreement_is_the_rms_of_the_members_spread():
    lab = np.zeros((3, 5))
    assert np.allclose(disagreement([Offset(0.0), Offset(0.0)], lab), 0.0)
    # two members +-c: standard deviation c at every pixel
    assert np.allclose(disagreement([Offset(-0.01), Offset(0.01)], lab), 0.01)


def test_greedy_selection_takes_the_maximum_then_spreads_out():
    rng = np.random.default_rng(0)
    cand = np.array([[BOX[k][0] + rng.uniform() * (BOX[k][1] - BOX[k][0]) for k in LABEL_NAMES] for _ in range(50)])
    cand[1] = cand[0] + 1e-3  # a near-duplicate of the best candidate, nearly as good
    scores = rng.uniform(0.0, 0.5, 50)
    scores[0], scores[1] = 1.0, 0.99
    idx = greedy_select(cand, scores, 5, box=BOX, exclusion=0.1)
    assert idx[0] == 0 and 1 not in idx  # the near-duplicate is damped away
    assert len(set(idx)) == 5
    with pytest.raises(InputError):
        greedy_select(cand, scores, 0, box=BOX)
    with pytest.raises(InputError):
        greedy_select(cand, scores, 3, box=BOX, exclusion=0.0)


def test_refine_targets_the_unsampled_region_and_is_deterministic():
    data, _ = toy_data(80, t_max=4700.0)  # training spectra only below 4700 K
    a = refine_design(data, n=8, seed=5, n_candidates=512, n_members=3, config=FAST, log=None)
    b = refine_design(data, n=8, seed=5, n_candidates=512, n_members=3, config=FAST, log=None)
    assert a.equals(b)
    assert list(a["id"]) == [f"r1-{i:05d}" for i in range(8)] and set(a["split"]) == {"train"}
    lab = a[list(LABEL_NAMES)].to_numpy()
    for j, k in enumerate(LABEL_NAMES):  # candidates inside the label box by default
        lo, hi = DEFAULT_LABEL_BOUNDS[k]
        assert np.all((lab[:, j] >= lo - 1e-6) & (lab[:, j] <= hi + 1e-6))
    # with the margin, picks may leave the label box but stay in the training box
    m = refine_design(data, n=8, seed=5, n_candidates=512, n_members=3, config=FAST, log=None, include_margin=True)
    lab_m = m[list(LABEL_NAMES)].to_numpy()
    for j, k in enumerate(LABEL_NAMES):
        assert np.all((lab_m[:, j] >= BOX[k][0] - 1e-6) & (lab_m[:, j] <= BOX[k][1] + 1e-6))
    assert not np.array_equal(lab_m, lab)
    # the committee disagrees where it has no data: most picks are hotter than every training spectrum
    assert np.all(lab[:, 0] > 4700.0), lab[:, 0]  # at random: 0.44 ** 8 = 0.1 %


def test_cli_refine_then_train_on_two_designs(tmp_path, capsys):
    from specvit.cli import main
    from specvit.spectra.emulator import load_emulator
    from specvit.spectra.synthesis.design import write_design
    from specvit.spectra.synthesis.store import write_spectrum

    data, d = toy_data(40)
    write_design(d, tmp_path / "design.csv")
    dl = float(np.log(data["wave"][1] / data["wave"][0]))

    def store(ids, lab, norm, cont):
        for i, sid in enumerate(ids):
            write_spectrum(tmp_path / "sp" / f"{sid}.npz", flux=norm[i] * cont[i], cont=cont[i], labels=lab[i],
                           label_names=LABEL_NAMES, wave_min_A=float(data["wave"][0]), dlnlam=dl, meta={"id": sid})

    store(data["ids"], data["labels"], data["norm"], np.exp(data["lncont"].astype(np.float64)))
    rc = main(["synthesis", "refine", "--spectra", str(tmp_path / "sp"), "--design", str(tmp_path / "design.csv"),
               "--n", "4", "--seed", "1", "--candidates", "256", "--members", "3", "--epochs", "100",
               "--out", str(tmp_path / "refine.csv")])
    assert rc == 0
    capsys.readouterr()
    rc = main(["synthesis", "refine", "--spectra", str(tmp_path / "sp"), "--design", str(tmp_path / "design.csv"),
               "--n", "2", "--seed", "1", "--candidates", "64", "--members", "2", "--epochs", "10", "--prefix", "v1",
               "--out", str(tmp_path / "clash.csv")])  # ids v1-00000.. exist already
    assert rc != 0 and "collide" in capsys.readouterr().err and not (tmp_path / "clash.csv").exists()
    ref = read_design(tmp_path / "refine.csv")
    assert len(ref) == 4 and ref["id"].str.startswith("r1-").all()
    assert json.loads((tmp_path / "refine.json").read_text())["method"].startswith("query by committee")
    # "synthesise" the refinement rows, then train on both designs
    lab = ref[list(LABEL_NAMES)].to_numpy()
    _, norm, cont = toy_spectra(lab)
    store(ref["id"], lab, norm, cont)
    out = tmp_path / "emu.npz"
    rc = main(["emulator", "train", "--spectra", str(tmp_path / "sp"), "--design", str(tmp_path / "design.csv"),
               str(tmp_path / "refine.csv"), "--out", str(out), "--epochs", "30", "--report", str(tmp_path / "r.json")])
    assert rc == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["train"]["n_train"] == int((d["split"] != "val").sum()) + 4
    assert load_emulator(out).meta["design"] == "design.csv, refine.csv"
    # a design that reuses ids is refused
    capsys.readouterr()
    rc = main(["emulator", "train", "--spectra", str(tmp_path / "sp"), "--design", str(tmp_path / "design.csv"),
               str(tmp_path / "design.csv"), "--out", str(out), "--epochs", "5"])
    assert rc != 0 and "the same id appears in two designs" in capsys.readouterr().err
