"""The ceiling per magnitude and per SNR bin: Fisher matrices of a point set, summarised.

Pipeline (SPEC section 7):

1. points θ_n — BOSZ-like grid nodes over the model box, a uniform design, or the
   labels of a dataset/CSV file (:func:`specvit.fisher.points.make_points`);
2. μ(θ_n) and J = ∂μ/∂θ once per point (the Jacobian does not depend on the
   magnitude: the normalisation removes the flux scale);
3. the error at every magnitude under the calibration setup (4 × 900 s, seeing 1.0″,
   zenith 22.5°, new moon) from the noise model of :mod:`specvit.observe.noise`
   (σ² = μ ν / R + B ν² / R², exactly the observer's Var = O + B);
4. I(θ_n, m) = Jᵀ Σ⁻¹ J for every (point, magnitude) and the bounds of
   :mod:`specvit.fisher.information`, summarised by median / p10 / p90.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from specvit.errors import InputError
from specvit.fisher.information import (SmoothBoxPrior, crlb_bound, fisher_from_weights, fisher_matrices,
                                        prior_weights, resolve_free, van_trees_bound)
from specvit.labels import canonical_label
from specvit.observe.forward import ForwardModel
from specvit.observe.noise import MagnitudeNoise, magnitude_errors
from specvit.snr_bins import SNR_BIN_EDGES, snr_bin_index, snr_bin_labels
from specvit.spectra.bosz import BOSZ_STEPS  # the grid spacing of the paper's nodes; also the default FD steps


# ---------------------------------------------------------------------------------------------
# information at every (magnitude, point)
# ---------------------------------------------------------------------------------------------


@dataclass
class InformationSet:
    """Fisher matrices of N points at M magnitudes (label order = ``label_names``)."""

    mags: np.ndarray  #: (M,) HSC i AB magnitudes
    points: np.ndarray  #: (N, L) labels
    info: np.ndarray  #: (M, N, L, L) Fisher matrices, 1 / (label units)²
    snr: np.ndarray  #: (M, N) median flux / error per spectrum
    median_error: np.ndarray  #: (M, N) median normalised error per spectrum
    label_names: tuple
    bounds: dict
    noise_level: float = 1.0
    n_dropped: int = 0  #: points dropped because the model flux is non-finite or <= 0 there


def _middle_pair(a: np.ndarray) -> np.ndarray:
    """The two middle order statistics along the last axis (…, 2), float64 (np.median averages them).

    Selected by numpy's vectorised sort in float32 (2-3× faster than ``np.median`` in float64
    here; relative rounding 6e-8).
    """
    p = a.shape[-1]
    a = a.astype(np.float32, copy=False)
    a.sort(axis=-1)
    return a[..., [(p - 1) // 2, p // 2]].astype(np.float64)


def compute_information(forward: ForwardModel, points, mags: Sequence[float], *, method: str = "auto", steps=None,
                        noise_level: float = 1.0, setup: dict | None = None, chunk_size: int = 64,
                        error_fn=None, reference: bool = False) -> InformationSet:
    """Fisher matrices for every point and magnitude, one Jacobian per point.

    ``error_fn(model_flux (n, n_model), mu (n, P), mags) -> (M, n, P)`` replaces the
    observer's error (e.g. a constant error for tests without an instrument).
    ``chunk_size`` points are processed at a time (64: the fastest of 16-256 measured on
    this machine, 2.2 vs 2.7 CPU-ms per point at 256).

    With an observer (and no ``error_fn``, redshift 0, no reddening) the fast route is
    used: :meth:`ForwardModel.observed_jacobian` (analytic emulator Jacobian, float32
    sparse product), :class:`MagnitudeNoise` and :func:`fisher_from_weights`.
    ``reference=True`` forces the original route (:meth:`ForwardModel.value_and_jacobian`,
    :func:`magnitude_errors` through ``PFSObserver.observe``, :func:`fisher_matrices`);
    both agree to ~1e-6 relative in the bounds (``tests/test_fisher_fast.py``).
    """
    points = np.asarray(points, dtype=np.float64)
    mags = np.atleast_1d(np.asarray(mags, dtype=np.float64))
    if points.ndim != 2 or points.shape[1] != len(forward.label_names) or len(points) == 0:
        raise InputError(f"points must have shape (N>0, {len(forward.label_names)})", field="points",
                         value=points.shape)
    if forward.observer is None and error_fn is None:
        raise InputError("the ceiling needs an observer (or an explicit error_fn)", field="observer")
    if not noise_level > 0:
        raise InputError("noise_level must be > 0", field="noise_level", value=noise_level)
    if method == "fd" and steps is None:
        steps = [BOSZ_STEPS.get(n, 0.1) for n in forward.label_names]
    if not reference and error_fn is None and MagnitudeNoise.applies(setup):
        return _compute_information_fast(forward, points, mags, method=method, steps=steps, noise_level=noise_level,
                                         setup=setup, chunk_size=chunk_size)
    # like invalid BOSZ nodes (SPEC section 2), points where the model gives non-finite or non-positive
    # flux are dropped (and counted) instead of failing the whole run
    valid = np.concatenate([_valid_flux(forward.model_flux(points[s:s + chunk_size]))
                            for s in range(0, len(points), chunk_size)])
    points = _drop_invalid(points, valid)
    n_dropped = int((~valid).sum())
    m, n_lab = len(mags), points.shape[1]
    info = np.empty((m, len(points), n_lab, n_lab))
    snr = np.empty((m, len(points)))
    med_err = np.empty((m, len(points)))
    for s in range(0, len(points), chunk_size):
        sl = slice(s, s + chunk_size)
        pts = points[sl]
        mu, jac, flux = forward.value_and_jacobian(pts, method=method, steps=steps, return_model_flux=True)
        if error_fn is not None:
            err = np.asarray(error_fn(flux, mu, mags), dtype=np.float64)
        else:
            mu, err = magnitude_errors(forward.observer, flux, mags, setup)
        info[:, sl] = fisher_matrices(jac, err, noise_level=noise_level)
        snr[:, sl] = np.median(mu[None] / (noise_level * err), axis=2)
        med_err[:, sl] = np.median(noise_level * err, axis=2)
    return InformationSet(mags=mags, points=points, info=info, snr=snr, median_error=med_err,
                          label_names=tuple(forward.label_names), bounds=dict(forward.bounds), noise_level=noise_level,
                          n_dropped=n_dropped)


def _drop_invalid(points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    n_dropped = int((~valid).sum())
    if n_dropped:
        warnings.warn(f"{n_dropped} of {len(points)} points dropped: the model flux is non-finite or <= 0 there "
                      f"(first: {points[~valid][0].tolist()})", stacklevel=3)
        points = points[valid]
        if len(points) == 0:
            raise InputError("the model gives no valid spectrum at any point", field="points", value=n_dropped)
    return points


def _compute_information_fast(forward, points, mags, *, method, steps, noise_level, setup, chunk_size):
    noise = MagnitudeNoise(forward.observer, mags, setup)
    n_all, n_lab = points.shape
    m = len(mags)
    info = np.empty((m, n_all, n_lab, n_lab))
    snr = np.empty((m, n_all))
    med_err = np.empty((m, n_all))
    valid = np.zeros(n_all, dtype=bool)
    k = 0  # rows filled so far (valid points only)
    for s in range(0, n_all, chunk_size):
        oj = forward.observed_jacobian(points[s:s + chunk_size], method=method, steps=steps)
        valid[s:s + chunk_size] = oj.valid
        n = len(oj.mu)
        if n == 0:
            continue
        w = noise.variance(oj.model_flux, oj.mu, oj.median)
        if noise_level != 1.0:
            w *= noise_level**2
        if noise.strictly_positive:
            np.reciprocal(w, out=w)  # w = 1/σ²
        else:  # as fisher_matrices: pixels with zero or non-finite error carry no information
            good = np.isfinite(w) & (w > 0)
            w = np.divide(1.0, w, out=np.zeros_like(w), where=good)
        sl = slice(k, k + n)
        info[:, sl] = fisher_from_weights(oj.jac, w)
        # medians of μ/σ and σ from the middle pair of μ²w and of w (√ and 1/√ are monotone; μ > 0 here)
        snr[:, sl] = np.sqrt(_middle_pair(np.multiply(np.square(oj.mu)[None], w, dtype=np.float32))).mean(-1)
        with np.errstate(divide="ignore"):
            med_err[:, sl] = (1.0 / np.sqrt(_middle_pair(w.astype(np.float32)))).mean(-1)
        k += n
    points = _drop_invalid(points, valid)
    return InformationSet(mags=mags, points=points, info=info[:, :k], snr=snr[:, :k], median_error=med_err[:, :k],
                          label_names=tuple(forward.label_names), bounds=dict(forward.bounds), noise_level=noise_level,
                          n_dropped=int((~valid).sum()))


def _valid_flux(flux: np.ndarray) -> np.ndarray:
    return np.all(np.isfinite(flux), axis=1) & np.all(flux > 0, axis=1)


# ---------------------------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------------------------


def label_variance(source, points: np.ndarray, index: int, bounds: tuple[float, float]) -> tuple[float, str]:
    """Var(label) for R²: ``"points"`` (variance over the point set), ``"box"`` ((b − a)² / 12) or a number."""
    if isinstance(source, (int, float)) and not isinstance(source, bool):
        return float(source), "given"
    if source == "points":
        v = float(np.var(points[:, index]))
        if not v > 0:
            raise InputError("the label does not vary over the points; give --label-var", field="label_var", value=v)
        return v, "variance of the label over the points"
    if source == "box":
        lo, hi = bounds
        return (hi - lo) ** 2 / 12.0, f"uniform prior over [{lo}, {hi}]: (b-a)^2/12"
    try:
        return float(source), "given"
    except (TypeError, ValueError):
        raise InputError("label_var must be 'points', 'box' or a number", field="label_var", value=source) from None


def summarise(info: np.ndarray, points: np.ndarray, snr: np.ndarray, *, label_names, bounds, label: str = "log_g",
              nuisance="3d", label_var="points", bound: str = "both", prior_taper: float = 0.5,
              where: str = "") -> dict:
    """Median / p10 / p90 of the bounds over points (info (N, L, L), snr (N,)).

    ``bound``: "crlb", "bayes" or "both". Raises InputError on an empty point set.
    """
    if bound not in ("crlb", "bayes", "both"):
        raise InputError("bound must be crlb, bayes or both", field="bound", value=bound)
    if len(info) == 0:
        raise InputError(f"no points{(' in ' + where) if where else ''}: nothing to summarise", field="points",
                         value=0)
    label = canonical_label(label)
    tgt, free = resolve_free(label_names, label, nuisance)
    var, var_src = label_variance(label_var, points, tgt, bounds[label])
    out = {"snr": float(np.median(snr)), "n_points": int(len(info)), "label": label,
           "nuisance": nuisance if isinstance(nuisance, str) else list(nuisance), "label_var": var,
           "label_var_source": var_src}
    if bound in ("crlb", "both"):
        b = crlb_bound(info, target=tgt, free=free, label_var=var, label=label)
        finite = b.sigma_min
        out.update({
            "r2max_median": float(np.median(b.r2max)),
            "r2max_p10": float(np.percentile(b.r2max, 10)),
            "r2max_p90": float(np.percentile(b.r2max, 90)),
            "sigma_min_median": float(np.median(finite)),
            "sigma_min_p10": float(np.percentile(finite, 10)),
            "sigma_min_p90": float(np.percentile(finite, 90)),
            "schur_decay_median": float(np.median(b.schur_decay)),
            "n_unconstrained": int(b.unconstrained.sum()),
        })
        if len(free) > 2:  # which nuisance absorbs the information: decay with one nuisance only / all but one
            names = list(label_names)
            nuis = [i for i in free if i != tgt]
            out["schur_decay_single_median"] = {
                names[e]: float(np.median(crlb_bound(info, target=tgt, free=[tgt, e], label_var=var).schur_decay))
                for e in nuis}
            out["schur_decay_all_but_median"] = {
                names[e]: float(np.median(crlb_bound(info, target=tgt, free=[i for i in free if i != e],
                                                     label_var=var).schur_decay)) for e in nuis}
    if bound in ("bayes", "both"):
        names = list(label_names)
        priors = {i: SmoothBoxPrior(*bounds[names[i]], taper_fraction=prior_taper) for i in free}
        w = prior_weights(points, priors)
        if not w.sum() > 0:
            w = np.ones(len(points))
        vt = van_trees_bound(info, target=tgt, free=free, priors=priors, weights=w, label=label)
        # the CRLB averaged over the same prior, for a like-for-like comparison (>= mse_bayes by Jensen)
        crlb_pts = crlb_bound(info, target=tgt, free=free, label_var=vt.prior_var).crlb
        with np.errstate(invalid="ignore"):
            mean_crlb = float(np.sum(w * crlb_pts) / np.sum(w)) if np.all(np.isfinite(crlb_pts[w > 0])) else np.inf
        out.update({
            "r2max_bayes": vt.r2max, "sigma_bayes": vt.sigma_bound, "mse_bayes": vt.mse_bound,
            "mse_crlb_prior": mean_crlb, "r2max_crlb_prior": float(np.clip(1 - mean_crlb / vt.prior_var, 0, 1)),
            "prior_var": vt.prior_var, "prior_information": vt.prior_information,
            "prior": f"smoothed box (cos^2 tapers, taper_fraction={prior_taper}) on every free label",
        })
    return out


def ceiling_by_magnitude(iset: InformationSet, **kw) -> dict:
    """{"18": summary, "20": summary, ...}: one summary per magnitude (keys like ``f"{mag:g}"``)."""
    out = {f"{m:g}": summarise(iset.info[k], iset.points, iset.snr[k], label_names=iset.label_names,
                               bounds=iset.bounds, where=f"mag {m:g}", **kw)
           for k, m in enumerate(iset.mags)}
    for v in out.values():
        v["n_dropped_invalid"] = iset.n_dropped
    return out


def ceiling_by_snr_bin(iset: InformationSet, *, edges=SNR_BIN_EDGES, require_all: bool = False, **kw) -> dict:
    """One summary per SNR bin, pooling all (point, magnitude) pairs whose SNR falls in the bin.

    Empty bins are listed under ``"empty_bins"``; with ``require_all=True`` an
    empty bin is an InputError naming it. The Bayesian value per bin uses the
    points of the bin as the prior sample (an approximation: the prior restricted
    to the bin).
    """
    label = canonical_label(kw.pop("label", "log_g"))
    if kw.get("label_var", "points") == "points":  # R² against the variance over ALL points, not within a bin
        j = list(iset.label_names).index(label) if label in iset.label_names else None
        if j is None:
            raise InputError(f"label not in this model (has {list(iset.label_names)})", field="label", value=label)
        kw["label_var"] = label_variance("points", iset.points, j, iset.bounds[label])[0]
    kw["label"] = label
    idx = snr_bin_index(iset.snr.ravel(), edges)
    info = iset.info.reshape(-1, *iset.info.shape[2:])
    pts = np.tile(iset.points, (len(iset.mags), 1))
    snr = iset.snr.ravel()
    out, empty = {}, []
    for b, name in enumerate(snr_bin_labels(edges)):
        sel = idx == b
        if not sel.any():
            if require_all:
                raise InputError("empty SNR bin: no (point, magnitude) has an SNR in it; add magnitudes or points",
                                 field="snr_bin", value=name)
            empty.append(name)
            continue
        out[name] = summarise(info[sel], pts[sel], snr[sel], label_names=iset.label_names, bounds=iset.bounds,
                              where=f"SNR bin {name}", **kw)
    if empty:
        out["empty_bins"] = empty
    return out


#: The paper's ceiling (SPEC section 7; BOSZ grid, central differences): mag -> (SNR, 3D R2max, 5D R2max, 3D sigma_min).
PAPER_CEILING = {18.0: (87.4, 0.9994, 0.9993, 0.033), 20.0: (24.0, 0.9906, 0.9892, 0.125),
                 21.5: (7.1, 0.8914, 0.8742, 0.426), 22.0: (4.6, 0.7396, 0.6983, 0.659),
                 22.5: (3.0, 0.3658, 0.2647, 1.028), 23.0: (1.9, 0.0, 0.0, 1.613)}


def ceiling_at_dataset_labels(path, *, label: str, n_points: int, mags: Sequence[float], nuisance: str,
                              noise_level: float = 1.0):
    """The ceilings per SNR bin at the labels of a dataset's first ``n_points`` rows (e.g. a test set).

    R² is taken against the variance of ``label`` over ALL rows of the file (the test set's spread),
    with both bounds (CRLB and van Trees). Returns ``(forward, iset, by_bin, label_var)``.
    """
    from specvit.data import open_dataset
    from specvit.observe.forward import default_forward

    forward, _ = default_forward()
    with open_dataset(path) as ds:
        labels = ds.params[list(forward.label_names)].to_numpy(float)
    iset = compute_information(forward, labels[:n_points], mags, noise_level=noise_level)
    var = float(np.var(labels[:, list(forward.label_names).index(label)]))
    by_bin = ceiling_by_snr_bin(iset, label=label, nuisance=nuisance, label_var=var, bound="both")
    return forward, iset, by_bin, var
