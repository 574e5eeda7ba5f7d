"""Fast μ(θ) and ∂μ/∂θ of a PCA emulator on the observed pixel grid (the template fit's inner loop).

The emulator (:mod:`specvit.spectra.emulator`) writes the model-grid flux as

    F(λ) = n(λ) · C(λ),   n = n̄ + Σ_k a_k(θ) B_k,   ln C = ln πB_λ(T_eff) + c̄ + Σ_k b_k(θ) D_k

and the observer maps it with one linear operator R (LSF + pixel integration, rows
summing to 1; ``PFSObserver.resample_matrix``), then divides by the median
(:class:`specvit.observe.forward.ForwardModel`). Exactly, f = R(n · C): every
evaluation and every Jacobian column costs an (n_model = 10,357)-pixel PCA product,
exponential and sparse product per spectrum. Here the bases are pushed through R once::

    f̃ = max(R n, 0) · exp(R ln C),   R n = R n̄ + Σ a_k (R B_k),
    R ln C ≈ R c̄ + Σ b_k (R D_k) + ln πB_λ(T_eff) at λ_eff = R λ

so μ̃ = 0.5 f̃ / median(f̃) and its Jacobian (analytic in a, b, T_eff; da/dθ and db/dθ
by forward-mode AD through the emulator's small MLP only) live on the 4,096 observed
pixels. Three approximations, all of the same kind (the continuum is smooth on the
scale of one LSF kernel, ~30 model pixels):

1. R(n · C) ≈ (R n)(R C): exact if C is constant over a kernel; the error is the
   kernel covariance of n and C;
2. R C ≈ exp(R ln C) (error ≈ ½ kernel variance of ln C);
3. R ln πB(T) ≈ ln πB(λ_eff, T) (error ≈ ½ ∂²_λ ln B · kernel variance of λ);

plus the emulator's clip n ≥ 0, applied after R instead of before (active in ~0.2 %
of uniform label draws, on a few pixels). Measured for the shipped emulator through
the PFS MR observer on 500 uniform draws (``max_relative_error``, 2026-11-23): rms
|μ̃ − μ| / median(μ) ≈ 1e-5, median per-spectrum maximum 7e-5, maximum 2e-3 —
below the noise by a factor ≥ 10 at SNR ≤ 50 on every pixel. The template fit
uses μ̃ only to *find* the minimum; it then takes Gauss–Newton steps with the exact
model (:func:`specvit.baselines.templatefit.fit_lm`, ``polish_steps``), so the
returned labels and χ² are those of the exact model.

ln πB_λ(T) at λ_eff is evaluated as a degree-8 Chebyshev series in 1/T whose coefficient rows are appended to
the continuum basis (``planck_series``, default): the Planck term then costs eight basis rows in the one
product instead of a division, an expm1 and a log per pixel and evaluation (2.6× less CPU per μ̃ of the
posterior's draws, 2026-12-08). Not an approximation at float32 precision: the series equals the closed form
to 1.6e-9 in ln πB over the model's T_eff box ± 1 % (the float32 closed form: 2.3e-6); the closed form
stays the reference (``planck_series=False``) and is used for T_eff outside that range.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from specvit.errors import InputError
from specvit.physics import HC_OVER_K_A_K, LN_PI_2HC2_PER_A, dln_pi_planck_dteff
from specvit.observe.observer import NORMALISED_MEDIAN

#: Degree of the Chebyshev series of ln πB_λ(T) in 1/T, and the margin of its T range around the model box
#: (relative; outside it the closed form is used).
PLANCK_SERIES_DEGREE = 8
PLANCK_T_MARGIN = 0.01

_REQUIRED = ("coefficients", "coeffs_and_tangents", "norm_mean", "norm_basis", "lncont_mean", "lncont_basis",
             "lncont_baseline", "wave")


def supports_observed_basis(forward) -> bool:
    """True if ``forward.model`` is a PCA emulator of the form above (attributes present, Planck or no baseline)."""
    m = forward.model
    return (bool(getattr(forward, "differentiable", False)) and all(hasattr(m, a) for a in _REQUIRED)
            and getattr(m, "lncont_baseline", None) in ("planck", "none"))


def median_indices(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel indices (N,), (N,) of the lower and upper middle values of f (N, P) (equal for odd P).

    One partial sort at the upper middle (the lower middle is the maximum of the lower part, as
    :func:`specvit.observe.observer.median_rows`): ~4× less CPU than two ``torch.kthvalue``.
    """
    a = f.detach().numpy()
    p = a.shape[1]
    idx = np.argpartition(a, p // 2, axis=1)
    hi = idx[:, p // 2]
    if p % 2:
        return torch.from_numpy(hi), torch.from_numpy(hi)
    below = idx[:, : p // 2]
    lo = below[np.arange(len(a)), np.take_along_axis(a, below, 1).argmax(1)]
    return torch.from_numpy(lo), torch.from_numpy(hi)


class ObservedEmulator:
    """μ̃(θ) (normalised flux on the observed grid) and ∂μ̃/∂θ for a PCA emulator seen through an observer.

    Parameters
    ----------
    forward : :class:`~specvit.observe.forward.ForwardModel` whose model is a
        :class:`~specvit.spectra.emulator.SpectralEmulator` (or has its PCA attributes);
        ``forward.observer`` None means the model's own grid (R = identity: then only
        the clip approximation remains).
    dtype : torch dtype of the pixel arithmetic (float32: the emulator's own precision).
    planck_series : ln πB_λ(T) as a Chebyshev series in 1/T inside the continuum basis product (default;
        ~2.6× less CPU per evaluation) or, False, by its closed form at every pixel (the reference; the
        series is used only for T inside the model box ± 1 %, the closed form outside).
    """

    def __init__(self, forward, *, dtype=torch.float32, planck_series: bool = True):
        if not supports_observed_basis(forward):
            raise InputError("the fast observed-grid path needs a PCA emulator (SpectralEmulator)", field="model",
                             value=type(forward.model).__name__)
        m = forward.model
        self.model = m
        self.dtype = dtype
        wave = np.asarray(m.wave, dtype=np.float64)
        if forward.observer is None:
            r = sp.identity(len(wave), format="csr", dtype=np.float64)
        else:
            r = forward.observer.resample_matrix.astype(np.float64)

        def push(a):  # (K, n_model) -> (K, P) = (R a^T)^T, float64 then dtype
            a = np.asarray(torch.as_tensor(a).double().numpy())
            return torch.as_tensor(np.asarray(r @ a.T).T.copy(), dtype=dtype)

        self.n_basis = push(m.norm_basis)  # (K, P)
        self.n_mean = push(m.norm_mean[None])[0]  # (P,)
        self.c_basis = push(m.lncont_basis)  # (K_c, P)
        self.c_mean = push(m.lncont_mean[None])[0]
        rows = np.asarray(r.sum(axis=1)).ravel()
        self.wave_eff = np.asarray(r @ wave).ravel() / rows  # λ_eff = R λ / R 1, Angstrom
        self.planck = m.lncont_baseline == "planck"
        self._hck_over_wave = torch.as_tensor(HC_OVER_K_A_K / self.wave_eff, dtype=dtype)
        self._ln_planck_num = torch.as_tensor(LN_PI_2HC2_PER_A - 5 * np.log(self.wave_eff * 1e-8), dtype=dtype)
        self.n_pix = len(self.wave_eff)
        self.n_components = int(self.n_basis.shape[0])
        # ln πB_λ(T) on the pixels as a Chebyshev series in u = 1/T (see _planck_series): appended to the
        # continuum basis, so the Planck term costs basis rows instead of an expm1 and a log per pixel and draw
        self.planck_t_range = (float(m.bounds[m.label_names[0]][0]) * (1 - PLANCK_T_MARGIN),
                               float(m.bounds[m.label_names[0]][1]) * (1 + PLANCK_T_MARGIN))
        self._planck_u_range = (1.0 / self.planck_t_range[1], 1.0 / self.planck_t_range[0])  # u = 1/T, ascending
        self.planck_series = bool(planck_series) and self.planck
        if self.planck_series:
            coef = self._planck_series_coefficients()  # (D + 1, P) float64
            self.c_mean_planck = torch.as_tensor(np.asarray(self.c_mean, np.float64) + coef[0], dtype=dtype)
            self.c_basis_planck = torch.cat([self.c_basis, torch.as_tensor(coef[1:], dtype=dtype)])

    # ------------------------------------------------------------------ core
    def _coefficients(self, labels: torch.Tensor, tangents: torch.Tensor | None):
        """(a, b) (N, K), (N, K_c) and, with tangents (F, L), their directional derivatives (N, F, K[_c])."""
        x = labels.to(self.dtype)
        if tangents is None:
            with torch.no_grad():
                a, b = self.model.coefficients(x)
            return a.to(self.dtype), b.to(self.dtype), None, None
        c, dc = self.model.coeffs_and_tangents(x, tangents)
        k, t = self.n_components, self.dtype
        return c[:, :k].to(t), c[:, k:].to(t), dc[:, :, :k].to(t), dc[:, :, k:].to(t)

    def _ln_planck(self, teff: torch.Tensor) -> torch.Tensor:
        """ln πB_λ(T) at λ_eff, (N, P): the closed form (the reference of the series below)."""
        return self._ln_planck_num - torch.log(torch.expm1(self._hck_over_wave / teff[:, None]))

    def _planck_s(self, teff: torch.Tensor) -> torch.Tensor:
        """The series variable s ∈ [−1, 1]: u = 1/T mapped linearly from [1/T_hi, 1/T_lo]."""
        u_lo, u_hi = self._planck_u_range
        return (2.0 / teff.double() - (u_lo + u_hi)) / (u_hi - u_lo)

    def _planck_series_coefficients(self) -> np.ndarray:
        """(D + 1, P) float64 Chebyshev coefficients c_k(λ) with ln πB_λ(T) = Σ_k c_k(λ) T_k(s(T)).

        Interpolation at the D + 1 Chebyshev nodes in u = 1/T; −ln(e^x − 1) with x = hc/(λkT) is analytic in
        u on the whole range, so the series converges geometrically: D = 8 leaves 1.6e-9 (max over the pixels
        and T in the range; tests/test_observe.py checks < 1e-7), below the float32 rounding of ln πB (~35:
        ~2e-6) that the closed form in float32 has.
        """
        d = PLANCK_SERIES_DEGREE
        nodes = np.cos(np.pi * (np.arange(d + 1) + 0.5) / (d + 1))
        u_lo, u_hi = self._planck_u_range
        teff = 1.0 / (0.5 * (u_lo + u_hi) + 0.5 * (u_hi - u_lo) * nodes)
        x = HC_OVER_K_A_K / (self.wave_eff[None, :] * teff[:, None])
        ln_b = LN_PI_2HC2_PER_A - 5 * np.log(self.wave_eff * 1e-8)[None, :] - np.log(np.expm1(x))
        return np.linalg.solve(np.polynomial.chebyshev.chebvander(nodes, d), ln_b)

    def _planck_terms(self, teff: torch.Tensor, with_derivative: bool):
        """T_1..T_D at s(T) (N, D) in float64 and, if asked, their derivatives d/dT (N, D), per K."""
        s = self._planck_s(teff)
        d = PLANCK_SERIES_DEGREE
        t = [torch.ones_like(s), s]
        dt = [torch.zeros_like(s), torch.ones_like(s)]  # d T_k / ds
        for _ in range(2, d + 1):
            t.append(2 * s * t[-1] - t[-2])
            dt.append(2 * t[-2] + 2 * s * dt[-1] - dt[-2])
        terms = torch.stack(t[1:], 1)
        if not with_derivative:
            return terms, None
        u_lo, u_hi = self._planck_u_range
        ds_dt = -2.0 / (teff.double() ** 2 * (u_hi - u_lo))
        return terms, torch.stack(dt[1:], 1) * ds_dt[:, None]

    def _dln_planck_dT(self, teff: torch.Tensor) -> torch.Tensor:
        """∂ ln πB_λ / ∂T at λ_eff, (N, P), per K."""
        return dln_pi_planck_dteff(None, teff[:, None], x=self._hck_over_wave / teff[:, None])

    def flux(self, labels, free_idx=None, *, jacobian: bool = False, tangent_scale=None):
        """Un-normalised f̃ (N, P) and, if asked, ∂f̃/∂θ_free (N, F, P), in the pixel dtype.

        ``tangent_scale`` (F,) multiplies each Jacobian column (e.g. the box widths, for
        derivatives with respect to box units); default 1 (label units).
        """
        labels = torch.as_tensor(labels)
        if labels.ndim != 2 or labels.shape[1] != len(self.model.label_names):
            raise InputError(f"labels must have shape (N, {len(self.model.label_names)})", field="labels",
                             value=tuple(labels.shape))
        self.model.check_labels(labels.detach().cpu().numpy(), extrapolate=False)
        free_idx = list(range(labels.shape[1])) if free_idx is None else list(free_idx)
        scale = (torch.ones(len(free_idx), dtype=torch.float64) if tangent_scale is None
                 else torch.as_tensor(tangent_scale, dtype=torch.float64))
        tangents = None
        if jacobian:
            tangents = torch.zeros(len(free_idx), labels.shape[1], dtype=torch.float64)
            tangents[range(len(free_idx)), free_idx] = scale
        a, b, da, db = self._coefficients(labels, tangents)
        teff = labels[:, 0].to(torch.float64)  # T_eff is label 0 of the emulator
        c_mean, c_basis = self.c_mean, self.c_basis
        closed_form = False  # ln πB by its closed form (T outside the series' range: never inside the model box)
        if self.planck:
            t_lo, t_hi = self.planck_t_range
            if self.planck_series and bool(((teff >= t_lo) & (teff <= t_hi)).all()):  # ln πB in the basis product
                terms, dterms = self._planck_terms(teff, jacobian and 0 in free_idx)
                b = torch.cat([b, terms.to(self.dtype)], 1)
                if jacobian:
                    dt = torch.zeros(len(teff), len(free_idx), terms.shape[1], dtype=self.dtype)
                    if 0 in free_idx:
                        j = free_idx.index(0)
                        dt[:, j] = (dterms * float(scale[j])).to(self.dtype)
                    db = torch.cat([db, dt], 2)
                c_mean, c_basis = self.c_mean_planck, self.c_basis_planck
            else:
                closed_form = True
        if jacobian:  # one product per basis for the value and all tangents
            nn_ = torch.cat([a[:, None], da], dim=1) @ self.n_basis  # (N, 1 + F, P)
            lc = torch.cat([b[:, None], db], dim=1) @ c_basis
            n, dn = nn_[:, 0] + self.n_mean, nn_[:, 1:]
            lnc, dlnc = lc[:, 0] + c_mean, lc[:, 1:]
        else:
            n = torch.addmm(self.n_mean, a, self.n_basis)
            lnc = torch.addmm(c_mean, b, c_basis)
        if closed_form:
            lnc = lnc + self._ln_planck(teff.to(self.dtype))
        cont = lnc.exp_()
        clipped = bool(n.amin() < 0)
        n_clip = n.clamp_min(0.0) if clipped else n
        if not jacobian:  # n and cont are not needed again: in place
            return n_clip.mul_(cont), None
        f = n_clip * cont
        if closed_form and 0 in free_idx:
            j = free_idx.index(0)
            dlnc[:, j] += self._dln_planck_dT(teff.to(self.dtype)) * float(scale[j])
        if clipped:  # the clip's derivative: 0 where n < 0 (as autograd through clamp)
            dn = dn * (n > 0)[:, None]
        df = dn.mul_(cont[:, None]).add_(dlnc.mul_(f[:, None]))
        return f, df

    def evaluate(self, labels, free_idx=None, *, jacobian: bool = True, normalise: str = "median",
                 tangent_scale=None):
        """μ̃ (N, P) and ∂μ̃/∂θ_free (N, F, P) (or None) in the pixel dtype.

        normalise : "median" — 0.5 / median, as the observer (mean of the two middle
            pixels), differentiated as in ``ForwardModel.value_and_jacobian``;
            "mean" — 0.5 / mean(f̃) held constant (not differentiated): only for fits whose
            multiplicative flux correction has a constant term, where the profiled χ²
            and the marginal Laplace σ do not depend on a per-spectrum scale.
        """
        f, df = self.flux(labels, free_idx, jacobian=jacobian, tangent_scale=tangent_scale)
        if normalise == "mean":
            nu = NORMALISED_MEDIAN / f.mean(1)
            return f * nu[:, None], (None if df is None else df.mul_(nu[:, None, None]))
        if normalise != "median":
            raise InputError("normalise must be 'median' or 'mean'", field="normalise", value=normalise)
        lo, hi = median_indices(f)
        rows = torch.arange(f.shape[0])
        med = 0.5 * (f[rows, lo] + f[rows, hi])
        nu = NORMALISED_MEDIAN / med
        mu = f * nu[:, None]
        if df is None:
            return mu, None
        dmed = 0.5 * (df[rows, :, lo] + df[rows, :, hi])  # (N, F)
        jac = (df - f[:, None] * (dmed / med[:, None])[:, :, None]).mul_(nu[:, None, None])
        return mu, jac

    def value_and_jacobian(self, labels, free_idx=None, *, jacobian: bool = True):
        """float64 μ̃ (N, P) and ∂μ̃/∂θ_free (N, P, F) in label units (the layout of ``ForwardModel``)."""
        mu, jac = self.evaluate(torch.as_tensor(labels), free_idx, jacobian=jacobian)
        return mu.double(), (None if jac is None else jac.transpose(1, 2).double())

    def max_relative_error(self, forward, labels) -> np.ndarray:
        """Per spectrum max_p |μ̃ − μ_exact| / median(μ_exact) against ``forward.numpy`` (the exact path)."""
        exact = forward.numpy(labels)
        fast = self.value_and_jacobian(torch.as_tensor(np.asarray(labels, dtype=np.float64)), jacobian=False)[0]
        return np.abs(fast.numpy() - exact).max(1) / np.median(exact, axis=1)
