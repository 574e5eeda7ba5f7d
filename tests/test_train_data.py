"""Tiny pfsspec-layout dataset files for the training/torchdata/predict tests (plain h5py + pandas, SPEC section 4)."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd


def write_dataset(path, n_rows=256, n_pixels=128, *, seed=0, error=0.02, dtype=np.float32, nan_row=None,
                  drop_label=None):
    """Write a small dataset whose flux depends smoothly on T_eff and log_g; returns the params DataFrame."""
    rng = np.random.default_rng(seed)
    params = pd.DataFrame({
        "id": np.arange(n_rows, dtype=np.int64),
        "T_eff": rng.uniform(3750.0, 6000.0, n_rows),
        "log_g": rng.uniform(1.0, 5.0, n_rows),
        "M_H": rng.uniform(-2.5, 0.75, n_rows),
        "a_M": rng.uniform(-0.25, 0.5, n_rows),
        "C_M": rng.uniform(-0.75, 0.5, n_rows),
        "mag": rng.uniform(20.5, 22.5, n_rows),
    })
    x = np.linspace(0.0, 1.0, n_pixels)
    centres = np.array([0.2, 0.45, 0.7, 0.85])
    prof = np.exp(-0.5 * ((x[None, :] - centres[:, None]) / 0.05) ** 2)  # (4, P)
    t = (params["T_eff"].to_numpy() - 4875.0) / 1125.0
    g = (params["log_g"].to_numpy() - 3.0) / 2.0
    m = (params["M_H"].to_numpy() + 0.875) / 1.625
    depth = np.stack([0.3 + 0.2 * g, 0.3 - 0.15 * t, 0.25 + 0.1 * g * t + 0.1 * m, 0.2 + 0.1 * m], axis=1)
    flux = 0.5 * (1.0 + 0.2 * t[:, None] * (x[None, :] - 0.5)) * (1.0 - depth @ prof)
    err = np.full_like(flux, error)
    params["snr"] = np.median(flux / err, axis=1)
    params["norm_factor"] = 1.0
    if nan_row is not None:
        flux[nan_row, n_pixels // 2] = np.nan
    if drop_label is not None:
        params = params.drop(columns=[drop_label])
    with h5py.File(path, "w") as f:
        f["spectrumdataset/wave"] = 7100.0 + (np.arange(n_pixels) + 0.5) * 0.42724609375
        f.create_dataset("dataset/arrays/flux/value", data=flux.astype(dtype), chunks=(min(64, n_rows), n_pixels))
        f.create_dataset("dataset/arrays/error/value", data=err.astype(dtype), chunks=(min(64, n_rows), n_pixels))
    params.to_hdf(path, key="dataset/params", format="table")
    return params


def test_write_dataset_roundtrip(tmp_path):
    p = tmp_path / "d.h5"
    params = write_dataset(p, n_rows=10, n_pixels=16)
    back = pd.read_hdf(p, "dataset/params")
    assert np.allclose(back["log_g"], params["log_g"])
    with h5py.File(p) as f:
        assert f["dataset/arrays/flux/value"].shape == (10, 16)
