"""The forward model: labels + observing conditions → observed flux μ, its error σ, noisy draws and ∂μ/∂θ.

One object, :class:`ForwardModel`, owns the physics chain from stellar labels to what the
PFS MR arm records, as the datasets store it (normalised to median 0.5, SPEC section 3)::

    labels θ ──spectral model──▶ F_λ(θ)  (model grid; the emulator, a grid, …)
             ──Doppler, reddening, magnitude (HSC i)──▶ physical flux
             ──LSF + pixel integration (one sparse matrix R)──▶ R F on the 4,096 pixels
             ──electrons: response, sky, moon, read noise, dark, sky floor──▶ σ
             ──÷ median──▶ μ = 0.5 R F / median(R F),   σ in the same units
             ──+ noise_level · σ · z,  z ~ N(0, 1) (observe.noise)──▶ noisy flux

Routes, all behind the same object:

- :meth:`ForwardModel.observe` — numpy, the simulator's fast path (``PFSObserver.observe``);
- :meth:`ForwardModel.observe_torch` — the same chain in torch, batched, on the inputs'
  device and dtype (CPU now, CUDA by construction): for training on fresh simulations;
  agrees with the numpy route to float rounding (tested);
- :meth:`ForwardModel.mu` / :meth:`ForwardModel.mu_and_jacobian` — the differentiable
  noiseless shape and its exact Jacobian ∂μ/∂θ (analytic chain rule for the emulator,
  forward-mode autograd otherwise), torch;
- :meth:`ForwardModel.value_and_jacobian` / :meth:`ForwardModel.observed_jacobian` — float64
  numpy μ and J for the Fisher ceiling (the sparse product applied to dF/dθ, the median
  normalisation differentiated analytically), and :func:`jacobian_fd` for models that are not
  differentiable (grids).

The noise model σ² = μ ν / R + B ν² / R² and the noise draws live in :mod:`specvit.observe.noise`;
the instrument (R, response, background) in :class:`~specvit.observe.observer.PFSObserver`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from specvit.errors import InputError, LabelRangeError
from specvit.observe.observer import AIRMASS_TABLE_STEP, NORMALISED_MEDIAN, median_rows

#: Rows per block of :meth:`ForwardModel.observe_torch` on the CPU (a block's float32 arrays stay in the L2 cache).
CPU_BLOCK_ROWS = 32


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


@dataclass
class TorchObservation:
    """:meth:`ForwardModel.observe_torch` for N spectra: tensors on the labels' device, in their dtype.

    flux : (N, P) normalised noiseless flux (median 0.5); error : (N, P) its 1σ at noise level 1;
    snr : (N,) median of flux / error; norm_factor : (N,) normalised = F_λ [erg s⁻¹ cm⁻² Å⁻¹] · norm_factor;
    mag_model : (N,) HSC i AB magnitude of the model flux in its own units (float64).
    """

    flux: torch.Tensor
    error: torch.Tensor
    snr: torch.Tensor
    norm_factor: torch.Tensor
    mag_model: torch.Tensor


class ForwardModel:
    """Labels (+ observing conditions) → the observed spectrum, its noise and its derivatives.

    Parameters
    ----------
    model : SpectralModel (``label_names``, ``bounds``, ``wave``, ``flux``; differentiable ones take torch)
    observer : PFSObserver or None
        If given, μ is ``observer.normalised_torch(model.flux(θ))`` (differentiable
        LSF + resampling + median normalisation; the error comes from the same
        observer). If None, μ is the model's own flux scaled to median 0.5 (no
        instrument; useful for tests and for spectra already on the model grid).

    ``ForwardModel.for_model(model, instrument)`` builds the PFS observer matched to the model.
    """

    def __init__(self, model, observer=None):
        self.model = model
        self.observer = observer
        self.label_names = tuple(model.label_names)
        self.bounds = dict(model.bounds)
        self.differentiable = bool(getattr(model, "differentiable", False))
        self._torch_cache: dict = {}

    @classmethod
    def for_model(cls, model, instrument=None) -> "ForwardModel":
        """The model seen through the PFS MR arm (``instrument``: an InstrumentConfig, default the calibrated arm)."""
        from specvit.observe.observer import PFSObserver

        return cls(model, PFSObserver.for_model(model, instrument))

    @property
    def wave(self) -> np.ndarray:
        """Wavelengths of μ's pixels, Angstrom (vacuum): the PFS pixels, or the model grid without observer."""
        return self.observer.wave if self.observer is not None else np.asarray(self.model.wave)

    def check_labels(self, labels, *, extrapolate: bool = False) -> None:
        """Shape (N, L), finite, inside the model's box and domain (unless ``extrapolate``); clear errors otherwise.

        The domain is the model's own :meth:`~specvit.spectra.base.SpectralModel.check_labels` (for the
        emulator: C/O < 1, :func:`specvit.labels.check_domain`)."""
        lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels, dtype=float)
        n_lab = len(self.label_names)
        if lab.ndim != 2 or lab.shape[1] != n_lab:
            raise InputError(f"labels must have shape (N, {n_lab}) in the order {', '.join(self.label_names)}",
                             field="labels", value=tuple(lab.shape))
        bad = ~np.isfinite(lab)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise InputError(f"non-finite label in row {i}", field=self.label_names[j], value=float(lab[i, j]))
        if not extrapolate:
            out = (lab < self.lower) | (lab > self.upper)
            if out.any():
                i, j = np.argwhere(out)[0]
                name = self.label_names[j]
                raise LabelRangeError(f"label outside the model's box [{self.lower[j]:g}, {self.upper[j]:g}] "
                                      f"in row {i} ({int(out.any(1).sum())} rows outside)", field=name,
                                      value=float(lab[i, j]))
            if hasattr(self.model, "check_labels"):  # the model's own domain (e.g. the emulator's C/O < 1)
                self.model.check_labels(lab)

    def outside_domain(self, labels) -> np.ndarray:
        """Bool (N,): label sets outside the model's box or its joint domain (the model's ``outside_domain``)."""
        lab = np.asarray(labels, dtype=float)
        lab = lab[None] if lab.ndim == 1 else lab
        if hasattr(self.model, "outside_domain"):
            return np.asarray(self.model.outside_domain(lab), dtype=bool)
        return ((lab < self.lower) | (lab > self.upper)).any(axis=1)

    @property
    def lower(self) -> np.ndarray:
        return np.array([self.bounds[n][0] for n in self.label_names])

    @property
    def upper(self) -> np.ndarray:
        return np.array([self.bounds[n][1] for n in self.label_names])

    def mu(self, labels: torch.Tensor) -> torch.Tensor:
        """Differentiable noiseless normalised flux μ(θ), (N, L) tensor → (N, P) tensor (redshift 0, no reddening)."""
        if not self.differentiable:
            raise InputError("model is not differentiable; use finite differences", field="model",
                             value=type(self.model).__name__)
        flux = self.model.flux(labels)
        if self.observer is not None:
            return self.observer.normalised_torch(flux)
        return _median_normalise_torch(flux)

    def mu_and_jacobian(self, labels: torch.Tensor, free: Sequence[str] | None = None):
        """μ (N, P) and ∂μ/∂θ_free (N, F, P) in label units, torch, exact (chain rule or forward-mode AD).

        ``free``: label names to differentiate by (default all). Labels are checked (shape,
        NaN, box). Same dtype and device as ``labels`` (the emulator computes in float32).
        """
        self.check_labels(labels)
        idx = list(range(len(self.label_names))) if free is None else [self._index(n) for n in free]
        x = torch.as_tensor(labels)
        mu, jac = jvp_stacked(self.mu, x)  # (N, P), (N, P, L)
        return mu.to(x.dtype), jac[:, :, idx].permute(0, 2, 1).to(x.dtype)

    def _index(self, name: str) -> int:
        if name not in self.label_names:
            raise InputError(f"unknown label (labels: {', '.join(self.label_names)})", field="free", value=name)
        return self.label_names.index(name)

    # ------------------------------------------------------------------ full observation
    def observe(self, labels, conditions, *, model_flux=None, dtype=np.float32, out=None,
                return_components: bool = False):
        """numpy route: :class:`~specvit.observe.observer.Observation` of N label sets under ``conditions``.

        The model flux in ``dtype`` (the emulator's fused float32 path), then ``PFSObserver.observe``
        (float32 in → float32 arithmetic). ``model_flux`` (N, n_model): the model's flux for ``labels``
        when the caller already has it (``simulate`` interpolating a grid with redraws); the labels
        are then not evaluated again. ``out = (flux, error)`` receives the result (shared memory).
        """
        if self.observer is None:
            raise InputError("observe needs an observer", field="observer")
        if model_flux is None:
            lab = np.asarray(labels, dtype=np.float64)
            self.check_labels(lab)
            f = self.model_flux_as(lab, dtype)
        else:
            f = model_flux.detach().cpu().numpy() if hasattr(model_flux, "detach") else np.asarray(model_flux)
        return self.observer.observe(f.astype(dtype, copy=False), conditions, out=out,
                                     return_components=return_components)

    def observe_torch(self, labels: torch.Tensor, conditions, *, block_rows: int | None = None,
                      threads: int | None = None) -> TorchObservation:
        """The full chain in torch on ``labels``' device and dtype (float32 or float64); no autograd graph.

        ``conditions``: a DataFrame of observing conditions (N rows; :func:`~specvit.observe.draw_conditions`).
        The per-spectrum scalars of the conditions (airmass, fibre loss, sky and moon factors) are
        computed in float64 numpy (O(N)); every (N, pixels) operation runs in torch.

        On the CPU the rows go in blocks of ``block_rows`` (default :data:`CPU_BLOCK_ROWS`, so that a
        block's arrays stay in cache) over ``threads`` worker threads (default
        ``torch.get_num_threads()``), each running torch single-threaded; on other devices
        the batch is one block. The result does not depend on either setting.
        """
        from specvit.observe.conditions import check_conditions

        if self.observer is None:
            raise InputError("observe_torch needs an observer", field="observer")
        x = torch.as_tensor(labels)
        if x.dtype not in (torch.float32, torch.float64):
            raise InputError("labels must be float32 or float64", field="labels", value=str(x.dtype))
        self.check_labels(x)
        c = check_conditions(conditions, x.shape[0], source="conditions")
        dt, dev = x.dtype, x.device
        t = self._torch_tables(dt, dev)
        fac = self.observer.condition_factors(c)
        table_len = t["trans_table"].shape[0]
        u = (np.clip(fac["airmass"], 1.0, 1.0 + AIRMASS_TABLE_STEP * (table_len - 1)) - 1.0) / AIRMASS_TABLE_STEP
        i_x = np.minimum(u.astype(np.int64), table_len - 2)
        rows = {  # per-spectrum scalars, (N,) each, on the device
            "z": torch.as_tensor(c["redshift"].to_numpy(float), dtype=torch.float64, device=dev),
            "ebv": torch.as_tensor(c["ext"].to_numpy(float), dtype=dt, device=dev),
            "mag": torch.as_tensor(c["mag"].to_numpy(float), dtype=torch.float64, device=dev),
            "i_x": torch.as_tensor(i_x, device=dev), "frac_x": torch.as_tensor(u - i_x, dtype=dt, device=dev),
            **{k: torch.as_tensor(fac[k], dtype=dt, device=dev) for k in ("a", "b", "sky_fac", "moon_fac", "const")},
        }
        n, p = x.shape[0], self.observer.resample_matrix.shape[0]
        out = TorchObservation(flux=torch.empty((n, p), dtype=dt, device=dev),
                               error=torch.empty((n, p), dtype=dt, device=dev),
                               snr=torch.empty(n, dtype=dt, device=dev),
                               norm_factor=torch.empty(n, dtype=torch.float64, device=dev),
                               mag_model=torch.empty(n, dtype=torch.float64, device=dev))
        if dev.type != "cpu" or n == 0:
            spans = [(0, n)] if n else []
            threads = 1
        else:
            step = max(1, int(block_rows or CPU_BLOCK_ROWS))
            spans = [(i, min(i + step, n)) for i in range(0, n, step)]
            threads = max(1, min(int(threads or torch.get_num_threads()), len(spans)))

        def work(span):
            i, j = span
            with torch.no_grad():
                self._observe_block(x[i:j], {k: v[i:j] for k, v in rows.items()}, t, out, i, j)

        if threads == 1:
            # small blocks on one thread: torch's own intra-op threads only add synchronisation
            # (measured 10x slower with 2 OpenMP threads on 32-row blocks)
            prev = torch.get_num_threads()
            if dev.type == "cpu":
                torch.set_num_threads(1)
            try:
                for span in spans:
                    work(span)
            finally:
                torch.set_num_threads(prev)
        else:
            from concurrent.futures import ThreadPoolExecutor

            def run_share(k):
                torch.set_num_threads(1)  # this worker thread only
                for span in spans[k::threads]:
                    work(span)

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(run_share, range(threads)))
        bad = ~(out.mag_model.isfinite())
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise InputError(f"model flux has no positive flux in the HSC i band (row {i})", field="model_flux")
        bad = ~(out.norm_factor > 0)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise InputError(f"median model flux over the PFS arm is not positive (row {i})", field="model_flux")
        return out

    def _observe_block(self, x: torch.Tensor, r: dict, t: dict, out: TorchObservation, i: int, j: int) -> None:
        """Rows i:j of :meth:`observe_torch`: labels ``x`` (B, L), per-row scalars ``r``, device tables ``t``."""
        dt = x.dtype
        obs = self.observer
        fused = getattr(self.model, "flux_fused_torch", None)  # the emulator's fast path, on the device
        f = (fused(x) if fused is not None else self.model.flux(x)).to(dt)  # (B, n_model), model units
        z = r["z"]
        if bool((z != 0).any()):  # F_obs(λ) = F(λ / (1 + z)), linear interpolation on the model grid
            w = t["model_wave64"]  # positions in float64 (float32 steps are 5e-4 A at 8000 A)
            xw = w[None, :] / (1.0 + z[:, None])
            jj = (torch.searchsorted(w, xw) - 1).clamp(0, w.shape[0] - 2)
            frac = ((xw - w[jj]) / (w[jj + 1] - w[jj])).clamp(0.0, 1.0).to(dt)
            f = f.gather(1, jj) * (1 - frac) + f.gather(1, jj + 1) * frac
        if bool((r["ebv"] > 0).any()):  # reddening, CCM89 with R_V = 3.1
            f = f * torch.pow(10.0, -0.4 * r["ebv"][:, None] * t["ccm_a"][None])
        phot = obs.photometry.integral_from_projection((t["projector_t"] @ f.T).T)
        mag_model = -2.5 * torch.log10(phot / obs.photometry.ab_norm)  # not finite where phot <= 0: the caller refuses
        scale = torch.pow(10.0, -0.4 * (r["mag"] - mag_model))  # model units -> erg/s/cm^2/A
        fc = self._resample_torch(f, t)  # (B, P), model units
        med = _median_torch(fc)
        norm = NORMALISED_MEDIAN / med
        # electrons per unit F_λ and the non-object variance (PFSObserver.response_and_background)
        lo = t["trans_table"][r["i_x"]]
        response = torch.lerp(lo, t["trans_table"][r["i_x"] + 1], r["frac_x"][:, None])
        response *= t["base"] * r["a"][:, None] + t["base_u"] * r["b"][:, None]
        sf = r["sky_fac"][:, None]
        var = sf * t["floor2"]
        var += t["sky_rate"]
        var *= sf
        var += r["const"][:, None]
        if bool((r["moon_fac"] > 0).any()):
            var += r["moon_fac"][:, None] * t["moon"]
        response *= scale.to(dt)[:, None]  # electrons per model unit
        obj = fc * response
        var += obj.clamp(min=0)
        err = var.sqrt_()
        out.snr[i:j] = _median_torch(obj.div_(err))
        nf = norm.to(dt)[:, None]
        torch.div(err, response, out=out.error[i:j])
        out.error[i:j] *= nf
        torch.mul(fc, nf, out=out.flux[i:j])
        out.norm_factor[i:j] = torch.where(med > 0, norm.double() / scale, torch.zeros_like(scale))
        out.mag_model[i:j] = mag_model

    def sample(self, obs, noise_level, generator: torch.Generator) -> torch.Tensor:
        """A noisy draw ``flux + noise_level · error · z`` of a :class:`TorchObservation` (or numpy
        :class:`Observation` with a numpy Generator): :func:`specvit.observe.noise.noisy_flux`."""
        from specvit.observe.noise import noisy_flux

        return noisy_flux(obs.flux, obs.error, noise_level, generator)

    def _torch_tables(self, dtype, device) -> dict:
        """The observer's pixel arrays as tensors of ``dtype`` on ``device`` (built once per pair)."""
        key = (dtype, str(device))
        if key not in self._torch_cache:
            from specvit.observe import atmosphere as atm

            obs = self.observer
            T = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
            m = obs.resample_matrix.tocsr()
            self._torch_cache[key] = {
                "model_wave64": torch.as_tensor(obs.model_wave, dtype=torch.float64, device=device),
                "ccm_a": T(atm.ccm89_a_lambda_over_av(obs.model_wave) * 3.1),
                "projector_t": T(obs.photometry.projector.T.copy()),  # (5, n_model): Pᵀ fᵀ is ~5x faster than f P
                "resample": _sparse_csr(m, dtype, device),
                "base": T(obs.base_response), "base_u": T(obs.base_response * obs._fib_u),
                "trans_table": T(obs._trans_table), "sky_rate": T(obs.sky_rate), "floor2": T(obs.sky_floor2),
                "moon": T(obs.moon_rate_v0),
            }
        return self._torch_cache[key]

    @staticmethod
    def _resample_torch(f: torch.Tensor, t: dict) -> torch.Tensor:
        """(N, n_model) → (N, P) = f Rᵀ with the sparse LSF + resampling matrix."""
        return (t["resample"] @ f.T).T


    def model_flux(self, labels) -> np.ndarray:
        """The model's own F_lambda (N, n_model) as float64 numpy (no instrument)."""
        labels = np.asarray(labels, dtype=np.float64)
        if self.differentiable:
            with torch.no_grad():
                return self.model.flux(torch.as_tensor(labels)).detach().numpy().astype(np.float64)
        return np.asarray(self.model.flux(labels, extrapolate=True), dtype=np.float64)

    def model_flux_as(self, labels, dtype) -> np.ndarray:
        """The model's own F_lambda (N, n_model) as numpy, computed in ``dtype`` where the model can (the
        emulator's fused float32 path writes float32 directly: no float64 round trip, the same numbers)."""
        f = self.model.flux(labels, dtype=np.dtype(dtype)) if _accepts_dtype(self.model) else self.model.flux(labels)
        return f.detach().cpu().numpy() if hasattr(f, "detach") else np.asarray(f)  # torch-backed models

    def _model_flux_fd(self, labels) -> np.ndarray:
        """:meth:`model_flux` for finite-difference stencils: a point inside the domain may have a stencil
        point just outside the joint domain (C/O = 1 for the emulator); the model's smooth continuation is
        used there (the box edges are handled by one-sided differences in :func:`jacobian_fd`)."""
        import warnings

        labels = np.asarray(labels, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="extrapolating")
            if self.differentiable:
                with torch.no_grad():
                    f = self.model.flux(torch.as_tensor(labels), extrapolate=True)
                return f.detach().numpy().astype(np.float64)
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
                mu, jac = jvp_stacked(self.mu, torch.as_tensor(labels))
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
            df = jacobian_fd(self._model_flux_fd, labels, steps, bounds=(self.lower, self.upper))
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
        (:func:`model_flux_and_jacobian`: the emulator's closed form; autograd for
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
            f_t, df_t = model_flux_and_jacobian(self.model, torch.as_tensor(labels))
            ft, dft = f_t.detach().numpy(), df_t.detach().numpy()  # (n_model, N), (n_model, N, L)
        elif method == "fd":
            if steps is None:
                raise InputError("finite differences need steps (one per label)", field="steps")
            ft = self.model_flux(labels).T
            dft = np.ascontiguousarray(
                jacobian_fd(self._model_flux_fd, labels, steps, bounds=(self.lower, self.upper)).transpose(1, 0, 2))
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
                return self.mu(torch.as_tensor(labels, dtype=torch.float64)).numpy()
        flux = np.asarray(self.model.flux(labels, extrapolate=True), dtype=np.float64)
        if self.observer is not None:
            with torch.no_grad():
                return self.observer.normalised_torch(torch.as_tensor(flux)).numpy()
        return flux * (NORMALISED_MEDIAN / np.median(flux, axis=-1, keepdims=True))



def default_forward(model=None, *, use_observer: bool = True, model_spec: str = "default", instrument=None):
    """(ForwardModel, PFSObserver or None) for ``model`` (default: ``load_spectral_model(model_spec)``)
    through the PFS MR arm (``instrument``: an InstrumentConfig, default the ``paper`` preset;
    ``use_observer=False``: the model's own grid, no instrument)."""
    from specvit.spectra import load_spectral_model

    model = model if model is not None else load_spectral_model(model_spec)
    fwd = ForwardModel.for_model(model, instrument) if use_observer else ForwardModel(model)
    return fwd, fwd.observer

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
        return jacobian_autograd(forward.mu, labels, chunk_size=chunk_size)
    if method == "fd":
        if steps is None:
            raise InputError("finite differences need steps (one per label)", field="steps")
        return jacobian_fd(forward.numpy, labels, steps, bounds=(forward.lower, forward.upper), chunk_size=chunk_size)
    raise InputError("unknown Jacobian method (autograd, fd, auto)", field="method", value=method)


def _accepts_dtype(model) -> bool:
    import inspect

    try:
        return "dtype" in inspect.signature(model.flux).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _sparse_csr(m, dtype, device) -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse CSR tensor (invariants checked once, here; torch's beta note silenced)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(torch.as_tensor(m.indptr, dtype=torch.long, device=device),
                                       torch.as_tensor(m.indices, dtype=torch.long, device=device),
                                       torch.as_tensor(m.data, dtype=dtype, device=device), size=m.shape,
                                       check_invariants=True)


def _median_torch(x: torch.Tensor) -> torch.Tensor:
    """Median over the last axis as numpy defines it (mean of the two middle values for even n), no autograd.

    One selection (``torch.median`` gives the lower middle value); the upper middle value is the
    smallest one above it, unless the lower one fills both middle ranks (ties). On the CPU, for 2-D
    input, numpy's partition does the same selection ~13x faster (86 vs 6.7 µs per 4,096-pixel
    spectrum, one thread): the stream's forward model takes two medians per spectrum.
    """
    n = x.shape[-1]
    if x.device.type == "cpu" and x.ndim == 2 and n > 0:
        return torch.from_numpy(median_rows(x.detach().numpy()))
    lo = x.median(dim=-1).values
    if n % 2:
        return lo
    le = x <= lo[..., None]
    hi = x.masked_fill(le, float("inf")).amin(dim=-1)
    hi = torch.where(le.sum(-1) > n // 2, lo, hi)
    return 0.5 * (lo + hi)


def autograd_flux_and_jacobian(model, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """F (n_model, N) and ∂F/∂θ (n_model, N, L), pixel-major, by forward-mode AD through ``model.flux``."""
    f, df = jvp_stacked(lambda z: model.flux(z), labels)  # (N, n), (N, n, L)
    return f.T, df.permute(1, 0, 2).contiguous()


def model_flux_and_jacobian(model, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """F (n_model, N) and ∂F/∂θ (n_model, N, L) (pixel-major) of a differentiable model, the fastest exact route.

    A model with its own closed-form ``flux_and_jacobian`` (the PCA emulator's chain rule) uses it;
    any other differentiable model goes through forward-mode autograd. Labels outside the model's
    box raise its :class:`~specvit.errors.LabelRangeError`.
    """
    x = torch.as_tensor(np.asarray(labels, dtype=np.float64)) if not isinstance(labels, torch.Tensor) else labels
    if hasattr(model, "flux_and_jacobian"):
        model.check_labels(x.detach().cpu().numpy())
        return model.flux_and_jacobian(x)
    return autograd_flux_and_jacobian(model, x)
