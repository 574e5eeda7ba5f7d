"""Evaluation metrics for label predictions: R², MAE, RMSE, bias, per-SNR-bin R² with
bootstrap bands, residual trends against every label, and calibration of predicted
uncertainties.

All metrics are computed over the WHOLE evaluation set. The paper's code averaged R²
over mini-batches; the mean of per-batch R² is not R² (each batch has its own label
variance in the denominator), and it is biased low for small batches.

Prediction tables follow one column convention (used by every baseline and by
``specvit predict``)::

    id, snr, <label>_true, <label>_pred[, <label>_sigma]

``<label>_sigma`` is an optional 1-sigma predicted uncertainty in label units.

References: coefficient of determination R² = 1 - SS_res / SS_tot (e.g. Kvålseth 1985,
The American Statistician 39, 279); percentile bootstrap (Efron & Tibshirani 1993).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from specvit.errors import InputError
from specvit.labels import LABEL_NAMES
from specvit.snr_bins import SNR_BIN_EDGES, snr_bin_labels

TRUE_FMT = "{}_true"
PRED_FMT = "{}_pred"
SIGMA_FMT = "{}_sigma"

#: The one definition of "68 %" and "95 %" coverage of a Gaussian 1-sigma in specvit: the fraction of
#: |pred − true| / sigma <= k, with k = 1 (the 68.27 % interval) and k = 1.96 (the conventional central
#: 95 % interval). Every module that reports 68/95 % coverage of predicted sigmas takes k from here
#: (:func:`coverage_fraction`): scores, the sigma calibration, the uncertainty report.
COVERAGE_Z = {"68": 1.0, "95": 1.959963984540054}
#: The nominal probabilities of those intervals under a Gaussian (0.6827, 0.95).
COVERAGE_NOMINAL = {k: math.erf(v / math.sqrt(2.0)) for k, v in COVERAGE_Z.items()}


# --------------------------------------------------------------------------- helpers
def _as_pair(y_true, y_pred, *, field="y") -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise InputError("true and predicted values differ in shape", field=field, value=(t.shape, p.shape))
    if t.ndim not in (1, 2):
        raise InputError("values must be 1-D (N,) or 2-D (N, L)", field=field, value=t.shape)
    for name, a in (("true", t), ("pred", p)):
        bad = ~np.isfinite(a)
        if bad.any():
            where = tuple(np.argwhere(bad)[0])
            raise InputError(f"non-finite {name} value in row {where[0]}", field=field, value=float(a[where]))
    return t, p


def _num(x) -> float | None:
    """JSON-safe float: NaN/inf become None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- point metrics
