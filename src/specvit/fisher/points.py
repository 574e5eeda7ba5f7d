"""Points θ_n at which the ceiling is evaluated: BOSZ-like grid nodes, a uniform design, or a file's labels."""
from __future__ import annotations

import itertools
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


def make_points(forward, kind: str, *, free: Sequence[str], n_points: int = 0,
                rng: np.random.Generator | None = None, fixed_values=None) -> np.ndarray:
    """Points for the ceiling: ``"grid"`` (BOSZ-spaced nodes), ``"uniform"`` (uniform in the box) or a file.

    ``n_points`` > 0 subsamples the grid / file without replacement (needs ``rng``)
    or sets the size of the uniform design. Labels not in ``free`` are fixed.
    """
    names = list(forward.label_names)
    free = [canonical_label(f) for f in free]
    fixed_values = fixed_values or {}
    if kind == "grid":
        pts = grid_points(forward.bounds, names, free, fixed_values=fixed_values)
    elif kind == "uniform":
        if n_points <= 0 or rng is None:
            raise InputError("a uniform design needs n_points > 0 and a seeded rng", field="n_points", value=n_points)
        pts = grid_points(forward.bounds, names, [], fixed_values=fixed_values).repeat(n_points, 0)
        for f in free:
            lo, hi = forward.bounds[f]
            pts[:, names.index(f)] = rng.uniform(lo, hi, n_points)
        return pts
    else:
        pts = points_from_file(kind, names)
    if 0 < n_points < len(pts):
        if rng is None:
            raise InputError("subsampling points needs a seeded rng", field="seed")
        pts = pts[np.sort(rng.choice(len(pts), n_points, replace=False))]
    return pts


