"""Line-spread function and flux-conserving resampling as one sparse matrix.

The model spectrum is taken as constant over each model cell (cell edges half-way
between samples). The instrument output of pixel i is the mean, over the pixel
[e_i, e_i+1], of the model convolved with a Gaussian of width sigma_i:

    W_ij = 1/Delta_i * int_{e_i}^{e_i+1} dl int_{a_j}^{b_j} G(l - l'; sigma_i) dl'
         = sigma_i/Delta_i * [psi((e_i+1 - a_j)/s) - psi((e_i - a_j)/s)
                              - psi((e_i+1 - b_j)/s) + psi((e_i - b_j)/s)],
    psi(t) = t Phi(t) + phi(t)   (antiderivative of the normal CDF Phi).

This is exact for a piecewise-constant model, so it conserves flux: a line of
equivalent width W keeps equivalent width W. The model's own resolution is
removed in quadrature: sigma_i^2 = (lambda_i / R / 2.3548)^2 - (lambda_i / R_model / 2.3548)^2.
The kernel is cut at ``truncate`` sigma and each row renormalised to unit sum.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr

from specvit.errors import InputError
from specvit.physics import air_to_vacuum  # noqa: F401  (re-exported: the one conversion lives in physics)

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))  # 2.3548


def cell_edges(wave: np.ndarray) -> np.ndarray:
    """Edges (n+1,) of cells centred on the samples ``wave`` (half-way points; end cells symmetric)."""
    mid = 0.5 * (wave[1:] + wave[:-1])
    return np.concatenate([[wave[0] - (mid[0] - wave[0])], mid, [wave[-1] + (wave[-1] - mid[-1])]])


def _psi(t):
    return t * ndtr(t) + np.exp(-0.5 * t * t) / np.sqrt(2.0 * np.pi)


def lsf_sigma_A(wave_A, resolution: float, model_resolution: float = np.inf, *, fwhm_A=None) -> np.ndarray:
    """Gaussian sigma (Angstrom) of the kernel that takes the model to the instrument resolution.

    The instrument FWHM is lambda / ``resolution``, or ``fwhm_A`` (per pixel) if given.
    """
    wave_A = np.asarray(wave_A, dtype=float)
    s_inst = (wave_A / resolution if fwhm_A is None else np.asarray(fwhm_A, dtype=float)) / FWHM_PER_SIGMA
    s_model = 0.0 if not np.isfinite(model_resolution) else wave_A / model_resolution / FWHM_PER_SIGMA
    var = s_inst**2 - s_model**2
    return np.sqrt(np.clip(var, 0.0, None))


def resample_matrix(model_wave_A, out_edges_A, sigma_A, *, truncate: float = 4.0) -> sp.csr_matrix:
    """Sparse (n_out, n_model) matrix: Gaussian LSF of width ``sigma_A`` (per output pixel) + pixel integration.

    ``model_wave_A`` must be increasing and must cover every output pixel plus the
    kernel wings; otherwise :class:`InputError` names the missing range.
    """
    w = np.asarray(model_wave_A, dtype=float)
    e = np.asarray(out_edges_A, dtype=float)
    if w.ndim != 1 or len(w) < 2 or not np.all(np.diff(w) > 0):
        raise InputError("model wavelengths must be a 1D strictly increasing array", field="model_wave")
    n_out = len(e) - 1
    sig = np.broadcast_to(np.asarray(sigma_A, dtype=float), (n_out,))
    sig = np.maximum(sig, 1e-6)
    lo_need, hi_need = e[:-1] - truncate * sig, e[1:] + truncate * sig
    ce = cell_edges(w)
    a, b = ce[:-1], ce[1:]
    if lo_need[0] < ce[0] or hi_need[-1] > ce[-1]:
        raise InputError(
            f"model wavelength range [{ce[0]:.2f}, {ce[-1]:.2f}] A does not cover the instrument range "
            f"plus the LSF wings [{lo_need[0]:.2f}, {hi_need[-1]:.2f}] A", field="model_wave",
            value=[float(w[0]), float(w[-1])])
    j_lo = np.searchsorted(b, lo_need, side="right")  # first cell with b_j > lo
    j_hi = np.searchsorted(a, hi_need, side="left")  # cells with a_j < hi
    width = int((j_hi - j_lo).max())
    J = j_lo[:, None] + np.arange(width)[None, :]
    valid = J < j_hi[:, None]
    J = np.minimum(J, len(w) - 1)
    s = sig[:, None]
    e0, e1 = e[:-1, None], e[1:, None]
    aj, bj = a[J], b[J]
    W = s * (_psi((e1 - aj) / s) - _psi((e0 - aj) / s) - _psi((e1 - bj) / s) + _psi((e0 - bj) / s))
    W = np.where(valid, W, 0.0)
    W /= W.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(n_out), width)
    M = sp.csr_matrix((W.ravel(), (rows, J.ravel())), shape=(n_out, len(w)))
    M.eliminate_zeros()
    return M
