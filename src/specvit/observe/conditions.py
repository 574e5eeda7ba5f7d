"""Per-spectrum observing conditions: drawing them, the calibration setup, and checking them.

A conditions table is a :class:`pandas.DataFrame` with the pfsspec column names
of :data:`specvit.observe.config.CONDITION_COLUMNS`, one row per spectrum.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from specvit.errors import InputError
from specvit.observe.config import _CFG_TO_COLUMN, CONDITION_COLUMNS, ObservingConfig

#: The SNR-calibration setup of the paper (SPEC section 3): 4 x 900 s, seeing 1.0",
#: zenith 22.5 deg, field angle 0.325 deg, new moon.
CALIBRATION_SETUP: dict[str, float] = {
    "redshift": 0.0,
    "exp_count": 4,
    "exp_time": 900.0,
    "seeing": 1.0,
    "ext": 0.0,
    "target_zenith_angle": 22.5,
    "target_field_angle": 0.325,
    "moon_zenith_angle": 90.0,
    "moon_target_angle": 60.0,
    "moon_phase": 0.0,
}

#: Magnitudes of the paper's SNR table.
CALIBRATION_MAGS: tuple[float, ...] = (18.0, 20.0, 21.5, 22.0, 22.5, 23.0)

#: Valid range of each column (inclusive).
_VALID = {
    "mag": (-5.0, 40.0),
    "redshift": (-0.1, 0.1),
    "exp_count": (1, 10_000),
    "exp_time": (1e-3, 1e6),
    "seeing": (0.05, 10.0),
    "ext": (0.0, 10.0),
    "target_zenith_angle": (0.0, 89.0),
    "target_field_angle": (0.0, 5.0),
    "moon_zenith_angle": (0.0, 180.0),
    "moon_target_angle": (0.0, 180.0),
    "moon_phase": (0.0, 1.0),
}


def draw_conditions(cfg: ObservingConfig, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draw ``n`` rows of observing conditions from ``cfg`` with the generator ``rng``.

    Every column is drawn (fixed columns too, as a constant), in the column order
    of :data:`CONDITION_COLUMNS`, so the stream of random numbers does not depend
    on which columns are fixed.
    """
    if not isinstance(rng, np.random.Generator):
        raise InputError("rng must be a numpy.random.Generator", field="rng", value=type(rng).__name__)
    n = int(n)
    ranges = cfg.ranges()
    col_to_cfg = {v: k for k, v in _CFG_TO_COLUMN.items()}
    out = {}
    for col in CONDITION_COLUMNS:
        lo, hi = ranges[col_to_cfg[col]]
        u = rng.random(n)
        if col == "exp_count":
            out[col] = np.floor(lo + u * (hi - lo + 1)).clip(lo, hi).astype(np.int64)
        else:
            out[col] = lo + u * (hi - lo)
    df = pd.DataFrame(out)
    check_conditions(df, source="ObservingConfig")
    return df


def calibration_conditions(mags=CALIBRATION_MAGS, n: int = 1) -> pd.DataFrame:
    """The calibration setup (:data:`CALIBRATION_SETUP`), ``n`` rows per magnitude, in the order of ``mags``."""
    mags = np.atleast_1d(np.asarray(mags, dtype=float))
    df = pd.DataFrame({"mag": np.repeat(mags, int(n))})
    for k, v in CALIBRATION_SETUP.items():
        df[k] = v
    df["exp_count"] = df["exp_count"].astype(np.int64)
    return df[list(CONDITION_COLUMNS)]


def check_conditions(df, n: int | None = None, *, source=None) -> pd.DataFrame:
    """Return ``df`` as a DataFrame with all columns (missing ones: error), checked for NaN and range."""
    if isinstance(df, dict):
        df = pd.DataFrame(df)
    if not isinstance(df, pd.DataFrame):
        raise InputError("conditions must be a pandas DataFrame (or dict of columns)", file=source,
                         field="conditions", value=type(df).__name__)
    missing = [c for c in CONDITION_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"missing observing-condition column (needs {', '.join(CONDITION_COLUMNS)})",
                         file=source, field=missing[0])
    if n is not None and len(df) != n:
        raise InputError(f"conditions have {len(df)} rows but there are {n} spectra", file=source,
                         field="conditions", value=len(df))
    for col, (lo, hi) in _VALID.items():
        v = np.asarray(df[col], dtype=float)
        bad = ~np.isfinite(v) | (v < lo) | (v > hi)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"observing condition outside [{lo}, {hi}] or not finite (row {i})",
                             file=source, field=col, value=float(v[i]))
    return df
