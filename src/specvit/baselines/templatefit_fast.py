"""The template fit's fast Levenberg–Marquardt path: observed-grid emulator, then exact polish.

Two phases (:func:`specvit.baselines.templatefit.fit_lm` with ``method="observed"``):

1. **Search** — batched Levenberg–Marquardt (Marquardt 1963) on every (spectrum, start)
   row with the fast model μ̃ of :class:`~specvit.baselines.observed_emulator.ObservedEmulator`
   (PCA bases pushed through the observer once; float32 pixel arithmetic). The
   Legendre flux-correction coefficients are profiled out at every step (variable
   projection, Golub & Pereyra 1973): their Gram matrix is one product with the
   precomputed products of basis pairs, and the reduced Gauss–Newton system is one
   batched product. A row stops when the Gauss–Newton predicted χ² decrease gᵀH⁻¹g
   drops below ``search_tol`` (0.03 σ from its minimum) or after 3 steps without
   improvement; converged rows leave the batch.
2. **Polish** — for the best start of each spectrum, Gauss–Newton/LM steps with the
   *exact* model residual (``ForwardModel.numpy``: emulator on its grid, sparse LSF +
   resampling, median normalisation, float64) and the fast Jacobian, until gᵀH⁻¹g <
   ``polish_tol`` (10⁻⁴: the remaining step is 0.01 σ) or ``polish_steps`` steps. The
   fixed point of these steps is the exact model's χ² minimum (only the step direction
   uses μ̃), so the returned labels and χ² are the exact ones; the Laplace σ comes from
   the fast Jacobian at the solution (measured against the exact Jacobian in the tests).
"""
from __future__ import annotations

import numpy as np
import torch

from specvit.baselines.observed_emulator import ObservedEmulator

#: Gauss–Newton predicted χ² decrease below which a search row is done (≈ (0.1 σ)²; the float32
#: fast model resolves χ² to ~1e-3).
SEARCH_TOL = 1e-2
#: ... and below which the exact polish is done (≈ (0.03 σ)²; the float32 emulator resolves
#: χ² to ~1e-4).
POLISH_TOL = 1e-3
_TRACE = None  # debugging: a list receives the number of active rows after each search iteration
_DTYPE = None


def observed_emulator(forward) -> ObservedEmulator:
    """The (cached) fast observed-grid model of ``forward``."""
    cache = forward.__dict__.setdefault("_cache", {})
    if "_specvit_observed_emulator" not in cache:
        cache["_specvit_observed_emulator"] = ObservedEmulator(forward)
    return cache["_specvit_observed_emulator"]


class _Rows:
    """Data of a set of rows and the profiled-χ² algebra (pixel arrays in ``dtype``, small systems in float64)."""

    def __init__(self, y, w, basis, dtype):
        self.y = torch.as_tensor(y, dtype=dtype)
        self.w = torch.as_tensor(w, dtype=dtype)
        self.basis = basis.to(dtype)  # (P, K)
        k = basis.shape[1]
        self.k = k
        self.pairs = (self.basis[:, :, None] * self.basis[:, None, :]).reshape(-1, k * k)  # (P, K²)

    def profile(self, mu, idx):
        """Profiled flux-correction: coefficient Gram (n, K, K) float64, polynomial (n, P), residual, χ² (n,)."""
        y, w = self.y[idx], self.w[idx]
        mu = mu.to(self.y.dtype)
        if self.k == 0:
            r = y - mu
            return None, torch.ones_like(mu), r, (w * r * r).double().sum(1)
        wmu = w * mu
        gram = (wmu * mu) @ self.pairs  # (n, K²)
        gram = gram.double().reshape(-1, self.k, self.k)
        rhs = ((wmu * y) @ self.basis).double()
        c = _solve_spd(gram, rhs)
        poly = c.to(self.y.dtype) @ self.basis.T  # (n, P)
        r = y - mu * poly
        return gram, poly, r, (w * r * r).double().sum(1)

    def normal_equations(self, mu, jac, idx, gram, poly, r):
        """Reduced Gauss–Newton system (H, g) over the free labels (flux correction marginalised), float64.

        With m = μ · poly: H_uu = Σ w poly² J Jᵀ, H_uc = Σ w poly μ J P_kᵀ, g = Σ w poly r J
        (two batched products over the pixels; H_cc is the profile's Gram matrix).
        """
        w = self.w[idx]
        jac = jac.to(self.y.dtype)
        wp = w * poly
        h = torch.bmm(jac * (wp * poly)[:, None, :], jac.transpose(1, 2)).double()  # (n, F, F)
        rhs = [(wp * r)[:, :, None]]
        if self.k:
            rhs.insert(0, (wp * mu.to(self.y.dtype))[:, :, None] * self.basis[None])
        prod = torch.bmm(jac, torch.cat(rhs, dim=2)).double()  # (n, F, K + 1)
        g = prod[:, :, -1]
        if self.k:
            huc = prod[:, :, : self.k]
            h = h - huc @ _solve_spd(gram, huc.transpose(1, 2))
        # g_c = Σ w r μ P_k vanishes at the profiled coefficients, so g needs no Schur term
        return 0.5 * (h + h.transpose(1, 2)), g


