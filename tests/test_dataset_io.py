"""pfsspec dataset layout: our writer, the paper's (plain h5py + pandas, float64) files, lazy reads, errors."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from specvit.data import DatasetWriter, open_dataset, write_dataset
from specvit.data.pfsspec import ERROR_KEY, FLUX_KEY, PARAMS_KEY, WAVE_KEY, PFSSPEC_PARAM_COLUMNS
from specvit.errors import InputError
from specvit.observe.pfs import pfs_mr_wave, pfs_mr_wave_edges

N_WAVE = 64


def _params(n, rng, start_id=0):
    cols = {c: rng.uniform(0, 1, n) for c in PFSSPEC_PARAM_COLUMNS}
    cols["id"] = np.arange(start_id, start_id + n)
    cols["interp_param"] = np.where(np.arange(n) % 2, "T_eff", "log_g")
    return pd.DataFrame(cols)


def write_paper_style(path, n, rng, *, n_wave=4096, mask=True, start_id=0):
    """A file as the paper's pfsspec wrote it: plain h5py float64 arrays + a PyTables params table."""
    wave = pfs_mr_wave()[:n_wave] if n_wave <= 4096 else np.arange(n_wave, dtype=float)
    flux = rng.uniform(0.1, 1.0, (n, n_wave))
    error = rng.uniform(0.01, 0.1, (n, n_wave))
    with h5py.File(path, "w") as f:
        f["spectrumdataset/wave"] = wave
        if n_wave == 4096:
            f["spectrumdataset/wave_edges"] = pfs_mr_wave_edges()
        f["dataset/arrays/flux/value"] = flux
        f["dataset/arrays/error/value"] = error
        if mask:
            f["dataset/arrays/mask/value"] = np.where(flux > 0.9, 0x40000, 0).astype(np.int64)
    params = _params(n, rng, start_id)
    params.to_hdf(path, key="dataset/params", mode="a", format="table")
    return wave, flux, error, params


def test_reads_paper_pfsspec_file_float64(tmp_path, rng):
    path = tmp_path / "dataset.h5"
    wave, flux, error, params = write_paper_style(path, 40, rng)
    with open_dataset(path) as ds:
        assert len(ds) == 40 and ds.n_wave == 4096
        assert ds.flux.dtype == np.float64
        np.testing.assert_array_equal(ds.wave, wave)
        assert ds.wave_edges.shape == (4097,)
        np.testing.assert_array_equal(ds.flux[3], flux[3])
        np.testing.assert_array_equal(ds.error[5:9], error[5:9])
        np.testing.assert_array_equal(ds.mask[:], np.where(flux > 0.9, 0x40000, 0))
        pd.testing.assert_frame_equal(ds.params, params)
        np.testing.assert_array_equal(ds.labels(["log_g", "T_eff"]), params[["log_g", "T_eff"]].to_numpy())


def test_our_file_opens_with_plain_h5py_and_pandas(tmp_path, rng):
    n = 30
    flux = rng.uniform(0, 1, (n, N_WAVE))
    err = rng.uniform(0, 0.1, (n, N_WAVE))
    params = _params(n, rng)
    path = write_dataset(tmp_path / "ours.h5", wave=np.arange(N_WAVE) + 7100.0, flux=flux, error=err,
                         params=params, attrs={"seed": 7, "config": {"a": 1}})
    with h5py.File(path, "r") as f:
        assert f[FLUX_KEY].dtype == np.float32 and f[FLUX_KEY].shape == (n, N_WAVE)
        assert f[ERROR_KEY].shape == (n, N_WAVE) and f[WAVE_KEY].shape == (N_WAVE,)
        assert f.attrs["array_dtype"] == "float32"
        assert "_progress" not in f
    back = pd.read_hdf(path, PARAMS_KEY)
    pd.testing.assert_frame_equal(back, params)
    with open_dataset(path) as ds:
        assert ds.attrs["seed"] == 7 and ds.attrs["config"] == {"a": 1}
        np.testing.assert_allclose(ds.flux[:], flux.astype(np.float32))
        assert ds.mask is None
    assert not (tmp_path / ".ours.h5.partial").exists()


