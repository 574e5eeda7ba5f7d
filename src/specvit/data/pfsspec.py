"""Read and write datasets in the pfsspec ``dataset.h5`` layout (SPEC section 4).

Layout (one HDF5 file per shard)::

    spectrumdataset/wave              (n_wave,)        pixel centres, Angstrom
    spectrumdataset/wave_edges        (n_wave + 1,)    optional
    dataset/arrays/flux/value         (N, n_wave)      noiseless normalised flux
    dataset/arrays/error/value        (N, n_wave)      1-sigma error at noise_level 1
    dataset/arrays/mask/value         (N, n_wave) int  optional; bits 0x1 default, 0x40000 extrapolated
    dataset/params                    pandas table (``to_hdf(format='table')``), one row per spectrum

pfsspec's per-spectrum wavelength layout (``SpectrumDataset(constant_wave=False)``) stores
``dataset/arrays/wave/value`` (N, n_wave) and ``dataset/arrays/wave_edges/value`` (N, 2, n_wave)
instead of ``spectrumdataset/wave``. It is read when every row's grid equals the first row's
(within ``ROW_WAVE_ATOL_A``): that grid becomes ``wave`` (``wave_layout == "per_spectrum"``).
Rows on different grids (``wave_layout == "resampled"``) are resampled as they are read,
flux-conserving, onto one grid: the PFS MR grid for 4096-pixel spectra, else the first row's
(:class:`_RegridSource`); output pixels not covered are masked pixels (NaN error, mask 0x1).

This is the layout of the files the paper's pfsspec simulator wrote (float64
arrays, a PyTables params table). specvit writes the same layout with float32
arrays (the root attribute ``array_dtype`` says so) in row chunks.

:func:`open_dataset` opens one file, a list of files, a directory or a glob as
one concatenated, lazy dataset: arrays are read from disk only for the rows
asked for, so files larger than memory are fine.
"""
from __future__ import annotations

import contextlib
import errno
import glob as _glob
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np
import pandas as pd

from specvit.errors import DiskFullError, InputError, OutputError

WAVE_KEY = "spectrumdataset/wave"
WAVE_EDGES_KEY = "spectrumdataset/wave_edges"
FLUX_KEY = "dataset/arrays/flux/value"
ERROR_KEY = "dataset/arrays/error/value"
MASK_KEY = "dataset/arrays/mask/value"
#: pfsspec's per-spectrum wavelength layout (``SpectrumDataset(constant_wave=False)``): one row per spectrum
ROW_WAVE_KEY = "dataset/arrays/wave/value"
ROW_WAVE_EDGES_KEY = "dataset/arrays/wave_edges/value"  # (N, 2, n_wave): lower and upper edge of each pixel
#: per-spectrum grids that differ by no more than this (Angstrom) from the first row's count as one grid
ROW_WAVE_ATOL_A = 1e-3
PARAMS_KEY = "dataset/params"

#: pfsspec mask bits.
MASK_DEFAULT = 0x1
MASK_EXTRAPOLATED = 0x40000

#: Columns of the paper's params table, in its order.
PFSSPEC_PARAM_COLUMNS = (
    "id", "T_eff", "log_g", "M_H", "a_M", "C_M", "mag", "snr", "redshift", "exp_count", "exp_time",
    "seeing", "ext", "target_zenith_angle", "target_field_angle", "moon_zenith_angle",
    "moon_target_angle", "moon_phase", "interp_param",
)


# --------------------------------------------------------------------------- paths
def resolve_paths(path) -> list[Path]:
    """Turn a file, a directory (all ``*.h5`` inside, sorted), a glob, or a list of those into files."""
    if isinstance(path, (list, tuple)):
        out: list[Path] = []
        for p in path:
            out.extend(resolve_paths(p))
        if not out:
            raise InputError("no dataset files given", field="path", value=list(map(str, path)))
        return out
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.suffix in (".h5", ".hdf5") and not q.name.startswith("."))
        if not files:
            raise InputError("directory holds no .h5 dataset files", file=p)
        return files
    if any(c in str(path) for c in "*?["):
        files = sorted(Path(q) for q in _glob.glob(str(path)) if not Path(q).name.startswith("."))
        if not files:
            raise InputError("glob matches no files", file=str(path))
        return files
    if not p.exists():
        raise InputError("dataset file not found", file=p)
    return [p]


def _corrupt(path, e: BaseException, what: str, field=None) -> InputError:
    """One-line error for a file HDF5 cannot read: it says first that the file is truncated or corrupt
    and names it, then what failed and the telling line of HDF5's error stack."""
    return InputError(f"truncated or corrupt HDF5 file {str(path)!r}: {what} ({_first_line(e)})",
                      file=path, field=field)


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise _corrupt(path, e, "cannot open it") from None


def _require(f: h5py.File, key: str, path: Path):
    try:
        obj = f[key]
    except KeyError:
        raise InputError("missing HDF5 key (not a pfsspec dataset?)", file=path, field=key) from None
    except OSError as e:
        raise _corrupt(path, e, f"cannot read {key}", field=key) from None
    return obj


def read_params(path, key: str = PARAMS_KEY) -> pd.DataFrame:
    """Read the params table of one file (``pandas.read_hdf(path, 'dataset/params')``)."""
    path = Path(path)
    try:
        df = pd.read_hdf(path, key)
    except KeyError:
        raise InputError("missing params table", file=path, field=key) from None
    except Exception as e:
        # PyTables raises HDF5ExtError (a RuntimeError), OSError or ValueError for damaged files and tables
        raise _corrupt(path, e, "cannot read the params table", field=key) from None
    if not isinstance(df, pd.DataFrame):
        raise InputError("params is not a table", file=path, field=key)
    return df