def r2_score(y_true, y_pred) -> np.ndarray | float:
    """Coefficient of determination over the whole set, per column.

    R² = 1 - Σ(y - ŷ)² / Σ(y - ȳ)². Perfect prediction gives 1, predicting the mean
    of the set gives 0. NaN when the set has fewer than 2 rows or constant truth.
    Accepts (N,) → float, or (N, L) → (L,) array.
    """
    t, p = _as_pair(y_true, y_pred)
    ss_res = np.sum((t - p) ** 2, axis=0)
    ss_tot = np.sum((t - t.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where((ss_tot > 0) & (len(t) >= 2), 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)
    return float(r2) if t.ndim == 1 else r2


def batch_averaged_r2(y_true, y_pred, batch_size: int) -> float:
    """The paper's (wrong) metric: the mean of R² computed per consecutive batch.

    Kept only to show, in tests and docs, how it differs from :func:`r2_score`.
    """
    t, p = _as_pair(y_true, y_pred)
    vals = [r2_score(t[i:i + batch_size], p[i:i + batch_size]) for i in range(0, len(t), batch_size)]
    return float(np.nanmean(vals))


def regression_metrics(y_true, y_pred) -> dict:
    """R², MAE, RMSE, bias (mean of pred − true) and median absolute error, in label units, for 1-D inputs."""
    t, p = _as_pair(y_true, y_pred)
    n = len(t)
    if n == 0:
        return {"n": 0, "r2": None, "mae": None, "rmse": None, "bias": None, "median_abs_error": None}
    d = p - t
    return {
        "n": int(n),
        "r2": _num(r2_score(t, p)),
        "mae": _num(np.mean(np.abs(d))),
        "rmse": _num(np.sqrt(np.mean(d**2))),
        "bias": _num(np.mean(d)),
        "median_abs_error": _num(np.median(np.abs(d))),
    }


# --------------------------------------------------------------------------- bootstrap
def _resample_blocks(rng: np.random.Generator, n: int, n_resamples: int, max_elements: int):
    """Row indices of ``n_resamples`` bootstrap resamples of ``n`` rows, in (b, n) blocks of at most
    ``max_elements`` indices (bounded memory; the same draws whatever the block size)."""
    per_block = max(1, max_elements // n)
    for start in range(0, n_resamples, per_block):
        yield rng.integers(0, n, size=(min(per_block, n_resamples - start), n))


def bootstrap_r2(
    y_true, y_pred, rng: np.random.Generator, *, n_resamples: int = 200, band: tuple[float, float] = (10.0, 90.0),
    max_elements: int = 4_000_000,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap band of R² (resampling rows with replacement).

    Vectorised over resamples (in blocks of at most ``max_elements`` indices to bound
    memory). Returns (low, high) percentiles; (None, None) if fewer than 2 rows.
    """
    t, p = _as_pair(y_true, y_pred)
    n = len(t)
    if n < 2 or n_resamples < 1:
        return None, None
    if not isinstance(rng, np.random.Generator):
        raise InputError("a seeded numpy.random.Generator is required for the bootstrap", field="rng", value=type(rng).__name__)
    r2s = []
    for idx in _resample_blocks(rng, n, n_resamples, max_elements):
        tt, pp = t[idx], p[idx]
        ss_res = np.sum((tt - pp) ** 2, axis=1)
        ss_tot = np.sum((tt - tt.mean(axis=1, keepdims=True)) ** 2, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2s.append(np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan))
    r2s = np.concatenate(r2s)
    r2s = r2s[np.isfinite(r2s)]
    if len(r2s) == 0:
        return None, None
    lo, hi = np.percentile(r2s, band)
    return _num(lo), _num(hi)


def bootstrap_r2_difference(
    y_true, pred_a, pred_b, rng: np.random.Generator, *, n_resamples: int = 2000,
    band: tuple[float, float] = (10.0, 90.0),
) -> dict:
    """Paired bootstrap of R²(a) − R²(b) for two estimators scored on the SAME rows.

    Each resample draws one set of rows and scores both estimators on it, so the test-set noise that
    both share cancels; the band is that of the difference (narrower than comparing two separate
    bands). Returns ``{"diff", "lo", "hi", "band", "frac_not_above_0", "n", "n_resamples"}``:
    ``frac_not_above_0`` is the fraction of resamples with R²(a) − R²(b) <= 0 (a one-sided bootstrap
    p-value for "a is better than b"). Only the test rows are resampled: the spread of training
    (seed, data order) is not in it.
    """
    t, pa = _as_pair(y_true, pred_a)
    _, pb = _as_pair(y_true, pred_b)
    if t.ndim != 1:
        raise InputError("the paired bootstrap takes one label: 1-D values", field="y_true", value=t.shape)
    n = len(t)
    if n < 2 or n_resamples < 1:
        raise InputError("a paired bootstrap needs at least 2 rows and 1 resample", field="n_rows", value=n)
    if not isinstance(rng, np.random.Generator):
        raise InputError("a seeded numpy.random.Generator is required for the bootstrap", field="rng", value=type(rng).__name__)
    diffs = []
    for idx in _resample_blocks(rng, n, n_resamples, 4_000_000):
        tt = t[idx]
        ss_tot = np.sum((tt - tt.mean(axis=1, keepdims=True)) ** 2, axis=1)
        d = (np.sum((tt - pb[idx]) ** 2, axis=1) - np.sum((tt - pa[idx]) ** 2, axis=1))
        with np.errstate(divide="ignore", invalid="ignore"):
            diffs.append(np.where(ss_tot > 0, d / np.where(ss_tot > 0, ss_tot, 1.0), np.nan))
    diffs = np.concatenate(diffs)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        raise InputError("every resample had zero label variance", field="y_true", value=float(t[0]))
    lo, hi = np.percentile(diffs, band)
    return {"diff": _num(r2_score(t, pa) - r2_score(t, pb)), "lo": _num(lo), "hi": _num(hi), "band": list(band),
            "frac_not_above_0": _num(np.mean(diffs <= 0)), "n": int(n), "n_resamples": int(len(diffs))}


# --------------------------------------------------------------------------- per SNR bin
def per_snr_bin(
    y_true, y_pred, snr, rng: np.random.Generator, *, edges: Sequence[float] = SNR_BIN_EDGES,
    n_resamples: int = 200, band: tuple[float, float] = (10.0, 90.0),
) -> list[dict]:
    """Metrics in each per-spectrum SNR bin ``[edges[i], edges[i+1])``, with a bootstrap R² band.

    Every bin is reported; an empty bin has ``n = 0`` and ``None`` metrics (no crash, no NaN).
    """
    t, p = _as_pair(y_true, y_pred)
    s = np.asarray(snr, dtype=np.float64).reshape(-1)
    if s.shape != (len(t),):
        raise InputError("snr must have one value per row", field="snr", value=s.shape)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise InputError("SNR bin edges must be increasing, at least two", field="edges", value=edges.tolist())
    idx = np.searchsorted(edges, s, side="right") - 1
    idx[(s < edges[0]) | (s >= edges[-1]) | ~np.isfinite(s)] = -1
    out = []
    for i, name in enumerate(snr_bin_labels(edges)):
        m = idx == i
        row = {"bin": name, "snr_lo": float(edges[i]), "snr_hi": float(edges[i + 1])}
        row.update(regression_metrics(t[m], p[m]))
        row["snr_median"] = _num(np.median(s[m])) if m.any() else None
        lo, hi = bootstrap_r2(t[m], p[m], rng, n_resamples=n_resamples, band=band)
        row["r2_lo"], row["r2_hi"] = lo, hi
        out.append(row)
    return out


# --------------------------------------------------------------------------- residual trends
def binned_residuals(x, residual, *, n_bins: int = 10, percentiles=(10.0, 50.0, 90.0)) -> dict:
    """Residual percentiles in bins of ``x`` (equal-count bins from the quantiles of x).

    Used to show residual trends against every label (and SNR). Returns JSON-ready lists:
    ``x_lo, x_hi, x_median, n, p10, p50, p90`` (keys named after ``percentiles``).
    When ``x`` takes few distinct values (grid-node labels), bins are the distinct values.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    r = np.asarray(residual, dtype=np.float64).reshape(-1)
    if x.shape != r.shape:
        raise InputError("x and residual differ in length", field="x", value=(x.shape, r.shape))
    keys = [f"p{q:g}" for q in percentiles]
    out = {"x_lo": [], "x_hi": [], "x_median": [], "n": [], **{k: [] for k in keys}}
    if len(x) == 0:
        return out
    uniq = np.unique(x)
    if len(uniq) <= n_bins:
        codes = np.searchsorted(uniq, x)
        lo_hi = [(u, u) for u in uniq]
    else:
        edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)))
        codes = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
        lo_hi = list(zip(edges[:-1], edges[1:]))
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(lo_hi))
    groups = np.split(order, np.cumsum(counts)[:-1])
    for (lo, hi), g in zip(lo_hi, groups):
        out["x_lo"].append(_num(lo))
        out["x_hi"].append(_num(hi))
        out["n"].append(int(len(g)))
        if len(g) == 0:
            out["x_median"].append(None)
            for k in keys:
                out[k].append(None)
            continue
        out["x_median"].append(_num(np.median(x[g])))
        for k, v in zip(keys, np.percentile(r[g], percentiles)):
            out[k].append(_num(v))
    return out