def test_fancy_indexing_any_order_and_shards(tmp_path, rng):
    parts = []
    for k, n in enumerate((17, 5, 23)):
        p = tmp_path / f"shard{k}.h5"
        parts.append(write_paper_style(p, n, rng, n_wave=N_WAVE, mask=(k != 1), start_id=100 * k))
    flux = np.concatenate([p[1] for p in parts])
    with open_dataset(tmp_path) as ds:  # a directory: sorted shards, concatenated
        assert len(ds) == 45 and ds.mask is None  # one shard lacks a mask -> no mask
        rows = [44, 0, 17, 17, 21, 22, 3, 16]
        np.testing.assert_array_equal(ds.flux[rows], flux[rows])
        np.testing.assert_array_equal(ds.flux[np.array(rows), 3:7], flux[rows, 3:7])
        np.testing.assert_array_equal(ds.flux[10:30], flux[10:30])  # crosses two shard borders
        np.testing.assert_array_equal(ds.flux[-1], flux[-1])
        np.testing.assert_array_equal(ds.flux[::7], flux[::7])
        sel = np.zeros(45, bool)
        sel[[1, 20, 40]] = True
        np.testing.assert_array_equal(ds.flux[sel], flux[sel])
        np.testing.assert_array_equal(ds.params["id"].to_numpy()[[16, 17, 21, 22]], [16, 100, 104, 200])
        np.testing.assert_array_equal(ds.shard_of([0, 16, 17, 21, 22, 44]), [0, 0, 1, 1, 2, 2])
        assert ds.flux[[]].shape == (0, N_WAVE)
        with pytest.raises(IndexError):
            ds.flux[[45]]
    with open_dataset(str(tmp_path / "shard*.h5")) as g, open_dataset([tmp_path / "shard2.h5", tmp_path / "shard0.h5"]) as l2:
        assert len(g) == 45 and len(l2) == 40
        np.testing.assert_array_equal(l2.flux[[23, 22]], flux[[0, 44]])


def test_missing_key_names_file_and_key(tmp_path, rng):
    path = tmp_path / "d.h5"
    write_paper_style(path, 5, rng, n_wave=N_WAVE)
    with h5py.File(path, "a") as f:
        del f[ERROR_KEY]
    with pytest.raises(InputError) as e:
        open_dataset(path)
    assert "d.h5" in str(e.value) and ERROR_KEY in str(e.value)


def test_missing_params_column_named(tmp_path, rng):
    path = tmp_path / "d.h5"
    write_paper_style(path, 5, rng, n_wave=N_WAVE)
    with open_dataset(path) as ds:
        with pytest.raises(InputError, match="logg_typo"):
            ds.labels(["logg_typo"])
    with pytest.raises(InputError, match="C_M_x"):
        open_dataset(path, params_columns=["log_g", "C_M_x"])


def test_wrong_wave_length(tmp_path, rng):
    path = tmp_path / "d.h5"
    write_paper_style(path, 5, rng, n_wave=N_WAVE)
    with h5py.File(path, "a") as f:
        del f[WAVE_KEY]
        f[WAVE_KEY] = np.arange(N_WAVE - 1, dtype=float)
    with pytest.raises(InputError, match="wave length 63"):
        open_dataset(path)


def test_params_rows_must_match(tmp_path, rng):
    path = tmp_path / "d.h5"
    write_paper_style(path, 5, rng, n_wave=N_WAVE)
    _params(4, rng).to_hdf(path, key=PARAMS_KEY, mode="a", format="table")
    with pytest.raises(InputError, match="params has 4 rows"):
        open_dataset(path)


