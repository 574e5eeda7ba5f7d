"""Fisher information, Schur-complement marginalisation, Cramér–Rao and van Trees bounds.

Everything here is plain linear algebra over a batch of points; the Jacobian
and the noise come from :mod:`specvit.observe.forward` and the observer.

For Gaussian noise with a fixed covariance Σ = diag((noise_level · error)²),
the Fisher information of the labels θ (Kay 1993, eq. 3.31) is

    I(θ) = Jᵀ Σ⁻¹ J,        J = ∂μ/∂θ  (μ: noiseless observed spectrum).

The information on one label g, with the nuisance labels e free, is the Schur
complement I_eff = I_gg − I_ge I_ee⁻¹ I_eg; CRLB = 1 / I_eff bounds the variance
of any *unbiased* estimator, σ_min = √CRLB and R²_max = clip(1 − CRLB / Var(g), 0, 1).

The Bayesian (van Trees 1968; Gill & Levit 1995) bound holds for *every*
estimator, biased or not, when θ is drawn from a prior π with finite Fisher
information J_π:

    E[(θ̂ − θ)(θ̂ − θ)ᵀ] ⪰ (E_π[I(θ)] + J_π)⁻¹.

A uniform box prior has infinite J_π (its density jumps at the edges), so we use
:class:`SmoothBoxPrior`: flat in the middle, cos²-tapered to zero at the edges.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from specvit.errors import InputError
from specvit.labels import canonical_label

#: Relative size below which an effective information is treated as zero (label unconstrained).
UNCONSTRAINED_RTOL = 1e-10


def fisher_matrix(jac, error, *, noise_level: float = 1.0) -> np.ndarray:
    """Fisher information I = Jᵀ Σ⁻¹ J for a batch of points.

    Parameters
    ----------
    jac : array (N, P, L)
        ∂μ/∂θ: derivative of the noiseless (normalised) flux in each of P pixels
        with respect to L labels, in flux units per label unit.
    error : array (N, P) or (P,)
        1-σ flux error at noise_level 1, same flux units as ``jac``. Pixels with
        error <= 0 or non-finite error carry no information (masked).
    noise_level : float
        The noise multiplier (Σ = (noise_level · error)²).

    Returns
    -------
    ndarray (N, L, L), in 1 / (label unit)².
    """
    jac = np.asarray(jac, dtype=np.float64)
    if jac.ndim != 3:
        raise InputError("Jacobian must have shape (N, P, L)", field="jac", value=tuple(jac.shape))
    err = np.asarray(error, dtype=np.float64)
    if err.ndim == 1:
        err = np.broadcast_to(err, jac.shape[:2])
    if err.shape != jac.shape[:2]:
        raise InputError(f"error must have shape {jac.shape[:2]}", field="error", value=tuple(err.shape))
    if not np.all(np.isfinite(jac)):
        raise InputError("non-finite Jacobian entry", field="jac", value=int((~np.isfinite(jac)).sum()))
    if not noise_level > 0:
        raise InputError("noise_level must be > 0", field="noise_level", value=noise_level)
    good = np.isfinite(err) & (err > 0)
    w = np.where(good, 1.0 / np.where(good, err * noise_level, 1.0) ** 2, 0.0)
    jw = jac * w[:, :, None]
    return np.einsum("npl,npk->nlk", jw, jac, optimize=True)


def fisher_matrices(jac, errors, *, noise_level: float = 1.0) -> np.ndarray:
    """Fisher matrices for one Jacobian and M error spectra at once: (M, N, L, L).

    ``jac`` (N, P, L); ``errors`` (M, N, P) (e.g. one per magnitude: the Jacobian of
    the normalised flux does not depend on the magnitude, only Σ does). Same masking
    and units as :func:`fisher_matrix`; one batched matrix product over all M.
    """
    jac = np.asarray(jac, dtype=np.float64)
    err = np.asarray(errors, dtype=np.float64)
    if jac.ndim != 3 or err.ndim != 3 or err.shape[1:] != jac.shape[:2]:
        raise InputError(f"need jac (N, P, L) and errors (M, N, P) with (N, P) = {jac.shape[:2]}", field="errors",
                         value=tuple(err.shape))
    if not np.all(np.isfinite(jac)):
        raise InputError("non-finite Jacobian entry", field="jac", value=int((~np.isfinite(jac)).sum()))
    n_lab = jac.shape[2]
    good = np.isfinite(err) & (err > 0)
    w = np.where(good, 1.0 / np.where(good, err * noise_level, 1.0) ** 2, 0.0)  # (M, N, P)
    import torch

    iu, ju = np.triu_indices(n_lab)
    jt = torch.from_numpy(jac)
    outer = jt[:, :, iu] * jt[:, :, ju]  # (N, P, Q) unique products
    upper = torch.bmm(torch.from_numpy(np.ascontiguousarray(w.transpose(1, 0, 2))), outer)  # (N, M, Q)
    info = np.empty((err.shape[0], jac.shape[0], n_lab, n_lab))
    upper = upper.numpy().transpose(1, 0, 2)
    info[:, :, iu, ju] = upper
    info[:, :, ju, iu] = upper
    return info


def fisher_from_weights(jac, weights, *, block: int = 16) -> np.ndarray:
    """I[m, n] = Σ_p w[m, n, p] J[n, :, p] J[n, :, p]ᵀ for a label-major Jacobian: (M, N, L, L).

    ``jac`` (N, L, P) (label-major, as :meth:`ForwardModel.observed_jacobian` returns it);
    ``weights`` (M, N, P) = 1 / σ² (0 masks a pixel). One batched (L × P)(P × L) product per
    magnitude over blocks of ``block`` points (cache-sized), float64 throughout. Same
    result as :func:`fisher_matrices` (tested).
    """
    import torch

    jac = np.asarray(jac, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if jac.ndim != 3 or w.ndim != 3 or w.shape[1] != jac.shape[0] or w.shape[2] != jac.shape[2]:
        raise InputError(f"need jac (N, L, P) and weights (M, N, P) with N, P = {jac.shape[0]}, {jac.shape[-1]}",
                         field="weights", value=tuple(w.shape))
    n, n_lab, _ = jac.shape
    jac, w = (np.require(a, requirements=["W"]) for a in (jac, w))  # torch needs writable arrays
    jt, wt = torch.from_numpy(jac), torch.from_numpy(w)
    info = torch.empty((w.shape[0], n, n_lab, n_lab), dtype=torch.float64)
    for s in range(0, n, block):
        j = jt[s:s + block]
        jtr = j.transpose(1, 2)
        for m in range(w.shape[0]):
            torch.bmm(j * wt[m, s:s + block, None, :], jtr, out=info[m, s:s + block])
    info = info.numpy()
    return 0.5 * (info + info.swapaxes(-1, -2))  # exactly symmetric


def resolve_free(label_names: Sequence[str], target: str, free: Sequence[str] | str) -> tuple[int, list[int]]:
    """Indices of the target label and of the free labels (target first).

    ``free`` is a list of label names, or ``"3d"`` (T_eff, log_g, M_H) or ``"5d"``
    (all five); labels not in ``free`` are held fixed (known exactly).
    """
    names = list(label_names)
    target = canonical_label(target)
    if isinstance(free, str):
        key = free.lower()
        if key == "3d":
            free = ["T_eff", "log_g", "M_H"]
        elif key == "5d":
            free = ["T_eff", "log_g", "M_H", "a_M", "C_M"]
        else:
            raise InputError("nuisance set must be '3d', '5d' or a list of labels", field="nuisance", value=free)
    free = [canonical_label(f) for f in free]
    for f in [target, *free]:
        if f not in names:
            raise InputError(f"label not in this model (has {names})", field="label", value=f)
    if target not in free:
        free = [target, *free]
    idx = [names.index(target)] + [names.index(f) for f in free if f != target]
    return names.index(target), idx


def _scaled_pinv(mat: np.ndarray, rcond: float = 1e-12) -> np.ndarray:
    """Pseudo-inverse of a batch of symmetric PSD matrices after diagonal rescaling.

    Labels have very different units (K vs dex), so the matrix is first scaled to
    unit diagonal; a direction with no information (zero diagonal) stays zero.
    """
    d = np.sqrt(np.clip(np.einsum("...ii->...i", mat), 0, None))
    d = np.where(d > 0, d, 1.0)
    scaled = mat / d[..., :, None] / d[..., None, :]
    inv = np.linalg.pinv(scaled, rcond=rcond, hermitian=True)
    return inv / d[..., :, None] / d[..., None, :]


def schur_complement(info, target: int = 0, nuisance: Sequence[int] = ()) -> np.ndarray:
    """Effective information on label ``target`` with labels ``nuisance`` marginalised.

    I_eff = I_gg − I_ge I_ee⁺ I_eg (pseudo-inverse, so a nuisance with no
    information does not make the result NaN). Shape (N,) for info (N, L, L).
    """
    info = np.asarray(info, dtype=np.float64)
    squeeze = info.ndim == 2
    if squeeze:
        info = info[None]
    nuisance = [int(i) for i in nuisance if int(i) != int(target)]
    igg = info[:, target, target]
    if not nuisance:
        out = igg.copy()
    else:
        iee = info[:, nuisance][:, :, nuisance]
        ige = info[:, target, nuisance]
        out = igg - np.einsum("ni,nij,nj->n", ige, _scaled_pinv(iee), ige)
    out = np.where(out > UNCONSTRAINED_RTOL * np.abs(igg), out, 0.0)
    return out[0] if squeeze else out


@dataclass
class Bound:
    """Per-point Cramér–Rao results for one label (arrays of shape (N,)).

    ``unconstrained`` flags points where the label carries no information
    (I_eff = 0): there σ_min = inf, CRLB = inf and R²_max = 0, never NaN.
    """

    label: str
    i_gg: np.ndarray  #: unmarginalised information, 1 / unit²
    i_eff: np.ndarray  #: Schur-complement information, 1 / unit²
    crlb: np.ndarray  #: 1 / i_eff, unit²
    sigma_min: np.ndarray  #: √CRLB, label unit
    r2max: np.ndarray  #: clip(1 − CRLB / label_var, 0, 1)
    schur_decay: np.ndarray  #: i_eff / i_gg (0 where i_gg = 0)
    unconstrained: np.ndarray  #: bool
    label_var: float  #: Var(label) used for R², unit²


def r2_max(crlb, label_var: float) -> np.ndarray:
    """R²_max = clip(1 − CRLB / Var(label), 0, 1) (inf CRLB → 0)."""
    if not (np.isfinite(label_var) and label_var > 0):
        raise InputError("label variance must be finite and > 0", field="label_var", value=label_var)
    crlb = np.asarray(crlb, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        r2 = 1.0 - crlb / label_var
    return np.clip(np.where(np.isfinite(r2), r2, 0.0), 0.0, 1.0)


def crlb_bound(info, *, target: int, free: Sequence[int], label_var: float, label: str = "") -> Bound:
    """Cramér–Rao bound on label ``target`` with the other labels in ``free`` marginalised.

    Labels not in ``free`` are treated as known (their rows/columns are dropped).
    """
    info = np.asarray(info, dtype=np.float64)
    if info.ndim == 2:
        info = info[None]
    free = [int(target)] + [int(i) for i in free if int(i) != int(target)]
    sub = info[:, free][:, :, free]
    i_eff = schur_complement(sub, 0, range(1, len(free)))
    i_gg = sub[:, 0, 0]
    unconstrained = ~(i_eff > 0)
    with np.errstate(divide="ignore"):
        crlb = np.where(unconstrained, np.inf, 1.0 / np.where(unconstrained, 1.0, i_eff))
        decay = np.where(i_gg > 0, i_eff / np.where(i_gg > 0, i_gg, 1.0), 0.0)
    return Bound(
        label=label, i_gg=i_gg, i_eff=i_eff, crlb=crlb, sigma_min=np.sqrt(crlb), r2max=r2_max(crlb, label_var),
        schur_decay=decay, unconstrained=unconstrained, label_var=float(label_var),
    )


# ---------------------------------------------------------------------------------------------
# Bayesian bound
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmoothBoxPrior:
    """A box prior on [low, high] with cos²-tapered edges: finite Fisher information.

    Density: flat plateau of height c = 1 / (w − δ) on [low + δ, high − δ]; over the
    taper of width δ = taper_fraction · w at each edge it rises as c · sin²(π u / 2δ)
    (u = distance from the edge), so it is continuous with a continuous derivative.
    Its Fisher information (∫ p′² / p) is J = π² / (δ (w − δ)); taper_fraction = 0.5 is
    the cos² prior of van Trees' textbook example (J = 4π² / w²). As taper_fraction → 0
    it tends to the uniform box and J → ∞.
    """

    low: float
    high: float
    taper_fraction: float = 0.5

    def __post_init__(self):
        if not self.high > self.low:
            raise InputError("prior needs high > low", field="prior", value=(self.low, self.high))
        if not 0 < self.taper_fraction <= 0.5:
            raise InputError("taper_fraction must be in (0, 0.5]", field="taper_fraction", value=self.taper_fraction)

    @property
    def width(self) -> float:
        return self.high - self.low

    @property
    def delta(self) -> float:
        return self.taper_fraction * self.width

    @property
    def fisher_information(self) -> float:
        """J_π = ∫ (∂ log p / ∂θ)² p dθ = π² / (δ (w − δ)), 1 / unit²."""
        return float(np.pi**2 / (self.delta * (self.width - self.delta)))

    def pdf(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        c = 1.0 / (self.width - self.delta)
        u = np.minimum(x - self.low, self.high - x)
        taper = c * np.sin(np.pi * np.clip(u, 0, None) / (2 * self.delta)) ** 2
        out = np.where(u >= self.delta, c, taper)
        return np.where((x >= self.low) & (x <= self.high), out, 0.0)

    def _grid(self, n: int = 20001):
        x = np.linspace(self.low, self.high, n)
        return x, self.pdf(x)

    @property
    def mean(self) -> float:
        return 0.5 * (self.low + self.high)

    @property
    def variance(self) -> float:
        """Var_π(θ), unit² (by quadrature; symmetric prior)."""
        x, p = self._grid()
        return float(np.trapezoid((x - self.mean) ** 2 * p, x) / np.trapezoid(p, x))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n draws by inverse-CDF on a fine grid (rng passed explicitly)."""
        x, p = self._grid()
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(x))])
        cdf /= cdf[-1]
        return np.interp(rng.random(n), cdf, x)


