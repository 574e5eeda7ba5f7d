"""Regular grids of model spectra (BOSZ-like), with the paper's interpolation modes.

A :class:`RegularGrid` holds a flux cube of shape ``axes_shape + (n_wave,)``
over named label axes (T_eff, log_g, M_H, a_M, C_M), an optional continuum
cube, and a validity mask (a node is valid when its spectrum has no NaN and is
not all zero, SPEC section 2). Interpolation, vectorised over N label sets:

``linear``
    N-D multilinear over the 2^D corners of the enclosing cell. A corner with
    non-zero weight that is missing/invalid raises :class:`MissingNodeError`
    naming its labels.
``spline``
    The paper's mode (pfsspec): ONE free axis is drawn at random per spectrum;
    every other label is snapped to its nearest node; along the free axis a
    cubic spline (scipy ``CubicSpline``, not-a-knot) through the valid nodes of
    that grid line is evaluated. The chosen axis is returned as ``interp_param``
    and the labels actually used (snapped) as ``labels``. Needs an explicit rng.
``nearest``
    The nearest node on every axis.

File layout (pfsspec ``ArrayGrid`` / ``ModelGrid``, matched from the pfsspec
sources ``grid/arraygrid.py``, ``grid/grid.py`` and ``stellar/grid/modelgrid.py``)::

    grid/axes/<i>/<name>        axis node values, i = axis order (new scheme;
                                the old scheme grid/axes/<name> is read too)
    grid/arrays/flux/value      axes_shape + (n_wave,)
    grid/arrays/flux/index      axes_shape, bool: node valid
    grid/arrays/cont/value      optional continuum cube (+ cont/index)
    modelgrid/wave              (n_wave,) Angstrom
    modelgrid/wave_edges        optional
    modelgrid/is_wave_vacuum    bool
    grid/type = "ArrayGrid", modelgrid/type = "ModelGrid"
    root attrs: medium, resolution (specvit additions)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from specvit.errors import InputError, MissingNodeError
from specvit.labels import canonical_label
from specvit.spectra.base import SpectralModel

Mode = Literal["linear", "spline", "nearest"]
MODES = ("linear", "spline", "nearest")

#: pfsspec / BOSZ axis names that differ from specvit's.
AXIS_ALIASES = {"O_M": "a_M", "Fe_H": "M_H", "a_Fe": "a_M", "C_Fe": "C_M"}


@dataclass
class Interpolated:
    """Result of :meth:`RegularGrid.interpolate`.

    flux : (N, n_wave) ; labels : (N, D) labels actually used (snapped in
    ``spline``/``nearest`` mode) ; interp_param : (N,) int, index of the spline
    axis in ``label_names`` (-1 when not spline) ; ok : (N,) bool, False where a
    needed node is missing (only with ``on_missing='mask'``; those rows are NaN).
    """

    flux: np.ndarray
    labels: np.ndarray
    interp_param: np.ndarray
    ok: np.ndarray
    continuum: np.ndarray | None = None


def node_is_valid(flux: np.ndarray, block: int = 2048) -> np.ndarray:
    """Valid node: no NaN and not all zero (over the last axis). Works in blocks of nodes (low memory)."""
    flat = flux.reshape(-1, flux.shape[-1])
    out = np.empty(flat.shape[0], dtype=bool)
    for i in range(0, flat.shape[0], block):  # blocks of nodes, vectorised within
        blk = flat[i:i + block]
        out[i:i + block] = ~np.isnan(blk).any(axis=1) & (blk != 0).any(axis=1)
    return out.reshape(flux.shape[:-1])


class RegularGrid(SpectralModel):
    """A regular grid of spectra over named label axes.

    Parameters (keyword-only)
    ----------
    axes : dict name -> 1-D increasing array of node values
    wave : (n_wave,) Angstrom
    flux : axes_shape + (n_wave,) F_lambda (absolute shape)
    continuum : same shape, optional
    valid : axes_shape bool, optional (default: :func:`node_is_valid` of ``flux``)
    medium : "vacuum" | "air"
    resolution : the grid's own resolving power R
    interpolation : default mode of :meth:`flux`
    """

    differentiable = False

    def __init__(self, *, axes: dict, wave, flux, continuum=None, valid=None, medium: str = "vacuum",
                 resolution: float = float("inf"), interpolation: Mode = "linear", wave_edges=None, source=None):
        self.source = source
        self.axes = {}
        for name, values in axes.items():
            name = canonical_label(AXIS_ALIASES.get(name, name))
            v = np.asarray(values, dtype=np.float64).reshape(-1)
            if v.size == 0 or (v.size > 1 and not np.all(np.diff(v) > 0)):
                raise InputError("axis values must be non-empty and strictly increasing", file=source, field=name,
                                 value=v.tolist())
            self.axes[name] = v
        self.label_names = tuple(self.axes)
        self.shape = tuple(len(v) for v in self.axes.values())
        self.wave = np.asarray(wave, dtype=np.float64)
        self.wave_edges = None if wave_edges is None else np.asarray(wave_edges, dtype=np.float64)
        flux = np.asarray(flux)
        if flux.shape != self.shape + (len(self.wave),):
            raise InputError(f"flux cube must have shape {self.shape + (len(self.wave),)}", file=source,
                             field="flux", value=flux.shape)
        self._flux = flux
        if continuum is not None:
            continuum = np.asarray(continuum)
            if continuum.shape != flux.shape:
                raise InputError("continuum cube shape differs from flux", file=source, field="continuum",
                                 value=continuum.shape)
        self._cont = continuum
        self.valid = node_is_valid(flux) if valid is None else np.asarray(valid, dtype=bool) & node_is_valid(flux)
        if self.valid.shape != self.shape:
            raise InputError("valid mask shape differs from the axes", file=source, field="valid",
                             value=self.valid.shape)
        if medium not in ("vacuum", "air"):
            raise InputError("medium must be 'vacuum' or 'air'", file=source, field="medium", value=medium)
        self.medium = medium
        self.resolution = float(resolution)
        if interpolation not in MODES:
            raise InputError(f"interpolation must be one of {MODES}", file=source, field="interpolation",
                             value=interpolation)
        self.interpolation = interpolation
        self.bounds = {k: (float(v[0]), float(v[-1])) for k, v in self.axes.items()}
        # flat views for gathering
        self._flat = self._flux.reshape(-1, len(self.wave))
        self._flat_cont = None if self._cont is None else self._cont.reshape(-1, len(self.wave))
        self._flat_valid = self.valid.reshape(-1)
        self._strides = np.array([int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape))], dtype=np.int64)

    # ------------------------------------------------------------------ info
    @property
    def n_nodes(self) -> int:
        return int(np.prod(self.shape))

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())

    @property
    def flux_cube(self) -> np.ndarray:
        return self._flux

    @property
    def continuum_cube(self) -> np.ndarray | None:
        return self._cont

    def node_labels(self, idx) -> dict:
        """Labels of the node at multi-index ``idx``."""
        return {k: float(self.axes[k][int(i)]) for k, i in zip(self.label_names, idx)}

    def describe(self) -> dict:
        d = super().describe()
        d.update({"axes": {k: v.tolist() for k, v in self.axes.items()}, "n_valid_nodes": self.n_valid,
                  "n_nodes": self.n_nodes, "interpolation": self.interpolation})
        return d

    # ------------------------------------------------------------------ SpectralModel
    def flux(self, labels, *, extrapolate: bool = False, mode: Mode | None = None, rng=None):
        """Noiseless F_lambda (N, n_wave) at ``labels`` (N, D) in :attr:`label_names` order."""
        return self.interpolate(labels, mode=mode or self.interpolation, rng=rng, extrapolate=extrapolate).flux

    def continuum(self, labels, *, extrapolate: bool = False, mode: Mode | None = None, rng=None):
        if self._cont is None:
            raise InputError("this grid has no continuum cube", file=self.source, field="continuum")
        return self.interpolate(labels, mode=mode or self.interpolation, rng=rng, extrapolate=extrapolate,
                                with_continuum=True).continuum

    # ------------------------------------------------------------------ interpolation
    def interpolate(self, labels, *, mode: Mode = "linear", rng: np.random.Generator | None = None,
                    extrapolate: bool = False, on_missing: Literal["raise", "mask"] = "raise",
                    with_continuum: bool = False) -> Interpolated:
        """Interpolate the grid; see the module docstring for the modes.

        ``on_missing='mask'`` returns ``ok=False`` (and NaN flux) for rows that
        need a missing node instead of raising, so a sampler can redraw them.
        """
        lab = self.labels_array(labels, source=self.source)
        if extrapolate:
            raise InputError("a grid cannot extrapolate", file=self.source, field="extrapolate", value=True)
        self.check_labels(lab, source=self.source)
        if mode == "linear":
            idx, w = self._linear_corners(lab)
            used = lab
            ip = np.full(len(lab), -1, np.int64)
        elif mode == "nearest":
            near = self._nearest_index(lab)
            idx, w = near[:, None], np.ones((len(lab), 1))
            used = self._index_to_labels(near)
            ip = np.full(len(lab), -1, np.int64)
        elif mode == "spline":
            if not isinstance(rng, np.random.Generator):
                raise InputError("spline interpolation draws the free axis at random: pass rng=np.random.Generator",
                                 file=self.source, field="rng", value=type(rng).__name__)
            return self._spline(lab, rng, on_missing, with_continuum)
        else:
            raise InputError(f"interpolation must be one of {MODES}", file=self.source, field="mode", value=mode)
        needed = w > 0
        bad = needed & ~self._flat_valid[idx]
        ok = ~bad.any(axis=1)
        if not ok.all() and on_missing == "raise":
            i = int(np.flatnonzero(~ok)[0])
            j = int(np.flatnonzero(bad[i])[0])
            self._raise_missing(idx[i, j], lab[i], i)
        safe_idx = np.where(bad, 0, idx)
        flux = self._combine(self._flat, safe_idx, w)
        cont = self._combine(self._flat_cont, safe_idx, w) if with_continuum and self._flat_cont is not None else None
        if not ok.all():
            flux[~ok] = np.nan
            if cont is not None:
                cont[~ok] = np.nan
        return Interpolated(flux=flux, labels=used, interp_param=ip, ok=ok, continuum=cont)

    @staticmethod
    def _combine(flat, idx, w, block_bytes: int = 16 << 20):
        """out[n] = sum_c w[n, c] * flat[idx[n, c]]: gather a block of rows' nodes, then one batched matmul.

        Corners whose weight is zero for every row are skipped. Memory per block ~ ``block_bytes``.
        """
        keep = np.flatnonzero((w != 0).any(axis=0))
        idx, w = idx[:, keep], w[:, keep]
        dtype = np.result_type(flat.dtype, np.float32)
        N, C = idx.shape
        W = flat.shape[1]
        out = np.empty((N, W), dtype=dtype)
        if C == 0:
            out[:] = 0
            return out
        step = max(1, block_bytes // (C * W * flat.itemsize))
        wd = w.astype(dtype)
        for s in range(0, N, step):  # blocks of rows (memory bound), vectorised within
            g = flat[idx[s:s + step]]  # (b, C, W)
            out[s:s + step] = np.matmul(wd[s:s + step, None, :], g)[:, 0, :]
        return out

    def _raise_missing(self, flat_index, labels_row, row):
        node = np.unravel_index(int(flat_index), self.shape)
        raise MissingNodeError(
            f"interpolation of row {row} (labels {dict(zip(self.label_names, map(float, labels_row)))}) needs a "
            f"missing/invalid grid node", file=self.source, field="node", value=self.node_labels(node))

    def _cell(self, lab):
        """Lower node index and fractional position per axis: (N, D) int, (N, D) float."""
        lo = np.empty(lab.shape, np.int64)
        t = np.zeros(lab.shape)
        for d, v in enumerate(self.axes.values()):
            if len(v) == 1:
                lo[:, d] = 0
                continue
            i = np.clip(np.searchsorted(v, lab[:, d], side="right") - 1, 0, len(v) - 2)
            lo[:, d] = i
            t[:, d] = np.clip((lab[:, d] - v[i]) / (v[i + 1] - v[i]), 0.0, 1.0)
        return lo, t

    def _linear_corners(self, lab):
        lo, t = self._cell(lab)
        D = lab.shape[1]
        bits = (np.arange(2 ** D)[:, None] >> np.arange(D)[None, :]) & 1  # (C, D)
        corner = lo[:, None, :] + bits[None]  # (N, C, D)
        size = np.array(self.shape)
        corner = np.minimum(corner, size - 1)  # single-node axes: bit 1 has zero weight anyway
        w = np.prod(np.where(bits[None] == 1, t[:, None, :], 1.0 - t[:, None, :]), axis=2)  # (N, C)
        flat = (corner * self._strides).sum(-1)
        return flat, w

    def _nearest_index(self, lab):
        out = np.empty(lab.shape, np.int64)
        for d, v in enumerate(self.axes.values()):
            i = np.clip(np.searchsorted(v, lab[:, d]), 1, max(len(v) - 1, 1)) if len(v) > 1 else np.zeros(len(lab), int)
            if len(v) > 1:
                left = v[i - 1]
                right = v[i]
                i = np.where(np.abs(lab[:, d] - left) <= np.abs(right - lab[:, d]), i - 1, i)
            out[:, d] = i
        return (out * self._strides).sum(-1)

    def _index_to_labels(self, flat):
        multi = np.stack(np.unravel_index(flat, self.shape), axis=1)
        return np.stack([v[multi[:, d]] for d, v in enumerate(self.axes.values())], axis=1)

    def _spline(self, lab, rng, on_missing, with_continuum) -> Interpolated:
        from scipy.interpolate import CubicSpline

        N, D = lab.shape
        free_axes = np.array([d for d, v in enumerate(self.axes.values()) if len(v) > 1], dtype=np.int64)
        if free_axes.size == 0:
            raise InputError("spline mode needs an axis with more than one node", file=self.source, field="axes")
        axis = free_axes[rng.integers(0, free_axes.size, size=N)]
        near_multi = np.stack(np.unravel_index(self._nearest_index(lab), self.shape), axis=1)  # (N, D)
        used = self._index_to_labels((near_multi * self._strides).sum(-1))
        used[np.arange(N), axis] = lab[np.arange(N), axis]
        flux = np.full((N, len(self.wave)), np.nan, dtype=np.result_type(self._flat.dtype, np.float32))
        cont = flux.copy() if (with_continuum and self._flat_cont is not None) else None
        ok = np.zeros(N, bool)
        first_bad = None
        for d in np.unique(axis):  # loop over axes (<= 5), vectorised over the spectra of each
            rows = np.flatnonzero(axis == d)
            v = self.axes[self.label_names[d]]
            n_d = len(v)
            base = (near_multi[rows] * self._strides).sum(-1) - near_multi[rows, d] * self._strides[d]
            line = base[:, None] + np.arange(n_d)[None, :] * self._strides[d]  # (n, n_d) flat node indices
            line_valid = self._flat_valid[line]
            x = lab[rows, d]
            # group rows by the validity pattern of their grid line (few patterns in practice)
            patterns, inverse = np.unique(line_valid, axis=0, return_inverse=True)
            weights = np.zeros((len(rows), n_d))
            good = np.zeros(len(rows), bool)
            for p, pat in enumerate(patterns):
                sel = np.flatnonzero(inverse.reshape(-1) == p)
                nodes = np.flatnonzero(pat)
                if nodes.size < 2:
                    continue
                xs = v[nodes]
                inside = (x[sel] >= xs[0] - 1e-9) & (x[sel] <= xs[-1] + 1e-9)
                # every valid node between the bracketing ones must exist: no gap around x
                lo_i = np.clip(np.searchsorted(v, x[sel], side="right") - 1, 0, n_d - 1)
                hi_i = np.clip(np.searchsorted(v, x[sel], side="left"), 0, n_d - 1)
                inside &= pat[lo_i] & pat[hi_i]
                if not inside.any():
                    continue
                basis = CubicSpline(xs, np.eye(nodes.size), axis=0)(x[sel[inside]])
                if nodes.size == 2:
                    basis = np.stack([(xs[1] - x[sel[inside]]) / (xs[1] - xs[0]),
                                      (x[sel[inside]] - xs[0]) / (xs[1] - xs[0])], axis=1)
                weights[np.ix_(sel[inside], nodes)] = basis
                good[sel[inside]] = True
            if not good.all() and first_bad is None:
                b = int(np.flatnonzero(~good)[0])
                lo_i = int(np.clip(np.searchsorted(v, x[b], side="right") - 1, 0, n_d - 1))
                first_bad = (rows[b], line[b, lo_i] if not line_valid[b, lo_i] else line[b, min(lo_i + 1, n_d - 1)])
            g = rows[good]
            if g.size:
                li = np.where(line_valid[good], line[good], 0)
                flux[g] = self._combine(self._flat, li, weights[good])
                if cont is not None:
                    cont[g] = self._combine(self._flat_cont, li, weights[good])
            ok[g] = True
        if not ok.all() and on_missing == "raise":
            row, node = first_bad
            self._raise_missing(node, lab[row], row)
        return Interpolated(flux=flux, labels=used, interp_param=axis, ok=ok, continuum=cont)

    # ------------------------------------------------------------------ IO
    def save(self, path, *, dtype=None) -> Path:
        """Write the pfsspec ArrayGrid/ModelGrid HDF5 layout (atomically)."""
        from specvit.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f["grid/type"] = "ArrayGrid"
            for i, (name, v) in enumerate(self.axes.items()):
                f[f"grid/axes/{i}/{name}"] = v
            cube = self._flux if dtype is None else self._flux.astype(dtype)
            f.create_dataset("grid/arrays/flux/value", data=cube, chunks=(1,) * len(self.shape) + (len(self.wave),))
            f["grid/arrays/flux/index"] = self.valid
            if self._cont is not None:
                c = self._cont if dtype is None else self._cont.astype(dtype)
                f.create_dataset("grid/arrays/cont/value", data=c, chunks=(1,) * len(self.shape) + (len(self.wave),))
                f["grid/arrays/cont/index"] = self.valid
            f["modelgrid/type"] = "ModelGrid"
            f["modelgrid/wave"] = self.wave
            if self.wave_edges is not None:
                f["modelgrid/wave_edges"] = self.wave_edges
            f["modelgrid/is_wave_vacuum"] = self.medium == "vacuum"
            f.attrs["medium"] = self.medium
            f.attrs["resolution"] = self.resolution
            f.attrs["format"] = "pfsspec ArrayGrid layout (specvit writer)"
        return path

    @classmethod
    def load(cls, path, *, wave_range_A: tuple[float, float] | None = None, label_bounds: dict | None = None,
             interpolation: Mode = "linear", medium: str | None = None, resolution: float | None = None,
             dtype=np.float32, pad_nodes: int = 1) -> "RegularGrid":
        """Read a pfsspec grid file, optionally only a wavelength range and a label box (saves memory).

        ``label_bounds`` keeps the nodes bracketing each box plus ``pad_nodes`` more on each side. A
        spline runs through the nodes that were read, so near the box edges it can differ slightly
        from a spline over the whole grid line; read the whole grid for exact equivalence.
        """
        path = Path(path)
        if not path.exists():
            raise InputError("grid file not found", file=path)
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise InputError(f"cannot open as HDF5 (truncated or corrupt?): {e}", file=path) from None
        with f:
            axes = _read_axes(f, path)
            wave = None
            for key in ("modelgrid/wave", "grid/wave", "wave"):
                if key in f:
                    wave = np.asarray(f[key][()], dtype=np.float64)
                    break
            if wave is None:
                raise InputError("missing wavelength array", file=path, field="modelgrid/wave")
            if "grid/arrays/flux/value" not in f:
                raise InputError("missing flux cube", file=path, field="grid/arrays/flux/value")
            ds = f["grid/arrays/flux/value"]
            shape = tuple(len(v) for v in axes.values())
            if ds.shape != shape + (len(wave),):
                raise InputError(f"flux cube shape {ds.shape} does not match axes {shape} + wave ({len(wave)},)",
                                 file=path, field="grid/arrays/flux/value", value=ds.shape)
            wsl = slice(None)
            if wave_range_A is not None:
                lo, hi = wave_range_A
                i0 = int(np.searchsorted(wave, lo, side="left"))
                i1 = int(np.searchsorted(wave, hi, side="right"))
                if i1 - i0 < 2:
                    raise InputError("wavelength range selects fewer than 2 samples", file=path,
                                     field="wave_range_A", value=wave_range_A)
                wsl = slice(i0, i1)
            sel = []
            for name, v in axes.items():
                if label_bounds and name in label_bounds:
                    lo, hi = label_bounds[name]
                    i0 = int(np.searchsorted(v, lo + 1e-9, side="right")) - 1 - int(pad_nodes)
                    i1 = int(np.searchsorted(v, hi - 1e-9, side="left")) + 1 + int(pad_nodes)
                    sel.append(slice(max(i0, 0), min(max(i1, i0 + 1), len(v))))
                else:
                    sel.append(slice(None))
            axes = {k: v[s] for (k, v), s in zip(axes.items(), sel)}
            try:
                flux = _read_block(ds, tuple(sel) + (wsl,), dtype)
                cont = None
                if "grid/arrays/cont/value" in f:
                    cont = _read_block(f["grid/arrays/cont/value"], tuple(sel) + (wsl,), dtype)
                valid = f["grid/arrays/flux/index"][tuple(sel)] if "grid/arrays/flux/index" in f else None
            except (OSError, RuntimeError) as e:
                raise InputError(f"cannot read grid arrays (truncated or corrupt?): {e}", file=path,
                                 field="grid/arrays") from None
            edges = f["modelgrid/wave_edges"][()] if ("modelgrid/wave_edges" in f and wsl == slice(None)) else None
            if edges is not None and np.ndim(edges) != 1:
                edges = None
            if medium is None:
                medium = f.attrs.get("medium", None)
                if isinstance(medium, bytes):
                    medium = medium.decode()
                if medium is None:  # pfsspec's flag; wavelengths are vacuum unless it says otherwise
                    vac = f["modelgrid/is_wave_vacuum"][()] if "modelgrid/is_wave_vacuum" in f else True
                    medium = "vacuum" if bool(vac) else "air"
            if resolution is None:
                resolution = float(f.attrs.get("resolution", np.inf))
        return cls(axes=axes, wave=wave[wsl], flux=flux, continuum=cont, valid=valid, medium=medium,
                   resolution=resolution, interpolation=interpolation, wave_edges=edges, source=str(path))


def _read_block(ds: h5py.Dataset, sel: tuple, dtype) -> np.ndarray:
    """Read a hyperslab straight into a preallocated array (a plain slab read needs ~2x the memory)."""
    shape = tuple(len(range(*s.indices(n))) for s, n in zip(sel, ds.shape))
    out = np.empty(shape, dtype=dtype)
    if out.size:
        ds.read_direct(out, source_sel=sel)
    return out


def _read_axes(f: h5py.File, path) -> dict:
    if "grid/axes" not in f:
        raise InputError("missing grid axes", file=path, field="grid/axes")
    g = f["grid/axes"]
    keys = list(g.keys())
    axes = {}
    if keys and all(k.isdigit() for k in keys):  # new scheme grid/axes/<i>/<name>
        for k in sorted(keys, key=int):
            names = list(g[k].keys())
            if len(names) != 1:
                raise InputError("expected one axis per order slot", file=path, field=f"grid/axes/{k}")
            axes[names[0]] = np.asarray(g[k][names[0]][()], dtype=np.float64)
    else:  # old scheme: order not stored; use pfsspec's BOSZ order for known names, then the rest
        order = ["M_H", "Fe_H", "T_eff", "log_g", "C_M", "a_M", "O_M"]
        for k in sorted(keys, key=lambda n: order.index(n) if n in order else len(order)):
            axes[k] = np.asarray(g[k][()], dtype=np.float64)
    return axes