def _solve_spd(a, b):
    from specvit.baselines.templatefit import _solve_spd as solve

    return solve(a, b)


def _exact_value_and_gradient(forward, labels, u, rows, idx):
    """Exact μ (n, P) and g = −½ ∂χ²/∂u (n, F) of the profiled χ², by one reverse-mode pass.

    The flux-correction coefficients are held at their optimum (envelope theorem: the
    profiled χ² has the same gradient as χ² at fixed optimal coefficients).
    """
    ut = u.detach().clone().requires_grad_(True)
    mu = forward.torch(labels(ut))
    with torch.no_grad():
        _, poly, _, _ = rows.profile(mu.detach().double(), idx)
    chi2 = (rows.w[idx] * (rows.y[idx] - mu.double() * poly) ** 2).sum()
    (grad,) = torch.autograd.grad(chi2, ut)
    return mu.detach().double(), -0.5 * grad


def _bound_active(h, g, u):
    """Remove the labels held by the box (at a bound with the descent direction g pointing out).

    Returns (H, g) with those rows/columns decoupled (H_ii kept, g_i = 0), so that the
    Gauss–Newton step and its predicted decrease are those of the free subspace
    (projected Newton with an active set, Bertsekas 1982).
    """
    held = ((u <= 1e-12) & (g < 0)) | ((u >= 1 - 1e-12) & (g > 0))
    if not bool(held.any()):
        return h, g
    keep = (~held).to(h.dtype)
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    h = h * keep[:, :, None] * keep[:, None, :] + torch.diag_embed(diag * (1 - keep))
    return h, g * keep


def _damped_step(h, g, lam):
    dh = torch.diagonal(h, dim1=-2, dim2=-1).clamp_min(1e-30)
    return torch.linalg.solve(h + (lam[:, None] * dh + 1e-12 * dh.amax(1, keepdim=True)).diag_embed(), g)


def _predicted_decrease(h, g):
    """gᵀ H⁻¹ g: the χ² decrease of a full Gauss–Newton step (χ² units)."""
    return (g * _solve_spd(h, g)).sum(1)


