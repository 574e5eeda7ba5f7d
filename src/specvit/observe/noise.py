"""The noise model of an observed PFS spectrum, and its random draws: the one place both are written.

The variance (what :class:`~specvit.observe.observer.PFSObserver` computes in electrons, here
in normalised flux units, for the Fisher ceiling and the template fit) is
:class:`MagnitudeNoise`: σ² = μ ν / R + B ν² / R², with R the electrons per unit flux, B the
variance of everything that is not the object, and ν the normalisation (flux units → normalised).

Stored flux is noiseless and ``error`` is the 1-sigma at noise level 1
(SPEC section 3), so a noisy spectrum is ``flux + noise_level * error * z``
with ``z ~ N(0, 1)``:

* training draws fresh ``z`` every batch: :func:`noisy_flux` with an explicit
  ``numpy.random.Generator`` (or ``torch.Generator`` for tensors);
* validation and test use one fixed draw per spectrum: :func:`fixed_normal`
  makes ``z`` a pure function of ``(seed, global row index, pixel)``, so any
  subset, batch size, batch order or number of workers sees the same noise.

The fixed draw is counter-based: every pair of pixels hashes the 64-bit
counter ``(row << 20) | pair`` with the SplitMix64 finaliser (Steele, Lea &
Flood 2014, "Fast splittable pseudorandom number generators") keyed by the
seed, and the two 32-bit halves become two normals by the Box-Muller
transform. It is fully vectorised over rows and pixels and identical on every
platform.
"""
from __future__ import annotations

import numpy as np

from specvit.errors import InputError
from specvit.observe.observer import NORMALISED_MEDIAN

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_PAIR_BITS = 20  # up to 2**21 pixels per spectrum
_TWO_PI = 2.0 * np.pi


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, element-wise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _seed_key(seed: int) -> np.uint64:
    seed = int(seed)
    if seed < 0:
        raise InputError("noise seed must be >= 0", field="seed", value=seed)
    return _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]