# --------------------------------------------------------------------------- calibration
def coverage_fraction(z, level: str, axis=None):
    """Fraction of standardized residuals z = (pred − true) / sigma with |z| <= COVERAGE_Z[level] ("68" or "95").

    NaN z count as outside. ``axis``: as numpy's mean (e.g. 0 for one fraction per column of an (N, L) array).
    """
    if level not in COVERAGE_Z:
        raise InputError("coverage level must be '68' or '95'", field="level", value=level)
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.mean(np.abs(z) <= COVERAGE_Z[level], axis=axis)


def calibration(y_true, y_pred, sigma) -> dict:
    """How well predicted 1-sigma uncertainties describe the actual errors.

    z = (pred − true) / sigma. For correctly specified Gaussian errors: z_mean ≈ 0,
    z_std ≈ 1, coverage of |z| <= 1 ≈ 0.683 and of |z| <= 1.96 ≈ 0.95 (:func:`coverage_fraction`).
    """
    t, p = _as_pair(y_true, y_pred)
    s = np.asarray(sigma, dtype=np.float64)
    if s.shape != t.shape:
        raise InputError("sigma must have one value per prediction", field="sigma", value=s.shape)
    bad = ~(np.isfinite(s) & (s > 0))
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        raise InputError(f"predicted uncertainty must be finite and > 0 (row {i})", field="sigma", value=float(s[i]))
    if len(t) == 0:
        return {"n": 0, "z_mean": None, "z_std": None, "coverage_68": None, "coverage_95": None, "sigma_median": None}
    z = (p - t) / s
    return {
        "n": int(len(z)),
        "z_mean": _num(z.mean()),
        "z_std": _num(z.std(ddof=1)) if len(z) > 1 else None,
        "coverage_68": _num(coverage_fraction(z, "68")),
        "coverage_95": _num(coverage_fraction(z, "95")),
        "sigma_median": _num(np.median(s)),
    }