# --------------------------------------------------------------------------- lazy arrays
def _normalise_rows(key, n: int):
    """Return (kind, rows) with kind 'slice' (a slice with step 1), 'int' or 'list' (int64 array)."""
    if isinstance(key, (int, np.integer)):
        k = int(key)
        if k < -n or k >= n:
            raise IndexError(f"row {k} out of range for {n} rows")
        return "int", k % n
    if isinstance(key, slice):
        start, stop, step = key.indices(n)
        if step == 1:
            return "slice", slice(start, max(start, stop))
        return "list", np.arange(start, stop, step, dtype=np.int64)
    arr = np.asarray(key)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"boolean index of shape {arr.shape} for {n} rows")
        return "list", np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0:
        return "list", np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise IndexError(f"row index must be int, slice, int array or bool mask, got {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < -n or arr.max() >= n):
        raise IndexError(f"row index out of range for {n} rows")
    return "list", np.where(arr < 0, arr + n, arr)


class LazyArray:
    """A read-only (N, n_wave) array over one HDF5 dataset per shard, read on demand.

    Supports ``a[i]``, ``a[i:j]``, ``a[rows]`` (any order, repeats allowed),
    ``a[bool_mask]``, and a second index for pixels (``a[rows, 100:200]``).
    ``np.asarray(a)`` reads everything (avoid on large files).
    """

    def __init__(self, datasets: Sequence[h5py.Dataset], paths: Sequence[Path], key: str):
        self._ds = list(datasets)
        self._paths = list(paths)
        self.key = key
        sizes = np.array([d.shape[0] for d in self._ds], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.shape = (int(self._offsets[-1]),) + tuple(self._ds[0].shape[1:])
        self.dtype = self._ds[0].dtype

    ndim = property(lambda self: len(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyArray({self.key!r}, shape={self.shape}, dtype={self.dtype}, shards={len(self._ds)})"

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _read(self, s: int, sel, cols) -> np.ndarray:
        ds = self._ds[s]
        try:
            if isinstance(cols, slice):
                return ds[sel, cols]
            out = ds[sel]
            return out[..., cols] if cols is not None else out
        except (OSError, RuntimeError) as e:
            raise _corrupt(self._paths[s], e, f"cannot read rows of {self.key}", field=self.key) from None

    def _read_sorted_unique(self, s: int, rows: np.ndarray, cols) -> np.ndarray:
        """Read sorted unique local rows of shard ``s``; dense runs are read as one slice."""
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo <= 2 * len(rows) + 16:
            block = self._read(s, slice(lo, hi), cols)
            return block[rows - lo]
        return self._read(s, rows, cols)

    def __getitem__(self, key):
        cols = slice(None)
        if isinstance(key, tuple):
            if len(key) == 0:
                key = slice(None)
            elif len(key) == 1:
                key = key[0]
            elif len(key) == 2:
                key, cols = key
            else:
                raise IndexError("too many indices (this array is 2-D)")
        if not isinstance(cols, slice):
            cols = np.asarray(cols)
        n = self.shape[0]
        kind, rows = _normalise_rows(key, n)
        if kind == "int":
            s = int(np.searchsorted(self._offsets, rows, side="right") - 1)
            return self._read(s, int(rows - self._offsets[s]), cols)
        if kind == "slice":
            if rows.stop <= rows.start:
                return np.empty((0,) + self._sub_shape(cols), dtype=self.dtype)
            parts = []
            s0 = int(np.searchsorted(self._offsets, rows.start, side="right") - 1)
            s1 = int(np.searchsorted(self._offsets, rows.stop - 1, side="right") - 1)
            for s in range(s0, s1 + 1):
                a = max(rows.start, self._offsets[s]) - self._offsets[s]
                b = min(rows.stop, self._offsets[s + 1]) - self._offsets[s]
                parts.append(self._read(s, slice(int(a), int(b)), cols))
            return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        # list of rows, any order: read each shard's sorted unique rows once, then reorder
        if rows.size == 0:
            return np.empty((0,) + self._sub_shape(cols), dtype=self.dtype)
        uniq, inverse = np.unique(rows, return_inverse=True)
        shard = np.searchsorted(self._offsets, uniq, side="right") - 1
        parts = []
        for s in np.unique(shard):
            local = uniq[shard == s] - self._offsets[s]
            parts.append(self._read_sorted_unique(int(s), local, cols))
        block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return block[inverse]

    def _sub_shape(self, cols) -> tuple:
        if isinstance(cols, slice):
            return (len(range(*cols.indices(self.shape[1]))),)
        return np.empty(self.shape[1])[cols].shape

    def iter_chunks(self, chunk_rows: int = 1024):
        """Yield ``(start, block)`` over all rows, ``chunk_rows`` at a time."""
        for start in range(0, len(self), chunk_rows):
            yield start, self[start : start + chunk_rows]


# --------------------------------------------------------------------------- dataset
def _read_wave(f: h5py.File, path: Path, chunk_rows: int = 4096):
    """``(wave, wave_edges or None, layout)`` of one file: ``spectrumdataset/wave`` ("constant"), else
    pfsspec's per-spectrum arrays ("per_spectrum"), accepted when every row has the first row's grid."""
    if WAVE_KEY in f or ROW_WAVE_KEY not in f:
        wave = np.asarray(_require(f, WAVE_KEY, path)[()], dtype=np.float64)
        edges = np.asarray(f[WAVE_EDGES_KEY][()], dtype=np.float64) if WAVE_EDGES_KEY in f else None
        return wave, edges, "constant"
    ds = _require(f, ROW_WAVE_KEY, path)
    if ds.ndim != 2 or ds.shape[0] == 0:
        raise InputError("per-spectrum wave must be (N, n_wave) with N >= 1", file=path, field=ROW_WAVE_KEY,
                         value=ds.shape)
    try:
        wave = np.asarray(ds[0], dtype=np.float64)
        for a in range(0, ds.shape[0], chunk_rows):
            block = np.asarray(ds[a:a + chunk_rows], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                diff = np.abs(block - wave[None, :])
            bad = ~(diff <= ROW_WAVE_ATOL_A).all(axis=1)
            if bad.any():
                if not np.all(np.isfinite(block)) or not np.all(np.diff(block, axis=1) > 0):
                    i = int(np.argmax(~np.isfinite(block).all(axis=1) | ~(np.diff(block, axis=1) > 0).all(axis=1)))
                    raise InputError("per-spectrum wavelengths must be finite and increasing", file=path,
                                     field=ROW_WAVE_KEY, value=f"row {a + i}")
                return (*_regrid_reference(wave), "resampled")
        edges = None
        if ROW_WAVE_EDGES_KEY in f:
            e = f[ROW_WAVE_EDGES_KEY]
            if e.ndim == 3 and e.shape[1] == 2 and e.shape[2] == wave.shape[0]:
                lo_hi = np.asarray(e[0], dtype=np.float64)
                edges = np.concatenate([lo_hi[0], lo_hi[1][-1:]])
            elif e.ndim == 2 and e.shape[1] == wave.shape[0] + 1:
                edges = np.asarray(e[0], dtype=np.float64)
            if edges is not None and not np.all(np.isfinite(edges)):
                edges = None
    except (OSError, RuntimeError) as e:
        raise _corrupt(path, e, f"cannot read {ROW_WAVE_KEY}", field=ROW_WAVE_KEY) from None
    return wave, edges, "per_spectrum"


def _regrid_reference(row0: np.ndarray):
    """The common grid rows on different grids are resampled onto: the PFS MR grid for 4096-pixel
    spectra (the grid every specvit file and model uses), else the first row's grid."""
    from specvit.observe.pfs import PFS_MR_N_PIXELS, pfs_mr_wave, pfs_mr_wave_edges

    if row0.shape[0] == PFS_MR_N_PIXELS:
        return pfs_mr_wave(), pfs_mr_wave_edges()
    mid = 0.5 * (row0[1:] + row0[:-1])
    return row0.copy(), np.concatenate([[row0[0] - (mid[0] - row0[0])], mid, [row0[-1] + (row0[-1] - mid[-1])]])


class _RegridSource:
    """Rows of a per-spectrum-grid dataset resampled onto one grid, on demand (the last block is cached so
    that flux, error and mask of the same rows are resampled once). Resampling: flux-conserving pixel
    overlap (:func:`specvit.data.pfsfits.resample_flux_conserving`); input pixels with a masked error
    (the masked-pixel policy) or non-finite flux carry no weight; an output pixel less than half covered
    gets NaN error (a masked pixel), its flux linearly interpolated from its neighbours, mask bit 0x1."""

    def __init__(self, wave: LazyArray, flux: LazyArray, error: LazyArray, mask, edges: np.ndarray):
        self.wave, self.flux, self.error, self.mask, self.edges = wave, flux, error, mask, edges
        self._key, self._block = None, None

    def read(self, rows: np.ndarray) -> dict:
        from specvit.data.checks import bad_error_pixels
        from specvit.data.pfsfits import cell_edges, resample_flux_conserving

        key = rows.tobytes()
        if key == self._key:
            return self._block
        w = np.asarray(self.wave[rows], dtype=np.float64)
        f = np.asarray(self.flux[rows], dtype=np.float64)
        e = np.asarray(self.error[rows], dtype=np.float64)
        n_out = len(self.edges) - 1
        out = {"flux": np.empty((len(rows), n_out)), "error": np.empty((len(rows), n_out)),
               "mask": np.zeros((len(rows), n_out), dtype=np.int32)}
        idx = np.arange(n_out)
        for i in range(len(rows)):
            good = np.isfinite(f[i]) & ~bad_error_pixels(e[i])
            fo, vo, m = resample_flux_conserving(cell_edges(w[i]), np.where(good, f[i], 0.0),
                                                 np.where(good, e[i] ** 2, 0.0), good, self.edges)
            if m.all():
                out["flux"][i], out["error"][i] = np.nan, np.nan
            else:
                out["flux"][i] = np.where(m, np.interp(idx, idx[~m], fo[~m]), fo)
                out["error"][i] = np.where(m, np.nan, np.sqrt(vo))
            out["mask"][i] = np.where(m, MASK_DEFAULT, 0)
        self._key, self._block = key, out
        return out


class _RegriddedArray:
    """LazyArray-like view (``a[rows]``, ``a[rows, cols]``, ``len``, ``shape``) of one resampled array."""

    def __init__(self, src: _RegridSource, which: str, n_rows: int):
        self.src, self.which = src, which
        self.shape = (int(n_rows), len(src.edges) - 1)
        self.dtype = np.dtype(np.int32 if which == "mask" else np.float64)
        self.key = which

    ndim = property(lambda self: 2)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        cols = slice(None)
        if isinstance(key, tuple):
            if len(key) > 2:
                raise IndexError("too many indices (this array is 2-D)")
            key, cols = (tuple(key) + (slice(None), slice(None)))[:2]
        kind, rows = _normalise_rows(key, self.shape[0])
        if kind == "int":
            return self.src.read(np.array([rows], dtype=np.int64))[self.which][0][cols]
        if kind == "slice":
            rows = np.arange(rows.start, rows.stop, dtype=np.int64)
        if rows.size == 0:
            return np.empty((0, self.shape[1]), dtype=self.dtype)[:, cols]
        return self.src.read(rows)[self.which][:, cols]

    def iter_chunks(self, chunk_rows: int = 1024):
        for start in range(0, len(self), chunk_rows):
            yield start, self[start : start + chunk_rows]


class SpectrumDataset:
    """A pfsspec dataset (one or more shards) opened lazily. Use :func:`open_dataset`.

    Attributes
    ----------
    path : Path
        The first file (``paths`` lists all shards).
    wave : ndarray (n_wave,)
        Pixel centres, Angstrom (read into memory).
    wave_edges : ndarray (n_wave + 1,) or None
    wave_layout : "constant" (``spectrumdataset/wave``), "per_spectrum" (pfsspec ``constant_wave=False``:
        ``dataset/arrays/wave/value``, every row on the same grid) or "resampled" (rows on different
        grids, resampled onto ``wave`` as they are read)
    flux, error : LazyArray (N, n_wave)
    mask : LazyArray (N, n_wave) or None
    params : DataFrame
        One row per spectrum (all shards concatenated, index 0..N-1).
    attrs : dict
        Root attributes of the first shard (seed, config, provenance for specvit files).
    """

    def __init__(self, path, *, params_columns: Iterable[str] | None = None):
        self.paths = resolve_paths(path)
        self.path = self.paths[0]
        self._files: list[h5py.File] = []
        try:
            self._open(params_columns)
        except BaseException:
            self.close()
            raise

    def _open(self, params_columns):
        params = []
        flux, error, mask = [], [], []
        grids, row_wave = [], []
        self.wave = None
        self.wave_edges = None
        for p in self.paths:
            df = read_params(p)
            f = _open_h5(p)
            self._files.append(f)
            wave, edges, layout = _read_wave(f, p)
            fl = _require(f, FLUX_KEY, p)
            er = _require(f, ERROR_KEY, p)
            if wave.ndim != 1:
                raise InputError("wave must be 1-D", file=p, field=WAVE_KEY, value=wave.shape)
            if fl.ndim != 2 or fl.shape[1] != wave.shape[0]:
                raise InputError(
                    f"flux shape {fl.shape} does not match wave length {wave.shape[0]}", file=p, field=FLUX_KEY,
                    value=fl.shape,
                )
            if er.shape != fl.shape:
                raise InputError(f"error shape {er.shape} differs from flux shape {fl.shape}", file=p, field=ERROR_KEY,
                                 value=er.shape)
            if len(df) != fl.shape[0]:
                raise InputError(f"params has {len(df)} rows but flux has {fl.shape[0]}", file=p, field=PARAMS_KEY,
                                 value=len(df))
            grids.append((p, wave, edges, layout))
            if layout != "constant":
                row_wave.append(f[ROW_WAVE_KEY])
            if self.wave is None:
                self.attrs = _read_attrs(f)
            has_mask = MASK_KEY in f
            if mask is not None:
                if has_mask:
                    m = f[MASK_KEY]
                    if m.shape != fl.shape:
                        raise InputError(f"mask shape {m.shape} differs from flux shape {fl.shape}", file=p,
                                         field=MASK_KEY, value=m.shape)
                    mask.append(m)
                else:
                    mask = None
            flux.append(fl)
            error.append(er)
            params.append(df)
        self.flux = LazyArray(flux, self.paths, FLUX_KEY)
        self.error = LazyArray(error, self.paths, ERROR_KEY)
        self.mask = LazyArray(mask, self.paths, MASK_KEY) if mask else None
        self.shard_offsets = self.flux._offsets.copy()
        self._set_grid(grids, row_wave)
        self.params = pd.concat(params, ignore_index=True) if len(params) > 1 else params[0].reset_index(drop=True)
        if params_columns is not None:
            self.require_columns(params_columns)

    def _set_grid(self, grids, row_wave) -> None:
        """One wavelength grid for all shards; rows on other grids (pfsspec per-spectrum layout) are resampled."""
        p0, wave0, edges0, layout0 = grids[0]
        if not any(g[3] == "resampled" for g in grids):
            for p, wave, _, _ in grids[1:]:
                if wave.shape != wave0.shape or not np.allclose(wave, wave0, rtol=0, atol=1e-6):
                    raise InputError("wave grid differs from the first shard's", file=p, field=WAVE_KEY)
            self.wave, self.wave_edges, self.wave_layout = wave0, edges0, layout0
            return
        const = [g[0] for g in grids if g[3] == "constant"]
        if const:
            raise InputError("shards mix spectrumdataset/wave with per-spectrum grids that differ between rows; "
                             "resample them onto one grid first", file=const[0], field=WAVE_KEY)
        ref = next(g for g in grids if g[3] == "resampled")
        self.wave, self.wave_edges, self.wave_layout = ref[1], ref[2], "resampled"
        n = len(self.flux)
        src = _RegridSource(LazyArray(row_wave, self.paths, ROW_WAVE_KEY), self.flux, self.error, self.mask,
                            self.wave_edges)
        self.flux = _RegriddedArray(src, "flux", n)
        self.error = _RegriddedArray(src, "error", n)
        self.mask = _RegriddedArray(src, "mask", n)
        import logging

        logging.getLogger("specvit.data").warning(
            "%s: per-spectrum wavelength grids differ between rows; all %d rows are resampled (flux-conserving) "
            "onto a %d-pixel grid %.2f-%.2f A as they are read", ref[0], n, len(self.wave), self.wave[0],
            self.wave[-1])

    # ---- container protocol
    def __len__(self) -> int:
        return len(self.flux)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"SpectrumDataset({[str(p) for p in self.paths]}, n={len(self)}, n_wave={len(self.wave)})"

    def close(self) -> None:
        for f in self._files:
            try:
                f.close()
            except Exception:  # pragma: no cover - closing a broken file
                pass
        self._files = []

    @property
    def n_wave(self) -> int:
        return int(len(self.wave))

    # ---- pickling (e.g. torch DataLoader workers): reopen the files in the new process
    def __getstate__(self):
        return {"paths": [str(p) for p in self.paths]}

    def __setstate__(self, state):
        self.__init__(state["paths"])

    # ---- params
    def require_columns(self, names: Iterable[str]) -> None:
        missing = [c for c in names if c not in self.params.columns]
        if missing:
            raise InputError(
                f"params table lacks column(s) {missing} (has: {', '.join(map(str, self.params.columns))})",
                file=self.path, field=missing[0],
            )

    def labels(self, names: Sequence[str], rows=None) -> np.ndarray:
        """Label columns ``names`` as a float64 (N, L) array (optionally only ``rows``)."""
        names = list(names)
        self.require_columns(names)
        df = self.params if rows is None else self.params.iloc[rows]
        return df[names].to_numpy(dtype=np.float64)

    def shard_of(self, rows) -> np.ndarray:
        """Index of the shard each global row lives in."""
        return np.searchsorted(self.shard_offsets, np.asarray(rows), side="right") - 1


def _read_attrs(f: h5py.File) -> dict:
    out = {}
    for k, v in f.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str) and k in ("config", "provenance", "model"):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def open_dataset(path, *, params_columns: Iterable[str] | None = None) -> SpectrumDataset:
    """Open a pfsspec-layout dataset lazily.

    Parameters
    ----------
    path : str, Path, list of those, directory or glob
        One file, several shards (concatenated in the given / sorted order), a
        directory (all ``*.h5`` in it, sorted by name) or a glob pattern.
    params_columns : list of str, optional
        Columns that must be present in ``dataset/params`` (else InputError).

    Works with specvit's float32 files and the paper's float64 pfsspec files.
    """
    return SpectrumDataset(path, params_columns=params_columns)


# --------------------------------------------------------------------------- writer
def write_dataset(path, *, wave, flux, error, params: pd.DataFrame, mask=None, wave_edges=None,
                  dtype=np.float32, attrs: dict | None = None) -> Path:
    """Write a complete (in-memory) dataset atomically in the pfsspec layout. Returns ``path``.

    For datasets bigger than memory use :class:`DatasetWriter`.
    """
    flux = np.asarray(flux)
    with DatasetWriter(path, wave=wave, n_rows=flux.shape[0], wave_edges=wave_edges, dtype=dtype,
                       with_mask=mask is not None, attrs=attrs) as w:
        w.write_rows(0, flux=flux, error=error, params=params, mask=mask)
    return Path(path)


#: Bytes per row for the params table (progress columns + the final PyTables table), generous.
PARAMS_BYTES_PER_ROW = 1024
#: Bytes for HDF5 metadata (object headers, chunk index, attributes), generous.
METADATA_BYTES = 1 << 20


def expected_bytes(n_rows: int, n_wave: int, dtype=np.float32, with_mask: bool = False, chunk_rows: int = 1) -> int:
    """Disk space a :class:`DatasetWriter` file of ``n_rows`` spectra needs (an upper estimate; the
    arrays are allocated in whole chunks of ``min(chunk_rows, n_rows)`` rows)."""
    c = max(1, min(int(chunk_rows), int(n_rows)))
    rows = -(-int(n_rows) // c) * c
    arrays = rows * n_wave * (2 * np.dtype(dtype).itemsize + (4 if with_mask else 0))
    return arrays + int(n_rows) * PARAMS_BYTES_PER_ROW + METADATA_BYTES


def allocated_bytes(path) -> int:
    """Bytes already allocated on disk to ``path`` (0 if absent)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def check_space(path, needed: int, what: str = "the dataset", *, file_size: int | None = None) -> None:
    """Raise :class:`DiskFullError` if the file system of ``path`` has less than ``needed`` bytes free,
    or a file of ``file_size`` bytes would exceed the process's file-size limit (``ulimit -f``)."""
    import resource

    d = Path(path).absolute().parent
    while not d.exists() and d != d.parent:
        d = d.parent
    free = shutil.disk_usage(d).free
    if needed > free:
        raise DiskFullError(f"not enough free space for {what}: {needed} bytes needed, {free} free in {str(d)!r} "
                            "(free some space, then rerun the same command: finished work is kept)",
                            file=path, needed_bytes=int(needed), free_bytes=int(free))
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if file_size is not None and soft != resource.RLIM_INFINITY and file_size > soft:
        raise DiskFullError(f"{what} needs a file of {file_size} bytes, above this process's file-size limit "
                            f"(ulimit -f) of {soft} bytes", file=path, needed_bytes=int(file_size))


def _output_error(e: BaseException, path, what: str):
    """An OutputError for an OS/HDF5 error caused by a full disk or a read-only location, else None."""
    from specvit.atomic import output_oserror

    if isinstance(e, OSError) and e.errno:
        return output_oserror(e, path, what)
    m = re.search(r"errno = (\d+)", str(e))  # h5py: RuntimeError/OSError carrying the HDF5 error stack
    if m and int(m.group(1)):
        code = int(m.group(1))
        return output_oserror(OSError(code, os.strerror(code)), path, what)
    return None


def _first_line(e: BaseException) -> str:
    """The first meaningful line of an h5py/PyTables error (their messages carry whole error stacks)."""
    text = str(e)
    m = re.search(r"(truncated file[^\n]*)", text)
    if m:
        return m.group(1).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[0].lower().startswith("hdf5 error back trace"):  # PyTables: the innermost cause
        causes = [ln for ln in lines[:-1] if not ln.startswith("File ") and "error back trace" not in ln.lower()]
        return causes[-1] if causes else lines[-1]
    return lines[0] if lines else type(e).__name__


class DatasetWriter:
    """Write a pfsspec-layout dataset of ``n_rows`` spectra in row blocks, atomically and resumably.

    Arrays are preallocated at their final size in ``.<name>.partial`` beside
    ``path`` (allocated on disk up front, so a full disk shows at the start).
    Each :meth:`write_rows` stores its flux/error/mask and params rows,
    then marks the rows done (``_progress/done``), so a killed job can reopen
    the partial file with ``resume=True`` and skip finished blocks.
    :meth:`finalize` writes the params table (pandas, ``format='table'``),
    removes the progress group and renames the file to ``path``.

    The writer holds the output's lock (:class:`specvit.atomic.OutputLock`) from construction to
    :meth:`finalize` / :meth:`close`: a second process writing the same path gets
    :class:`~specvit.errors.OutputLockedError`. A full disk or a read-only directory raises
    :class:`~specvit.errors.DiskFullError` / :class:`~specvit.errors.OutputError`; the space is
    checked before every block is written, so the partial file stays consistent and resumable.

    Params columns must be numeric or strings; the set of columns is fixed by
    the first block written.
    """

    PROGRESS = "_progress"

    def __init__(self, path, *, wave, n_rows: int, wave_edges=None, dtype=np.float32, with_mask: bool = False,
                 attrs: dict | None = None, chunk_rows: int = 256, resume: bool = False):
        from specvit.atomic import OutputLock, tmp_path_for

        self.path = Path(path)
        self.tmp = tmp_path_for(self.path)
        self.damaged = self.path.with_name(f".{self.path.name}.damaged")
        self._f = None
        self._reserved = self._failed = False
        self._handles: dict = {}
        self.salvaged = 0
        self._lock = OutputLock(self.path, what="dataset").acquire()
        try:
            self._open(wave, n_rows, wave_edges, dtype, with_mask, attrs, chunk_rows, resume)
            if resume and self.damaged.exists():
                self._salvage(max(1, min(chunk_rows, self.n_rows)))
        except OSError as e:
            self.close()
            err = _output_error(e, self.tmp, "cannot create the dataset file")
            if err is None:
                raise
            raise err from None
        except BaseException:
            self.close()
            raise

    def _open(self, wave, n_rows, wave_edges, dtype, with_mask, attrs, chunk_rows, resume):
        self.n_rows = int(n_rows)
        self.dtype = np.dtype(dtype)
        wave = np.asarray(wave, dtype=np.float64)
        if wave.ndim != 1:
            raise InputError("wave must be 1-D", file=self.path, field="wave", value=wave.shape)
        if self.n_rows <= 0:
            raise InputError("a dataset needs at least one row", file=self.path, field="n_rows", value=n_rows)
        self.n_wave = len(wave)
        self.with_mask = with_mask
        self.attrs = dict(attrs or {})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        total = expected_bytes(self.n_rows, self.n_wave, self.dtype, with_mask, chunk_rows)
        if resume and self.tmp.exists():
            check_space(self.tmp, max(0, total - allocated_bytes(self.tmp)), "the rest of the dataset",
                        file_size=total)
            try:
                self._f = h5py.File(self.tmp, "r+")
            except OSError as e:
                if _output_error(e, self.tmp, "") is not None:
                    raise
                raise InputError(f"the partial file is truncated or corrupt ({_first_line(e)})",
                                 file=self.tmp) from None
            try:
                ok = (self.PROGRESS in self._f and self._f[FLUX_KEY].shape == (self.n_rows, self.n_wave)
                      and np.allclose(self._f[WAVE_KEY][()], wave)
                      and self._f.attrs.get("resume_key", "") == self.attrs.get("resume_key", ""))
            except (OSError, KeyError):
                ok = False
            if not ok:
                self._f.close()
                self._f = None
                raise InputError(
                    "a partial file exists but does not match this job (different n, wave or config); "
                    "delete it or start without resume", file=self.tmp)
            if with_mask and MASK_KEY not in self._f:  # a partial file begun before simulate wrote masks
                self._f.create_dataset(MASK_KEY, shape=(self.n_rows, self.n_wave), dtype=np.int32,
                                       chunks=(max(1, min(chunk_rows, self.n_rows)), self.n_wave), fillvalue=0)
            self._reserve()
            return
        for p in (self.tmp, self.damaged) if not resume else (self.tmp,):
            if p.exists():
                p.unlink()
        check_space(self.tmp, total, "the dataset", file_size=total)
        self._f = h5py.File(self.tmp, "w")
        f = self._f
        f.create_dataset(WAVE_KEY, data=wave)
        if wave_edges is not None:
            f.create_dataset(WAVE_EDGES_KEY, data=np.asarray(wave_edges, dtype=np.float64))
        chunks = (max(1, min(chunk_rows, self.n_rows)), self.n_wave)
        # the big arrays get their disk space now (all chunks allocated, then reserved by _reserve): a
        # full disk fails here, before any row, not inside HDF5 halfway through the run
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        early = {"dcpl": dcpl, "fill_time": "never"}
        f.create_dataset(FLUX_KEY, shape=(self.n_rows, self.n_wave), dtype=self.dtype, chunks=chunks, **early)
        f.create_dataset(ERROR_KEY, shape=(self.n_rows, self.n_wave), dtype=self.dtype, chunks=chunks, **early)
        if with_mask:
            f.create_dataset(MASK_KEY, shape=(self.n_rows, self.n_wave), dtype=np.int32, chunks=chunks, **early)
        f.create_dataset(f"{self.PROGRESS}/done", shape=(self.n_rows,), dtype=bool, fillvalue=False)
        f.attrs["array_dtype"] = self.dtype.name
        f.attrs["format"] = "pfsspec dataset.h5 layout (specvit writer)"
        for k, v in self.attrs.items():
            if isinstance(v, (bool, np.bool_)):
                v = int(v)  # PyTables cannot read HDF5 enum (bool) attributes
            f.attrs[k] = v if isinstance(v, (str, int, float, np.number, np.ndarray)) else json.dumps(v, default=str)
        f.flush()
        self._reserve()

    def _reserve(self) -> None:
        """Allocate the file's blocks on disk (``posix_fallocate``) so later row writes cannot hit a full
        disk (on copy-on-write file systems they still can; the space check before each block stays)."""
        self._reserved = False
        if not hasattr(os, "posix_fallocate"):
            return
        size = os.path.getsize(self.tmp)
        fd = os.open(self.tmp, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
            self._reserved = True
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                return  # not supported by this file system: the checks before each block remain
            raise DiskFullError(f"cannot reserve {size} bytes for the dataset: {os.strerror(e.errno)} (free some "
                                "space, then rerun the same command to continue)", file=self.tmp,
                                needed_bytes=size, free_bytes=shutil.disk_usage(self.tmp.parent).free) from None
        finally:
            os.close(fd)

    def _salvage(self, block_rows: int) -> None:
        """Copy the finished rows of ``.<name>.damaged`` (a partial file set aside after HDF5 failed to
        write to it, see :meth:`close`) into this file, then delete it. Rows it cannot give back are
        simulated again; a file that does not open is only deleted."""
        try:
            src = h5py.File(self.damaged, "r")
        except OSError:
            self.damaged.unlink()
            return
        try:
            try:
                ok = (src.attrs.get("resume_key", "") == self.attrs.get("resume_key", "")
                      and src[FLUX_KEY].shape == (self.n_rows, self.n_wave))
            except (OSError, KeyError, RuntimeError):
                ok = False
            if not ok:
                raise InputError("a damaged partial file exists but does not match this job; delete it or "
                                 "start without resume", file=self.damaged)
            try:
                todo = src[f"{self.PROGRESS}/done"][()] & ~self.done_mask()
                g = src[f"{self.PROGRESS}/params"]
                cols = json.loads(g.attrs["columns"]) if todo.any() else []
                rows = np.flatnonzero(todo)
                for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1) if rows.size else []:
                    for a in range(int(run[0]), int(run[-1]) + 1, block_rows):
                        b = min(a + block_rows, int(run[-1]) + 1)
                        params = pd.DataFrame({c: (g[c].asstr()[a:b] if h5py.check_string_dtype(g[c].dtype)
                                                   else g[c][a:b]) for c in cols})
                        mask = src[MASK_KEY][a:b] if self.with_mask and MASK_KEY in src else None
                        self.write_rows(a, flux=src[FLUX_KEY][a:b], error=src[ERROR_KEY][a:b], params=params,
                                        mask=mask)
                        self.salvaged += b - a
            except (OSError, RuntimeError, KeyError, ValueError):  # unreadable rest: simulated again
                pass
        finally:
            src.close()
        self.damaged.unlink()

    def _check_usable(self) -> None:
        if self._failed:
            raise OutputError("an earlier write to this file failed (full disk): close the writer and resume "
                              "in a new one", file=self.tmp)

    def _check_block_space(self, n: int) -> None:
        need = n * PARAMS_BYTES_PER_ROW + (1 << 18)
        if not self._reserved:
            need += n * self.n_wave * (2 * self.dtype.itemsize + (4 if self.with_mask else 0))
        check_space(self.tmp, need, "rows of the dataset")

    # ---- progress
    def _ds(self, key: str) -> h5py.Dataset:
        """The open dataset ``key``, kept open until the file is closed: a dataset object dropped after
        each write would be closed by the garbage collector, and h5py ignores errors there (a write that
        failed on a full disk would go unnoticed); open, the next ``flush()`` / ``close()`` raises them."""
        ds = self._handles.get(key)
        if ds is None:
            ds = self._handles[key] = self._f[key]
        return ds

    def done_mask(self) -> np.ndarray:
        return self._ds(f"{self.PROGRESS}/done")[()]

    def is_done(self, start: int, stop: int) -> bool:
        return bool(self._ds(f"{self.PROGRESS}/done")[start:stop].all())

    def write_rows(self, start: int, *, flux, error, params: pd.DataFrame, mask=None) -> None:
        """Store rows ``start .. start+len(flux)`` and mark them done."""
        self._check_usable()
        f = self._f
        flux = np.asarray(flux)
        error = np.asarray(error)
        n = flux.shape[0]
        stop = start + n
        if flux.ndim != 2 or flux.shape[1] != self.n_wave:
            raise InputError(f"flux must be (n, {self.n_wave})", file=self.path, field="flux", value=flux.shape)
        if error.shape != flux.shape:
            raise InputError("error shape differs from flux", file=self.path, field="error", value=error.shape)
        if start < 0 or stop > self.n_rows:
            raise InputError(f"rows {start}..{stop} outside 0..{self.n_rows}", file=self.path, field="start", value=start)
        if len(params) != n:
            raise InputError("params rows differ from flux rows", file=self.path, field="params", value=len(params))
        for name, arr in (("flux", flux), ("error", error)):
            if not np.isfinite(arr).all():
                raise InputError(f"non-finite {name} in rows {start}..{stop}", file=self.path, field=name)
        self._check_block_space(n)
        try:
            self._ds(FLUX_KEY)[start:stop] = flux.astype(self.dtype, copy=False)
            self._ds(ERROR_KEY)[start:stop] = error.astype(self.dtype, copy=False)
            if self.with_mask:
                m = np.zeros(flux.shape, np.int32) if mask is None else np.asarray(mask, np.int32)
                self._ds(MASK_KEY)[start:stop] = m
            self._write_params(start, stop, params)
            f.flush()
            self._ds(f"{self.PROGRESS}/done")[start:stop] = True
            f.flush()
        except (OSError, RuntimeError) as e:
            err = _output_error(e, self.tmp, f"cannot write rows {start}..{stop}")
            if err is None:
                raise
            self._failed = True  # HDF5 may hold unwritten metadata now: close() must not flush it again
            _quiet_h5py_dealloc_errors()
            raise err from None

    def _write_params(self, start, stop, params: pd.DataFrame) -> None:
        g = self._f.require_group(f"{self.PROGRESS}/params")
        for col in params.columns:
            values = params[col].to_numpy()
            if values.dtype.kind in "OUS":
                values = np.asarray([str(v) for v in values], dtype=object)
                dt = h5py.string_dtype()
            elif values.dtype.kind in "biuf":
                dt = values.dtype
            else:
                raise InputError("params columns must be numeric or strings", file=self.path, field=str(col),
                                 value=str(values.dtype))
            if col not in g:
                g.create_dataset(col, shape=(self.n_rows,), dtype=dt)
                order = json.loads(g.attrs.get("columns", "[]")) + [str(col)]
                g.attrs["columns"] = json.dumps(order)
            self._ds(f"{self.PROGRESS}/params/{col}")[start:stop] = values

    # ---- finish
    def finalize(self) -> Path:
        """Write the params table, drop progress bookkeeping, rename to the final path.

        The progress group is deleted only after the params table is written, so a failure (or a
        kill) before the rename leaves a partial file that a rerun finishes."""
        self._check_usable()
        done = self.done_mask()
        if not done.all():
            first = int(np.flatnonzero(~done)[0])
            raise InputError(f"{int((~done).sum())} rows were never written (first: {first})", file=self.tmp,
                             field="rows")
        g = self._f[f"{self.PROGRESS}/params"]
        cols = json.loads(g.attrs["columns"])
        df = pd.DataFrame({c: (g[c].asstr()[()] if h5py.check_string_dtype(g[c].dtype) else g[c][()]) for c in cols})
        check_space(self.tmp, 2 * int(df.memory_usage(deep=True).sum()) + METADATA_BYTES, "the params table")
        self._close_file()
        try:
            df.to_hdf(self.tmp, key=PARAMS_KEY, mode="a", format="table", index=False)
            n = len(pd.read_hdf(self.tmp, PARAMS_KEY, columns=[cols[0]]))  # errors inside PyTables are not
            if n != self.n_rows:                                           # always raised: read it back
                raise InputError(f"the params table written has {n} rows, not {self.n_rows}", file=self.tmp)
            f = h5py.File(self.tmp, "r+")
            del f[self.PROGRESS]
            f.attrs["complete"] = np.int8(1)
            f.close()
        except Exception as e:
            err = _output_error(e, self.tmp, "cannot write the params table")
            if err is None:
                raise
            raise err from None
        os.replace(self.tmp, self.path)
        self._release()
        return self.path

    def _close_file(self) -> None:
        f, self._f = self._f, None
        if self._failed:  # released, h5py would print the write error again for each (see below)
            _KEEP_AFTER_WRITE_ERROR.append(self._handles)
        self._handles = {}
        if f is not None:
            if self._failed:
                _KEEP_AFTER_WRITE_ERROR.append(f)
                if not _close_after_write_error(f):
                    # HDF5 could not write its metadata: do not write into this file again; the next run
                    # copies its finished rows into a new partial file (_salvage)
                    with contextlib.suppress(OSError):
                        os.replace(self.tmp, self.damaged)
            else:
                f.close()

    def close(self) -> None:
        """Close the partial file (kept for resuming) and release the lock."""
        try:
            self._close_file()
        finally:
            self._release()

    def _release(self) -> None:
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def abort(self) -> None:
        """Close and delete the partial file."""
        try:
            self._close_file()
            if self.tmp.exists():
                self.tmp.unlink()
        finally:
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


#: h5py objects of a file whose write failed, never released: h5py would report the failed write again
#: (a traceback on stderr) when each is released; the process is left by ``os._exit`` or exits anyway.
_KEEP_AFTER_WRITE_ERROR: list = []


def _quiet_h5py_dealloc_errors() -> None:
    """After a write failed on a full disk, h5py reports the same failure again each time it releases
    an object of that file (printed as 'Exception ignored in ... __dealloc__' tracebacks); the error
    itself is already raised as a DiskFullError, so these reports are dropped for the rest of the
    process. Other unraisable exceptions still go to the previous hook."""
    import sys

    old = sys.unraisablehook
    if getattr(old, "_specvit_h5py_quiet", False):
        return

    def hook(u):
        if isinstance(u.exc_value, (RuntimeError, OSError)) and "h5py" in repr(u.object) + str(u.err_msg):
            return
        old(u)

    hook._specvit_h5py_quiet = True
    sys.unraisablehook = hook


def _close_after_write_error(f: h5py.File) -> bool:
    """Close a file whose last write failed (a full disk). HDF5 then still holds metadata it could not
    write; closing retries, and if that fails too the library's state is damaged: HDF5's own exit
    handler would crash the interpreter (segfault) flushing it again. The ``specvit`` command then
    leaves with ``os._exit`` after printing its error (:data:`specvit.atomic.HDF5_STATE`)."""
    from specvit import atomic

    try:
        f.close()
        return True
    except Exception:
        atomic.HDF5_STATE["damaged"] = True
        return False
