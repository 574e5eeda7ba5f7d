"""Line-list transfer: learn ln(new/old) from label sets synthesised with both lists, carry the rest over."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from specvit.errors import InputError
from specvit.labels import LABEL_NAMES
from specvit.spectra.linelist_transfer import fit_transfer, transfer_dataset
from specvit.spectra.synthesis.design import make_design

H_C_OVER_K_A_K = 1.438777e8
LINE_A, WIDTH_A = 8600.0, 6.0  # a broad "hydrogen-like" line present only in the new line list


def new_line_factor(labels, wave):
    """Transmission of the extra line: depth grows steeply with T_eff, width narrows with log g."""
    t, g = labels[:, :1], labels[:, 1:2]
    depth = 0.35 / (1.0 + np.exp(-(t - 5000.0) / 300.0))
    width = WIDTH_A * (1.0 + 0.15 * (3.0 - g))
    return 1.0 - depth * np.exp(-0.5 * ((wave[None] - LINE_A) / width) ** 2)


def make_sets(n=80, seed=7):
    from toymodel import ToyModel

    toy = ToyModel(wave_min=8500.0, wave_max=8700.0, step=0.5, n_lines=8, seed=2)
    d = make_design(n, seed=seed, val_every=10)
    lab = d[list(LABEL_NAMES)].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flux = toy.flux(lab, extrapolate=True)
    w = toy.wave
    cont = 1e20 / (w[None] ** 5 * (np.exp(H_C_OVER_K_A_K / (w[None] * lab[:, :1])) - 1.0))
    old_norm = flux / cont
    new_norm = old_norm * new_line_factor(lab, w)
    base = {"labels": lab, "lncont": np.log(cont).astype(np.float32), "split": d["split"].to_numpy(),
            "ids": d["id"].to_numpy(), "wave": w, "resolution": 20000.0}
    return d, base, old_norm, new_norm


def subset(base, norm, rows):
    out = {k: (v[rows] if isinstance(v, np.ndarray) and v.ndim and len(v) == len(base["ids"]) else v)
           for k, v in base.items()}
    out["norm"] = norm[rows].astype(np.float32)
    return out


def test_fit_transfer_learns_the_change_and_reports_loo():
    _, base, old, new = make_sets(60)
    tr = fit_transfer(base["labels"][:45], old[:45], new[:45])
    rep = tr.report
    assert rep["n_pairs"] == 45 and 1 <= rep["n_components"] <= 24
    # leave-one-out error far below the change itself (the error of ignoring the new line)
    assert rep["loo_rms_norm"]["mean"] < 0.2 * rep["change_rms_norm"]["mean"]
    # and on label sets never seen
    pred = old[45:] * np.exp(tr.ln_ratio(base["labels"][45:]))
    err = np.sqrt(((pred - new[45:]) ** 2).mean(1))
    change = np.sqrt(((new[45:] - old[45:]) ** 2).mean(1))
    assert err.mean() < 0.25 * change.mean()
    # deterministic: no random draw anywhere
    tr2 = fit_transfer(base["labels"][:45], old[:45], new[:45])
    np.testing.assert_array_equal(tr2.ln_ratio(base["labels"][45:]), tr.ln_ratio(base["labels"][45:]))


def test_fit_transfer_rejects_bad_input():
    _, base, old, new = make_sets(20)
    with pytest.raises(InputError, match="at least 5"):
        fit_transfer(base["labels"][:3], old[:3], new[:3])
    with pytest.raises(InputError, match="pair up"):
        fit_transfer(base["labels"][:10], old[:10], new[:9])
    bad = new[:10].copy()
    bad[2, 5] = np.nan
    with pytest.raises(InputError, match="finite"):
        fit_transfer(base["labels"][:10], old[:10], bad)


def test_transfer_dataset_composition_and_held_out():
    _, base, old, new = make_sets(80)
    new_rows = np.arange(30)  # exact new spectra exist for the first 30 label sets only
    new_d, old_d = subset(base, new, new_rows), subset(base, old, np.arange(80))
    data, held, tr = transfer_dataset(new_d, old_d, log=None)
    n_val_old_only = int((base["split"][30:] == "val").sum())
    assert len(data["ids"]) == 80 - n_val_old_only
    assert (data["source"] == "synthesised").sum() == 30
    # exact rows unchanged; their validation rows stay validation rows
    np.testing.assert_array_equal(data["norm"][:30], new_d["norm"])
    assert set(data["split"][data["source"] == "transferred"]) == {"train"}
    # the transfer is fitted on training-split pairs only
    assert tr.report["n_pairs"] == int((base["split"][:30] != "val").sum())
    # held-out transferred rows: the old-only validation label sets
    assert len(held["ids"]) == n_val_old_only and set(held["split"]) == {"val"}
    # transferred spectra are much closer to the truth than the old ones
    t = data["source"] == "transferred"
    idx = np.array([int(np.flatnonzero(base["ids"] == s)[0]) for s in data["ids"][t]])
    err = np.sqrt(((data["norm"][t] - new[idx]) ** 2).mean(1)).mean()
    change = np.sqrt(((old[idx] - new[idx]) ** 2).mean(1)).mean()
    assert err < 0.3 * change


def test_transfer_dataset_refuses_inconsistent_directories():
    _, base, old, new = make_sets(40)
    new_d, old_d = subset(base, new, np.arange(20)), subset(base, old, np.arange(40))
    moved = {**old_d, "labels": old_d["labels"].copy()}
    moved["labels"][3, 0] += 10.0
    with pytest.raises(InputError, match="different labels"):
        transfer_dataset(new_d, moved, log=None)
    other_cont = {**old_d, "lncont": old_d["lncont"] + 0.1}
    with pytest.raises(InputError, match="continua differ"):
        transfer_dataset(new_d, other_cont, log=None)
    with pytest.raises(InputError, match="wavelength grids"):
        transfer_dataset(new_d, {**old_d, "wave": old_d["wave"] * 1.001}, log=None)
    with pytest.raises(InputError, match="at least 5"):
        transfer_dataset(subset(base, new, np.arange(4)), old_d, log=None)


def test_cli_emulator_train_with_transfer(tmp_path):
    from specvit.cli import main
    from specvit.spectra.emulator import load_emulator
    from specvit.spectra.synthesis.design import write_design
    from specvit.spectra.synthesis.store import write_spectrum

    d, base, old, new = make_sets(60)
    write_design(d, tmp_path / "design.csv")
    cont = np.exp(base["lncont"].astype(np.float64))
    dl = float(np.log(base["wave"][1] / base["wave"][0]))
    for i, sid in enumerate(base["ids"]):
        for sub, norm, upto in (("old", old, 60), ("new", new, 25)):
            if i < upto:
                write_spectrum(tmp_path / sub / f"{sid}.npz", flux=norm[i] * cont[i], cont=cont[i],
                               labels=base["labels"][i], label_names=LABEL_NAMES, wave_min_A=float(base["wave"][0]),
                               dlnlam=dl, meta={"id": sid})
    out = tmp_path / "emu.npz"
    rc = main(["emulator", "train", "--spectra", str(tmp_path / "new"), "--design", str(tmp_path / "design.csv"),
               "--transfer-from", str(tmp_path / "old"), "--out", str(out), "--epochs", "30",
               "--report", str(tmp_path / "rep.json")])
    assert rc == 0
    rep = json.loads((tmp_path / "rep.json").read_text())
    ts = rep["train"]["training_set"]
    assert ts["synthesised"] == int((base["split"][:25] != "val").sum())
    assert ts["transferred"] == int((base["split"][25:] != "val").sum())
    assert rep["validation"]["n"] == int((base["split"][:25] == "val").sum())
    assert rep["validation_transferred"]["n"] == int((base["split"][25:] == "val").sum())
    assert load_emulator(out).meta["linelist_transfer"]["n_pairs"] == ts["synthesised"]
