"""Monte-Carlo validation of the Cramér–Rao bound with maximum-likelihood template fits.

For a true label vector θ and the error e_m of each magnitude (or SNR), draw
``n_real`` noisy spectra y = μ(θ) + e_m · z (z ~ N(0, 1) from an explicit
Generator), fit each with the true model (:func:`specvit.baselines.templatefit.fit_lm`,
no flux correction so the fit and the Fisher matrix describe the same model),
and compare the scatter of the fitted label with √CRLB.

At high SNR the ML estimator is efficient: std(θ̂) → √CRLB. At low SNR it departs,
for three reasons the output makes visible: the box bounds truncate the
estimates (scatter *below* √CRLB, a fraction of fits on the edge, bias toward
the box centre), the non-linearity of μ(θ) over the now-large error ellipse
(bias), and secondary χ² minima (multimodality: heavy tails, scatter above √CRLB).

Kinks of μ(θ). The stored flux is normalised by the median of its 4096 pixels, and
the median pixel changes as θ moves (every ~0.005–0.02 dex in log g on the
emulator), so ∂μ/∂θ — and the pointwise Fisher information — jumps there
(μ itself stays continuous). When the ML scatter spans several such switches,
the estimator responds to the *average* slope over that range, not to the slope
at the truth. ``local_average`` therefore also reports σ_local = √[(⟨I⟩)⁻¹]_gg, the
bound of the Fisher matrix averaged over a neighbourhood of the truth (±
``local_width`` · √CRLB in every free label), the natural comparison for a model
whose derivative is only piecewise continuous (:func:`crlb_scan` shows the jumps).

Command: ``specvit fisher montecarlo`` (:func:`specvit.fisher.cli.cmd_montecarlo`) draws the figure and
writes the JSON of every number.
"""
from __future__ import annotations

import inspect

import numpy as np
import pandas as pd

from specvit.errors import InputError
from specvit.fisher.information import crlb_bound, fisher_matrix, resolve_free
from specvit.observe.forward import ForwardModel, jacobian


