"""dF/dθ of a spectral model on its own wavelength grid: analytic for the PCA emulator, autograd otherwise.

The Fisher ceiling needs, for every point, the flux F (n_model pixels) and its
derivative with respect to the L labels. Forward-mode autograd
(:func:`specvit.fisher.jacobian.jvp_stacked`) works for any differentiable model
but, on the emulator, carries a dual number through ~10 element-wise operations
per pixel for L stacked copies of the primal — about 20 plain evaluations' worth.

The emulator (:mod:`specvit.spectra.emulator`, after Ting et al. 2019) has a closed form

    F = max(n̄ + a(θ) B, 0) · exp(c̄ + b(θ) D) · π B_λ(T_eff),

with (a, b) = MLP(θ) the PCA coefficients. By the chain rule (exact, no approximation)

    ∂F/∂θ_l = 1[n > 0] · C · (∂a/∂θ_l B) + F · (∂b/∂θ_l D + δ_{l,T_eff} ∂ln π B_λ/∂T),
    ∂ln π B_λ/∂T = (x / T) · eˣ / (eˣ − 1),   x = h c / (λ k T),

so only the small MLP Jacobian ∂(a, b)/∂θ needs autograd, and the per-pixel work is
two (L·N, K) × (K, n_model) products and three element-wise passes.
:func:`emulator_flux_and_jacobian` implements it; :func:`model_flux_and_jacobian`
uses it for a :class:`~specvit.spectra.emulator.SpectralEmulator` after checking once
per model object that its flux reproduces ``model.flux`` (if the emulator's
evaluation ever changes so that it does not, the generic autograd route is used, with
a warning). Tested against autograd in ``tests/test_fisher_fast.py``.
"""
from __future__ import annotations

import warnings
import weakref

import numpy as np
import torch

from specvit.fisher.jacobian import jvp_stacked

#: relative tolerance of the one-off check that the analytic emulator flux equals ``model.flux``
ANALYTIC_CHECK_RTOL = 1e-5
_EMULATOR_ATTRS = ("coeffs_and_tangents", "n_components", "_norm_mean", "_norm_basis", "_lnc_mean", "_lnc_basis",
                   "lncont_baseline", "_planck_num", "_hc_k_over_wave")
_VERIFIED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _is_emulator(model) -> bool:
    try:
        from specvit.spectra.emulator import SpectralEmulator
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, SpectralEmulator) and all(hasattr(model, a) for a in _EMULATOR_ATTRS) \
        and model.lncont_baseline in ("planck", "none")


def emulator_flux_and_jacobian(model, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """F and ∂F/∂θ of a PCA emulator by the chain rule (module docstring), pixel-major.

    Returns F (n_model, N) and ∂F/∂θ (n_model, N, L) — pixel-major, so the sparse LSF +
    resampling matrix applies to them without a transposed copy — in float32 like the
    emulator itself; labels (N, L) in label units, ∂F/∂θ in flux units per label unit.
    No range check (the caller checks the labels).
    """
    x = labels.detach().to(torch.float32)
    n, n_lab = x.shape
    k = int(model.n_components)
    c, dc = model.coeffs_and_tangents(x, torch.eye(n_lab))  # (N, K+Kc), (N, L, K+Kc)
    dct = dc.permute(2, 0, 1).reshape(-1, n * n_lab)  # (K+Kc, N·L), columns (point, label)
    ct = c.T
    raw = torch.addmm(model._norm_mean[:, None], model._norm_basis.T, ct[:k])  # (n_model, N)
    keep = raw > 0  # the emulator clips the normalised flux at 0
    cont = torch.exp(torch.addmm(model._lnc_mean[:, None], model._lnc_basis.T, ct[k:]))
    planck = model.lncont_baseline == "planck"
    if planck:
        teff = x[:, 0]  # the emulator's Planck baseline takes T_eff from the first label column
        hx = model._hc_k_over_wave[:, None] / teff  # x = h c / (λ k T), (n_model, N)
        em1 = torch.expm1(hx)
        cont = cont * (model._planck_num[:, None] / em1)
    flux = raw.clamp(min=0.0) * cont
    djac = (model._norm_basis.T @ dct[:k]).view(-1, n, n_lab)
    djac.mul_((cont * keep)[:, :, None])
    dln = (model._lnc_basis.T @ dct[k:]).view(-1, n, n_lab)
    if planck:
        dln[:, :, 0].add_(hx / teff * (1.0 + 1.0 / em1))  # ∂ ln π B_λ / ∂T = (x/T) eˣ/(eˣ − 1)
    djac.addcmul_(dln, flux[:, :, None])
    return flux, djac


def autograd_flux_and_jacobian(model, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """F (n_model, N) and ∂F/∂θ (n_model, N, L), pixel-major, by forward-mode AD through ``model.flux``."""
    f, df = jvp_stacked(lambda z: model.flux(z), labels)  # (N, n), (N, n, L)
    return f.T, df.permute(1, 0, 2).contiguous()


def model_flux_and_jacobian(model, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """F (n_model, N) and ∂F/∂θ (n_model, N, L) (pixel-major) for a differentiable model, the fastest exact route.

    The emulator's analytic route is used after a one-off check (per model object)
    that its flux equals ``model.flux`` to :data:`ANALYTIC_CHECK_RTOL`; other models
    use forward-mode autograd. Labels outside the model's box raise its
    :class:`~specvit.errors.LabelRangeError`.
    """
    x = torch.as_tensor(np.asarray(labels, dtype=np.float64)) if not isinstance(labels, torch.Tensor) else labels
    if _is_emulator(model):
        model.check_labels(x.detach().cpu().numpy())
        ok = _VERIFIED.get(model)
        if ok is None:
            with torch.no_grad():
                ref = model.flux(x[:4]).to(torch.float32)
            f4 = emulator_flux_and_jacobian(model, x[:4])[0].T
            scale = ref.abs().amax(dim=1, keepdim=True).clamp(min=1e-300)
            ok = bool(torch.all((f4 - ref).abs() / scale <= ANALYTIC_CHECK_RTOL))
            _VERIFIED[model] = ok
            if not ok:
                warnings.warn("the emulator's flux no longer matches the analytic form used for its Jacobian; "
                              "using forward-mode autograd instead (slower, same result)", stacklevel=2)
        if ok:
            return emulator_flux_and_jacobian(model, x)
    return autograd_flux_and_jacobian(model, x)
