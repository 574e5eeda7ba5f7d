"""Points θ_n at which the ceiling is evaluated: BOSZ-like grid nodes, a uniform design, or a file's labels."""
from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from specvit.errors import InputError
from specvit.labels import canonical_label
from specvit.spectra.bosz import BOSZ_STEPS


def grid_points(bounds: dict, label_names: Sequence[str], free: Sequence[str], *, steps=None,
                fixed_values=None) -> np.ndarray:
    """Nodes of a regular grid over the box for the ``free`` labels (others at ``fixed_values``, default 0).

    With the BOSZ spacing and the default box this is the paper's node set
    (3D: 10 × 9 × 14 = 1,260 nodes; 5D: 30,240).
    """
    steps = {**BOSZ_STEPS, **(steps or {})}
    fixed_values = fixed_values or {}
    axes = []
    for name in label_names:
        lo, hi = bounds[name]
        if name in free:
            k = int(np.floor((hi - lo) / steps[name] + 1e-9))
            axes.append(lo + steps[name] * np.arange(k + 1))
        else:
            axes.append(np.array([float(np.clip(fixed_values.get(name, 0.0), lo, hi))]))
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


def points_from_file(path, label_names: Sequence[str]) -> np.ndarray:
    """Labels from a dataset (pfsspec HDF5: ``dataset/params``) or a CSV with the label columns."""
    path = Path(path)
    if not path.exists():
        raise InputError("points file not found", file=path, field="points")
    if path.suffix in (".csv", ".txt"):
        import pandas as pd

        df = pd.read_csv(path)
    else:
        from specvit.data.pfsspec import read_params

        df = read_params(path)
    missing = [n for n in label_names if n not in df.columns]
    if missing:
        raise InputError(f"label column missing (has {list(df.columns)})", file=path, field=missing[0])
    arr = df[list(label_names)].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        i, j = np.argwhere(~np.isfinite(arr))[0]
        raise InputError(f"non-finite label in row {i}", file=path, field=label_names[j], value=float(arr[i, j]))
    return arr


def drop_outside_domain(forward, pts: np.ndarray, *, what: str = "points") -> np.ndarray:
    """``pts`` without the rows outside the model's joint domain (the emulator: C/O >= 1,
    :func:`specvit.labels.outside_domain`); warns with the count of dropped rows."""
    if not hasattr(forward, "outside_domain") or len(pts) == 0:
        return pts
    bad = np.asarray(forward.outside_domain(pts), dtype=bool)
    if bad.any():
        warnings.warn(f"{int(bad.sum())} of {len(pts)} {what} outside the spectral model's domain "
                      "(C/O >= 1, docs/emulator.md 'Physical domain') dropped", stacklevel=3)
    return pts[~bad]


def make_points(forward, kind: str, *, free: Sequence[str], n_points: int = 0,
                rng: np.random.Generator | None = None, fixed_values=None) -> np.ndarray:
    """Points for the ceiling: ``"grid"`` (BOSZ-spaced nodes), ``"uniform"`` (uniform in the box) or a file.

    ``n_points`` > 0 subsamples the grid / file without replacement (needs ``rng``)
    or sets the size of the uniform design. Labels not in ``free`` are fixed.
    Points outside the model's joint domain (C/O >= 1 for the emulator) are left out: grid and file
    points are dropped (with a warning giving the count; 5D BOSZ grid: 3,780 of 30,240 nodes), uniform
    points are redrawn until ``n_points`` lie inside (deterministic for the ``rng``).
    """
    names = list(forward.label_names)
    free = [canonical_label(f) for f in free]
    fixed_values = fixed_values or {}
    if kind == "grid":
        pts = drop_outside_domain(forward, grid_points(forward.bounds, names, free, fixed_values=fixed_values),
                                  what="grid nodes")
    elif kind == "uniform":
        if n_points <= 0 or rng is None:
            raise InputError("a uniform design needs n_points > 0 and a seeded rng", field="n_points", value=n_points)
        base = grid_points(forward.bounds, names, [], fixed_values=fixed_values)
        if hasattr(forward, "outside_domain") and forward.outside_domain(base).any() and \
                not {"a_M", "C_M"} & set(free):
            raise InputError("the fixed labels lie outside the spectral model's domain (C/O >= 1)",
                             field="fixed_values", value=dict(fixed_values))
        out, filled = np.empty((n_points, len(names))), 0
        for _ in range(1000):
            m = n_points - filled
            if m == 0:
                break
            pts = base.repeat(m, 0)
            for f in free:
                lo, hi = forward.bounds[f]
                pts[:, names.index(f)] = rng.uniform(lo, hi, m)
            if hasattr(forward, "outside_domain"):
                pts = pts[~np.asarray(forward.outside_domain(pts), dtype=bool)]
            out[filled:filled + len(pts)] = pts
            filled += len(pts)
        return out[:filled]
    else:
        pts = drop_outside_domain(forward, points_from_file(kind, names), what=f"points of {kind}")
    if 0 < n_points < len(pts):
        if rng is None:
            raise InputError("subsampling points needs a seeded rng", field="seed")
        pts = pts[np.sort(rng.choice(len(pts), n_points, replace=False))]
    return pts