@dataclass
class BayesBound:
    """van Trees bound on the prior-averaged MSE of one label, valid for any estimator."""

    label: str
    mse_bound: float  #: [(E_π I + J_π)⁻¹]_gg, unit²
    sigma_bound: float  #: √mse_bound
    r2max: float  #: 1 − mse_bound / Var_π(g)
    prior_var: float  #: Var_π(g), unit²
    mean_information: float  #: (E_π I)_eff for the free set, 1 / unit² (no prior term)
    prior_information: float  #: J_π of the target label, 1 / unit²


def van_trees_bound(info, *, target: int, free: Sequence[int], priors: dict[int, SmoothBoxPrior],
                    weights=None, label: str = "") -> BayesBound:
    """Multivariate van Trees bound for label ``target``.

    ``info`` (N, L, L) are Fisher matrices at N points that sample the prior —
    either drawn from it (``weights=None``) or spread uniformly over the box and
    reweighted with ``weights`` ∝ π(θ) (see :func:`prior_weights`). ``priors``
    gives an independent :class:`SmoothBoxPrior` for every free label, so J_π is
    diagonal. Returns the bound on E[(θ̂_g − θ_g)²] averaged over the prior.
    """
    info = np.asarray(info, dtype=np.float64)
    if info.ndim == 2:
        info = info[None]
    free = [int(target)] + [int(i) for i in free if int(i) != int(target)]
    missing = [i for i in free if i not in priors]
    if missing:
        raise InputError("a prior is needed for every free label", field="priors", value=missing)
    if weights is None:
        weights = np.ones(len(info))
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(info),) or not np.all(weights >= 0) or weights.sum() <= 0:
        raise InputError("weights must be >= 0, one per point, not all zero", field="weights", value=weights.shape)
    sub = info[:, free][:, :, free]
    mean_i = np.einsum("n,nij->ij", weights / weights.sum(), sub)
    jp = np.diag([priors[i].fisher_information for i in free])
    b_eff = float(schur_complement(mean_i + jp, 0, range(1, len(free))))
    mean_eff = float(schur_complement(mean_i, 0, range(1, len(free))))
    mse = 1.0 / b_eff
    pv = priors[int(target)].variance
    return BayesBound(label=label, mse_bound=mse, sigma_bound=float(np.sqrt(mse)), r2max=float(max(0.0, 1 - mse / pv)),
                      prior_var=pv, mean_information=mean_eff, prior_information=priors[int(target)].fisher_information)


def prior_weights(points: np.ndarray, priors: dict[int, SmoothBoxPrior]) -> np.ndarray:
    """Importance weights ∝ Π π_l(θ_l) for points spread uniformly over the box."""
    w = np.ones(len(points))
    for i, p in priors.items():
        w = w * p.pdf(points[:, i])
    return w
