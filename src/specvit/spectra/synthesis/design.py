"""Space-filling label designs for the synthesis run.

A design is a CSV (``id, split, T_eff, log_g, M_H, a_M, C_M``) plus a JSON sidecar
recording how it was made. Rows come from a scrambled Sobol sequence (Owen
scrambling, :class:`scipy.stats.qmc.Sobol`, seeded), whose every prefix is itself
low-discrepancy -- the run can be cut at any point and what is done still covers
the box. T_eff is drawn uniform in theta = 5040 / T_eff (denser where spectra change
fastest, at the cool end). Training rows cover the label box widened by ``margin``
so the emulator edges are trained; every ``val_every``-th row is a held-out validation
row drawn from an independent Sobol stream strictly inside the box.

Physical domain (docs/emulator.md, "Physical domain"): with ``max_c_to_o`` (default
:data:`specvit.labels.MAX_C_TO_O` = 1) no synthesis is spent on carbon-star chemistry:
validation rows have C/O < ``max_c_to_o`` and training rows C/O < ``max_c_to_o`` times the
[C/M] margin (10**0.05 = 1.12, so the emulator's edge at C/O = 1 is trained like the box edges).
The rows are the first of the Sobol stream that satisfy it (the stream filtered, so any prefix
still covers the domain). ``max_c_to_o=None`` gives the designs made before (design_v1).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from specvit.atomic import atomic_path, write_text_atomic
from specvit.errors import InputError
from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES, MAX_C_TO_O, outside_domain

#: Training-box widening beyond DEFAULT_LABEL_BOUNDS, per label (same units).
DEFAULT_MARGIN = {"T_eff": 100.0, "log_g": 0.1, "M_H": 0.1, "a_M": 0.05, "C_M": 0.05}


def training_box(margin: dict | None = None) -> dict:
    """``DEFAULT_LABEL_BOUNDS`` widened by ``margin`` (default ``DEFAULT_MARGIN``; ``{}`` = the label box)."""
    margin = DEFAULT_MARGIN if margin is None else margin
    return {k: (lo - margin.get(k, 0.0), hi + margin.get(k, 0.0)) for k, (lo, hi) in DEFAULT_LABEL_BOUNDS.items()}


def _sobol(n: int, bounds: dict, seed: int) -> np.ndarray:
    from scipy.stats import qmc

    m = max(int(np.ceil(np.log2(max(n, 1)))), 0)
    gen = np.random.default_rng(seed)
    try:
        sobol = qmc.Sobol(d=len(LABEL_NAMES), scramble=True, rng=gen)
    except TypeError:  # scipy < 1.15 names the argument ``seed`` (same stream for a Generator)
        sobol = qmc.Sobol(d=len(LABEL_NAMES), scramble=True, seed=gen)
    u = sobol.random_base2(m)[:n]
    out = np.empty_like(u)
    for j, name in enumerate(LABEL_NAMES):
        lo, hi = bounds[name]
        if name == "T_eff":  # uniform in theta = 5040/T
            th_lo, th_hi = 5040.0 / hi, 5040.0 / lo
            out[:, j] = 5040.0 / (th_lo + u[:, j] * (th_hi - th_lo))
        else:
            out[:, j] = lo + u[:, j] * (hi - lo)
    return out


def sobol_in_domain(n: int, bounds: dict, seed: int, *, max_c_to_o: float | None = MAX_C_TO_O) -> np.ndarray:
    """The first ``n`` points of the scrambled Sobol stream of :func:`_sobol` over ``bounds`` with
    C/O < ``max_c_to_o`` (:func:`specvit.labels.outside_domain`; None: the plain stream)."""
    if max_c_to_o is None or n == 0:
        return _sobol(n, bounds, seed)
    m = max(2 * n, 16)
    for _ in range(30):
        pts = _sobol(m, bounds, seed)  # the same stream, longer: its first points are unchanged
        pts = pts[~outside_domain(pts, LABEL_NAMES, max_c_to_o=max_c_to_o)]
        if len(pts) >= n:
            return pts[:n]
        m *= 2
    raise InputError("the label box lies (almost) entirely at C/O >= max_c_to_o", field="max_c_to_o",
                     value=max_c_to_o)


def make_design(n_total: int, *, seed: int, val_every: int = 10, margin: dict | None = None,
                bounds: dict | None = None, prefix: str = "v1",
                max_c_to_o: float | None = MAX_C_TO_O) -> pd.DataFrame:
    """``n_total`` rows; row i is validation when ``i % val_every == val_every - 1``.

    ``max_c_to_o``: validation rows at C/O < max_c_to_o, training rows at C/O < max_c_to_o * 10**margin["C_M"]
    (None: no C/O limit, the behaviour before 2026-12-07).
    """
    if n_total < 1 or val_every < 2:
        raise InputError("need n_total >= 1 and val_every >= 2", field="n_total/val_every", value=(n_total, val_every))
    bounds = dict(bounds or DEFAULT_LABEL_BOUNDS)
    margin = dict(DEFAULT_MARGIN if margin is None else margin)
    wide = {k: (lo - margin.get(k, 0.0), hi + margin.get(k, 0.0)) for k, (lo, hi) in bounds.items()}
    is_val = (np.arange(n_total) % val_every) == val_every - 1
    n_val = int(is_val.sum())
    wide_c_to_o = None if max_c_to_o is None else max_c_to_o * 10.0 ** margin.get("C_M", 0.0)
    train = sobol_in_domain(n_total - n_val, wide, seed, max_c_to_o=wide_c_to_o)
    val = sobol_in_domain(n_val, bounds, seed + 1, max_c_to_o=max_c_to_o) if n_val \
        else np.empty((0, len(LABEL_NAMES)))
    labels = np.empty((n_total, len(LABEL_NAMES)))
    labels[~is_val] = train
    labels[is_val] = val
    df = pd.DataFrame(np.round(labels, 4), columns=list(LABEL_NAMES))
    df.insert(0, "split", np.where(is_val, "val", "train"))
    df.insert(0, "id", [f"{prefix}-{i:05d}" for i in range(n_total)])
    df.attrs.update(seed=seed, val_every=val_every, bounds=bounds, margin=margin, method="scrambled Sobol",
                    max_c_to_o=max_c_to_o, max_c_to_o_train=wide_c_to_o)
    return df


def write_design(df: pd.DataFrame, path) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    info = {"n": len(df), "columns": list(df.columns), **{k: v for k, v in df.attrs.items()},
            "t_eff_sampling": "uniform in theta = 5040 / T_eff"}
    write_text_atomic(path.with_suffix(".json"), json.dumps(info, indent=2))


def read_design(path) -> pd.DataFrame:
    """Read and check a design CSV (unique ``id``; finite labels; columns ``LABEL_NAMES``)."""
    path = Path(path)
    if not path.exists():
        raise InputError("design file not found", file=path)
    df = pd.read_csv(path)
    for col in ("id", *LABEL_NAMES):
        if col not in df.columns:
            raise InputError("design misses a column", file=path, field=col)
    if "split" not in df.columns:
        df["split"] = "train"
    if df["id"].duplicated().any():
        raise InputError("duplicate id in design", file=path, field="id", value=str(df["id"][df["id"].duplicated()].iloc[0]))
    arr = df[list(LABEL_NAMES)].to_numpy(dtype=float)
    if not np.all(np.isfinite(arr)):
        i, j = np.argwhere(~np.isfinite(arr))[0]
        raise InputError(f"non-finite label in row {i}", file=path, field=LABEL_NAMES[j], value=arr[i, j])
    df["id"] = df["id"].astype(str)
    return df