def calibration_per_snr_bin(y_true, y_pred, sigma, snr, *, edges: Sequence[float] = SNR_BIN_EDGES) -> list[dict]:
    """:func:`calibration` in each SNR bin (empty bins reported with n = 0)."""
    t, p = _as_pair(y_true, y_pred)
    s = np.asarray(sigma, dtype=np.float64)
    snr = np.asarray(snr, dtype=np.float64).reshape(-1)
    edges = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(edges, snr, side="right") - 1
    idx[(snr < edges[0]) | (snr >= edges[-1]) | ~np.isfinite(snr)] = -1
    out = []
    for i, name in enumerate(snr_bin_labels(edges)):
        m = idx == i
        row = {"bin": name, "snr_lo": float(edges[i]), "snr_hi": float(edges[i + 1])}
        row.update(calibration(t[m], p[m], s[m]))
        out.append(row)
    return out


# --------------------------------------------------------------------------- one call
def _column(df, name: str, *, what: str) -> np.ndarray:
    if name not in df.columns:
        raise InputError(f"prediction table has no {what} column (columns: {', '.join(map(str, df.columns))})", field=name)
    return df[name].to_numpy(dtype=np.float64)


def evaluate_predictions(
    df,
    label_names: Iterable[str],
    snr_col: str | None = "snr",
    rng: np.random.Generator | int = 0,
    *,
    edges: Sequence[float] = SNR_BIN_EDGES,
    n_resamples: int = 200,
    band: tuple[float, float] = (10.0, 90.0),
    n_residual_bins: int = 10,
    true_fmt: str = TRUE_FMT,
    pred_fmt: str = PRED_FMT,
    sigma_fmt: str = SIGMA_FMT,
) -> dict:
    """Every metric for a prediction table, as a JSON-ready dict.

    Parameters
    ----------
    df : pandas.DataFrame with ``<label>_true`` and ``<label>_pred`` for each label in
        ``label_names`` (optionally ``<label>_sigma``) and an SNR column ``snr_col``
        (per-spectrum median flux/error; ``None`` to skip the per-bin metrics).
    rng : a seeded ``numpy.random.Generator`` for the bootstrap, or an int seed
        (recorded in the output as ``bootstrap_seed``).

    Returns ``{"n", "snr_bin_edges", "bootstrap", "labels": {label: {"overall",
    "snr_bins", "residuals", "calibration", "calibration_snr_bins"}}}``. Residuals
    (pred − true) are binned against every true label column present in ``df`` and SNR.
    """
    label_names = list(label_names)
    if not label_names:
        raise InputError("no label names given", field="label_names")
    seed = None
    if not isinstance(rng, np.random.Generator):
        if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
            seed = int(rng)
            rng = np.random.default_rng(seed)
        else:
            raise InputError("rng must be a numpy.random.Generator or an int seed", field="rng", value=repr(rng))
    snr = _column(df, snr_col, what="SNR") if snr_col is not None else None
    against = {n: _column(df, true_fmt.format(n), what="true label")
               for n in LABEL_NAMES if true_fmt.format(n) in df.columns}
    if snr is not None:
        against["snr"] = snr
    result = {
        "n": int(len(df)),
        "snr_bin_edges": [float(e) for e in edges] if snr is not None else None,
        "bootstrap": {"n_resamples": int(n_resamples), "band_percentiles": [float(b) for b in band],
                      "seed": seed if seed is not None else "numpy Generator passed by the caller"},
        "labels": {},
    }
    for name in label_names:
        t = _column(df, true_fmt.format(name), what="true label")
        p = _column(df, pred_fmt.format(name), what="predicted label")
        t, p = _as_pair(t, p, field=name)
        entry = {"overall": regression_metrics(t, p)}
        lo, hi = bootstrap_r2(t, p, rng, n_resamples=n_resamples, band=band)
        entry["overall"]["r2_lo"], entry["overall"]["r2_hi"] = lo, hi
        entry["snr_bins"] = (per_snr_bin(t, p, snr, rng, edges=edges, n_resamples=n_resamples, band=band)
                             if snr is not None else None)
        resid = p - t
        entry["residuals"] = {k: binned_residuals(x, resid, n_bins=n_residual_bins) for k, x in against.items()}
        sig_col = sigma_fmt.format(name)
        if sig_col in df.columns:
            s = df[sig_col].to_numpy(dtype=np.float64)
            entry["calibration"] = calibration(t, p, s)
            entry["calibration_snr_bins"] = (calibration_per_snr_bin(t, p, s, snr, edges=edges)
                                             if snr is not None else None)
        else:
            entry["calibration"] = None
            entry["calibration_snr_bins"] = None
        result["labels"][name] = entry
    return result


def summary_table(metrics: dict):
    """One row per (label, SNR bin) from :func:`evaluate_predictions` output, as a DataFrame."""
    import pandas as pd

    rows = []
    for name, entry in metrics["labels"].items():
        rows.append({"label": name, "bin": "all", **{k: v for k, v in entry["overall"].items()}})
        for b in entry["snr_bins"] or []:
            rows.append({"label": name, **b})
    return pd.DataFrame(rows)
