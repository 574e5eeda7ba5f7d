"""pfsspec round trip (issue #16 item 2): files written with the calls of pfsspec's writer are read,
trained on and predicted; specvit simulate files carry the mask array pfsspec's reader needs.

``write_like_pfsspec`` repeats, with h5py and pandas, the calls of ``ga_pfsspec_core``'s writer
(``PfsObject.save_item_hdf5`` / ``allocate_item``, ``Dataset.save_items``): the params table first
(``DataFrame.to_hdf(..., format='table', append=False, min_itemsize=...)``), then every value array
allocated with ``create_dataset(path, shape=, dtype=, chunks=, compression=None)`` and filled by slice
assignment, and for ``constant_wave=True`` the grid via ``create_dataset(name, data=wave)`` in the
``spectrumdataset`` group. ``read_like_pfsspec`` repeats its reader with ``preload_arrays=True``.
"""
from __future__ import annotations

import logging

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from specvit.data import open_dataset
from specvit.data.checks import bad_error_pixels, check_dataset, patch_masked_errors
from specvit.data.torchdata import SpectraStream
from specvit.errors import InputError

N_PIX = 128


def _chunks_like_pfsspec(shape):
    """pfsspec's ``PfsObject.get_chunk_shape`` rule (None for small arrays)."""
    need = any(s > 0x80 for s in shape)
    size = int(np.prod(shape))
    if not (need and size > 0x100000):
        return None
    return tuple(1 if s <= 0x80 else (0x1000 if s > 0x10000 else (s if s > 0x400 else 64)) for s in shape)


def write_like_pfsspec(path, *, wave, flux, error, mask, params, constant_wave=True, wave_edges=None):
    """A dataset file made with the same h5py/pandas calls as pfsspec's SpectrumDataset.save()."""
    n, n_pix = flux.shape
    # Dataset.save_items: the params table first (min_itemsize = get_min_string_length(): {} in practice)
    params.to_hdf(str(path), key="dataset/params", mode="a", format="table", append=False, min_itemsize={})
    values = {"flux": (flux, float), "error": (error, float), "mask": (mask, int)}
    if not constant_wave:
        values["wave"] = (np.broadcast_to(wave, (n, n_pix)) if wave.ndim == 1 else wave, float)
        if wave_edges is not None:  # SpectrumDataset.set_wave stacks (lo, hi) per pixel: (N, 2, n_pix)
            values["wave_edges"] = (np.broadcast_to(np.stack([wave_edges[:-1], wave_edges[1:]]), (n, 2, n_pix)), float)
    for name, (data, dtype) in values.items():  # ArrayDataset.save_values -> allocate_item (preload_arrays=False)
        p = f"dataset/arrays/{name}/value"
        shape = data.shape
        with h5py.File(path, "a") as f:
            if p not in f.keys():
                f.create_dataset(p, shape=shape, dtype=dtype, chunks=_chunks_like_pfsspec(shape), compression=None)
        for a in range(0, n, 16):  # ArrayDataset.set_value -> save_item_hdf5(s=slice): in-place update
            with h5py.File(path, "a") as f:
                g = f["dataset/arrays"][name]
                g["value"][a:a + 16] = data[a:a + 16]
    if constant_wave:  # SpectrumDataset.save_items -> save_item('spectrumdataset/wave', ...)
        with h5py.File(path, "a") as f:
            g = f.require_group("spectrumdataset")
            g.create_dataset("wave", data=wave)
            if wave_edges is not None:
                g.create_dataset("wave_edges", data=wave_edges)


def read_like_pfsspec(path):
    """pfsspec's reader, ``SpectrumDataset(preload_arrays=True).load(path)`` then ``get_spectrum(i)``:
    params by ``pd.read_hdf``, every array of ``dataset/arrays`` loaded, ``values[name][idx]`` per spectrum."""
    params = pd.read_hdf(path, "dataset/params")
    with h5py.File(path, "r") as f:
        names = list(f["dataset/arrays"].keys())
        values = {name: f["dataset/arrays"][name]["value"][()] for name in names}
        wave = f["spectrumdataset/wave"][()] if "spectrumdataset" in f and "wave" in f["spectrumdataset"] else None
    values.setdefault("mask", None)  # init_values declares flux, error and mask; absent = None

    def get_spectrum(i):
        return {name: values[name][i] for name in ("flux", "error", "mask")}  # arraydataset.py:335

    return params, wave, values, get_spectrum