def fixed_normal(rows, n_pix: int, seed: int, dtype=np.float32) -> np.ndarray:
    """Standard normals of shape (len(rows), n_pix), a pure function of (seed, row, pixel).

    Parameters
    ----------
    rows : int array (B,)
        Global row indices in the dataset (use the concatenated index for shards).
    n_pix : int
        Pixels per spectrum.
    seed : int
        Noise seed (record it with every evaluation).
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and rows.min() < 0:
        raise InputError("row indices must be >= 0", field="rows", value=int(rows.min()))
    n_pairs = (int(n_pix) + 1) // 2
    if n_pairs > 1 << _PAIR_BITS:
        raise InputError("too many pixels for the fixed-noise counter", field="n_pix", value=n_pix)
    key = _seed_key(seed)
    counter = (rows.astype(np.uint64)[:, None] << np.uint64(_PAIR_BITS)) | np.arange(n_pairs, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        h = _splitmix64(_splitmix64(counter ^ key) + key)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 1.0) * (1.0 / 4294967296.0)  # (0, 1]
    u2 = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) * (1.0 / 4294967296.0)  # [0, 1)
    r = np.sqrt(-2.0 * np.log(u1))
    theta = _TWO_PI * u2
    z = np.empty((rows.size, 2 * n_pairs), dtype=np.float64)
    z[:, 0::2] = r * np.cos(theta)
    z[:, 1::2] = r * np.sin(theta)
    return z[:, :n_pix].astype(dtype, copy=False)


def _check(flux, error, noise_level):
    if flux.shape != error.shape:
        raise InputError(f"error shape {tuple(error.shape)} differs from flux shape {tuple(flux.shape)}",
                         field="error", value=tuple(error.shape))
    nl = np.asarray(noise_level, dtype=np.float64)
    if not np.all(np.isfinite(nl)) or np.any(nl < 0):
        raise InputError("noise_level must be finite and >= 0", field="noise_level", value=noise_level)


def _level(noise_level, flux, xp=np):
    """Broadcast a scalar or per-row (B,) noise level against (B, n_pix)."""
    if np.ndim(noise_level) == 0:
        return float(noise_level)
    nl = np.asarray(noise_level, dtype=np.float64).reshape(-1, 1)
    if xp is np:
        return nl.astype(flux.dtype)
    return xp.as_tensor(nl, dtype=flux.dtype, device=flux.device)


def noisy_flux(flux, error, noise_level, rng):
    """Fresh noise: ``flux + noise_level * error * z``, ``z ~ N(0, 1)`` drawn from ``rng``.

    numpy arrays need a ``numpy.random.Generator``; torch tensors a
    ``torch.Generator`` (or None for torch's global generator is NOT accepted:
    pass one explicitly). ``noise_level`` is a scalar or one value per row.
    """
    _check(flux, error, noise_level)
    if _is_torch(flux):
        import torch

        if not isinstance(rng, torch.Generator):
            raise InputError("torch tensors need an explicit torch.Generator", field="rng", value=type(rng).__name__)
        z = torch.randn(flux.shape, generator=rng, dtype=flux.dtype, device=flux.device)
        return flux + _level(noise_level, flux, torch) * error * z
    if not isinstance(rng, np.random.Generator):
        raise InputError("pass an explicit numpy.random.Generator", field="rng", value=type(rng).__name__)
    flux = np.asarray(flux)
    dtype = flux.dtype if flux.dtype.kind == "f" else np.float64
    z = rng.standard_normal(flux.shape, dtype=np.float32 if dtype == np.float32 else np.float64)
    return flux + _level(noise_level, flux.astype(dtype, copy=False)) * np.asarray(error, dtype=dtype) * z


def fixed_noisy_flux(flux, error, noise_level, rows, seed: int):
    """Fixed noise for validation/test: ``flux + noise_level * error * fixed_normal(rows, ., seed)``.

    ``rows`` are the global row indices of ``flux`` in its dataset; the result
    does not depend on batching or order. Works on numpy arrays and torch tensors.
    """
    _check(flux, error, noise_level)
    rows = np.asarray(rows).reshape(-1)
    if rows.shape[0] != flux.shape[0]:
        raise InputError(f"{rows.shape[0]} row indices for {flux.shape[0]} spectra", field="rows",
                         value=rows.shape[0])
    if _is_torch(flux):
        import torch

        z = torch.from_numpy(fixed_normal(rows, flux.shape[-1], seed, dtype=np.float64)).to(flux.dtype).to(flux.device)
        return flux + _level(noise_level, flux, torch) * error * z
    flux = np.asarray(flux)
    dtype = flux.dtype if flux.dtype.kind == "f" else np.float64
    z = fixed_normal(rows, flux.shape[-1], seed, dtype=dtype)
    return flux + _level(noise_level, flux.astype(dtype, copy=False)) * np.asarray(error, dtype=dtype) * z


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def batch_noise(seed: int, epoch: int, rank: int, batch: int, shape, device="cpu"):
    """Fresh training noise N(0, 1), float32, for one batch; a pure function of its position.

    A ``torch.Generator`` on ``device`` seeded from ``SeedSequence([seed, epoch, rank, batch])``, so on a
    GPU the noise is drawn on the GPU (the draws differ between CPU and CUDA, but each is reproducible).
    """
    import torch

    key = int(np.random.SeedSequence([int(seed), int(epoch), int(rank), int(batch), 0x7EA1]).generate_state(1, np.uint64)[0])
    g = torch.Generator(device=device)
    g.manual_seed(key >> 1)
    return torch.randn(tuple(shape), generator=g, device=device, dtype=torch.float32)


# --------------------------------------------------------------------------- the variance
def _setup_conditions(mag: float, setup: dict | None, n: int = 1):
    from specvit.observe.conditions import calibration_conditions

    cond = calibration_conditions([mag], n)
    for k, v in (setup or {}).items():
        if k not in cond.columns:
            raise InputError("unknown observing-condition column", field=k, value=v)
        cond[k] = v
    return cond


def magnitude_errors(observer, model_flux: np.ndarray, mags, setup: dict | None = None):
    """Normalised noiseless flux (N, P) and its error (M, N, P) at each magnitude (the reference route).

    One call of ``observer.observe`` at ``mags[0]`` under the calibration setup (or ``setup``
    overrides of it), then the analytic scaling: the object term scales with ν, the background
    with ν² (σ² = μ ν / R + B ν² / R², ν(m) = ν(m₀) 10^{0.4 (m − m₀)}).
    """
    mags = np.asarray(mags, dtype=np.float64)
    cond = _setup_conditions(float(mags[0]), setup, len(model_flux))
    obs = observer.observe(model_flux, cond)
    response, background, _ = observer.response_and_background(cond.iloc[:1])
    r, b = response[0], background[0]
    nu = obs.norm_factor[None, :, None] * 10 ** (0.4 * (mags - mags[0]))[:, None, None]  # (M, N, 1)
    mu = np.clip(obs.flux, 0.0, None)[None]
    err = np.sqrt(mu * nu / r + b * nu**2 / r**2)
    return obs.flux, err


class MagnitudeNoise:
    """The observer's normalised error at M magnitudes, for spectra whose resampled flux is already known.

    Same formula as :func:`magnitude_errors` (σ² = μν/R + Bν²/R², ν(m) = (0.5 / median(R F)) ·
    10^{0.4 (m − m_model)}), but the response R and background B are computed once for the
    (fixed) setup, and the resampled flux R F and its median are reused instead of observing the
    spectra again. Only valid for redshift 0 and no reddening (the setup is checked);
    ``magnitude_errors`` / ``PFSObserver.observe`` is the reference.
    """

    def __init__(self, observer, mags, setup: dict | None = None):
        self.observer = observer
        self.mags = np.asarray(mags, dtype=np.float64)
        cond = _setup_conditions(float(self.mags[0]), setup)
        if float(cond["redshift"].iloc[0]) != 0.0 or float(cond["ext"].iloc[0]) != 0.0:
            raise InputError("the fast error model needs redshift 0 and no reddening (use magnitude_errors)",
                             field="setup", value={"redshift": float(cond["redshift"].iloc[0]),
                                                   "ext": float(cond["ext"].iloc[0])})
        response, background, _ = observer.response_and_background(cond)
        self.inv_response = 1.0 / response[0]  # (P,) model-flux units per electron, at unit flux scale
        self.background = background[0]  # (P,) electrons²

    @staticmethod
    def applies(setup: dict | None) -> bool:
        s = setup or {}
        return float(s.get("redshift", 0.0)) == 0.0 and float(s.get("ext", 0.0)) == 0.0

    def variance(self, model_flux: np.ndarray, mu: np.ndarray, median: np.ndarray) -> np.ndarray:
        """(M, N, P) variance σ² of the normalised flux μ (N, P), given the model flux (N, n_model) and the
        median of the resampled flux (N,) in model units."""
        phot = self.observer.photometry.photon_integral(model_flux)
        if not np.all(phot > 0):
            i = int(np.flatnonzero(~(phot > 0))[0])
            raise InputError(f"model flux has no positive flux in the HSC i band (row {i})", field="model_flux")
        mag_model = -2.5 * np.log10(phot / self.observer.photometry.ab_norm)
        nu = (NORMALISED_MEDIAN / median)[None, :] * 10 ** (0.4 * (self.mags[:, None] - mag_model[None, :]))
        nu = nu[:, :, None]  # (M, N, 1)
        # σ² = ν (μ⁺/R + ν B/R²): three passes over (M, N, P)
        var = nu * (self.background * self.inv_response**2)
        var += np.clip(mu, 0.0, None) * self.inv_response
        var *= nu
        return var

    @property
    def strictly_positive(self) -> bool:
        """True if σ² > 0 and finite at every pixel for any flux (background > 0, finite response)."""
        return bool(np.all(self.background > 0) and np.all(np.isfinite(self.inv_response)))
