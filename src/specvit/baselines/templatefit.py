"""Template fitting: maximum-likelihood labels with a spectral model seen through the observer.

Model of a spectrum y with 1-σ errors e (noise_level · error)::

    m(θ, c) = μ(θ) · Σ_k c_k P_k(x),    χ² = Σ_p ((y_p − m_p) / e_p)²

μ(θ) is the noiseless normalised observed flux (:class:`specvit.observe.forward.ForwardModel`),
P_k are Legendre polynomials of degree ≤ ``flux_correction_degree`` over the
pixel index mapped to [−1, 1] (a low-order multiplicative flux correction,
solved linearly at every step: variable projection, Golub & Pereyra 1973;
degree −1 disables it).

Two modes:

- ``lm``: batched Levenberg–Marquardt (Marquardt 1963) in torch, several starts per
  spectrum, labels bounded to the model box; for differentiable models. For the PCA
  emulator the default (``method="observed"``, :mod:`specvit.baselines.templatefit_fast`)
  searches with the emulator's bases pushed through the observer once
  (:mod:`specvit.observe.observed_emulator`) and finishes with Gauss–Newton steps on
  the exact model's residual (exact χ²; labels within ~0.01 σ of the exact minimum,
  ~10× faster). ``method="exact"``: every step with the exact model and its
  forward-mode AD Jacobian (one JVP per free label; steps projected into the box).
- ``grid``: χ² on a regular grid of labels, the paper's method (its template fit:
  Teff / log g / [M/H] free on the BOSZ nodes, linear flux correction), with the
  minimum refined by a parabola along each axis; works with any model.

Both return labels, χ² and Laplace (Gaussian-approximation) uncertainties from
(Jᵀ Σ⁻¹ J)⁻¹ at the solution, with the flux-correction coefficients marginalised.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch

from specvit.baselines.templatefit_fast import domain_projector, lm_observed, solve_spd
from specvit.errors import InputError
from specvit.observe.forward import jvp_stacked
from specvit.labels import LABEL_NAMES, canonical_label
from specvit.spectra.bosz import BOSZ_STEPS  # default grid spacing of the ``grid`` mode


@dataclass
class TemplateFitConfig:
    """Config of ``specvit baseline templatefit`` (YAML + ``--set key=value``).

    Attributes
    ----------
    input : str
        Dataset to fit (pfsspec ``dataset.h5``, a directory or glob of shards).
    output : str
        Predictions CSV written by the CLI ('' = do not write).
    model : str
        Spectral model: 'default' (the embedded emulator), MODULE:FACTORY or a grid .h5.
    mode : "lm" | "grid"
        Levenberg–Marquardt with autograd Jacobians, or grid χ² (+ parabolic refinement).
    free_labels : list of str
        Labels fitted; the others are held at ``fixed_values``.
    fixed_values : dict label -> value
        Values of the labels that are not free (label units; default 0 dex for [α/M], [C/M]).
    flux_correction_degree : int
        Degree of the Legendre multiplicative flux correction (−1 = none; the paper: 1).
    n_starts : int
        Starts per spectrum in ``lm`` mode (the first start, plus random draws).
    grid_start : bool
        First start = best node of a coarse χ² grid (else the box centre).
    max_iter : int
        Levenberg–Marquardt iterations (of the search, for ``lm_method`` 'observed').
    lm_method : "auto" | "observed" | "exact"
        'observed': search on the observed pixel grid with the emulator's PCA bases pushed
        through the observer, then exact-model polish steps (fast; exact labels and χ²);
        'exact': every step with the exact model (the reference); 'auto': 'observed' for a
        PCA emulator, else 'exact'.
    polish_steps : int
        Exact-model Gauss–Newton steps after the observed-grid search (0 = none).
    noise_level : float
        Noise multiplier of the evaluation (noisy = flux + noise_level · error · z).
    noise_seed : int
        Seed of the fixed per-row noise draw (:func:`specvit.data.fixed_noisy_flux`).
    seed : int
        Seed of the random starts.
    batch_size : int
        Spectra per batch.
    grid_steps : dict label -> step
        Grid spacing per free label in ``grid`` mode (label units; default BOSZ spacing).
    parabolic_refine : bool
        Refine the grid minimum with a parabola along each axis.
    max_spectra : int
        Fit only the first N spectra (0 = all).
    use_observer : bool
        μ through the PFS observer (True) or the model's own grid (False: the data must be on it).
    """

    input: str = ""
    output: str = ""
    model: str = "default"
    mode: Literal["lm", "grid"] = "lm"
    free_labels: list[str] = field(default_factory=lambda: ["T_eff", "log_g", "M_H", "a_M", "C_M"])
    fixed_values: dict[str, float] = field(default_factory=lambda: {"a_M": 0.0, "C_M": 0.0})
    flux_correction_degree: int = 2
    n_starts: int = 4
    grid_start: bool = True
    max_iter: int = 30
    lm_method: Literal["auto", "observed", "exact"] = "auto"
    polish_steps: int = 2
    noise_level: float = 1.0
    noise_seed: int = 0
    seed: int = 42
    batch_size: int = 256
    grid_steps: dict[str, float] = field(default_factory=lambda: dict(BOSZ_STEPS))
    parabolic_refine: bool = True
    max_spectra: int = 0
    use_observer: bool = True

    def __post_init__(self):
        self.free_labels = [canonical_label(n) for n in self.free_labels]
        self.fixed_values = {canonical_label(k): float(v) for k, v in self.fixed_values.items()}
        self.grid_steps = {canonical_label(k): float(v) for k, v in self.grid_steps.items()}
        if self.flux_correction_degree < -1:
            raise InputError("flux_correction_degree must be >= -1", field="flux_correction_degree",
                             value=self.flux_correction_degree)
        for name, v in (("n_starts", self.n_starts), ("max_iter", self.max_iter), ("batch_size", self.batch_size)):
            if v < 1:
                raise InputError("must be >= 1", field=name, value=v)
        if self.lm_method not in ("auto", "observed", "exact"):
            raise InputError("lm_method must be auto, observed or exact", field="lm_method", value=self.lm_method)
        if self.polish_steps < 0:
            raise InputError("must be >= 0", field="polish_steps", value=self.polish_steps)
        if not self.noise_level >= 0:
            raise InputError("noise_level must be >= 0", field="noise_level", value=self.noise_level)


@dataclass
class FitResult:
    """Template-fit output for N spectra (label order = the model's ``label_names``)."""

    labels: np.ndarray  #: (N, L) best-fit labels (fixed labels at their fixed value)
    sigma: np.ndarray  #: (N, L) Laplace 1-σ uncertainty (NaN for fixed labels)
    chi2: np.ndarray  #: (N,) χ² at the solution
    n_pix: int  #: pixels used per spectrum (for the reduced χ²)
    n_params: int  #: fitted parameters (labels + flux-correction coefficients)
    at_bound: np.ndarray  #: (N,) bool: a free label ended on the box edge
    label_names: tuple

    def to_frame(self, free) -> pd.DataFrame:
        cols = {}
        for j, n in enumerate(self.label_names):
            cols[n] = self.labels[:, j]
            if n in free:
                cols[f"{n}_err"] = self.sigma[:, j]
        cols["chi2"] = self.chi2
        cols["chi2_red"] = self.chi2 / max(self.n_pix - self.n_params, 1)
        cols["at_bound"] = self.at_bound
        return pd.DataFrame(cols)


def legendre_basis(n_pix: int, degree: int, dtype=torch.float64) -> torch.Tensor:
    """(n_pix, degree + 1) Legendre polynomials P_0..P_degree on x ∈ [−1, 1] (empty if degree = −1)."""
    x = torch.linspace(-1.0, 1.0, n_pix, dtype=dtype)
    cols = [torch.ones_like(x), x]
    for k in range(2, degree + 1):
        cols.append(((2 * k - 1) * x * cols[-1] - (k - 1) * cols[-2]) / k)
    return torch.stack(cols[: degree + 1], dim=1) if degree >= 0 else torch.zeros(n_pix, 0, dtype=dtype)


class _Problem:
    """χ² with the flux correction profiled out, for a batch of (spectrum, start) rows."""

    def __init__(self, forward, y, w, free_idx, fixed, lower, upper, degree):
        self.forward = forward
        self.y, self.w = y, w  # (B, P)
        self.free_idx = free_idx
        self.fixed = fixed  # (B, L) full label array holding the fixed values
        self.lower, self.upper = lower, upper  # (F,)
        self.basis = legendre_basis(y.shape[1], degree)  # (P, K)

    def labels(self, u: torch.Tensor) -> torch.Tensor:
        """Full (rows, L) labels from box units u (rows = a multiple of the batch: stacked tangents)."""
        n_lab = self.fixed.shape[1]
        select = torch.zeros(len(self.free_idx), n_lab, dtype=u.dtype)
        select[range(len(self.free_idx)), self.free_idx] = 1.0
        keep = 1.0 - select.sum(0)
        fixed = self.fixed.repeat(u.shape[0] // self.fixed.shape[0], 1)
        return fixed * keep + (self.lower + u * (self.upper - self.lower)) @ select

    def mu(self, u):
        return self.forward.mu(self.labels(u))

    def mu_and_jac(self, u):
        """μ (B, P) and ∂μ/∂u (B, P, F) by forward-mode AD, u in box units [0, 1]."""
        if self.forward.observer is None:
            return jvp_stacked(self.mu, u)
        # through the observer: model Jacobian by AD, then the observer's linear map (ForwardModel fast path)
        mu, jac = self.forward.value_and_jacobian(self.labels(u.detach()).numpy())
        scale = (self.upper - self.lower).numpy()
        return torch.from_numpy(mu), torch.from_numpy(jac[:, :, self.free_idx] * scale)

    def profile(self, mu):
        """Best flux-correction coefficients c (B, K), model m, χ² for given μ."""
        if self.basis.shape[1] == 0:
            m = mu
            c = mu.new_zeros(mu.shape[0], 0)
        else:
            a = (mu[:, :, None] * self.basis[None]).numpy()  # (B, P, K)
            awt = (a * self.w.numpy()[:, :, None]).transpose(0, 2, 1)
            c = solve_spd(torch.from_numpy(np.matmul(awt, a)),
                           torch.from_numpy(np.matmul(awt, self.y.numpy()[:, :, None])[..., 0]))
            m = mu * (self.basis @ c.T).T
        chi2 = (self.w * (self.y - m) ** 2).sum(1)
        return c, m, chi2

    def normal_equations(self, mu, jac, c):
        """Reduced Gauss–Newton system over u with c marginalised (Schur complement)."""
        k = self.basis.shape[1]
        poly = (self.basis @ c.T).T if k else torch.ones_like(mu)
        ju = jac * poly[:, :, None]  # (B, P, F)
        r = self.y - mu * poly
        full = torch.cat([ju, mu[:, :, None] * self.basis[None]], dim=2) if k else ju  # (B, P, F + K)
        fw = (full * self.w[:, :, None]).numpy()
        h = torch.from_numpy(np.matmul(fw.transpose(0, 2, 1), full.numpy()))  # one batched product
        g = torch.from_numpy(np.matmul(fw.transpose(0, 2, 1), r.numpy()[:, :, None])[..., 0])
        nf = ju.shape[2]
        huu, gu = h[:, :nf, :nf], g[:, :nf]
        if k:
            huc, hcc, gc = h[:, :nf, nf:], h[:, nf:, nf:], g[:, nf:]
            huu = huu - huc @ solve_spd(hcc, huc.transpose(1, 2))
            gu = gu - (huc @ solve_spd(hcc, gc)[:, :, None])[..., 0]
        return huu, gu


def _laplace_sigma(h: torch.Tensor, lower, upper) -> torch.Tensor:
    """√diag(H⁻¹) in label units for H in box units (NaN where singular)."""
    try:
        cov = torch.linalg.pinv(h, hermitian=True)
    except RuntimeError:  # pragma: no cover
        return torch.full(h.shape[:2], float("nan"), dtype=h.dtype)
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    return torch.where(var > 0, var.clamp_min(0).sqrt(), torch.full_like(var, float("nan"))) * (upper - lower)


def _prepare(forward, flux, error, noise_level, free, fixed_values):
    names = list(forward.label_names)
    free = [canonical_label(f) for f in free]
    for f in free:
        if f not in names:
            raise InputError(f"free label not in the model (has {names})", field="free_labels", value=f)
    y = np.asarray(flux, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    if y.ndim != 2 or e.shape != y.shape:
        raise InputError("flux and error must both have shape (N, P)", field="flux", value=(y.shape, e.shape))
    if not np.all(np.isfinite(y)):
        raise InputError("non-finite flux", field="flux", value=int((~np.isfinite(y)).sum()))
    good = np.isfinite(e) & (e > 0)
    w = np.where(good, 1.0 / np.where(good, e * noise_level, 1.0) ** 2, 0.0)
    fixed = np.zeros(len(names))
    for j, n in enumerate(names):
        if n not in free:
            lo, hi = forward.bounds[n]
            fixed[j] = fixed_values.get(n, float(np.clip(0.0, lo, hi)))
    free_idx = [names.index(f) for f in free]
    return names, free, free_idx, y, w, fixed


def fit_lm(forward, flux, error, *, free=LABEL_NAMES, fixed_values=None, noise_level: float = 1.0,
           degree: int = 2, n_starts: int = 4, max_iter: int = 30, rng: np.random.Generator | None = None,
           init=None, grid_start: bool = False, tol: float = 1e-9, method: str = "auto",
           polish_steps: int = 2) -> FitResult:
    """Levenberg–Marquardt fit of every spectrum, batched, with several starts.

    Parameters
    ----------
    forward : ForwardModel (differentiable)
    flux, error : (N, P) noisy normalised flux and its 1-σ error at noise level 1
    free : labels to fit; others fixed at ``fixed_values`` (default 0 or the box value nearest 0)
    degree : Legendre flux-correction degree (−1 = none)
    n_starts : starts per spectrum: the box centre, then uniform draws in the inner 80 % of the box
    rng : numpy Generator for the starts (required when n_starts > 1)
    init : optional (N, L) extra start per spectrum (e.g. a network prediction)
    grid_start : replace the box-centre start by the best node of a coarse grid χ² search
        (T_eff 250 K, log g 0.5, [M/H] 0.5 dex; other labels at the box centre), so that
        one start and few iterations suffice (the fast setting of the benchmark)
    tol : relative χ² decrease below which a row counts as quiet (exact path: the fit
        stops when every row was quiet 3 times in a row)
    method : "observed" — search on the observed pixel grid with the emulator's PCA bases
        pushed through the observer (:mod:`specvit.baselines.templatefit_fast`), then
        ``polish_steps`` Gauss–Newton steps with the exact model; "exact" — every step
        with the exact model and its forward-mode AD Jacobian (the reference, ~20-50×
        slower); "auto" — "observed" when the model is a PCA emulator, else "exact"
    polish_steps : exact-model steps after the observed-grid search (0 = return the fast
        model's optimum and χ²); ignored by the exact path
    """
    if not forward.differentiable:
        raise InputError("LM mode needs a differentiable model; use mode 'grid'", field="mode", value="lm")
    names, free, free_idx, y, w, fixed = _prepare(forward, flux, error, noise_level, free, fixed_values or {})
    n, n_pix = y.shape
    lower = torch.as_tensor(forward.lower[free_idx])
    upper = torch.as_tensor(forward.upper[free_idx])
    n_free = len(free_idx)
    observed = _resolve_method(forward, method) == "observed"
    starts = [coarse_grid_start(forward, y, w, free, fixed, degree, fast=observed) if grid_start
              else np.full((n, n_free), 0.5)]
    if n_starts > 1:
        if rng is None:
            raise InputError("several starts need an explicit numpy Generator", field="rng")
        starts += [rng.uniform(0.1, 0.9, size=(n, n_free)) for _ in range(n_starts - 1)]
    if init is not None:
        init = np.asarray(init, dtype=np.float64)[:, free_idx]
        starts.append(np.clip((init - lower.numpy()) / (upper - lower).numpy(), 0, 1))
    s = len(starts)
    # every start and step stays in the model's domain (the emulator: C/O < 1), not only its box
    project = domain_projector(forward, free_idx, fixed, lower.numpy(), upper.numpy())
    if project is not None:
        starts = [project(torch.as_tensor(np.asarray(st, dtype=np.float64))).numpy() for st in starts]
    if observed:

        if polish_steps < 0:
            raise InputError("polish_steps must be >= 0", field="polish_steps", value=polish_steps)
        u_best, chi2_b, h = lm_observed(forward, y, w, np.concatenate(starts), s=s, free_idx=free_idx, fixed=fixed,
                                        lower=lower, upper=upper, basis=legendre_basis(n_pix, degree),
                                        max_iter=max_iter, polish_steps=polish_steps, project=project)
        return _result(forward, names, free_idx, fixed, lower, upper, u_best, chi2_b, h, w, degree)
    u = torch.as_tensor(np.concatenate(starts))  # (S*N, F), start-major
    yt = torch.as_tensor(np.tile(y, (s, 1)))
    wt = torch.as_tensor(np.tile(w, (s, 1)))
    fixed_t = torch.as_tensor(np.tile(fixed, (s * n, 1)))
    prob = _Problem(forward, yt, wt, free_idx, fixed_t, lower, upper, degree)
    lam = torch.full((s * n,), 1e-3, dtype=torch.float64)
    quiet = 0
    for it in range(max_iter):
        mu, jac = prob.mu_and_jac(u)
        mu, jac = mu.detach(), jac.detach()
        c, _, chi2 = prob.profile(mu)
        h, g = prob.normal_equations(mu, jac, c)
        dh = torch.diagonal(h, dim1=-2, dim2=-1).clamp_min(1e-30)
        step = torch.linalg.solve(h + (lam[:, None] * dh + 1e-12 * dh.amax(1, keepdim=True)).diag_embed(), g)
        u_new = (u + step).clamp(0.0, 1.0)
        u_new = project(u_new) if project is not None else u_new
        with torch.no_grad():
            _, _, chi2_new = prob.profile(prob.mu(u_new))
        better = chi2_new < chi2
        u = torch.where(better[:, None], u_new, u)
        lam = torch.where(better, lam / 3, lam * 3).clamp(1e-9, 1e9)
        rel = torch.where(better, (chi2 - chi2_new) / chi2.clamp_min(1e-300), torch.zeros_like(chi2))
        quiet = quiet + 1 if bool((rel < tol).all()) else 0
        if quiet >= 3:
            break
    # best start per spectrum, then Laplace uncertainties there
    chi2_s = chi2.reshape(s, n)
    best = torch.argmin(chi2_s, dim=0)
    rows = best * n + torch.arange(n)
    u_best = u[rows]
    sub = _Problem(forward, yt[rows], wt[rows], free_idx, fixed_t[rows], lower, upper, degree)
    mu, jac = sub.mu_and_jac(u_best)
    mu, jac = mu.detach(), jac.detach()
    c, _, chi2_b = sub.profile(mu)
    h, _ = sub.normal_equations(mu, jac, c)
    return _result(forward, names, free_idx, fixed, lower, upper, u_best, chi2_b, h, w, degree)


def _resolve_method(forward, method: str) -> str:
    from specvit.observe.observed_emulator import supports_observed_basis

    if method not in ("auto", "observed", "exact"):
        raise InputError("unknown LM method (auto, observed, exact)", field="method", value=method)
    ok = supports_observed_basis(forward)
    if method == "observed" and not ok:
        raise InputError("method 'observed' needs a PCA emulator (SpectralEmulator)", field="method",
                         value=type(forward.model).__name__)
    return "observed" if method == "auto" and ok else ("exact" if method == "auto" else method)


def _result(forward, names, free_idx, fixed, lower, upper, u_best, chi2, h, w, degree) -> FitResult:
    """FitResult from the best box-unit labels (N, F), their χ² and Gauss–Newton matrix H (box units)."""
    n = u_best.shape[0]
    labels = np.tile(fixed, (n, 1))
    labels[:, free_idx] = (lower + u_best.detach() * (upper - lower)).numpy()
    sigma = np.full((n, len(names)), np.nan)
    sigma[:, free_idx] = _laplace_sigma(h, lower, upper).detach().numpy()
    at_bound = ((u_best <= 1e-9) | (u_best >= 1 - 1e-9)).any(1).numpy()
    return FitResult(labels=labels, sigma=sigma, chi2=chi2.detach().numpy(), n_pix=int((w > 0).sum(1).max()),
                     n_params=len(free_idx) + max(degree + 1, 0), at_bound=at_bound, label_names=tuple(names))


#: Spacing of the coarse start grid of ``fit_lm(grid_start=True)``: the BOSZ nodes, every other one in [M/H].
START_GRID_STEPS = {"T_eff": BOSZ_STEPS["T_eff"], "log_g": BOSZ_STEPS["log_g"], "M_H": 2 * BOSZ_STEPS["M_H"]}


#: Pixels summed per bin in the start-grid χ² of the observed-grid path (see :func:`coarse_grid_start`).
START_GRID_BIN = 4


def coarse_grid_start(forward, y, w, free, fixed, degree, *, fast: bool = False) -> np.ndarray:
    """Best node of a coarse χ² grid search, as start in box units (N, F).

    ``fast``: the χ² on pixels binned by :data:`START_GRID_BIN` (inverse-variance
    weighted data, mean model per bin) in float32 — an approximation that is only
    used to choose the start node (the fit itself uses every pixel).
    """
    names = list(forward.label_names)
    axes_free = [f for f in free if f in START_GRID_STEPS]
    centre = fixed.copy()
    for f in free:
        centre[names.index(f)] = 0.5 * sum(forward.bounds[f])
    key = ("_specvit_start_grid", tuple(axes_free), tuple(centre))
    cache = forward.__dict__.setdefault("_cache", {})
    if key not in cache:
        _, nodes = grid_nodes(forward, axes_free, START_GRID_STEPS, centre)
        cache[key] = (nodes, forward.numpy(nodes))
    nodes, mu_nodes = cache[key]
    if fast:
        best = _grid_argmin_binned(y, w, mu_nodes, degree, START_GRID_BIN, cache)
    else:
        basis = legendre_basis(y.shape[1], degree).numpy()
        best = np.argmin(_grid_chi2(y, w, mu_nodes, basis), axis=1)
    lab = nodes[best][:, [names.index(f) for f in free]]
    lo, hi = forward.lower[[names.index(f) for f in free]], forward.upper[[names.index(f) for f in free]]
    return np.clip((lab - lo) / (hi - lo), 0.0, 1.0)


def _grid_argmin_binned(y, w, mu_nodes, degree, nbin, cache) -> np.ndarray:
    """argmin over nodes of the profiled χ² on binned pixels, float32 torch (N,)."""
    n, p = y.shape
    nb = p // nbin
    pb = nb * nbin
    key = ("_specvit_start_grid_binned", id(mu_nodes), nbin, degree)
    if key not in cache:  # binned node models (G, nb), their squares, binned basis (nb, K)
        mb = torch.as_tensor(mu_nodes[:, :pb].reshape(len(mu_nodes), nb, nbin).mean(2), dtype=torch.float32)
        basis = legendre_basis(p, degree)[:pb].reshape(nb, nbin, -1).mean(1).to(torch.float32)
        cache[key] = (mb.T.contiguous(), (mb * mb).T.contiguous(), basis)
    mbt, mb2t, basis = cache[key]
    wb = torch.as_tensor(w[:, :pb].reshape(n, nb, nbin).sum(2), dtype=torch.float32)
    wy = torch.as_tensor((w * y)[:, :pb].reshape(n, nb, nbin).sum(2), dtype=torch.float32)  # = wb · ȳ_b
    k = basis.shape[1]
    if k == 0:  # χ² = const − 2 ȳ·μ + μ² with the scale not free
        return torch.argmin(wb @ mb2t - 2 * wy @ mbt, dim=1).numpy()
    b = torch.stack([(wy * basis[:, i]) @ mbt for i in range(k)], dim=-1)  # (N, G, K)
    m = torch.empty(b.shape + (k,), dtype=torch.float32)
    for i, j in itertools.combinations_with_replacement(range(k), 2):
        m[..., i, j] = m[..., j, i] = (wb * basis[:, i] * basis[:, j]) @ mb2t
    eye = torch.eye(k, dtype=torch.float32) * (1e-6 * torch.diagonal(m, dim1=-2, dim2=-1).amax(-1, keepdim=True)[..., None])
    sol = torch.linalg.solve(m + eye, b[..., None])[..., 0]
    return torch.argmax((b * sol).sum(-1), dim=1).numpy()  # max explained = min χ²


def grid_nodes(forward, free, steps: dict, fixed) -> tuple[list[np.ndarray], np.ndarray]:
    """Regular grid over the model box: per-axis node arrays and the (G, L) node labels."""
    names = list(forward.label_names)
    axes = []
    for f in free:
        if f not in steps:
            raise InputError("grid mode needs a step for every free label", field="grid_steps", value=f)
        lo, hi = forward.bounds[f]
        k = int(np.floor((hi - lo) / steps[f] + 1e-9))
        axes.append(lo + steps[f] * np.arange(k + 1))
    mesh = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)
    nodes = np.tile(fixed, (len(mesh), 1))
    nodes[:, [names.index(f) for f in free]] = mesh
    return axes, nodes


def _grid_chi2(y, w, mu_nodes, basis):
    """χ² (N, G) of every spectrum against every node with the flux correction profiled out."""
    yw_y = (w * y * y).sum(1)  # (N,)
    k = basis.shape[1]
    if k == 0:
        return yw_y[:, None] - 2 * (w * y) @ mu_nodes.T + w @ (mu_nodes**2).T
    b = np.stack([(w * y * basis[:, i]) @ mu_nodes.T for i in range(k)], axis=-1)  # (N, G, K)
    m = np.empty(b.shape + (k,))
    mu2 = (mu_nodes**2).T
    for i, j in itertools.combinations_with_replacement(range(k), 2):
        m[..., i, j] = m[..., j, i] = (w * basis[:, i] * basis[:, j]) @ mu2
    sol = np.linalg.solve(m + 1e-12 * np.eye(k) * np.abs(m).max(), b[..., None])[..., 0]
    return yw_y[:, None] - (b * sol).sum(-1)


def fit_grid(forward, flux, error, *, free=("T_eff", "log_g", "M_H"), fixed_values=None, noise_level: float = 1.0,
             degree: int = 1, steps=None, refine: bool = True, batch_size: int = 256) -> FitResult:
    """Grid χ² fit (the paper's template fit), optional parabolic refinement per axis.

    Works with any model (numpy); uncertainties come from the χ² curvature along
    each axis of the refinement parabola combined into a Laplace covariance when
    the model is differentiable, else from the axis curvature alone (conditional σ).
    """
    names, free, free_idx, y, w, fixed = _prepare(forward, flux, error, noise_level, free, fixed_values or {})
    steps = {**BOSZ_STEPS, **(steps or {})}
    axes, nodes = grid_nodes(forward, free, steps, fixed)
    shape = tuple(len(a) for a in axes)
    # nodes outside the model's domain (the emulator: C/O >= 1) are not evaluated; their χ² is +inf
    outside = np.asarray(forward.outside_domain(nodes), dtype=bool) if hasattr(forward, "outside_domain") \
        else np.zeros(len(nodes), bool)
    if outside.all():
        raise InputError("every grid node lies outside the spectral model's domain (C/O >= 1)", field="free_labels",
                         value=list(free))
    mu_in = forward.numpy(nodes[~outside])
    mu_nodes = np.zeros((len(nodes), mu_in.shape[1]))
    mu_nodes[~outside] = mu_in
    basis = legendre_basis(y.shape[1], degree).numpy()
    n = len(y)
    labels = np.tile(fixed, (n, 1))
    sigma = np.full((n, len(names)), np.nan)
    chi2_best = np.empty(n)
    at_bound = np.zeros(n, bool)
    for s0 in range(0, n, batch_size):
        sl = slice(s0, s0 + batch_size)
        chi2 = _grid_chi2(y[sl], w[sl], mu_nodes, basis)  # (B, G)
        chi2[:, outside] = np.inf
        ib = np.argmin(chi2, axis=1)
        chi2_best[sl] = chi2[np.arange(len(ib)), ib]
        multi = np.stack(np.unravel_index(ib, shape), axis=1)  # (B, F)
        cube = chi2.reshape((len(ib),) + shape)
        for a, (f, ax) in enumerate(zip(free, axes)):
            val = ax[multi[:, a]]
            inside = (multi[:, a] > 0) & (multi[:, a] < len(ax) - 1)
            at_bound[sl] |= ~inside
            if refine and inside.any():
                lo_i, hi_i = multi.copy(), multi.copy()
                lo_i[:, a] = np.maximum(multi[:, a] - 1, 0)
                hi_i[:, a] = np.minimum(multi[:, a] + 1, len(ax) - 1)
                rows = np.arange(len(ib))
                c0 = chi2_best[sl]
                cm = cube[(rows, *lo_i.T)]
                cp = cube[(rows, *hi_i.T)]
                curv = cm - 2 * c0 + cp
                ok = inside & (curv > 0) & np.isfinite(curv)  # a neighbour outside the domain: no refinement
                off = np.where(ok, 0.5 * (cm - cp) / np.where(ok, curv, 1.0), 0.0)
                val = val + np.clip(off, -0.5, 0.5) * steps[f]
                # χ² = χ²_min + (Δθ / σ)²: curvature/h² = 2 / σ²  → conditional σ along the axis
                sig = np.where(ok, steps[f] * np.sqrt(2.0 / np.where(ok, curv, 1.0)), np.nan)
                sigma[sl, names.index(f)] = sig
            labels[sl, names.index(f)] = val
    if forward.differentiable:
        lo = torch.as_tensor(forward.lower[free_idx])
        hi = torch.as_tensor(forward.upper[free_idx])
        u = torch.as_tensor((labels[:, free_idx] - lo.numpy()) / (hi - lo).numpy()).clamp(0, 1)
        project = domain_projector(forward, free_idx, fixed, lo.numpy(), hi.numpy())
        if project is not None:  # the curvature offsets of two axes may cross the domain's edge
            u = project(u)
            labels[:, free_idx] = (lo + u * (hi - lo)).numpy()
        prob = _Problem(forward, torch.as_tensor(y), torch.as_tensor(w), free_idx,
                        torch.as_tensor(labels.copy()), lo, hi, degree)
        mu, jac = prob.mu_and_jac(u)
        c, _, _ = prob.profile(mu.detach())
        h, _ = prob.normal_equations(mu.detach(), jac.detach(), c)
        sigma[:, free_idx] = _laplace_sigma(h, lo, hi).detach().numpy()
    return FitResult(labels=labels, sigma=sigma, chi2=chi2_best, n_pix=int((w > 0).sum(1).max()),
                     n_params=len(free) + max(degree + 1, 0), at_bound=at_bound, label_names=tuple(names))


def templatefit_forward(config: TemplateFitConfig, wave=None):
    """The ForwardModel a config asks for: ``default_model()`` through the PFS observer."""
    from specvit.observe.forward import default_forward

    fwd, _ = default_forward(use_observer=config.use_observer, model_spec=config.model)
    return fwd


def forward_wave(forward):
    """The wavelength grid the forward model's spectra are on (the observer's, else the model's), or None."""
    obs = getattr(forward, "observer", None)
    wave = getattr(obs, "wave", None) if obs is not None else getattr(getattr(forward, "model", None), "wave", None)
    return None if wave is None else np.asarray(wave, dtype=np.float64)


def check_input(ds, forward, n: int, n_model_pix: int) -> None:
    """The shared dataset checks before any fit: the model's grid, flux, errors, and the truth labels the file
    has (finite, inside the model's label box)."""
    from specvit.data.checks import check_dataset

    wave = forward_wave(forward)
    truth = [k for k in forward.label_names if k in ds.params.columns]
    check_dataset(ds, role="templatefit input", n_rows=n,
                  ref_wave=wave if wave is not None and len(wave) == n_model_pix else None,
                  ref_name="the spectral model", label_names=truth, label_bounds=dict(forward.bounds))


def run_templatefit(config: TemplateFitConfig, forward=None) -> pd.DataFrame:
    """Fit every spectrum of ``config.input``; return one row per spectrum.

    Columns: ``row`` (index in the dataset), the labels (model order), ``<label>_err``
    for the free labels (Laplace 1-σ), ``chi2``, ``chi2_red``, ``at_bound``, ``snr``
    (median flux/error of the noiseless spectrum at noise level 1 / noise_level),
    and ``true_<label>`` when the dataset has the column. The noisy flux is the fixed
    per-row draw of :func:`specvit.data.fixed_noisy_flux` with ``noise_seed``.
    ``forward`` overrides the model (default: :func:`templatefit_forward`).
    """
    from specvit.data import fixed_noisy_flux, open_dataset
    from specvit.data.checks import patch_masked_errors

    if not config.input:
        raise InputError("templatefit needs an input dataset", field="input", value=config.input)
    forward = forward if forward is not None else templatefit_forward(config)
    rng = np.random.default_rng(config.seed)
    frames = []
    t0 = time.perf_counter()
    with open_dataset(config.input) as ds:
        n = len(ds) if config.max_spectra <= 0 else min(len(ds), config.max_spectra)
        n_model_pix = forward.numpy(np.array([[0.5 * sum(forward.bounds[k]) for k in forward.label_names]])).shape[1]
        if ds.n_wave != n_model_pix:
            raise InputError(f"the dataset has {ds.n_wave} pixels but the model (through the observer: "
                             f"{config.use_observer}) gives {n_model_pix}", file=ds.path, field="spectrumdataset/wave",
                             value=ds.n_wave)
        check_input(ds, forward, n, n_model_pix)
        for s0 in range(0, n, config.batch_size):
            rows = np.arange(s0, min(n, s0 + config.batch_size))
            flux = np.asarray(ds.flux[rows], dtype=np.float64)
            err, masked = patch_masked_errors(np.asarray(ds.error[rows], dtype=np.float64))
            if not np.all(np.isfinite(flux)):
                bad = int(np.argwhere(~np.isfinite(flux))[0, 0])
                raise InputError("NaN in flux", file=ds.path, field="dataset/arrays/flux/value", value=f"row {rows[bad]}")
            noisy = fixed_noisy_flux(flux, err, config.noise_level, rows, config.noise_seed)
            err = np.where(masked, np.nan, err)  # masked pixels: noise drawn as their neighbours', weight 0 in the fit
            if config.mode == "lm":
                res = fit_lm(forward, noisy, err, free=config.free_labels, fixed_values=config.fixed_values,
                             noise_level=config.noise_level, degree=config.flux_correction_degree,
                             n_starts=config.n_starts, max_iter=config.max_iter, rng=rng,
                             grid_start=config.grid_start, method=config.lm_method,
                             polish_steps=config.polish_steps)
            else:
                res = fit_grid(forward, noisy, err, free=config.free_labels, fixed_values=config.fixed_values,
                               noise_level=config.noise_level, degree=config.flux_correction_degree,
                               steps=config.grid_steps, refine=config.parabolic_refine)
            df = res.to_frame(config.free_labels)
            df.insert(0, "row", rows)
            with np.errstate(divide="ignore", invalid="ignore"):
                df["snr"] = np.nanmedian(flux / err, axis=1) / max(config.noise_level, 1e-300)
            for name in forward.label_names:
                if name in ds.params.columns:
                    df[f"true_{name}"] = ds.params[name].to_numpy()[rows]
            frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.attrs["seconds"] = time.perf_counter() - t0
    out.attrs["config"] = dataclasses.asdict(config)
    return out


def templatefit_table(df, label_names=None):
    """Convert :func:`run_templatefit` output to the shared prediction table.

    Template-fit columns ``<label>``, ``<label>_err``, ``true_<label>`` become
    ``<label>_pred``, ``<label>_sigma``, ``<label>_true`` for every label that has a truth
    column; ``row``, ``snr``, ``chi2``, ``chi2_red``, ``at_bound`` are kept. A label's
    ``_sigma`` is kept only when every value is finite and > 0 (else calibration is skipped).
    Returns ``(table, labels)``.
    """
    names = [n for n in (label_names or LABEL_NAMES) if n in df.columns and f"true_{n}" in df.columns]
    out = pd.DataFrame({c: df[c] for c in ("row", "snr") if c in df.columns})
    for n in names:
        out[f"{n}_true"] = df[f"true_{n}"].to_numpy(dtype=float)
        out[f"{n}_pred"] = df[n].to_numpy(dtype=float)
        if f"{n}_err" in df.columns:
            s = df[f"{n}_err"].to_numpy(dtype=float)
            if np.all(np.isfinite(s) & (s > 0)):
                out[f"{n}_sigma"] = s
    for c in ("chi2", "chi2_red", "at_bound"):
        if c in df.columns:
            out[c] = df[c].to_numpy()
    return out, names


def finish_templatefit(cfg, df) -> None:
    """Write the template fit's predictions (shared table format) and metrics beside ``cfg.output``."""
    from pathlib import Path

    from specvit.baselines.common import write_csv, write_json
    from specvit.scores import evaluate_predictions

    output = getattr(cfg, "output", "")
    if not output:
        print(f"templatefit: fitted {len(df)} spectra (no output file configured)")
        return
    table, names = templatefit_table(df, getattr(cfg, "free_labels", None))
    write_csv(output, table)
    if names:
        free = [n for n in names if n in getattr(cfg, "free_labels", names)]
        snr = "snr" if "snr" in table.columns else None
        metrics = {"model": "templatefit", "labels": free,
                   "test": evaluate_predictions(table, free, snr, 0),
                   "noise_seed": getattr(cfg, "noise_seed", None), "seconds": df.attrs.get("seconds")}
        mpath = Path(output).with_suffix(".metrics.json")
        write_json(mpath, metrics)
        for n in free:
            print(f"templatefit: test {n}: R2 = {metrics['test']['labels'][n]['overall']['r2']:.4f}")
        print(f"templatefit: wrote {output} and {mpath}")