def _paper_like(n=64, seed=0, *, nan_edges=True):
    """Flux depending smoothly on T_eff and log g, paper params (no norm_factor), NaN errors in the edge pixels."""
    rng = np.random.default_rng(seed)
    params = pd.DataFrame({
        "id": np.arange(n, dtype=np.int64),
        "T_eff": rng.uniform(3750.0, 6000.0, n), "log_g": rng.uniform(1.0, 5.0, n),
        "M_H": rng.uniform(-2.5, 0.75, n), "a_M": rng.uniform(-0.25, 0.5, n), "C_M": rng.uniform(-0.75, 0.5, n),
        "mag": rng.uniform(20.5, 22.5, n), "snr": np.full(n, 25.0), "redshift": np.zeros(n),
        "interp_param": np.where(np.arange(n) % 2, "T_eff", "log_g"),
    })
    x = np.linspace(0.0, 1.0, N_PIX)
    prof = np.exp(-0.5 * ((x[None, :] - np.array([0.2, 0.45, 0.7])[:, None]) / 0.05) ** 2)
    t = (params["T_eff"].to_numpy() - 4875.0) / 1125.0
    g = (params["log_g"].to_numpy() - 3.0) / 2.0
    depth = np.stack([0.3 + 0.2 * g, 0.3 - 0.15 * t, 0.25 + 0.1 * g * t], axis=1)
    flux = 0.5 * (1.0 + 0.2 * t[:, None] * (x[None, :] - 0.5)) * (1.0 - depth @ prof)
    error = np.full_like(flux, 0.02)
    if nan_edges:
        error[:, 0] = np.nan
        error[:, -1] = np.nan
    wave = 7100.0 + (np.arange(N_PIX) + 0.5) * 0.42724609375
    edges = 7100.0 + np.arange(N_PIX + 1) * 0.42724609375
    mask = np.zeros(flux.shape, dtype=np.int64)
    return wave, edges, flux, error, mask, params


# --------------------------------------------------------------------------- the masked-pixel policy
def test_masked_pixel_policy_nearest_good_pixel():
    e = np.array([[np.nan, 0.1, 0.2, -1.0, 0.0, 0.4, np.inf],
                  [np.nan] * 7])
    bad = bad_error_pixels(e)
    assert bad.tolist()[0] == [True, False, False, True, True, False, True]
    out, bad2 = patch_masked_errors(e)
    np.testing.assert_array_equal(bad, bad2)
    # pixel 3 is as close to 2 as pixel 4 is to 5: ties take the bluer neighbour
    np.testing.assert_array_equal(out[0], [0.1, 0.1, 0.2, 0.2, 0.4, 0.4, 0.4])
    assert np.isnan(out[1]).all()  # no good pixel: left for the caller to refuse or flag
    assert np.isnan(e[0, 0])  # the input is not modified


# --------------------------------------------------------------------------- pfsspec -> specvit
def test_per_spectrum_wave_layout_is_read(tmp_path):
    wave, edges, flux, error, mask, params = _paper_like(40)
    p = tmp_path / "rows.h5"
    write_like_pfsspec(p, wave=wave, flux=flux, error=error, mask=mask, params=params, constant_wave=False,
                       wave_edges=edges)
    with h5py.File(p, "r") as f:
        assert "spectrumdataset" not in f and f["dataset/arrays/wave_edges/value"].shape == (40, 2, N_PIX)
    with open_dataset(p) as ds:
        assert ds.wave_layout == "per_spectrum"
        np.testing.assert_array_equal(ds.wave, wave)
        np.testing.assert_allclose(ds.wave_edges, edges)
        np.testing.assert_array_equal(ds.flux[3], flux[3])
        assert ds.mask is not None and ds.mask.dtype == np.int64