def _fisher_at(forward: ForwardModel, points: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Fisher matrices (N, L, L) at ``points`` for one fixed error spectrum (P,)."""
    if forward.observer is not None and forward.differentiable:
        from specvit.fisher.information import fisher_from_weights

        oj = forward.observed_jacobian(points)
        if not oj.valid.all():
            raise InputError("the model flux is not valid at a neighbourhood point", field="theta",
                             value=points[~oj.valid][0].tolist())
        return fisher_from_weights(oj.jac, np.broadcast_to(1.0 / err**2, (1, len(points), err.size)))[0]
    return fisher_matrix(jacobian(forward, points), err)


def crlb_scan(forward: ForwardModel, theta, err, *, label: str = "log_g", nuisance="3d", half_width: float = 0.05,
              n: int = 201) -> pd.DataFrame:
    """Pointwise √CRLB of ``label`` along a line through θ (``n`` values within ± ``half_width``).

    Also returns the indices of the median pixel pair of the noiseless observed flux:
    the pointwise information jumps where they change (see the module docstring).
    """
    names = list(forward.label_names)
    tgt, free_idx = resolve_free(names, label, nuisance)
    theta = np.asarray(theta, dtype=np.float64).reshape(-1)
    lo, hi = forward.bounds[names[tgt]]
    vals = np.clip(theta[tgt] + np.linspace(-half_width, half_width, n), lo, hi)
    pts = np.repeat(theta[None], n, 0)
    pts[:, tgt] = vals
    info = _fisher_at(forward, pts, np.asarray(err, dtype=np.float64).reshape(-1))
    b = crlb_bound(info, target=tgt, free=free_idx, label_var=1.0, label=label)
    mu = forward.numpy(pts)
    p = mu.shape[1]
    mid = np.sort(np.argsort(mu, axis=1, kind="stable")[:, [(p - 1) // 2, p // 2]], axis=1)
    return pd.DataFrame({label: vals, "sigma_crlb": b.sigma_min, "median_pixel_lo": mid[:, 0],
                         "median_pixel_hi": mid[:, 1]})


def local_crlb(forward: ForwardModel, theta, err, *, target: int, free_idx, sigma, width: float = 2.0,
               n_points: int = 64, rng: np.random.Generator) -> tuple[float, float, float]:
    """σ from the Fisher matrix averaged over θ ± width·σ (free labels; uniform, clipped to the box).

    Returns (σ_local, p10 and p90 of the pointwise σ_min over the same points).
    """
    theta = np.asarray(theta, dtype=np.float64).reshape(-1)
    sigma = np.asarray(sigma, dtype=np.float64)
    pts = np.repeat(theta[None], n_points, 0)
    for j, i in enumerate(free_idx):
        pts[:, i] = np.clip(theta[i] + width * sigma[j] * rng.uniform(-1, 1, n_points), forward.lower[i],
                            forward.upper[i])
    info = _fisher_at(forward, pts, err)
    pointwise = crlb_bound(info, target=target, free=free_idx, label_var=1.0).sigma_min
    mean = crlb_bound(info.mean(0), target=target, free=free_idx, label_var=1.0).sigma_min[0]
    return float(mean), float(np.percentile(pointwise, 10)), float(np.percentile(pointwise, 90))


def ml_fit(forward: ForwardModel, flux, error, *, free_idx, starts, max_iter: int = 30,
           tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched maximum-likelihood fit with the exact model: Levenberg–Marquardt on the observed grid.

    For the Monte-Carlo validation (no flux correction, labels not in ``free_idx`` fixed at
    their start value). Each iteration uses :meth:`ForwardModel.observed_jacobian` (the exact
    model and its exact Jacobian: analytic for the emulator), solves the damped normal
    equations of every row, projects onto the box and keeps a step only if χ² decreases.
    ``starts`` is a list of (N, L) start arrays; the start with the lowest final χ² wins.
    Returns labels (N, L), χ² (N,), at_bound (N,) (a free label on the box edge).
    """
    y = np.asarray(flux, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    lo, hi = forward.lower, forward.upper
    free_idx = list(free_idx)
    n = len(y)
    best_x, best_c = None, np.full(n, np.inf)

    def chi2_and_parts(x):  # χ², validity, whitened residuals (n, P) and Jacobian (n, F, P); 0 where invalid
        oj = forward.observed_jacobian(x)
        c = np.full(len(x), np.inf)
        r = np.zeros_like(y)
        jac = np.zeros((len(x), len(free_idx), y.shape[1]))
        r[oj.valid] = (y[oj.valid] - oj.mu) / e[oj.valid]
        c[oj.valid] = np.sum(r[oj.valid] ** 2, axis=1)
        jac[oj.valid] = oj.jac[:, free_idx] / e[oj.valid][:, None, :]
        return c, oj.valid, r, jac

    eye = np.eye(len(free_idx))
    for x0 in starts:
        x = np.clip(np.array(x0, dtype=np.float64), lo, hi)
        lam = np.full(n, 1e-3)
        c, valid, r, jac = chi2_and_parts(x)
        quiet = ~valid
        for _ in range(max_iter):
            sel = np.flatnonzero(~quiet)
            if len(sel) == 0:
                break
            jv, rv = jac[sel], r[sel]
            h = np.einsum("nip,njp->nij", jv, jv)
            g = np.einsum("nip,np->ni", jv, rv)
            d = np.einsum("nii->ni", h)
            damp = lam[sel, None, None] * np.where(d > 0, d, 1.0)[:, :, None] * eye
            step = np.linalg.solve(h + damp, g[:, :, None])[:, :, 0]
            trial = x.copy()
            trial[np.ix_(sel, free_idx)] = np.clip(x[np.ix_(sel, free_idx)] + step, lo[free_idx], hi[free_idx])
            c_new, _, r_new, jac_new = chi2_and_parts(trial)
            better = np.zeros(n, dtype=bool)
            better[sel] = c_new[sel] < c[sel]
            gain = (c - np.where(better, c_new, c)) / np.maximum(c, 1e-300)
            quiet[sel] = (better[sel] & (gain[sel] < tol)) | (~better[sel] & (lam[sel] > 1e8))
            lam[sel] = np.where(better[sel], lam[sel] * 0.3, lam[sel] * 10.0)
            x[better], c[better], r[better], jac[better] = trial[better], c_new[better], r_new[better], jac_new[better]
        take = c < best_c
        best_x = x.copy() if best_x is None else np.where(take[:, None], x, best_x)
        best_c = np.where(take, c, best_c)
    tol_edge = 1e-9 * (hi - lo)
    at_bound = np.any((best_x[:, free_idx] <= lo[free_idx] + tol_edge[free_idx])
                      | (best_x[:, free_idx] >= hi[free_idx] - tol_edge[free_idx]), axis=1)
    return best_x, best_c, at_bound


def validate_crlb(forward: ForwardModel, theta, errors: dict, *, label: str = "log_g", nuisance="3d",
                  n_real: int = 200, rng: np.random.Generator, n_starts: int = 2, max_iter: int = 40,
                  truth_start: bool = True, local_average: int = 0, local_width: float = 2.0,
                  fitter: str = "templatefit", centre_start: bool = True) -> pd.DataFrame:
    """MC scatter of ML fits vs √CRLB at one point θ for several noise settings.

    Parameters
    ----------
    forward : differentiable ForwardModel (μ(θ) = what the observer stores)
    theta : (L,) true labels
    errors : dict key -> (P,) 1-σ error of the normalised flux (e.g. one per magnitude)
    label, nuisance : bounded label and free set ("3d", "5d" or a list)
    n_real : noisy realisations per key
    rng : numpy Generator (the noise and the random starts)
    n_starts : random starts per fit (the box centre counts as one)
    truth_start : also start at θ (the global minimum is then found reliably at high SNR)
    fitter : "templatefit" (:func:`specvit.baselines.templatefit.fit_lm`, exact model, no flux
        correction) or "ml" (:func:`ml_fit`, the same likelihood on the fast exact Jacobian route;
        needs an observer; starts: the box centre (``centre_start``) and, with ``truth_start``, θ)
    local_average : if > 0, also σ_local from the Fisher matrix averaged over this many points
        within ± ``local_width`` · (pointwise √CRLB) of θ in every free label (:func:`local_crlb`)

    Returns one row per key: snr, sigma_crlb, sigma_mc (std of θ̂), ratio, bias, rmse,
    frac_at_bound, the MC standard error of sigma_mc, n_real, chi2_gain (mean χ²(θ) − χ²(θ̂):
    ≈ the number of free labels for a converged ML fit); with ``local_average`` also
    sigma_local, ratio_local, sigma_crlb_p10 / _p90 (pointwise σ over the neighbourhood).
    """
    names = list(forward.label_names)
    tgt, free_idx = resolve_free(names, label, nuisance)
    free = [names[i] for i in free_idx]
    theta = np.asarray(theta, dtype=np.float64).reshape(1, -1)
    fixed = {n: float(theta[0, j]) for j, n in enumerate(names) if n not in free}
    from specvit.baselines.templatefit import fit_lm

    mu = forward.numpy(theta)[0]
    jac = jacobian(forward, theta)
    fit_kw = {"method": "exact"} if "method" in inspect.signature(fit_lm).parameters else {}  # exact model only
    rows = []
    for key, err in errors.items():
        err = np.asarray(err, dtype=np.float64).reshape(-1)
        if err.shape != mu.shape:
            raise InputError(f"error must have {mu.shape[0]} pixels", field=f"errors[{key!r}]", value=err.shape)
        b = crlb_bound(fisher_matrix(jac, err), target=tgt, free=free_idx, label_var=1.0, label=label)
        y = mu[None] + err[None] * rng.standard_normal((n_real, mu.size))
        e = np.broadcast_to(err, y.shape)
        init = np.repeat(theta, n_real, 0) if truth_start else None
        if fitter == "ml":
            centre = np.repeat(theta, n_real, 0)
            centre[:, free_idx] = 0.5 * (forward.lower[free_idx] + forward.upper[free_idx])
            starts = ([centre] if centre_start else []) + ([np.repeat(theta, n_real, 0)] if truth_start else [])
            if not starts:
                raise InputError("ml fitter needs a start (centre_start or truth_start)", field="starts")
            labels_fit, chi2_fit, at_bound = ml_fit(forward, y, e, free_idx=free_idx, starts=starts,
                                                    max_iter=max_iter)
        elif fitter == "templatefit":
            res = fit_lm(forward, y, e, free=free, fixed_values=fixed, degree=-1, n_starts=n_starts,
                         max_iter=max_iter, rng=rng, init=init, **fit_kw)
            labels_fit, chi2_fit, at_bound = res.labels, np.asarray(res.chi2), np.asarray(res.at_bound)
        else:
            raise InputError("fitter must be 'templatefit' or 'ml'", field="fitter", value=fitter)
        est = labels_fit[:, tgt]
        d = est - theta[0, tgt]
        sd = float(np.std(est, ddof=1))
        chi2_true = np.sum(((y - mu[None]) / e) ** 2, axis=1)
        row = {
            "key": key, "snr": float(np.median(mu / err)), "sigma_crlb": float(b.sigma_min[0]), "sigma_mc": sd,
            "sigma_mc_se": sd / np.sqrt(2 * (n_real - 1)), "ratio": sd / float(b.sigma_min[0]),
            "bias": float(d.mean()), "rmse": float(np.sqrt(np.mean(d**2))),
            "frac_at_bound": float(at_bound.mean()), "n_real": n_real, "label": label,
            "true_value": float(theta[0, tgt]), "chi2_gain": float(np.mean(chi2_true - chi2_fit)), "fitter": fitter,
        }
        if local_average > 0:
            cov = np.linalg.pinv(fisher_matrix(jac, err)[0][np.ix_(free_idx, free_idx)])
            sig_free = np.sqrt(np.clip(np.diag(cov), 0, None))
            s_loc, p10, p90 = local_crlb(forward, theta[0], err, target=tgt, free_idx=free_idx, sigma=sig_free,
                                         width=local_width, n_points=local_average, rng=rng)
            row.update({"sigma_local": s_loc, "ratio_local": sd / s_loc, "sigma_crlb_p10": p10,
                        "sigma_crlb_p90": p90})
        rows.append(row)
    return pd.DataFrame(rows)


def plot_validation(df: pd.DataFrame, *, title: str = "", scan: pd.DataFrame | None = None, scan_title: str = ""):
    """Figure: σ_MC / √CRLB and bias / √CRLB against SNR (one curve per true point if a 'point' column exists).

    With a ``ratio_local`` column, σ_MC / σ_local is drawn dashed; with ``scan``
    (:func:`crlb_scan`) a third panel shows the pointwise √CRLB along the scanned label.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_panels = 3 if scan is not None else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(5 * n_panels, 4), constrained_layout=True)
    groups = df.groupby("point") if "point" in df.columns else [("", df)]
    for name, g in groups:
        g = g.sort_values("snr")
        lab = str(name) if name != "" else None
        line = axes[0].errorbar(g["snr"], g["ratio"], yerr=g["sigma_mc_se"] / g["sigma_crlb"], marker="o", capsize=2,
                                label=lab)
        color = line[0].get_color()
        if "ratio_local" in g.columns:
            axes[0].plot(g["snr"], g["ratio_local"], marker="s", ls="--", color=color, mfc="none",
                         label=f"{lab}: vs local-average" if lab else "vs local-average information")
        axes[1].plot(g["snr"], g["bias"] / g["sigma_crlb"], marker="o", color=color, label=lab)
        axes[1].plot(g["snr"], g["frac_at_bound"], ls=":", color=color)
    axes[0].axhspan(0.9, 1.1, color="0.9", zorder=0)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set(xscale="log", xlabel="SNR (median flux / error)",
                ylabel=r"$\sigma_\mathrm{MC}$ / $\sqrt{\mathrm{CRLB}}$ (solid: at the truth; dashed: local average)",
                title="scatter of ML fits vs Cramér–Rao")
    axes[1].axhline(0.0, color="k", lw=0.8)
    axes[1].set(xscale="log", xlabel="SNR (median flux / error)",
                ylabel=r"bias / $\sqrt{\mathrm{CRLB}}$ (solid), fraction on box edge (dotted)", title="bias")
    if "point" in df.columns or "ratio_local" in df.columns:
        axes[0].legend(fontsize=7, title="true point" if "point" in df.columns else None)
    if scan is not None:
        ax = axes[2]
        label = scan.columns[0]
        ax.plot(scan[label], scan["sigma_crlb"], drawstyle="steps-mid", lw=1)
        pair = scan[["median_pixel_lo", "median_pixel_hi"]].to_numpy()
        switch = np.flatnonzero(np.any(pair[1:] != pair[:-1], axis=1))
        for k in switch:
            ax.axvline(0.5 * (scan[label].iloc[k] + scan[label].iloc[k + 1]), color="0.7", lw=0.6, zorder=0)
        ax.set(xlabel=label, ylabel=r"pointwise $\sqrt{\mathrm{CRLB}}$",
               title=scan_title or "pointwise bound along the label (grey: median pixel changes)")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
