"""``specvit baseline bayes``: the posterior over the five labels under the simulator's own model and prior.

Model (what ``specvit simulate`` does, SPEC section 3)::

    θ ~ π(θ)  (the dataset's ``labels`` prior: per-axis uniform or scaled beta, independent)
    y = μ(θ) + noise_level · e ⊙ z,   z ~ N(0, I)

μ(θ) is the noiseless normalised flux of the single forward model
(:class:`specvit.observe.forward.ForwardModel`: emulator → LSF + pixel integration → ÷ median, the
exact normalisation the simulator applies) and e the stored per-pixel 1σ error. So the likelihood is
exactly ``N(y | μ(θ), (noise_level · e)²)``: no flux correction, no free scale.

What else the simulator draws, and how it enters (the table of ``docs/bayes.md``):

- redshift z, reddening E(B−V): change μ (Doppler shift, CCM89 reddening) → **conditioned on** the
  dataset's values (a radial velocity from cross-correlation, E(B−V) from a dust map). Only the
  simulator's defaults z = 0, E(B−V) = 0 are implemented: other values are an error naming the row
  (the forward model's differentiable μ has z = 0 and no reddening).
- magnitude, exposure count/time, seeing, airmass (zenith angle; atmospheric extinction k(λ)X),
  fibre field angle, Moon: multiply the electrons (response) or add background; μ is normalised by
  the noiseless median, so they change σ only, never μ → enter through σ, which is **conditioned
  on** (the stored error array, what every baseline sees; it is the noise model at the true spectrum).
- the noise draw z: the likelihood.

Method: batched adaptive importance sampling (multiple importance sampling, balance heuristic):

1. modes: Levenberg–Marquardt on the fast observed-grid emulator (the template fit's search,
   :func:`specvit.baselines.templatefit_fast.lm_observed`, no flux correction), one search per start
   (coarse-grid node; that node with [α/M], [C/M] at the corners of their range; random), exact-model
   polish; Laplace covariance H_k⁻¹ = (J̃ᵀ Σ⁻¹ J̃)⁻¹ at every local mode θ̂_k;
2. round 1: ``n_samples`` draws from (1 − α) · T + α · π (defensive prior component), T the equal mixture
   over modes of a narrow t_ν(θ̂_k, s² H_k⁻¹) and a wide t_ν(θ̂_k, ``wide_scale``² H_k⁻¹) (sds capped at the
   prior's);
   round r > 1, only for spectra whose ESS is still below ``min_ess``, ``n_samples`` more draws from an equal
   mixture of t components built from all draws so far (:func:`_adapted_components`): covariance C = the
   weighted covariance shrunk towards the Laplace one, (ESS · C_w + k₀ · H⁻¹) / (ESS + k₀); t(weighted mean,
   s² C), a wide t(weighted mean, (2s)² C) and six t(θ*_k, 0.5² C) at draws resampled by weight (several modes,
   curved ridges), plus the defensive prior component;
3. weights π(θ) L(θ) / q̄(θ), q̄ = Σ_r (M_r / M) q_r (every draw against every round's proposal), draws
   outside the prior's support weigh 0;
4. log L with μ̃(θ) + [μ(θ̂) − μ̃(θ̂)]: the fast model plus its error at the mode from one exact
   evaluation per spectrum (``likelihood="corrected"``, default); "exact" evaluates the exact model at
   every draw (~5× slower), "fast" drops the correction.

Output per spectrum and label: posterior mean, sd, median, 2.5/16/84/97.5 percentiles (weighted), the
Kish effective sample size of the weights, and a ``flag``: ``ok``; ``bad_input`` (non-finite flux, error
≤ 0 or non-finite: the row is not fitted, every number is NaN); ``low_ess`` (ESS < ``min_ess`` after
``max_rounds``: the numbers are there but not trusted); ``poor_fit`` (χ² at the mode more than 5σ above
its expectation: the spectrum is not described by any model inside the prior's support).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from specvit.errors import InputError
from specvit.labels import LABEL_NAMES, MAX_C_TO_O, c_to_o, outside_domain

#: Percentiles written per label (posterior quantiles, %).
PERCENTILES = (2.5, 16.0, 50.0, 84.0, 97.5)
#: Pixels × draws evaluated at once, at least one spectrum's draws (float32: 4096 px × 512 draws = 8 MB per
#: array; smaller blocks stay in cache: 1.1× faster than 2,048, measured 2026-12-08).
_EVAL_ROWS = 512


@dataclass
class PriorAxis:
    """One label's prior: uniform on [low, high] or beta(a, b) scaled to it (``specvit simulate``'s LabelDist)."""

    low: float
    high: float
    dist: str = "uniform"
    beta_a: float = 1.0
    beta_b: float = 1.0

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        w = self.high - self.low
        u = (x - self.low) / w
        inside = (u >= 0) & (u <= 1)
        out = np.full(x.shape, -np.inf)
        if self.dist == "uniform":
            out[inside] = -math.log(w)
            return out
        a, b = self.beta_a, self.beta_b
        lnb = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
        ui = np.clip(u[inside], 1e-300, 1 - 1e-16)
        out[inside] = (a - 1) * np.log(ui) + (b - 1) * np.log1p(-ui) - lnb - math.log(w)
        return out

    def sample(self, rng: np.random.Generator, n) -> np.ndarray:
        u = rng.beta(self.beta_a, self.beta_b, n) if self.dist == "beta" else rng.random(n)
        return self.low + u * (self.high - self.low)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        from scipy import stats

        u = np.clip((np.asarray(x, float) - self.low) / (self.high - self.low), 0, 1)
        return u if self.dist == "uniform" else stats.beta.cdf(u, self.beta_a, self.beta_b)


class Prior:
    """Per-label prior in the model's label order, truncated to the physical domain C/O < ``max_c_to_o``.

    The density is the product of the per-label densities times 1[C/O < max_c_to_o] / Z, with Z the
    product prior's mass inside the domain (:func:`specvit.labels.outside_domain`; the joint constraint
    of ``specvit simulate``'s prior, which redraws label sets outside it). Z is estimated once from
    2·10⁵ draws of a fixed-seed generator (relative error ~1e-3; it only enters the defensive
    component's density). ``max_c_to_o=None``: no truncation.
    """

    def __init__(self, axes: dict[str, PriorAxis], label_names, *, max_c_to_o: float | None = MAX_C_TO_O):
        self.label_names = tuple(label_names)
        missing = [n for n in self.label_names if n not in axes]
        if missing:
            raise InputError("the prior has no distribution for a label of the model", field="prior", value=missing)
        self.axes = [axes[n] for n in self.label_names]
        self.lower = np.array([a.low for a in self.axes])
        self.upper = np.array([a.high for a in self.axes])
        self.max_c_to_o = max_c_to_o
        self.log_mass = 0.0
        if max_c_to_o is not None:
            draws = np.stack([a.sample(np.random.default_rng(20261207), 200_000) for a in self.axes], axis=-1)
            frac = float(np.mean(~self._outside(draws)))
            if frac <= 0:
                raise InputError("the prior has no mass inside the physical domain C/O < max_c_to_o",
                                 field="labels.max_c_to_o", value=max_c_to_o)
            self.log_mass = math.log(frac)

    def _outside(self, x: np.ndarray) -> np.ndarray:
        if self.max_c_to_o is None:
            return np.zeros(x.shape[:-1], dtype=bool)
        flat = x.reshape(-1, x.shape[-1])
        return outside_domain(flat, self.label_names, max_c_to_o=self.max_c_to_o).reshape(x.shape[:-1])

    def into_domain(self, x: np.ndarray) -> np.ndarray:
        """``x`` (…, L) with label sets outside the domain moved to its edge along [C/M] (a start, not a draw)."""
        if self.max_c_to_o is None or "C_M" not in self.label_names or "a_M" not in self.label_names:
            return x
        x = np.array(x, dtype=np.float64)
        j, ja = self.label_names.index("C_M"), self.label_names.index("a_M")
        bad = self._outside(x)
        edge = x[..., ja] + math.log10(self.max_c_to_o / c_to_o(np.zeros((1, len(self.label_names))),
                                                                  self.label_names)[0]) - 0.02
        x[..., j] = np.where(bad, np.maximum(edge, self.lower[j]), x[..., j])
        return x

    @classmethod
    def from_simulate_config(cls, labels_cfg: dict, label_names) -> "Prior":
        axes = {}
        for name in label_names:
            d = labels_cfg.get(name)
            if d is None:
                raise InputError("the dataset's simulate config has no prior for a label", field=f"labels.{name}")
            axes[name] = PriorAxis(float(d["low"]), float(d["high"]), str(d.get("dist", "uniform")),
                                   float(d.get("beta_a", 1.0)), float(d.get("beta_b", 1.0)))
        # datasets simulated before the domain existed record no limit: the model refuses C/O >= 1 anyway
        return cls(axes, label_names, max_c_to_o=labels_cfg.get("max_c_to_o", MAX_C_TO_O))

    @classmethod
    def box(cls, forward) -> "Prior":
        return cls({n: PriorAxis(*forward.bounds[n]) for n in forward.label_names}, forward.label_names,
                   max_c_to_o=getattr(forward.model, "max_c_to_o", MAX_C_TO_O))

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        """(…, L) → (…,) log density (−inf outside the support: the box and the C/O domain)."""
        lp = sum(a.logpdf(x[..., j]) for j, a in enumerate(self.axes)) - self.log_mass
        return np.where(self._outside(x), -np.inf, lp)

    def sample(self, rng, shape) -> np.ndarray:
        """Draws of the truncated prior: product-prior draws, those outside the domain redrawn (in rounds)."""
        out = np.stack([a.sample(rng, shape) for a in self.axes], axis=-1)
        for _ in range(1000):
            bad = self._outside(out)
            if not bad.any():
                return out
            k = int(bad.sum())
            out[bad] = np.stack([a.sample(rng, k) for a in self.axes], axis=-1)
        raise InputError("cannot draw from the prior inside the C/O domain", field="labels.max_c_to_o",
                         value=self.max_c_to_o)

    def describe(self) -> dict:
        return {**{n: dataclasses.asdict(a) for n, a in zip(self.label_names, self.axes)},
                "max_c_to_o": self.max_c_to_o}


@dataclass
class BayesConfig:
    """Config of ``specvit baseline bayes`` (YAML + ``--set key=value``).

    Attributes
    ----------
    input, output : dataset to fit; catalogue CSV ('' = do not write; metrics JSON beside it)
    model : spectral model ('default' = the embedded emulator)
    prior : 'dataset' (the ``labels`` prior of the dataset's ``specvit simulate`` config) or 'box'
        (uniform over the model's label box)
    n_samples : importance draws per round and spectrum
    max_rounds : adaptation rounds (a spectrum stops when its ESS reaches ``min_ess``)
    min_rounds : rounds every spectrum makes (≥ 2: the proposal is always adapted once to the weighted draws)
    min_ess : Kish effective sample size below which a spectrum is adapted again, and flagged at the end
    adapt_shrink : pseudo-count k₀ of the Laplace covariance in an adapted round's covariance (0: the old rule,
        the weighted covariance when ESS > 5, else the Laplace one)
    adapt_wide : inflation of the wide component of an adapted round (0: none)
    adapt_kernels, adapt_kernel_scale : components at draws resampled by weight per adapted round, and their
        scale h (covariance h² C)
    proposal_df, proposal_scale : Student-t degrees of freedom and covariance inflation s of the proposal
    wide_scale : inflation of the wide first-round component per mode (sds capped at the prior's)
    defensive_fraction : weight α of the prior component of every proposal (heavy tails, multimodality)
    n_starts, max_iter, polish_steps : the mode search (template fit's observed-grid LM; first start = best
        coarse-grid node, then uniform in the inner 80 % of the box); every start's local mode is one component
        of the first proposal
    likelihood : 'corrected' | 'fast' | 'exact' (see the module doc)
    poor_fit_sigma : flag ``poor_fit`` when (χ²_mode − n_pix) / √(2 n_pix) exceeds this
    noise_level, noise_seed : noisy = flux + noise_level · error · z with the fixed per-row draw (as every
        baseline; use the same seed as they do)
    seed : seed of the proposal draws; batch_size : spectra per batch; max_spectra : first N only (0 = all)
    """

    input: str = ""
    output: str = ""
    model: str = "default"
    prior: str = "dataset"
    n_samples: int = 384
    max_rounds: int = 6
    min_rounds: int = 1
    min_ess: float = 200.0
    proposal_df: float = 5.0
    proposal_scale: float = 1.3
    wide_scale: float = 4.0
    defensive_fraction: float = 0.1
    adapt_shrink: float = 10.0
    adapt_wide: float = 2.0
    adapt_kernels: int = 6
    adapt_kernel_scale: float = 0.5
    n_starts: int = 5
    max_iter: int = 30
    polish_steps: int = 2
    likelihood: str = "corrected"
    poor_fit_sigma: float = 5.0
    noise_level: float = 1.0
    noise_seed: int = 0
    seed: int = 42
    batch_size: int = 64
    max_spectra: int = 0

    def __post_init__(self):
        for name in ("n_samples", "max_rounds", "min_rounds", "n_starts", "max_iter", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise InputError("must be >= 1", field=name, value=getattr(self, name))
        if self.prior not in ("dataset", "box"):
            raise InputError("prior must be 'dataset' or 'box'", field="prior", value=self.prior)
        if self.likelihood not in ("corrected", "fast", "exact"):
            raise InputError("likelihood must be corrected, fast or exact", field="likelihood", value=self.likelihood)
        if not 0 < self.defensive_fraction < 1:
            raise InputError("must be in (0, 1)", field="defensive_fraction", value=self.defensive_fraction)
        if not self.proposal_df > 0 or not self.proposal_scale > 0:
            raise InputError("must be > 0", field="proposal_df/proposal_scale",
                             value=(self.proposal_df, self.proposal_scale))
        if not self.noise_level > 0:
            raise InputError("noise_level must be > 0 (the likelihood needs noise)", field="noise_level",
                             value=self.noise_level)
        for name in ("adapt_shrink", "adapt_wide", "adapt_kernels"):
            if not getattr(self, name) >= 0:
                raise InputError("must be >= 0", field=name, value=getattr(self, name))
        if not self.adapt_kernel_scale > 0:
            raise InputError("must be > 0", field="adapt_kernel_scale", value=self.adapt_kernel_scale)


@dataclass
class PosteriorResult:
    """Posterior summaries of N spectra (label order = ``label_names``)."""

    label_names: tuple
    mean: np.ndarray  #: (N, L)
    sd: np.ndarray  #: (N, L)
    quantiles: np.ndarray  #: (N, L, len(PERCENTILES))
    ess: np.ndarray  #: (N,) Kish effective sample size of the final weights
    n_draws: np.ndarray  #: (N,) draws used
    rounds: np.ndarray  #: (N,) proposal rounds
    mode: np.ndarray  #: (N, L) the mode of the likelihood (LM search)
    chi2_mode: np.ndarray  #: (N,) χ² at the mode (exact model)
    n_pix: np.ndarray  #: (N,) pixels with a usable error
    flag: np.ndarray  #: (N,) str
    pit: np.ndarray | None = None  #: (N, L) posterior CDF at the truth (when truths were given)
    samples: list | None = None  #: per spectrum (draws (M, L), normalised weights (M,)) if kept

    def to_frame(self) -> pd.DataFrame:
        cols = {}
        for j, n in enumerate(self.label_names):
            cols[f"{n}_mean"] = self.mean[:, j]
            cols[f"{n}_sd"] = self.sd[:, j]
            for k, p in enumerate(PERCENTILES):
                cols[f"{n}_q{p:g}"] = self.quantiles[:, j, k]
            cols[f"{n}_mode"] = self.mode[:, j]
        cols.update({"ess": self.ess, "n_draws": self.n_draws, "rounds": self.rounds, "chi2_mode": self.chi2_mode,
                     "chi2_red_mode": self.chi2_mode / np.maximum(self.n_pix - len(self.label_names), 1),
                     "flag": self.flag})
        return pd.DataFrame(cols)


# ----------------------------------------------------------------------------- proposal densities
def _t_logpdf(x, mean, chol, df):
    """Multivariate Student-t log density; x (N, M, F), mean (N, F), chol (N, F, F) of the scale matrix."""
    f = x.shape[-1]
    d = x - mean[:, None, :]
    inv = torch.linalg.inv(chol)  # (N, F, F): tiny; one batched product beats a batched triangular solve
    z = d @ inv.transpose(1, 2)  # (N, M, F)
    q = (z * z).sum(-1)
    logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)[:, None]
    c = math.lgamma((df + f) / 2) - math.lgamma(df / 2) - 0.5 * f * math.log(df * math.pi)
    return c - logdet - 0.5 * (df + f) * torch.log1p(q / df)


def _t_sample(rng, mean, chol, df, m):
    n, f = mean.shape
    z = torch.as_tensor(rng.standard_normal((n, m, f)))
    g = torch.as_tensor(rng.chisquare(df, (n, m, 1)) / df)
    return mean[:, None, :] + (z @ chol.transpose(1, 2)) / torch.sqrt(g)


def _safe_chol(cov):
    """Cholesky of (N, F, F) covariances, eigenvalues floored (relative 1e-10) where needed."""
    cov = 0.5 * (cov + cov.transpose(1, 2))
    evals, evecs = torch.linalg.eigh(cov)
    floor = evals.amax(-1, keepdim=True).clamp_min(1e-300) * 1e-10
    evals = torch.maximum(evals, floor)
    return torch.linalg.cholesky((evecs * evals[:, None, :]) @ evecs.transpose(1, 2))


# ----------------------------------------------------------------------------- likelihood
class _Likelihood:
    """log L(θ) = −½ Σ_p w_p (y_p − μ(θ)_p)² for N spectra at (N, M, L) draws."""

    def __init__(self, forward, y, w, mode_labels, kind: str):
        from specvit.baselines.templatefit_fast import exact_mu, observed_emulator

        self.forward, self.kind = forward, kind
        self.fast = observed_emulator(forward) if kind != "exact" else None
        self.y = torch.as_tensor(y, dtype=torch.float32)
        self.w = torch.as_tensor(w, dtype=torch.float32)
        self.delta = None
        self.mode = np.asarray(mode_labels, dtype=np.float64)  # a point of the support per spectrum
        if kind == "corrected":  # the fast model's error at the mode, from one exact evaluation per spectrum
            mu_exact = exact_mu(forward, torch.as_tensor(mode_labels)).to(torch.float32)
            mu_fast = self.fast.evaluate(torch.as_tensor(mode_labels), jacobian=False)[0]
            self.delta = mu_exact - mu_fast
        # what μ(θ) is compared with: y − δ (δ = 0 unless corrected), once per spectrum instead of per draw
        self.target = self.y if self.delta is None else (torch.as_tensor(y, dtype=torch.float64)
                                                         - self.delta.double()).to(torch.float32)

    def _mu(self, lab: np.ndarray) -> torch.Tensor:
        """μ (M, P) float32 at label sets (M, L): the exact model, or the fast one normalised as the observer does."""
        from specvit.baselines.templatefit_fast import exact_mu
        from specvit.observe.observer import median_rows

        if self.kind == "exact":
            return exact_mu(self.forward, torch.as_tensor(lab)).to(torch.float32)
        with torch.no_grad():
            f = self.fast.flux(torch.as_tensor(lab), jacobian=False)[0]
        # the median as the observer takes it (mean of the two middle pixels; one partial sort); f scaled in place
        mid = median_rows(f.numpy()).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):  # median 0 (emulator clip, box corners): NaN → −inf
            return f.mul_(torch.from_numpy((0.5 / mid).astype(np.float32))[:, None])

    def __call__(self, theta: np.ndarray, ok: np.ndarray, lower, upper) -> np.ndarray:
        """theta (N, M, L), ok (N, M) bool (inside the support): log L (N, M), −inf where not ok.

        Spectra are evaluated in groups with all their draws (no gathers of the data rows); draws outside
        the support (the box or the C/O domain) are evaluated at the spectrum's mode instead and get −inf.
        """
        n, m, nl = theta.shape
        out = np.full((n, m), -np.inf)
        todo = np.flatnonzero(ok.any(1))
        g = max(1, _EVAL_ROWS // m)
        for s in range(0, len(todo), g):
            ii = todo[s:s + g]
            lab = np.where(ok[ii][:, :, None], np.clip(theta[ii], lower, upper), self.mode[ii][:, None, :]).reshape(-1, nl)
            r = self._mu(lab).reshape(len(ii), m, -1)  # μ, then in place: (μ − y')², y' = y − δ per spectrum
            r -= self.target[ii][:, None]
            r *= r
            chi2 = torch.einsum("nmp,np->nm", r, self.w[ii]).double().numpy()
            out[ii] = np.where(ok[ii] & np.isfinite(chi2), -0.5 * chi2, -np.inf)
        return out


# ----------------------------------------------------------------------------- weighted summaries
def weighted_quantiles(x: np.ndarray, w: np.ndarray, qs) -> np.ndarray:
    """x (M,), normalised w (M,) → quantiles qs (fractions) by the weighted empirical CDF (midpoint rule)."""
    o = np.argsort(x)
    xs, ws = x[o], w[o]
    c = np.cumsum(ws) - 0.5 * ws
    return np.interp(qs, c, xs)


def _summaries(theta, logw, truth=None):
    """Per spectrum: mean, sd, quantiles, ESS, PIT of the truth from draws (N, M, L) and log weights (N, M)."""
    n, m, nl = theta.shape
    lw = logw - logw.max(1, keepdims=True)
    w = np.exp(lw)
    w /= w.sum(1, keepdims=True)
    ess = 1.0 / (w * w).sum(1)
    mean = np.einsum("nm,nml->nl", w, theta)
    sd = np.sqrt(np.maximum(np.einsum("nm,nml->nl", w, (theta - mean[:, None]) ** 2), 0))
    qs = np.asarray(PERCENTILES) / 100.0
    quant = np.empty((n, nl, len(qs)))
    pit = None if truth is None else np.empty((n, nl))
    for i in range(n):
        for j in range(nl):
            quant[i, j] = weighted_quantiles(theta[i, :, j], w[i], qs)
            if pit is not None:
                below = theta[i, :, j] < truth[i, j]
                pit[i, j] = w[i][below].sum()
    return mean, sd, quant, ess, pit, w


def _adapted_components(theta, wn, mean, ess, mode, cov_laplace, cfg, rng, widened):
    """The t components of an adapted round (equal weights), from the weighted pooled draws of every spectrum.

    The covariance is the weighted covariance of the draws shrunk towards the Laplace covariance at the best
    mode, C = (ESS · C_w + k₀ · C_Laplace) / (ESS + k₀) with k₀ = ``adapt_shrink`` (a few heavy draws do not
    collapse the proposal onto them). Components: t(weighted mean, s² C); with ``adapt_wide`` > 0 also
    t(weighted mean, (adapt_wide · s)² C) (sds capped at the prior's); with ``adapt_kernels`` = K > 0 also K
    components t(θ*_k, h² C) at draws θ*_k resampled by weight (systematic resampling; h = ``adapt_kernel_scale``),
    which follow several modes and curved ridges that one t does not.
    """
    n, mt, nl = theta.shape
    s2 = cfg.proposal_scale ** 2
    wn = np.nan_to_num(wn, nan=0.0)  # a spectrum without one finite weight (ESS NaN) gets the Laplace rule
    d = np.nan_to_num(theta - mean[:, None], nan=0.0)
    cov_w = torch.as_tensor(np.einsum("nm,nmi,nmj->nij", wn, d, d))
    e = torch.as_tensor(np.nan_to_num(ess, nan=0.0))[:, None, None]
    k0 = float(cfg.adapt_shrink)
    c = (e * cov_w + k0 * cov_laplace) / (e + k0) if k0 > 0 else torch.where(e > 5, cov_w, cov_laplace)
    centre = torch.as_tensor(np.where(np.isfinite(mean) & (np.nan_to_num(ess) > 5)[:, None], mean, mode))
    comps = [(centre, _safe_chol(c * s2))]
    if cfg.adapt_wide > 0:
        comps.append((centre, _safe_chol(widened(c * s2, cfg.adapt_wide))))
    kk = int(cfg.adapt_kernels)
    if kk > 0:
        cdf = np.cumsum(wn, axis=1)
        cdf[:, -1] = 1.0  # (a spectrum without weights resamples its last draw: harmless, its draws are −inf)
        u = (rng.random((n, 1)) + np.arange(kk)[None, :]) / kk  # systematic resampling
        idx = np.minimum(np.array([np.searchsorted(cdf[i], u[i]) for i in range(n)]), mt - 1)  # (n, K)
        pts = theta[np.arange(n)[:, None], idx]  # (n, K, L)
        ch = _safe_chol(c * cfg.adapt_kernel_scale ** 2)
        comps += [(torch.as_tensor(pts[:, j]), ch) for j in range(kk)]
    return comps


# ----------------------------------------------------------------------------- the posterior
def posterior(forward, flux, error, *, prior: Prior | None = None, config: BayesConfig | None = None,
              rng: np.random.Generator | None = None, truth=None, keep_samples: bool = False) -> PosteriorResult:
    """Posterior of every spectrum's labels (all free) under ``prior`` with the exact Gaussian likelihood.

    flux, error : (N, P) noisy normalised flux and its 1σ error at noise level 1 (σ = noise_level · error).
    truth : optional (N, L) true labels: the PIT (posterior CDF at the truth) for calibration checks.
    Rows with non-finite flux or a non-finite / non-positive error are flagged ``bad_input`` (NaN numbers).
    """
    from specvit.baselines.templatefit import coarse_grid_start, legendre_basis
    from specvit.baselines.templatefit_fast import domain_projector, lm_observed

    cfg = config or BayesConfig()
    prior = prior or Prior.box(forward)
    rng = rng if rng is not None else np.random.default_rng(cfg.seed)
    names = list(forward.label_names)
    nl = len(names)
    y = np.asarray(flux, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    if y.ndim != 2 or e.shape != y.shape:
        raise InputError("flux and error must both have shape (N, P)", field="flux", value=(y.shape, e.shape))
    lo_box, hi_box = forward.lower, forward.upper
    if np.any(prior.lower < lo_box - 1e-9) or np.any(prior.upper > hi_box + 1e-9):
        raise InputError("the prior's support exceeds the spectral model's label box", field="prior",
                         value={"prior": [prior.lower.tolist(), prior.upper.tolist()],
                                "model": [lo_box.tolist(), hi_box.tolist()]})
    n_all = len(y)
    bad = ~(np.all(np.isfinite(y), 1) & np.all(np.isfinite(e) & (e > 0), 1))
    good = np.flatnonzero(~bad)
    res = PosteriorResult(label_names=tuple(names), mean=np.full((n_all, nl), np.nan), sd=np.full((n_all, nl), np.nan),
                          quantiles=np.full((n_all, nl, len(PERCENTILES)), np.nan), ess=np.full(n_all, np.nan),
                          n_draws=np.zeros(n_all, int), rounds=np.zeros(n_all, int), mode=np.full((n_all, nl), np.nan),
                          chi2_mode=np.full(n_all, np.nan), n_pix=np.full(n_all, y.shape[1]),
                          flag=np.where(bad, "bad_input", "ok").astype(object),
                          pit=None if truth is None else np.full((n_all, nl), np.nan),
                          samples=[None] * n_all if keep_samples else None)
    if len(good) == 0:
        return res
    y, e = y[good], e[good]
    w = 1.0 / (cfg.noise_level * e) ** 2
    n, p = y.shape
    # ---- 1. mode and Laplace covariance (box units of the PRIOR's support)
    lower = torch.as_tensor(prior.lower)
    upper = torch.as_tensor(prior.upper)
    scale = (upper - lower)
    fixed = 0.5 * (prior.lower + prior.upper)
    free_idx = list(range(nl))
    starts = [coarse_grid_start(forward, y, w, names, fixed, -1, fast=True)]
    # the grid start is in the model box's units: map into the prior's
    starts[0] = np.clip((lo_box + starts[0] * (hi_box - lo_box) - prior.lower) / (prior.upper - prior.lower), 0, 1)
    # further starts: the grid node with the labels the coarse grid does not scan ([α/M], [C/M], the worst
    # constrained and the ones whose secondary modes the validation found) moved to other corners of their
    # range, then uniform draws in the inner 80 % of the box
    unscanned = [j for j, nm in enumerate(names) if nm not in ("T_eff", "log_g", "M_H")]
    corners = [(0.15, 0.15), (0.85, 0.85), (0.15, 0.85), (0.85, 0.15)]
    for k in range(cfg.n_starts - 1):
        if k < len(corners) and unscanned:
            st = starts[0].copy()
            for j, c in zip(unscanned, corners[k]):
                st[:, j] = c
            starts.append(st)
        else:
            starts.append(rng.uniform(0.1, 0.9, size=(n, nl)))
    span = prior.upper - prior.lower  # starts outside the C/O domain moved to its edge (the fit stays inside)
    starts = [(prior.into_domain(prior.lower + st * span) - prior.lower) / span for st in starts]
    # one search per start, every local mode kept: each becomes a component of the first proposal
    box_var = torch.as_tensor((prior.upper - prior.lower) ** 2 / 12.0)
    modes, covs, chi2s = [], [], []
    project = domain_projector(forward, free_idx, fixed, prior.lower, prior.upper)  # steps stay where the model is valid
    for st in starts:
        u, chi2_k, h = lm_observed(forward, y, w, st, s=1, free_idx=free_idx, fixed=fixed, lower=lower, upper=upper,
                                   basis=legendre_basis(p, -1), max_iter=cfg.max_iter, polish_steps=cfg.polish_steps,
                                   project=project)
        cov = torch.linalg.pinv(h, hermitian=True) * scale[None, :, None] * scale[None, None, :]  # label units
        # the posterior cannot be wider than the prior: cap the Laplace sds at the prior box's (flat directions)
        sd = torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(1e-300))
        capped = torch.minimum(sd, box_var.sqrt())
        cov = cov / (sd[:, :, None] * sd[:, None, :]) * capped[:, :, None] * capped[:, None, :]
        modes.append((lower + u * scale).numpy())
        covs.append(cov)
        chi2s.append(chi2_k.numpy())
    best = np.argmin(np.stack(chi2s), axis=0)
    mode = np.stack(modes)[best, np.arange(n)]
    chi2 = torch.as_tensor(np.stack(chi2s)[best, np.arange(n)])
    cov = torch.stack(covs)[torch.as_tensor(best), torch.arange(n)]
    like = _Likelihood(forward, y, w, mode, cfg.likelihood)
    # ---- 2-3. adaptive importance sampling, all rounds pooled (balance heuristic)
    s2 = cfg.proposal_scale ** 2
    alpha, df, m = cfg.defensive_fraction, cfg.proposal_df, cfg.n_samples
    # per round: a list of equally weighted t components (mean (n, L), chol (n, L, L)); round 1: one per start
    # per mode a narrow component (s² H⁻¹) and a wide one (``wide_scale``² H⁻¹, sds capped at the prior's): the
    # wide one reaches the flat ridges along poorly constrained labels that the Laplace curvature does not see
    box_sd = box_var.sqrt()

    def widened(c, f):
        sd_c = torch.sqrt(torch.diagonal(c, dim1=-2, dim2=-1).clamp_min(1e-300))
        new_sd = torch.minimum(sd_c * f, box_sd)
        return c / (sd_c[:, :, None] * sd_c[:, None, :]) * new_sd[:, :, None] * new_sd[:, None, :]

    comps = [[(torch.as_tensor(mk), _safe_chol(ck * s2)) for mk, ck in zip(modes, covs)]
             + [(torch.as_tensor(mk), _safe_chol(widened(ck, cfg.wide_scale))) for mk, ck in zip(modes, covs)]]
    theta = np.zeros((n, 0, nl))
    logpl = np.zeros((n, 0))  # log prior + log likelihood
    lprior = np.zeros((n, 0))  # log prior density (−inf outside the support)
    lq_rounds: list[np.ndarray] = []  # per round: log density of every draw so far under that round's proposal
    active = np.arange(n)
    rounds = np.zeros(n, int)

    def round_logq(th, lp_th, round_comps):
        """log of round r's proposal (1 − α) · (equal mixture of its t components) + α · prior at draws th."""
        th_t = torch.as_tensor(th)
        lt = torch.stack([_t_logpdf(th_t, mu_c, ch_c, df) for mu_c, ch_c in round_comps])
        lt = torch.logsumexp(lt, dim=0) - math.log(len(round_comps))
        return torch.logaddexp(math.log1p(-alpha) + lt, math.log(alpha) + torch.as_tensor(lp_th)).numpy()

    for r in range(cfg.max_rounds):
        # draw for every spectrum (shape-regular arrays); inactive spectra's new draws get weight −inf
        k = rng.binomial(m, alpha, size=n)  # draws from the prior component
        t = np.stack([_t_sample(rng, mu_c, ch_c, df, m).numpy() for mu_c, ch_c in comps[-1]])  # (K, n, m, L)
        t = t[np.arange(m) % len(comps[-1]), :, np.arange(m)].transpose(1, 0, 2)  # draw j from component j mod K
        pr = prior.sample(rng, (n, m))
        take_prior = np.arange(m)[None, :] < k[:, None]
        new = np.where(take_prior[:, :, None], pr, t)
        lp = prior.logpdf(new)
        ok = np.isfinite(lp)
        ok[np.setdiff1d(np.arange(n), active)] = False
        ll = like(new, ok, prior.lower, prior.upper)
        theta = np.concatenate([theta, new], 1)
        lprior = np.concatenate([lprior, lp], 1)
        logpl = np.concatenate([logpl, np.where(ok, lp + ll, -np.inf)], 1)
        rounds[active] += 1
        # mixture density of every draw under every round's proposal, rounds weighted by their draw counts
        # (each round's density of the earlier draws is kept; only the new draws are evaluated under old rounds)
        for i in range(len(lq_rounds)):
            lq_rounds[i] = np.concatenate([lq_rounds[i], round_logq(new, lp, comps[i])], 1)
        lq_rounds.append(round_logq(theta, lprior, comps[-1]))
        n_r = np.array([(rounds > i).astype(float) for i in range(len(comps))])  # (R, n): spectrum drew in round i
        with np.errstate(divide="ignore"):
            log_frac = np.log(n_r / n_r.sum(0, keepdims=True))[:, :, None]
        lq = torch.logsumexp(torch.as_tensor(np.stack(lq_rounds) + log_frac), dim=0).numpy()
        # draws made by a spectrum in a round it did not take part in are excluded
        drew = np.repeat(n_r.T > 0, m, axis=1)  # (n, M_tot)
        logw = np.where(drew & np.isfinite(logpl), logpl - lq, -np.inf)
        mean, sd_w, quant, ess, pit, wn = _summaries(theta, logw, None)
        active = np.flatnonzero((ess < cfg.min_ess) | (r + 1 < cfg.min_rounds))
        if len(active) == 0 or r == cfg.max_rounds - 1:
            break
        comps.append(_adapted_components(theta, wn, mean, ess, mode, cov, cfg, rng, widened))
    tr = None if truth is None else np.asarray(truth, dtype=np.float64)[good]
    mean, sd_w, quant, ess, pit, wn = _summaries(theta, logw, tr)
    flag = np.full(n, "ok", dtype=object)
    flag[ess < cfg.min_ess] = "low_ess"
    chi2 = chi2.numpy()
    n_pix = p
    poor = (chi2 - n_pix) / math.sqrt(2 * n_pix) > cfg.poor_fit_sigma
    flag[poor] = "poor_fit"
    flag[~np.isfinite(ess)] = "low_ess"
    res.mean[good], res.sd[good], res.quantiles[good], res.ess[good] = mean, sd_w, quant, ess
    res.n_draws[good] = rounds * m
    res.rounds[good] = rounds
    res.mode[good], res.chi2_mode[good], res.flag[good] = mode, chi2, flag
    if pit is not None:
        res.pit[good] = pit
    if keep_samples:
        for i, g in enumerate(good):
            keep = wn[i] > 0
            res.samples[g] = (theta[i, keep], wn[i, keep])
    return res


# ----------------------------------------------------------------------------- the CLI run
def bayes_forward(config: BayesConfig):
    from specvit.observe.forward import default_forward

    return default_forward(model_spec=config.model)[0]


def dataset_prior(ds, forward, config: BayesConfig) -> Prior:
    """The prior ``specvit simulate`` drew the dataset's labels from (its stored config), or the model box."""
    if config.prior == "box":
        return Prior.box(forward)
    cfg = ds.attrs.get("config") if isinstance(getattr(ds, "attrs", None), dict) else None
    if not isinstance(cfg, dict) or "labels" not in cfg:
        raise InputError("the dataset does not record the prior it was simulated from (attrs 'config' -> "
                         "'labels'); set prior: box to use a uniform prior over the model's box", file=ds.path,
                         field="prior", value=config.prior)
    return Prior.from_simulate_config(cfg["labels"], forward.label_names)


def _check_conditions(ds, rows) -> None:
    """Redshift and reddening change μ: only the simulator's defaults (0) are implemented (conditioned on)."""
    for col, what in (("redshift", "redshift z"), ("ext", "reddening E(B-V)")):
        if col in ds.params.columns:
            v = ds.params[col].to_numpy(dtype=np.float64)[rows]
            nz = np.flatnonzero(~(v == 0))
            if nz.size:
                raise InputError(f"{what} != 0 in row {rows[nz[0]]} ({nz.size} rows): the posterior conditions on "
                                 f"the {what} but only 0 (the simulate default) is implemented", file=ds.path,
                                 field=f"params/{col}", value=float(v[nz[0]]))


def run_bayes(config: BayesConfig, forward=None) -> pd.DataFrame:
    """Posterior of every spectrum of ``config.input`` (same fixed noise as the other baselines).

    Columns: ``row``, per label ``<label>_mean/_sd/_q2.5/_q16/_q50/_q84/_q97.5/_mode``, ``ess``, ``n_draws``,
    ``rounds``, ``chi2_mode``, ``chi2_red_mode``, ``flag``, ``snr``, and ``true_<label>`` + ``<label>_pit``
    (posterior CDF at the truth) when the dataset has the truth.
    """
    from specvit.baselines.templatefit import check_input
    from specvit.data import fixed_noisy_flux, open_dataset

    if not config.input:
        raise InputError("bayes needs an input dataset", field="input", value=config.input)
    forward = forward if forward is not None else bayes_forward(config)
    rng = np.random.default_rng(config.seed)
    frames = []
    t0 = time.perf_counter()
    with open_dataset(config.input) as ds:
        n = len(ds) if config.max_spectra <= 0 else min(len(ds), config.max_spectra)
        if ds.n_wave != len(forward.wave):
            raise InputError(f"the dataset has {ds.n_wave} pixels but the forward model {len(forward.wave)}",
                             file=ds.path, field="spectrumdataset/wave", value=ds.n_wave)
        prior = dataset_prior(ds, forward, config)
        check_input(ds, forward, n, len(forward.wave))
        _check_conditions(ds, np.arange(n))
        have_truth = all(k in ds.params.columns for k in forward.label_names)
        for s0 in range(0, n, config.batch_size):
            rows = np.arange(s0, min(n, s0 + config.batch_size))
            flux = np.asarray(ds.flux[rows], dtype=np.float64)
            err = np.asarray(ds.error[rows], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                noisy = fixed_noisy_flux(flux, err, config.noise_level, rows, config.noise_seed)
            truth = ds.labels(list(forward.label_names))[rows] if have_truth else None
            if truth is not None:
                outside = np.flatnonzero(np.isfinite(prior.logpdf(truth)) == 0)
                if outside.size:  # a truth outside the prior: the posterior cannot cover it
                    raise InputError(f"true labels of row {rows[outside[0]]} lie outside the prior's support "
                                     f"({outside.size} rows)", file=ds.path, field="params",
                                     value=truth[outside[0]].tolist())
            res = posterior(forward, noisy, err, prior=prior, config=config, rng=rng, truth=truth)
            df = res.to_frame()
            df.insert(0, "row", rows)
            with np.errstate(divide="ignore", invalid="ignore"):
                df["snr"] = np.nanmedian(flux / err, axis=1) / config.noise_level
            if truth is not None:
                for j, name in enumerate(forward.label_names):
                    df[f"true_{name}"] = truth[:, j]
                    df[f"{name}_pit"] = res.pit[:, j]
            frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.attrs["seconds"] = time.perf_counter() - t0
    out.attrs["config"] = dataclasses.asdict(config)
    out.attrs["prior"] = prior.describe()
    return out


def bayes_table(df, label_names=None):
    """The shared prediction table: ``<label>_true``, ``<label>_pred`` (posterior mean), ``<label>_sigma`` (sd)."""
    names = [n for n in (label_names or LABEL_NAMES) if f"{n}_mean" in df.columns and f"true_{n}" in df.columns]
    out = pd.DataFrame({c: df[c] for c in ("row", "snr") if c in df.columns})
    for n in names:
        out[f"{n}_true"] = df[f"true_{n}"].to_numpy(dtype=float)
        out[f"{n}_pred"] = df[f"{n}_mean"].to_numpy(dtype=float)
        out[f"{n}_sigma"] = df[f"{n}_sd"].to_numpy(dtype=float)
    return out, names


#: Flags of the rows that are scored (R², coverage, SBC): ``ok`` and ``low_ess`` (leaving the sampler's
#: failures out would hide them). ``bad_input`` rows have no numbers and ``poor_fit`` rows no model inside the
#: prior that describes them: they are counted (:func:`score_bayes`), not scored.
SCORED_FLAGS = ("ok", "low_ess")


def scored_rows(df) -> np.ndarray:
    """Bool mask of the catalogue rows that are scored (flag in :data:`SCORED_FLAGS`; all rows without a flag)."""
    return df["flag"].isin(SCORED_FLAGS).to_numpy() if "flag" in df.columns else np.ones(len(df), bool)


def coverage(df, label_names=LABEL_NAMES) -> dict:
    """Fraction of truths inside the central 68 % (q16–q84) and 95 % (q2.5–q97.5) intervals per label
    (over the scored rows, :func:`scored_rows`)."""
    ok = scored_rows(df)
    out = {}
    for n in label_names:
        t = df[f"true_{n}"].to_numpy(float)[ok]
        c68 = (t >= df[f"{n}_q16"].to_numpy(float)[ok]) & (t <= df[f"{n}_q84"].to_numpy(float)[ok])
        c95 = (t >= df[f"{n}_q2.5"].to_numpy(float)[ok]) & (t <= df[f"{n}_q97.5"].to_numpy(float)[ok])
        out[n] = {"cov68": float(c68.mean()), "cov95": float(c95.mean()), "n": int(ok.sum())}
    return out


def score_bayes(df, label_names=None, *, rng=0, n_resamples: int = 200, coverage_labels=None):
    """The one scoring of a posterior catalogue (``run_bayes``'s frame), used by ``specvit baseline bayes``,
    the quickstart and the learning curves.

    Scores the rows flagged ``ok`` or ``low_ess`` (:data:`SCORED_FLAGS`) and counts the others. Returns
    ``(table, doc)``: ``table`` the shared prediction table (``bayes_table``) of the scored rows; ``doc`` has
    ``test`` (``specvit.scores.evaluate_predictions`` of ``label_names``, default every label with a truth;
    bootstrap ``rng``, ``n_resamples``), ``coverage`` (68/95 % interval coverage per label of
    ``coverage_labels``, default the same labels), ``flags`` (count per flag), ``n_spectra``, ``n_scored``
    and ``n_not_scored``.
    """
    from specvit.scores import evaluate_predictions

    table, names = bayes_table(df, label_names)
    if not names:
        raise InputError("the catalogue has no posterior mean with a true label to score",
                         field="true_<label>/<label>_mean", value=list(label_names or LABEL_NAMES))
    use = scored_rows(df)
    table = table[use].reset_index(drop=True)
    cov_names = [n for n in (coverage_labels or names) if f"true_{n}" in df.columns]
    flags = {str(k): int(v) for k, v in df["flag"].value_counts().items()} if "flag" in df.columns else {}
    doc = {"test": evaluate_predictions(table, names, "snr", rng, n_resamples=n_resamples),
           "coverage": coverage(df, cov_names), "flags": flags, "n_spectra": int(len(df)),
           "n_scored": int(use.sum()), "n_not_scored": int((~use).sum())}
    return table, doc


def finish_bayes(cfg, df) -> None:
    """Write the catalogue (``cfg.output``: every posterior column + the shared table's) and metrics beside it."""
    from pathlib import Path

    from specvit.baselines.common import write_csv, write_json

    flags = df["flag"].value_counts().to_dict()
    bad = {k: v for k, v in flags.items() if k != "ok"}
    if bad:
        print(f"bayes: flagged spectra: {bad} (see the 'flag' column)")
    if not cfg.output:
        print(f"bayes: {len(df)} posteriors (no output file configured)")
        return
    table, names = bayes_table(df)
    cat = df.copy()
    for c in table.columns:
        if c not in cat.columns:
            cat[c] = table[c]
    write_csv(cfg.output, cat)
    metrics = {"model": "bayes", "labels": names, "seconds": df.attrs.get("seconds"), "flags": flags,
               "noise_seed": cfg.noise_seed, "prior": df.attrs.get("prior")}
    if names:
        _, doc = score_bayes(df, names)
        metrics.update({k: doc[k] for k in ("test", "coverage", "n_scored", "n_not_scored")})
        for n in names:
            c = metrics["coverage"][n]
            print(f"bayes: test {n}: R2 = {metrics['test']['labels'][n]['overall']['r2']:.4f}, "
                  f"coverage 68% {c['cov68']:.3f}, 95% {c['cov95']:.3f}")
    mpath = Path(cfg.output).with_suffix(".metrics.json")
    write_json(mpath, metrics)
    print(f"bayes: wrote {cfg.output} and {mpath}")