def test_per_spectrum_grids_that_differ_are_resampled_onto_one(tmp_path, caplog):
    """Rows on their own (Doppler-shifted) grids: resampled, flux-conserving, onto the first row's grid."""
    wave, edges, flux, error, mask, params = _paper_like(20)
    shift = np.linspace(-60.0, 100.0, 20) / 299792.458
    rows = wave[None, :] * (1.0 + shift[:, None])

    def g(lam):  # one smooth spectrum, sampled on each row's own grid
        return 0.5 + 0.05 * np.sin(lam / 3.0)

    p = tmp_path / "shifted.h5"
    write_like_pfsspec(p, wave=rows, flux=g(rows), error=error, mask=mask, params=params, constant_wave=False)
    with caplog.at_level(logging.WARNING, logger="specvit.data"), open_dataset(p) as ds:
        assert ds.wave_layout == "resampled" and "resampled" in caplog.text
        np.testing.assert_array_equal(ds.wave, rows[0])
        f, e, m = ds.flux[:], ds.error[:], ds.mask[:]
        assert f.shape == (20, N_PIX) and np.isfinite(f).all()
        inner = slice(12, N_PIX - 12)  # away from the uncovered ends and the NaN edge errors
        np.testing.assert_allclose(f[:, inner], np.broadcast_to(g(rows[0])[inner], (20, N_PIX - 24)), atol=2e-3)
        np.testing.assert_allclose(e[:, inner], 0.02, rtol=0.3)
        # row 19 (+100 km/s) starts 160 km/s (8.9 pixels) to the red of row 0: its first 8 pixels are masked
        assert np.isnan(e[19, :8]).all() and (m[19, :8] == 1).all() and not m[19, inner].any()
        assert not np.isnan(e[0, 1:-1]).any()
        np.testing.assert_array_equal(ds.flux[[19, 3]][0], f[19])
        np.testing.assert_array_equal(ds.flux[19, 10:20], f[19, 10:20])
        rep = check_dataset(ds, role="training", label_names=["log_g"])
        assert rep.ok and rep.masked_pixels > 40
    s = SpectraStream(path=p, label_names=["log_g"], batch_size=10, train=True, chunk_rows=10, buffer_rows=20)
    assert all(torch_finite(b["flux"]) for b in s.iter_epoch(0))


def test_nan_edge_errors_are_masked_counted_and_streamed(tmp_path, caplog):
    wave, edges, flux, error, mask, params = _paper_like(48)
    error[5, 60] = -0.01  # a negative pixel inside: masked as well
    p = tmp_path / "nanedge.h5"
    write_like_pfsspec(p, wave=wave, flux=flux, error=error, mask=mask, params=params)
    with open_dataset(p) as ds, caplog.at_level(logging.WARNING, logger="specvit.data"):
        rep = check_dataset(ds, role="training", label_names=["log_g"])
        assert rep.ok and rep.masked_pixels == 2 * 48 + 1 and rep.masked_rows == 48
    assert "97 masked error pixels" in caplog.text and "nanedge.h5" in caplog.text
    s = SpectraStream(path=p, label_names=["log_g"], batch_size=16, train=True, chunk_rows=16, buffer_rows=32)
    batches = list(s.iter_epoch(0))
    assert len(batches) == 3 and all(torch_finite(b["flux"]) for b in batches)
    assert s.masked_pixels_read == 97
    # the edge pixel got the noise of its neighbour (error 0.02), not NaN and not zero noise
    v = SpectraStream(path=p, label_names=["log_g"], batch_size=48, train=False)
    b = next(iter(v))
    assert np.all(np.abs(b["flux"].numpy()[:, 0] - flux[:, 0]) < 0.02 * 6)
    assert np.any(b["flux"].numpy()[:, 0] != flux[:, 0].astype(np.float32))


def torch_finite(t):
    return bool(t.isfinite().all())


def test_a_row_without_any_usable_error_is_refused(tmp_path):
    wave, edges, flux, error, mask, params = _paper_like(16)
    error[9] = np.nan
    p = tmp_path / "allnan.h5"
    write_like_pfsspec(p, wave=wave, flux=flux, error=error, mask=mask, params=params)
    with open_dataset(p) as ds:
        with pytest.raises(InputError, match="no usable error pixel") as e:
            check_dataset(ds, role="training", label_names=["log_g"])
    assert "row 9" in str(e.value) and "allnan.h5" in str(e.value)
    s = SpectraStream(path=p, label_names=["log_g"], batch_size=16, train=False)
    with pytest.raises(InputError, match="no usable error pixel.*row 9"):
        list(s)


