"""Jacobians J = ∂μ/∂θ of the noiseless observed spectrum with respect to the labels.

Two routes:

- :func:`jacobian_autograd` — exact, for differentiable models (the emulator, the
  test ToyModel): forward-mode automatic differentiation, one JVP per label
  (5 labels → 5 JVPs, independent of the number of pixels), batched over points.
- :func:`jacobian_fd` — central finite differences with user-set steps, for
  models that are not differentiable (grids); the paper's method used the grid
  spacing (250 K, 0.5 dex, 0.25 dex) as the step.

:class:`ForwardModel` composes a :class:`~specvit.spectra.base.SpectralModel` with
the PFS observer (LSF, resampling, median normalisation) so that μ(θ) is the
same normalised flux the datasets store.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from specvit.errors import InputError

#: Median normalisation target of the stored flux (SPEC section 3).
NORMALISED_MEDIAN = 0.5


def _median_normalise_torch(flux: torch.Tensor) -> torch.Tensor:
    med = torch.quantile(flux, 0.5, dim=-1, keepdim=True)
    return flux * (NORMALISED_MEDIAN / med)


@dataclass
class ObservedJacobian:
    """μ(θ) and J = ∂μ/∂θ on the observed grid for the points whose model flux is valid.

    ``valid`` (N_all,) flags the input rows kept: model flux finite and > 0 at every pixel
    (elsewhere the normalisation and the photometry are undefined); every other
    array has one row per kept point.
    """

    valid: np.ndarray  #: (N_all,) bool
    model_flux: np.ndarray  #: (N, n_model) F_λ on the model grid (the model's dtype)
    resampled: np.ndarray  #: (N, P) R F: LSF + resampling, model flux units, float64
    median: np.ndarray  #: (N,) median of ``resampled`` over the P pixels
    mu: np.ndarray  #: (N, P) normalised noiseless flux (median 0.5), float64
    jac: np.ndarray  #: (N, L, P) ∂μ/∂θ, label-major, float64, flux per label unit


class ForwardModel:
    """μ(θ): labels → noiseless normalised flux on the observed grid.

    Parameters
    ----------
    model : SpectralModel
    observer : PFSObserver or None
        If given, μ is ``observer.normalised_torch(model.flux(θ))`` (differentiable
        LSF + resampling + median normalisation; the error comes from the same
        observer). If None, μ is the model's own flux scaled to median 0.5 (no
        instrument; useful for tests and for spectra already on the model grid).
    """

    def __init__(self, model, observer=None):
        self.model = model
        self.observer = observer
        self.label_names = tuple(model.label_names)
        self.bounds = dict(model.bounds)
        self.differentiable = bool(getattr(model, "differentiable", False))

    @property
    def lower(self) -> np.ndarray:
        return np.array([self.bounds[n][0] for n in self.label_names])

    @property
    def upper(self) -> np.ndarray:
        return np.array([self.bounds[n][1] for n in self.label_names])

    def torch(self, labels: torch.Tensor) -> torch.Tensor:
        """Differentiable μ(θ), (N, L) tensor → (N, P) tensor."""
        if not self.differentiable:
            raise InputError("model is not differentiable; use finite differences", field="model",
                             value=type(self.model).__name__)
        flux = self.model.flux(labels)
        if self.observer is not None:
            return self.observer.normalised_torch(flux)
        return _median_normalise_torch(flux)

    def model_flux(self, labels) -> np.ndarray:
        """The model's own F_lambda (N, n_model) as float64 numpy (no instrument)."""
        labels = np.asarray(labels, dtype=np.float64)
        if self.differentiable:
            with torch.no_grad():
                return self.model.flux(torch.as_tensor(labels)).detach().numpy().astype(np.float64)
        return np.asarray(self.model.flux(labels, extrapolate=True), dtype=np.float64)

    def value_and_jacobian(self, labels, *, method: str = "auto", steps=None, return_model_flux: bool = False):
        """μ(θ) (N, P) and J = ∂μ/∂θ (N, P, L), float64 numpy (+ the model flux F (N, n_model) if asked).

        With an observer, the model Jacobian dF/dθ on the model grid (forward-mode AD,
        or central differences) is pushed through the observer's linear part with its
        sparse ``resample_matrix`` R, and the median normalisation is differentiated
        analytically: fc = R F, μ = ν fc with ν = 0.5 / median(fc), so
        dμ = ν (R dF − fc · d median / median), where the median's derivative is that of the median pixel(s) (as autograd
        through ``normalised_torch`` gives; tested against it). Cheaper than AD
        through the torch sparse product.
        """
        labels = np.asarray(labels, dtype=np.float64)
        if method == "auto":
            method = "autograd" if self.differentiable else "fd"
        if self.observer is None:
            if method == "autograd":
                mu, jac = jvp_stacked(self.torch, torch.as_tensor(labels))
                out = (mu.numpy().astype(np.float64), jac.numpy().astype(np.float64))
            else:
                out = (self.numpy(labels), jacobian(self, labels, method=method, steps=steps))
            return (*out, self.model_flux(labels)) if return_model_flux else out
        if method == "autograd":
            f, df = jvp_stacked(lambda x: self.model.flux(x), torch.as_tensor(labels))
            f, df = f.numpy().astype(np.float64), df.numpy().astype(np.float64)
        elif method == "fd":
            if steps is None:
                raise InputError("finite differences need steps (one per label)", field="steps")
            f = self.model_flux(labels)
            df = jacobian_fd(self.model_flux, labels, steps, bounds=(self.lower, self.upper))
        else:
            raise InputError("unknown Jacobian method (autograd, fd, auto)", field="method", value=method)
        n, n_model, n_lab = df.shape
        r = self.observer.resample_matrix
        fc = np.asarray(r @ f.T).T  # (N, P)
        dfc = np.asarray(r @ df.transpose(1, 0, 2).reshape(n_model, n * n_lab)).reshape(-1, n, n_lab)
        dfc = dfc.transpose(1, 0, 2)  # (N, P, L)
        p = fc.shape[1]
        part = np.argpartition(fc, [(p - 1) // 2, p // 2], axis=1)
        mid = part[:, [(p - 1) // 2, p // 2]]  # the median pixel(s): one or two middle values
        rows = np.arange(n)[:, None]
        med = fc[rows, mid].mean(1)
        dmed = dfc[rows, mid].mean(1)  # (N, L)
        nu = NORMALISED_MEDIAN / med
        mu = fc * nu[:, None]
        jac = nu[:, None, None] * (dfc - fc[:, :, None] * (dmed / med[:, None])[:, None, :])
        return (mu, jac, f) if return_model_flux else (mu, jac)

    def _matrix_as(self, dtype):
        """The observer's sparse LSF + resampling matrix in ``dtype`` (cached)."""
        cache = self.__dict__.setdefault("_matrices", {})
        key = np.dtype(dtype).str
        if key not in cache:
            cache[key] = self.observer.resample_matrix.tocsr().astype(dtype)
        return cache[key]

    def observed_jacobian(self, labels, *, method: str = "auto", steps=None) -> ObservedJacobian:
        """μ and ∂μ/∂θ (label-major) through the observer: the fast route of the ceiling.

        Same mathematics as :meth:`value_and_jacobian` (dμ = ν (R dF − fc · d median /
        median)), but (1) dF/dθ of the emulator comes from its analytic chain rule
        (:func:`specvit.fisher.model_jacobian.model_flux_and_jacobian`; autograd for
        other models), (2) the sparse product R dF runs in the model's dtype (float32
        for the emulator: 30 terms per pixel, relative rounding ~1e-7) directly on the
        (N·L, n_model) layout, without float64 copies of the model-grid Jacobian, and
        (3) the model flux is computed once and its validity checked here. Everything
        after the sparse product is float64. Tested equal to :meth:`value_and_jacobian`.
        """
        if self.observer is None:
            raise InputError("observed_jacobian needs an observer", field="observer")
        labels = np.asarray(labels, dtype=np.float64)
        if method == "auto":
            method = "autograd" if self.differentiable else "fd"
        if method == "autograd":
            from specvit.fisher.model_jacobian import model_flux_and_jacobian

            f_t, df_t = model_flux_and_jacobian(self.model, torch.as_tensor(labels))
            ft, dft = f_t.detach().numpy(), df_t.detach().numpy()  # (n_model, N), (n_model, N, L)
        elif method == "fd":
            if steps is None:
                raise InputError("finite differences need steps (one per label)", field="steps")
            ft = self.model_flux(labels).T
            dft = np.ascontiguousarray(
                jacobian_fd(self.model_flux, labels, steps, bounds=(self.lower, self.upper)).transpose(1, 0, 2))
        else:
            raise InputError("unknown Jacobian method (autograd, fd, auto)", field="method", value=method)
        valid = np.all(np.isfinite(ft), axis=0) & np.all(ft > 0, axis=0)
        n_model, n, n_lab = dft.shape
        r = self._matrix_as(dft.dtype)
        with np.errstate(invalid="ignore", over="ignore"):  # invalid points are dropped just below
            # R F in float64 (as the reference route): the median pixel is chosen from it, and two pixels
            # can be within float32 rounding of each other at the median rank
            fc = np.asarray((self._matrix_as(np.float64) @ ft.astype(np.float64)).T)  # (N, P), model flux units
            p = fc.shape[1]
            dfc = (r @ dft.reshape(n_model, n * n_lab)).reshape(p, n, n_lab)  # pixel-major, model dtype
        if not valid.all():  # drop after the product: the observed arrays are the smaller ones
            ft, fc, dfc = ft[:, valid], fc[valid], dfc[:, valid]
            n = int(valid.sum())
        part = np.argpartition(fc, [(p - 1) // 2, p // 2], axis=1)
        mid = part[:, [(p - 1) // 2, p // 2]]  # the median pixel(s)
        rows = np.arange(n)[:, None]
        med = fc[rows, mid].mean(1)
        dmed = dfc[mid.T[:, :, None], rows[None], np.arange(n_lab)[None, None, :]].mean(0, dtype=np.float64)  # (N, L)
        nu = NORMALISED_MEDIAN / med
        jac = np.empty((n, n_lab, p))
        np.multiply(dfc.transpose(1, 2, 0), nu[:, None, None], out=jac)  # the one transposing pass, to float64
        slope = nu[:, None] * dmed / med[:, None]  # (N, L)
        for lab in range(n_lab):
            jac[:, lab] -= slope[:, lab:lab + 1] * fc
        return ObservedJacobian(valid=valid, model_flux=ft.T, resampled=fc, median=med, mu=fc * nu[:, None], jac=jac)

    def numpy(self, labels) -> np.ndarray:
        """μ(θ) as float64 numpy, (N, L) → (N, P), for any model."""
        labels = np.asarray(labels, dtype=np.float64)
        if self.differentiable:
            with torch.no_grad():
                return self.torch(torch.as_tensor(labels, dtype=torch.float64)).numpy()
        flux = np.asarray(self.model.flux(labels, extrapolate=True), dtype=np.float64)
        if self.observer is not None:
            with torch.no_grad():
                return self.observer.normalised_torch(torch.as_tensor(flux)).numpy()
        return flux * (NORMALISED_MEDIAN / np.median(flux, axis=-1, keepdims=True))


def jvp_stacked(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """μ = fn(x) (N, P) and its Jacobian (N, P, L) for a row-wise ``fn``, in one forward-mode pass.

    The L tangent directions are stacked along the batch (row copy j carries
    tangent e_j), so one dual-number forward pass of L·N rows gives all columns.
    Falls back to the double-backward trick for ops without forward-mode AD.
    """
    n, n_lab = x.shape
    xs = x.detach().repeat(n_lab, 1)
    ts = torch.eye(n_lab, dtype=x.dtype).repeat_interleave(n, 0)
    try:
        with fwAD.dual_level():
            out = fn(fwAD.make_dual(xs, ts))
            primal, tangent = fwAD.unpack_dual(out)
        if tangent is None:  # output does not depend on the labels
            tangent = torch.zeros_like(primal)
    except (NotImplementedError, RuntimeError):
        primal, tangent = _double_vjp(fn, xs, ts)
    p = primal.shape[-1]
    jac = tangent.detach().reshape(n_lab, n, p).permute(1, 2, 0)
    return primal[:n].detach(), jac


def _jvp_columns(fn, x: torch.Tensor) -> torch.Tensor:
    return jvp_stacked(fn, x)[1]


def _double_vjp(fn, x: torch.Tensor, t: torch.Tensor):
    """(fn(x), J·t) by the double-backward trick (for ops without forward-mode AD)."""
    x = x.detach().requires_grad_(True)
    y = fn(x)
    u = torch.zeros_like(y, requires_grad=True)
    (g,) = torch.autograd.grad(y, x, u, create_graph=True)
    (jt,) = torch.autograd.grad(g, u, t)
    return y.detach(), jt.detach()


def jacobian_autograd(fn: Callable[[torch.Tensor], torch.Tensor], labels, *, chunk_size: int = 256,
                      dtype=torch.float64) -> np.ndarray:
    """Exact Jacobian ∂fn/∂θ for a row-wise differentiable ``fn`` ((N, L) → (N, P)).

    Computed in chunks of ``chunk_size`` points with one forward-mode JVP per
    label. Returns float64 numpy (N, P, L), flux units per label unit.
    """
    lab = np.asarray(labels, dtype=np.float64)
    if lab.ndim != 2:
        raise InputError("labels must have shape (N, L)", field="labels", value=lab.shape)
    out = []
    for s in range(0, len(lab), chunk_size):
        x = torch.as_tensor(lab[s : s + chunk_size], dtype=dtype)
        out.append(_jvp_columns(fn, x).detach().to(torch.float64).numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0, lab.shape[1]))


def jacobian_fd(fn: Callable[[np.ndarray], np.ndarray], labels, steps: Sequence[float], *,
                bounds: tuple[np.ndarray, np.ndarray] | None = None, chunk_size: int = 256) -> np.ndarray:
    """Central finite-difference Jacobian with per-label steps (label units).

    (μ(θ + h e_l) − μ(θ − h e_l)) / 2h. With ``bounds`` = (lower, upper), a point
    within h of an edge uses a one-sided difference inside the box instead.
    """
    lab = np.asarray(labels, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.float64)
    if lab.ndim != 2 or steps.shape != (lab.shape[1],):
        raise InputError(f"need labels (N, L) and {lab.shape[-1]} steps", field="steps", value=steps.shape)
    if not np.all(steps > 0):
        raise InputError("finite-difference steps must be > 0", field="steps", value=steps.tolist())
    out = []
    for s in range(0, len(lab), chunk_size):
        x = lab[s : s + chunk_size]
        n, n_lab = x.shape
        plus = np.repeat(x[None], n_lab, 0)  # (L, n, L)
        minus = plus.copy()
        hp = np.broadcast_to(steps, x.shape).copy()
        hm = hp.copy()
        if bounds is not None:
            lo, hi = (np.asarray(b, dtype=np.float64) for b in bounds)
            hp = np.minimum(hp, hi - x)
            hm = np.minimum(hm, x - lo)
            both0 = (hp <= 0) & (hm <= 0)
            if both0.any():
                raise InputError("finite-difference step does not fit in the box", field="steps", value=steps.tolist())
        for j in range(n_lab):
            plus[j, :, j] += hp[:, j]
            minus[j, :, j] -= hm[:, j]
        f = fn(np.concatenate([plus.reshape(-1, n_lab), minus.reshape(-1, n_lab)]))
        fp, fm = f[: n_lab * n].reshape(n_lab, n, -1), f[n_lab * n :].reshape(n_lab, n, -1)
        den = (hp + hm).T[:, :, None]  # (L, n, 1)
        out.append(np.moveaxis((fp - fm) / den, 0, -1))
    return np.concatenate(out, axis=0)


def jacobian(forward: ForwardModel, labels, *, method: str = "auto", steps=None, chunk_size: int = 256) -> np.ndarray:
    """J of ``forward`` at ``labels``: ``method`` = "autograd", "fd" or "auto" (autograd if possible)."""
    if method == "auto":
        method = "autograd" if forward.differentiable else "fd"
    if method == "autograd":
        return jacobian_autograd(forward.torch, labels, chunk_size=chunk_size)
    if method == "fd":
        if steps is None:
            raise InputError("finite differences need steps (one per label)", field="steps")
        return jacobian_fd(forward.numpy, labels, steps, bounds=(forward.lower, forward.upper), chunk_size=chunk_size)
    raise InputError("unknown Jacobian method (autograd, fd, auto)", field="method", value=method)