def lm_observed(forward, y, w, u0, *, s, free_idx, fixed, lower, upper, basis, max_iter, polish_steps,
                search_tol=SEARCH_TOL, polish_tol=POLISH_TOL):
    """Both phases for N spectra with S starts each (rows start-major, u0 (S·N, F) in box units).

    Returns (u (N, F), χ² (N,), H (N, F, F) in box units at the solution): exact-model χ²
    when ``polish_steps`` > 0, else the fast model's.
    """
    fast = observed_emulator(forward)
    if _DTYPE is not None: fast = ObservedEmulator(forward, dtype=_DTYPE)
    n = y.shape[0]
    free_idx = list(free_idx)
    scale = (upper - lower).double()
    degree_free_scale = basis.shape[1] > 0  # a constant term absorbs any per-spectrum scale
    search_norm = "mean" if degree_free_scale else "median"
    fixed = torch.as_tensor(fixed, dtype=torch.float64)

    def labels(u):
        lab = fixed.repeat(u.shape[0], 1)
        lab[:, free_idx] = lower + u * scale
        return lab

    # ---- phase 1: search with the fast model
    rows = _Rows(np.tile(y, (s, 1)), np.tile(w, (s, 1)), basis, torch.float64)
    u = torch.as_tensor(u0, dtype=torch.float64).clone()
    n_rows = u.shape[0]
    chi2 = torch.full((n_rows,), float("inf"), dtype=torch.float64)
    lam = torch.full((n_rows,), 1e-3, dtype=torch.float64)
    active = torch.arange(n_rows)
    for _ in range(max_iter):
        if len(active) == 0:
            break
        ua = u[active]
        mu, jac = fast.evaluate(labels(ua), free_idx, normalise=search_norm, tangent_scale=scale)
        gram, poly, r, chi2_a = rows.profile(mu, active)
        h, g = rows.normal_equations(mu, jac, active, gram, poly, r)
        chi2[active] = chi2_a
        h, g = _bound_active(h, g, ua)
        done = _predicted_decrease(h, g) < search_tol
        step = _damped_step(h, g, lam[active])
        u_new = (ua + step).clamp(0.0, 1.0)
        mu_new, _ = fast.evaluate(labels(u_new), free_idx, jacobian=False, normalise=search_norm)
        chi2_new = rows.profile(mu_new, active)[3]
        better = (chi2_new < chi2_a) & ~done
        u[active] = torch.where(better[:, None], u_new, ua)
        chi2[active] = torch.where(better, chi2_new, chi2_a)
        lam[active] = torch.where(better, lam[active] / 3, lam[active] * 10).clamp(1e-9, 1e9)
        # done: predicted or achieved decrease below tolerance, or no descent even with heavy damping
        done |= (better & (chi2_a - chi2_new < search_tol)) | (lam[active] >= 1e6)
        active = active[~done]
        if _TRACE is not None:
            _TRACE.append((len(active), chi2_a[:4].numpy().round(2).tolist(), _predicted_decrease(h, g)[:4].numpy().round(4).tolist(), better[:4].tolist()))
    best = torch.argmin(chi2.reshape(s, n), dim=0)
    pick = best * n + torch.arange(n)
    u = u[pick]
    chi2 = chi2[pick]

    # ---- phase 2: polish with the exact model: exact residual and gradient, fast-Jacobian Gauss–Newton matrix
    exact = _Rows(y, w, basis, torch.float64)
    everyone = torch.arange(n)
    if polish_steps > 0:
        mu_final = torch.empty(n, y.shape[1], dtype=torch.float64)
        lam = torch.full((n,), 1e-6, dtype=torch.float64)
        active = everyone
        for _ in range(polish_steps):
            ua = u[active]
            mu_a, g = _exact_value_and_gradient(forward, labels, ua, exact, active)
            _, jac = fast.evaluate(labels(ua), free_idx, normalise="median", tangent_scale=scale)
            gram, poly, r, chi2_a = exact.profile(mu_a, active)
            h, _ = exact.normal_equations(mu_a, jac, active, gram, poly, r)
            chi2[active], mu_final[active] = chi2_a, mu_a
            h, g = _bound_active(h, g, ua)
            pred = _predicted_decrease(h, g)
            if _TRACE is not None:
                _TRACE.append(("pred", pred[:6].numpy().round(5).tolist(), chi2_a[:6].numpy().round(4).tolist()))
            keep = pred >= polish_tol
            active, ua, h, g, chi2_a = active[keep], ua[keep], h[keep], g[keep], chi2_a[keep]
            if _TRACE is not None:
                _TRACE.append(("polish", len(active)))
            if len(active) == 0:
                break
            u_new = (ua + _damped_step(h, g, lam[active])).clamp(0.0, 1.0)
            with torch.no_grad():
                mu_new = forward.torch(labels(u_new)).double()
            chi2_new = exact.profile(mu_new, active)[3]
            better = chi2_new < chi2_a
            u[active] = torch.where(better[:, None], u_new, ua)
            chi2[active] = torch.where(better, chi2_new, chi2_a)
            mu_final[active] = torch.where(better[:, None], mu_new, mu_final[active])
            lam[active] = torch.where(better, lam[active] / 10, lam[active] * 10).clamp(1e-9, 1e9)
        final_rows = exact
    else:
        mu_final, _ = fast.evaluate(labels(u), free_idx, jacobian=False, normalise="median")
        final_rows = _Rows(y, w, basis, torch.float64)
    # Laplace: fast Jacobian at the solution, exact (or fast) μ and residual
    _, jac = fast.evaluate(labels(u), free_idx, normalise="median", tangent_scale=scale)
    gram, poly, r, chi2_f = final_rows.profile(mu_final, everyone)
    h, _ = final_rows.normal_equations(mu_final, jac, everyone, gram, poly, r)
    return u, chi2_f, h