def test_pfsspec_file_trains_and_predicts(tmp_path, monkeypatch):
    """Per-spectrum wavelengths, NaN edge errors, no norm_factor: `specvit train` then `specvit predict`."""
    import specvit.cli
    from specvit.cli import main

    monkeypatch.setattr(specvit.cli, "COMMAND_MODULES", ["specvit.train.cli"])
    for name, n, seed in (("train", 128, 0), ("val", 32, 1), ("test", 24, 2)):
        wave, edges, flux, error, mask, params = _paper_like(n, seed)
        write_like_pfsspec(tmp_path / f"{name}.h5", wave=wave, flux=flux, error=error, mask=mask, params=params,
                           constant_wave=False, wave_edges=edges)
    cfg = {
        "data": {"train": [str(tmp_path / "train.h5")], "val": [str(tmp_path / "val.h5")], "labels": ["log_g"],
                 "chunk_rows": 32, "buffer_rows": 64},
        "model": {"name": "mlp_small"},
        "run": {"out_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 32, "progress": False,
                "tensorboard": False},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml")]) == 0
    out = tmp_path / "cat.csv"
    assert main(["predict", "--model", str(tmp_path / "run" / "model"), "--input", str(tmp_path / "test.h5"),
                 "--out", str(out), "--noise-level", "1"]) == 0
    cat = pd.read_csv(out)
    assert len(cat) == 24 and np.isfinite(cat["log_g"]).all() and not cat["flag_nan_input"].any()


# --------------------------------------------------------------------------- specvit -> pfsspec
@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    from toymodel import write_toy_grid

    return write_toy_grid(tmp_path_factory.mktemp("grid") / "toygrid.h5")


def test_simulate_writes_a_mask_pfsspec_reads_it(grid_file, tmp_path):
    from specvit.data.simulate import ChunkSimulator, SimulateConfig, simulate

    cfg = SimulateConfig(model=str(grid_file), chunk_size=32, interpolation="linear")
    out = simulate(cfg, tmp_path / "sim.h5", n=40, seed=4, progress=False)[0]
    params, wave, values, get_spectrum = read_like_pfsspec(out)
    assert values["mask"] is not None and values["mask"].shape == values["flux"].shape == (40, 4096)
    assert values["mask"].dtype.kind == "i" and not values["mask"].any()  # no pixel flagged
    spec = get_spectrum(7)  # raised TypeError (None[idx]) on files without a mask
    assert spec["mask"].shape == (4096,) and wave.shape == (4096,) and len(params) == 40
    # the mask is an added array: flux and error are still exactly the chunk simulator's numbers
    sim = ChunkSimulator(cfg)
    a = sim.run(4, 0, 0, 0, 32, 0)
    b = sim.run(4, 0, 1, 32, 8, 0)
    np.testing.assert_array_equal(values["flux"], np.concatenate([a["flux"], b["flux"]]))
    np.testing.assert_array_equal(values["error"], np.concatenate([a["error"], b["error"]]))
    with open_dataset(out) as ds:
        assert ds.mask is not None and ds.wave_layout == "constant"
    # the paper's loader (ViskaWei/VIT) reads the params without a key: the file has one pandas object
    pd.testing.assert_frame_equal(pd.read_hdf(out), params)


def test_resume_of_a_partial_file_without_mask_adds_it(tmp_path):
    from specvit.data.pfsspec import MASK_KEY, DatasetWriter

    wave = np.linspace(7100, 7200, 16)
    w = DatasetWriter(tmp_path / "r.h5", wave=wave, n_rows=8, chunk_rows=4)  # an old job: no mask
    w.write_rows(0, flux=np.ones((4, 16)), error=np.ones((4, 16)), params=pd.DataFrame({"id": np.arange(4)}))
    w.close()
    w = DatasetWriter(tmp_path / "r.h5", wave=wave, n_rows=8, chunk_rows=4, with_mask=True, resume=True)
    w.write_rows(4, flux=np.ones((4, 16)), error=np.ones((4, 16)), params=pd.DataFrame({"id": np.arange(4, 8)}))
    w.finalize()
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f[MASK_KEY].shape == (8, 16) and not f[MASK_KEY][()].any()