def test_truncated_and_not_hdf5(tmp_path, rng):
    path = tmp_path / "d.h5"
    write_paper_style(path, 50, rng, n_wave=256)
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as e:
        with open_dataset(cut) as ds:
            ds.flux[:]
    assert "cut.h5" in str(e.value)
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(InputError, match="junk.h5"):
        open_dataset(junk)
    with pytest.raises(InputError, match="not found"):
        open_dataset(tmp_path / "nope.h5")


def test_writer_blocks_resume_and_atomicity(tmp_path, rng):
    n, wave = 12, np.arange(N_WAVE) + 7000.0
    flux = rng.uniform(0, 1, (n, N_WAVE))
    err = rng.uniform(0, 1, (n, N_WAVE))
    params = _params(n, rng)
    final = tmp_path / "out.h5"
    w = DatasetWriter(final, wave=wave, n_rows=n, attrs={"resume_key": "abc"}, with_mask=True)
    w.write_rows(4, flux=flux[4:8], error=err[4:8], params=params.iloc[4:8])
    w.close()  # "killed"
    assert not final.exists()
    with pytest.raises(InputError, match="does not match"):
        DatasetWriter(final, wave=wave, n_rows=n, attrs={"resume_key": "other"}, resume=True)
    w = DatasetWriter(final, wave=wave, n_rows=n, attrs={"resume_key": "abc"}, with_mask=True, resume=True)
    np.testing.assert_array_equal(w.done_mask(), np.arange(n) // 4 == 1)
    assert w.is_done(4, 8) and not w.is_done(0, 4)
    with pytest.raises(InputError, match="never written"):
        w.finalize()
    for s in (0, 8):
        w.write_rows(s, flux=flux[s:s + 4], error=err[s:s + 4], params=params.iloc[s:s + 4])
    w.finalize()
    assert final.exists() and not w.tmp.exists()
    with open_dataset(final) as ds:
        np.testing.assert_allclose(ds.flux[:], flux.astype(np.float32))
        pd.testing.assert_frame_equal(ds.params, params)
        assert ds.mask is not None and ds.mask[:].sum() == 0


def test_writer_rejects_nan_and_leaves_nothing(tmp_path, rng):
    flux = rng.uniform(0, 1, (3, N_WAVE))
    flux[1, 7] = np.nan
    with pytest.raises(InputError, match="non-finite flux"):
        write_dataset(tmp_path / "x.h5", wave=np.arange(N_WAVE, dtype=float), flux=flux, error=np.ones_like(flux),
                      params=_params(3, rng))
    assert list(tmp_path.iterdir()) == []


def test_lazy_read_touches_only_requested_rows(tmp_path, rng):
    """Reading a few rows must not read the whole file (files may exceed memory)."""
    path = tmp_path / "big.h5"
    n = 4000
    with DatasetWriter(path, wave=pfs_mr_wave(), n_rows=n, chunk_rows=64) as w:
        block = np.ones((1000, 4096), np.float32)
        for s in range(0, n, 1000):
            w.write_rows(s, flux=block * s, error=block, params=pd.DataFrame({"id": np.arange(s, s + 1000)}))
    with open_dataset(path) as ds:
        f = ds.flux
        calls = []
        orig = f._read
        f._read = lambda s, sel, cols: (calls.append(sel), orig(s, sel, cols))[1]
        out = f[[3999, 0]]
        assert out[:, 0].tolist() == [3000.0, 0.0]
        # sparse rows are read with a point selection, never as one 4000-row block
        assert all(not isinstance(c, slice) or c.stop - c.start < 100 for c in calls)


def test_pickle_reopens(tmp_path, rng):
    """DataLoader workers pickle datasets: the h5py handles are reopened, not copied."""
    import pickle

    path = tmp_path / "d.h5"
    _, flux, _, params = write_paper_style(path, 6, rng, n_wave=N_WAVE)
    with open_dataset(path) as ds:
        clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone.flux[[4, 1]], flux[[4, 1]])
    pd.testing.assert_frame_equal(clone.params, params)
    clone.close()
