"""A Payne-style neural emulator of the PySME/MARCS spectra: the embedded default spectral model.

Architecture (after Ting et al. 2019, "The Payne", with a PCA output layer as in
Czekala et al. 2015 / Kix et al.): the 5 labels, scaled to [-0.5, 0.5] over the training
box, go through an MLP (SiLU) whose last layer gives K coefficients of a principal-component
basis of the continuum-normalised flux and K_c coefficients of a basis of ln(continuum):

    norm(lambda) = mean_n + sum_k a_k(labels) B_k(lambda)
    ln C(lambda) = ln(pi B_lambda(T_eff)) + mean_c + sum_k b_k(labels) D_k(lambda)
    F_lambda     = norm * C

(the Planck baseline carries most of the T_eff dependence of the continuum, so the network
only learns the smaller, smoother departures from it.)

Why: the normalised flux carries every line and band (the physics), the continuum carries the
SED shape (magnitudes, photon counts) including the Paschen edge; both vary smoothly with the
labels. The PCA basis makes evaluation a small MLP plus one (N, K) x (K, n_wave) product --
fast in batch (``benchmarks/emulator.py``) and a few MB of weights -- and everything is torch,
so autograd gives exact Jacobians d flux / d labels for the Fisher ceiling.

Speed (``benchmarks/emulator.py``, ``docs/emulator.md`` "Speed"): numpy labels go through a
fused float32 path (:meth:`SpectralEmulator.evaluate`): per block of rows that stays in cache,
``F = clip([r, r a] [mean_n; B]) * exp(offset + [b, -1/T, h] [D; hc/(k lambda); P])`` -- two
matrix products and one exp2 per pixel, no float64 round trip. The Planck factor is folded into
the second product: ln(pi B_lambda) = ln num(lambda) - hc/(lambda k T) - ln(1 - exp(-hc/(lambda k T)));
the first two terms are exact (a constant row and a rank-one column, with the per-spectrum
constant r outside the exponent so that it stays O(1) in float32) and the last, smooth one
(< 0.07) is Lagrange-interpolated in 1/lambda on 8 Chebyshev nodes (error < 3e-8 in ln C for
2,000-15,000 K, measured in tests/test_emulator_speed.py). Torch input (autograd) takes the
reference path (:meth:`SpectralEmulator.flux_torch`), which ``method="reference"`` also
selects for numpy.

Weights: one ``.npz`` per version (``format_version``, arrays only, no pickle) in
``specvit/data_files/emulator/``; :func:`load_emulator` / :func:`specvit.spectra.default_model`.
"""
from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from specvit.errors import InputError
from specvit.labels import MAX_C_TO_O
from specvit.physics import HC_OVER_K_A_K, LN_PI_2HC2_PER_A, dln_pi_planck_dteff, ln_pi_planck, pi_planck_numerator
from specvit.spectra.base import SpectralModel

FORMAT_VERSION = 1
#: Chebyshev nodes (in 1/lambda) of the Lagrange interpolation of -ln(1 - exp(-hc/(lambda k T))) in the fast path.
PLANCK_NODES = 8
#: Rows per block of the fast path: the float32 (rows, n_wave) buffers stay in the 1 MB L2 cache
#: (16-32 rows were fastest single-threaded, 256 rows ~1.5x slower; ``benchmarks/emulator.py --chunks``).
FAST_CHUNK_ROWS = 32
_REQUIRED = ("format_version", "wave_A", "label_names", "label_lo", "label_hi", "train_lo", "train_hi", "resolution",
             "norm_mean", "norm_basis", "lncont_mean", "lncont_basis", "n_hidden_layers")


class EmulatorNet(torch.nn.Module):
    """MLP: scaled labels (N, L) -> PCA coefficients (N, K + K_c)."""

    def __init__(self, *, n_labels: int, n_out: int, width: int = 256, depth: int = 3):
        super().__init__()
        layers, d = [], n_labels
        for _ in range(depth):
            layers += [torch.nn.Linear(d, width), torch.nn.SiLU()]
            d = width
        layers.append(torch.nn.Linear(d, n_out))
        self.mlp = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class SpectralEmulator(SpectralModel):
    """Neural emulator of synthetic spectra (see module docstring).

    Parameters (keyword-only)
    -------------------------
    wave : (n_wave,) vacuum wavelengths, Angstrom.
    resolution : Gaussian resolving power R of the emulated spectra.
    label_names, bounds : label order and the valid box (outside: :class:`LabelRangeError`).
    The domain is also limited to C/O < ``meta["max_c_to_o"]`` (default :data:`specvit.labels.MAX_C_TO_O`
    = 1; ``None`` in ``meta``: no limit), because the spectra were synthesised on oxygen-rich MARCS
    atmospheres (docs/emulator.md, "Physical domain").
    train_lo, train_hi : the box the labels are scaled over (training box incl. margin).
    net : :class:`EmulatorNet`; norm_mean (n_wave,), norm_basis (K, n_wave),
    lncont_mean (n_wave,), lncont_basis (K_c, n_wave).
    lncont_baseline : "planck" (ln pi B_lambda(T_eff) is added to ln C) or "none".
    meta : provenance dict (training set, seed, validation numbers).
    """

    medium = "vacuum"
    differentiable = True

    def __init__(self, *, wave, resolution, label_names, bounds, train_lo, train_hi, net, norm_mean, norm_basis,
                 lncont_mean, lncont_basis, lncont_baseline="planck", meta=None):
        self.wave = np.asarray(wave, dtype=np.float64)
        self.resolution = float(resolution)
        self.label_names = tuple(label_names)
        self.bounds = {k: (float(v[0]), float(v[1])) for k, v in bounds.items()}
        self.meta = dict(meta or {})
        self.version = self.meta.get("version", "")
        self.max_c_to_o = self.meta.get("max_c_to_o", MAX_C_TO_O)
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        self._lo, self._hi = t(train_lo), t(train_hi)
        self._norm_mean, self._norm_basis = t(norm_mean), t(norm_basis)
        self._lnc_mean, self._lnc_basis = t(lncont_mean), t(lncont_basis)
        self.n_components = int(self._norm_basis.shape[0])
        if lncont_baseline not in ("planck", "none"):
            raise InputError("unknown continuum baseline", field="lncont_baseline", value=lncont_baseline)
        self.lncont_baseline = lncont_baseline
        self._wave_t = t(self.wave)
        # pi B_lambda = planck_num / expm1(hc/k / (lambda T)); planck_num = pi 2 h c^2 / lambda^5 (per A)
        self._planck_num = t(pi_planck_numerator(self.wave))
        self._hc_k_over_wave = t(HC_OVER_K_A_K / self.wave)
        self._fast = None  # fused float32 tables of evaluate(), built on first use

    # ---- core (torch)
    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._lo.to(x)) / (self._hi - self._lo).to(x) - 0.5

    def _coeffs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.net(self._scale(x.to(torch.float32)))
        return c[:, : self.n_components], c[:, self.n_components :]

    def coeffs_and_tangents(self, labels: torch.Tensor, tangents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PCA coefficients c (N, K + K_c) and their directional derivatives dc (N, F, K + K_c), float32.

        ``tangents`` (F, L) are directions in label units (``torch.eye(L)``: the full Jacobian).
        For the Linear/SiLU MLP the primal runs once and the F tangents as one (N·F)-row
        product per layer (forward-mode AD would repeat the primal F times); any other
        ``net`` uses forward-mode AD. No range check. Used by the Fisher ceiling and the
        fast template fit for their analytic Jacobians.
        """
        x = labels.detach().to(torch.float32)
        n, f = x.shape[0], tangents.shape[0]
        layers = list(self.net.mlp) if isinstance(getattr(self.net, "mlp", None), torch.nn.Sequential) else []
        if not layers or not isinstance(layers[0], torch.nn.Linear) or \
                not all(isinstance(m, (torch.nn.Linear, torch.nn.SiLU)) for m in layers):
            import torch.autograd.forward_ad as fwad

            xs, ts = x.repeat(f, 1), tangents.to(torch.float32).repeat_interleave(n, 0)
            with torch.no_grad(), fwad.dual_level():
                c, dc = fwad.unpack_dual(torch.cat(self._coeffs(fwad.make_dual(xs, ts)), dim=1))
            dc = torch.zeros_like(c) if dc is None else dc
            return c[:n], dc.reshape(f, n, -1).transpose(0, 1)
        dh = tangents.to(torch.float32) / (self._hi - self._lo)  # (F, L) tangents of the scaled labels
        h = self._scale(x)
        with torch.no_grad():
            for layer in layers:
                if isinstance(layer, torch.nn.Linear):
                    dh = dh @ layer.weight.T  # (F, d) while the same for every row, then (N, F, d)
                else:  # SiLU: d silu(z) = σ(z) (1 + z (1 − σ(z))) dz
                    sig = torch.sigmoid(h)
                    dh = dh * (sig * (1 + h * (1 - sig)))[:, None, :]
                h = layer(h)  # the primal exactly as self.net computes it
        return h, (dh.expand(n, f, dh.shape[-1]) if dh.ndim == 2 else dh)

    # ---- the closed form's pieces, public for the forward model (specvit.observe.forward)
    @property
    def norm_mean(self) -> torch.Tensor:
        """Mean continuum-normalised flux (n_wave,), float32."""
        return self._norm_mean

    @property
    def norm_basis(self) -> torch.Tensor:
        """Principal components of the normalised flux (K, n_wave), float32."""
        return self._norm_basis

    @property
    def lncont_mean(self) -> torch.Tensor:
        """Mean of ln C − ln πB_λ(T_eff) (n_wave,), float32 (ln C itself without the Planck baseline)."""
        return self._lnc_mean

    @property
    def lncont_basis(self) -> torch.Tensor:
        """Principal components of ln C (K_c, n_wave), float32."""
        return self._lnc_basis

    def coefficients(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PCA coefficients (a (N, K), b (N, K_c)) of labels (N, L) in label units, float32, differentiable."""
        return self._coeffs(labels)

    def pi_planck(self, teff_K: torch.Tensor) -> torch.Tensor:
        """πB_λ(T_eff) on ``wave`` (N, n_wave), erg s⁻¹ cm⁻² Å⁻¹, float32: one expm1 per pixel."""
        return self._planck_num / torch.expm1(self._hc_k_over_wave / teff_K.to(torch.float32).reshape(-1, 1))

    def dln_pi_planck_dteff(self, teff_K: torch.Tensor) -> torch.Tensor:
        """∂ ln πB_λ / ∂T_eff on ``wave`` (N, n_wave), per K, float32 (:func:`specvit.physics.dln_pi_planck_dteff`)."""
        teff = teff_K.to(torch.float32).reshape(-1, 1)
        return dln_pi_planck_dteff(None, teff, x=self._hc_k_over_wave / teff)

    def flux_and_jacobian(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F and ∂F/∂θ by the chain rule of the closed form, pixel-major, float32, no autograd through pixels.

        With F = max(n̄ + a B, 0) · exp(c̄ + b D) · πB_λ(T_eff) and (a, b) = MLP(θ):

            ∂F/∂θ_l = 1[n > 0] · C · (∂a/∂θ_l B) + F · (∂b/∂θ_l D + δ_{l,T_eff} ∂ln πB_λ/∂T),

        exact; only the small MLP Jacobian comes from :meth:`coeffs_and_tangents`. Returns
        F (n_wave, N) and ∂F/∂θ (n_wave, N, L), label units; pixel-major so that a sparse
        LSF matrix applies without a transposed copy. No range check (the caller checks).
        Tested against forward-mode autograd through :meth:`flux_torch`.
        """
        x = labels.detach().to(torch.float32)
        n, n_lab = x.shape
        k = self.n_components
        c, dc = self.coeffs_and_tangents(x, torch.eye(n_lab))  # (N, K+Kc), (N, L, K+Kc)
        dct = dc.permute(2, 0, 1).reshape(-1, n * n_lab)  # (K+Kc, N·L), columns (point, label)
        ct = c.T
        raw = torch.addmm(self._norm_mean[:, None], self._norm_basis.T, ct[:k])  # (n_wave, N)
        keep = raw > 0  # the clip at 0 of the normalised flux
        cont = torch.exp(torch.addmm(self._lnc_mean[:, None], self._lnc_basis.T, ct[k:]))
        planck = self.lncont_baseline == "planck"
        if planck:  # the Planck baseline takes T_eff from the first label column
            cont = cont * self.pi_planck(x[:, 0]).T
        flux = raw.clamp(min=0.0) * cont
        djac = (self._norm_basis.T @ dct[:k]).view(-1, n, n_lab)
        djac.mul_((cont * keep)[:, :, None])
        dln = (self._lnc_basis.T @ dct[k:]).view(-1, n, n_lab)
        if planck:
            dln[:, :, 0].add_(self.dln_pi_planck_dteff(x[:, 0]).T)
        djac.addcmul_(dln, flux[:, :, None])
        return flux, djac

    def norm_torch(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self._coeffs(x)
        return self._clip_norm(self._norm_mean + a @ self._norm_basis)

    @staticmethod
    def _clip_norm(norm: torch.Tensor) -> torch.Tensor:
        """Continuum-normalised flux cannot be negative: clip at 0.

        v0 (47 training spectra) gives some negative pixels for 0.4% of labels drawn
        uniformly over the box (measured 2026-11-23, 20,000 draws); left unclipped they
        made the synthetic magnitude (and the SNR) of such a spectrum meaningless.
        """
        return norm.clamp(min=0.0)

    def _baseline(self, x: torch.Tensor) -> torch.Tensor:
        if self.lncont_baseline == "planck":
            return ln_pi_planck(self._wave_t, x[:, :1].to(torch.float32))
        return torch.zeros((), dtype=torch.float32)

    def _cont(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """C = pi B_lambda(T_eff) * exp(mean_c + b D): one exp and one expm1 per pixel."""
        c = torch.exp(self._lnc_mean + b @ self._lnc_basis)
        if self.lncont_baseline == "planck":
            c = c * self.pi_planck(x[:, 0])
        return c

    def lncont_torch(self, x: torch.Tensor) -> torch.Tensor:
        _, b = self._coeffs(x)
        return self._baseline(x) + self._lnc_mean + b @ self._lnc_basis

    def continuum_torch(self, x: torch.Tensor) -> torch.Tensor:
        _, b = self._coeffs(x)
        return self._cont(x, b)

    def flux_torch(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self._coeffs(x)
        return self._clip_norm(self._norm_mean + a @ self._norm_basis) * self._cont(x, b)

    # ---- fast path (numpy labels, no autograd)
    def _fast_tables(self) -> dict:
        """Fused float32 matrices of the fast path (built once in float64, stored as float32).

        norm_basis : [mean_n; B]                                     (1 + K, n_wave)
        ln_basis   : [ln_offset; D; hc/k (1/lambda - u_mid); P] / ln 2 (1 + K_c [+ 1 + PLANCK_NODES], n_wave)

        with ln_offset = mean_c + ln num(lambda) - c0, ln num = ln(pi 2 h c^2 / lambda^5) (0 without
        the Planck baseline), c0 the mean of mean_c + ln num, and P the Lagrange polynomials on
        Chebyshev nodes of u = 1/lambda. The per-spectrum factor r = exp(c0 - hc u_mid / (k T))
        multiplies the normalised-flux coefficients, so the float32 exponent stays O(1). The ln
        rows are divided by ln 2 (in float64) so that the pixel loop calls exp2, about twice as
        fast as exp in torch on this CPU (0.56 vs 1.04 ns per float32, measured).
        """
        if self._fast is not None:
            return self._fast
        w = self.wave
        D = self._lnc_basis.numpy().astype(np.float64)
        offset = self._lnc_mean.numpy().astype(np.float64)
        u_mid, nodes = 0.0, np.zeros(0)
        if self.lncont_baseline == "planck":
            offset = offset + LN_PI_2HC2_PER_A - 5 * np.log(w * 1e-8)
        c0 = float(np.mean(offset))
        offset = offset - c0
        if self.lncont_baseline == "planck":
            u = 1.0 / w
            u_mid = 0.5 * (u.max() + u.min())
            k = np.arange(PLANCK_NODES)
            nodes = u_mid + 0.5 * (u.max() - u.min()) * np.cos((2 * k + 1) * np.pi / (2 * PLANCK_NODES))
            lag = np.ones((PLANCK_NODES, len(w)))
            for j in range(PLANCK_NODES):
                for i in range(PLANCK_NODES):
                    if i != j:
                        lag[j] *= (u - nodes[i]) / (nodes[j] - nodes[i])
            D = np.vstack([D, HC_OVER_K_A_K * (u - u_mid)[None, :], lag])
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        self._fast = {"norm_basis": f32(np.vstack([self._norm_mean.numpy()[None, :], self._norm_basis.numpy()])),
                      "ln_basis": f32(np.vstack([offset[None, :], D]) / np.log(2.0)), "c0": c0,
                      "hc_k_u_mid": HC_OVER_K_A_K * u_mid, "hc_k_nodes": HC_OVER_K_A_K * nodes}
        return self._fast

    def _fast_coeffs(self, arr: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coefficients of the fused products, float32:
        ([r, r a] (N, 1+K), [1, b, -1/T, h] (N, 1+K_c [+ 1 + nodes]), r (N, 1)),

        r = exp(c0 - hc u_mid / (k T)) (exp(c0) without the Planck baseline; 1 for ``what="norm"``),
        h_j = -ln(1 - exp(-hc u_j / (k T))).
        """
        tab = self._fast_tables()
        ab = self.net(self._scale(torch.as_tensor(arr, dtype=torch.float32))).numpy()
        a, b = ab[:, : self.n_components], ab[:, self.n_components:]
        teff = arr[:, :1].astype(np.float64)
        one = np.ones_like(teff)
        if self.lncont_baseline == "planck":
            r = np.exp(tab["c0"] - tab["hc_k_u_mid"] / teff)
            x = tab["hc_k_nodes"][None, :] / teff  # (N, nodes): hc/(lambda k T) at the nodes
            c = np.hstack([one, b, -1.0 / teff, -np.log1p(-np.exp(-x))])
        else:
            r, c = np.exp(tab["c0"]) * one, np.hstack([one, b])
        if what == "norm":
            r = one
        f32 = lambda v: np.ascontiguousarray(v, dtype=np.float32)  # noqa: E731
        return f32(np.hstack([r, r * a])), f32(c), f32(r)

    def flux_fused_torch(self, labels: torch.Tensor) -> torch.Tensor:
        """F_λ (N, n_wave) float32 by the fused path of :meth:`evaluate`, in torch on ``labels``' device; no autograd.

        The same two products and one exp2 per pixel as the numpy fast path (its tables moved to the
        device once), for the forward model's batched simulation on any device. Agrees with
        :meth:`flux_torch` to float32 rounding (tested).
        """
        dev = labels.device
        key = ("fused", str(dev))
        cache = self.__dict__.setdefault("_device_tables", {})
        if key not in cache:
            tab = self._fast_tables()
            cache[key] = {k: torch.as_tensor(tab[k], device=dev) for k in ("norm_basis", "ln_basis")}
            cache[key].update({k: torch.as_tensor(np.atleast_1d(tab[k]), dtype=torch.float64, device=dev)
                               for k in ("c0", "hc_k_u_mid", "hc_k_nodes")})
            cache[key]["net"] = self.net if dev.type == "cpu" else copy.deepcopy(self.net).to(dev)
        tab = cache[key]
        with torch.no_grad():
            x = labels.detach()
            ab = tab["net"](self._scale(x.to(torch.float32)))
            a, b = ab[:, : self.n_components].double(), ab[:, self.n_components:].double()
            teff = x[:, :1].double()
            one = torch.ones_like(teff)
            if self.lncont_baseline == "planck":
                r = torch.exp(tab["c0"] - tab["hc_k_u_mid"] / teff)
                c = torch.cat([one, b, -1.0 / teff, -torch.log1p(-torch.exp(-tab["hc_k_nodes"][None, :] / teff))], 1)
            else:
                r, c = torch.exp(tab["c0"]) * one, torch.cat([one, b], 1)
            flux = (c.float() @ tab["ln_basis"]).exp2_()
            return flux.mul_((torch.cat([r, r * a], 1).float() @ tab["norm_basis"]).clamp_(min=0.0))

    def _evaluate_block(self, arr: np.ndarray, out: np.ndarray, what: str, rows: int) -> None:
        """Evaluate rows ``arr`` into ``out`` in blocks of ``rows``, single-threaded (runs in a worker thread)."""
        torch.set_num_threads(1)  # this thread only (OpenMP/MKL settings are per thread); see evaluate()
        tab = self._fast_tables()
        n, nw = out.shape
        with torch.inference_mode():
            direct = out.dtype == np.float32
            buf = None if direct else np.empty((min(rows, n), nw), dtype=np.float32)
            buf_n = np.empty((min(rows, n), nw), dtype=np.float32) if what == "flux" else None
            block = _coeff_block(rows)
            for i in range(0, n, rows):
                j = min(i + rows, n)
                if i % block == 0:  # the MLP runs on blocks of `block` rows (cheaper than per chunk)
                    a_blk, c_blk, r_blk = self._fast_coeffs(arr[i:i + block], what)
                k, m = i % block, i % block + (j - i)
                a, c, r = a_blk[k:m], c_blk[k:m], r_blk[k:m]
                dst = out[i:j] if direct else buf[: j - i]
                dst_t = torch.from_numpy(dst)
                if what == "norm":
                    np.matmul(a, tab["norm_basis"], out=dst)
                    dst_t.clamp_(min=0.0)
                else:
                    np.matmul(c, tab["ln_basis"], out=dst)
                    dst_t.exp2_()
                    if what == "flux":
                        nb = np.matmul(a, tab["norm_basis"], out=buf_n[: j - i])
                        dst_t.mul_(torch.from_numpy(nb).clamp_(min=0.0))
                    else:
                        dst_t.mul_(torch.from_numpy(r))
                if not direct:
                    torch.from_numpy(out[i:j]).copy_(dst_t)

    def evaluate(self, labels, *, what: str = "flux", dtype=np.float64, out: np.ndarray | None = None,
                 chunk_rows: int = FAST_CHUNK_ROWS, threads: int | None = None,
                 extrapolate: bool = False) -> np.ndarray:
        """Fast numpy evaluation (no autograd): ``what`` in {"flux", "continuum", "norm"}, (N, n_wave).

        Computes in float32 in blocks of ``chunk_rows`` rows (see the module docstring) and writes
        ``dtype`` (float32 or float64) into ``out`` (allocated if None). Agrees with the reference
        path (:meth:`flux_torch`, float32) to float32 rounding; ``tests/test_emulator_speed.py``
        compares both with a float64 evaluation of the same weights.

        Parallelism: ``threads`` (default ``torch.get_num_threads()``) worker threads each take a
        contiguous share of the rows and run every operation single-threaded (the GIL is released
        inside numpy/BLAS and torch). On a shared 2-core machine this was ~10x faster than
        letting each of the many small operations fork and join its own OpenMP team (measured
        2026-11-23 at load average 13: 6,500 vs 650 spectra/s). BLAS (OpenBLAS via numpy, ~1.4x
        faster than torch's MKL sgemm for these shapes on this AMD CPU) is limited to one
        thread for the duration of the call, with threadpoolctl (process-wide), and torch's
        thread setting is restored afterwards.
        """
        if what not in ("flux", "continuum", "norm"):
            raise InputError("must be 'flux', 'continuum' or 'norm'", field="what", value=what)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise InputError("must be float32 or float64", field="dtype", value=str(dtype))
        arr = self.labels_array(labels)
        self.check_labels(arr, extrapolate=extrapolate)
        n, nw = len(arr), self.n_wave
        if out is None:
            out = np.empty((n, nw), dtype=dtype)
        elif out.shape != (n, nw) or out.dtype != dtype or not out.flags.c_contiguous:
            raise InputError(f"must be a C-contiguous {dtype} array of shape ({n}, {nw})", field="out",
                             value=(out.shape, str(out.dtype)))
        if n == 0:
            return out
        rows = max(1, int(chunk_rows))
        n_threads = int(threads) if threads is not None else torch.get_num_threads()
        if n_threads < 1:
            raise InputError("must be >= 1", field="threads", value=threads)
        # threads split the rows at multiples of the MLP block: every block is then computed by the
        # same calls whatever the number of threads, so the output is bit-for-bit independent of it
        block = _coeff_block(rows)
        n_blocks = -(-n // block)
        n_threads = min(n_threads, n_blocks)
        edges = [min(n, (n_blocks * k // n_threads) * block) for k in range(n_threads + 1)]
        self._fast_tables()  # built once, before the workers share it
        caller_threads = torch.get_num_threads()
        try:
            with _blas_controller().limit(limits=1, user_api="blas"), \
                    ThreadPoolExecutor(n_threads, thread_name_prefix="specvit-emulator") as pool:
                jobs = [pool.submit(self._evaluate_block, arr[lo:hi], out[lo:hi], what, rows)
                        for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]
                for job in jobs:
                    job.result()
        finally:
            torch.set_num_threads(caller_threads)  # new threads inherit torch's last setting
        return out

    # ---- SpectralModel API (numpy in -> numpy out; torch in -> torch out, autograd kept)
    def _dispatch(self, labels, fn, extrapolate: bool):
        if isinstance(labels, torch.Tensor):
            x = labels if labels.ndim == 2 else labels[None]
            if x.shape[-1] != len(self.label_names):
                raise InputError(f"labels must have shape (N, {len(self.label_names)})", field="labels",
                                 value=tuple(x.shape))
            if not torch.isfinite(x).all():
                raise InputError("non-finite label", field="labels", value="nan/inf")
            self.check_labels(x.detach().cpu().numpy(), extrapolate=extrapolate)
            out = fn(x)
            return out.to(labels.dtype) if labels.is_floating_point() else out
        arr = self.labels_array(labels)
        self.check_labels(arr, extrapolate=extrapolate)
        with torch.no_grad():
            return fn(torch.as_tensor(arr, dtype=torch.float32)).double().numpy()

    def _api(self, labels, fn, what, extrapolate, dtype, method):
        if method not in ("fast", "reference"):
            raise InputError("must be 'fast' or 'reference'", field="method", value=method)
        if isinstance(labels, torch.Tensor) or method == "reference":
            out = self._dispatch(labels, fn, extrapolate)
            return out if isinstance(out, torch.Tensor) else out.astype(dtype, copy=False)
        return self.evaluate(labels, what=what, dtype=dtype, extrapolate=extrapolate)

    def flux(self, labels, *, extrapolate: bool = False, dtype=np.float64, method: str = "fast"):
        """F_lambda (N, n_wave), erg s-1 cm-2 A-1 surface flux; numpy or torch (autograd) in and out.

        numpy labels: ``method="fast"`` (default, :meth:`evaluate`) or ``"reference"`` (the torch
        path, as for tensors); ``dtype`` of the numpy output (float64 or float32).
        """
        return self._api(labels, self.flux_torch, "flux", extrapolate, dtype, method)

    def continuum(self, labels, *, extrapolate: bool = False, dtype=np.float64, method: str = "fast"):
        """Continuum flux (N, n_wave), same units and options as :meth:`flux`."""
        return self._api(labels, self.continuum_torch, "continuum", extrapolate, dtype, method)

    def normalized_flux(self, labels, *, extrapolate: bool = False, dtype=np.float64, method: str = "fast"):
        """Continuum-normalised flux F / C (N, n_wave), options as :meth:`flux`."""
        return self._api(labels, self.norm_torch, "norm", extrapolate, dtype, method)

    def describe(self) -> dict:
        d = super().describe()
        d.update(version=self.version, n_components=self.n_components,
                 n_cont_components=int(self._lnc_basis.shape[0]), meta=self.meta)
        return d

    # ---- persistence
    def save(self, path) -> None:
        from specvit.atomic import atomic_path

        sd = {f"net.{k}": v.numpy() for k, v in self.net.state_dict().items()}
        arrays = {
            "format_version": np.int32(FORMAT_VERSION), "wave_A": self.wave,
            "label_names": np.asarray(self.label_names, dtype="U8"),
            "label_lo": np.array([self.bounds[n][0] for n in self.label_names]),
            "label_hi": np.array([self.bounds[n][1] for n in self.label_names]),
            "train_lo": self._lo.numpy().astype(np.float64), "train_hi": self._hi.numpy().astype(np.float64),
            "resolution": np.float64(self.resolution), "norm_mean": self._norm_mean.numpy(),
            "norm_basis": self._norm_basis.numpy(), "lncont_mean": self._lnc_mean.numpy(),
            "lncont_basis": self._lnc_basis.numpy(), "lncont_baseline": np.asarray(self.lncont_baseline),
            "n_hidden_layers": np.int32(sum(isinstance(m, torch.nn.Linear) for m in self.net.mlp) - 1),
            "meta_json": np.asarray(json.dumps(self.meta, default=float)), **sd,
        }
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)


def load_emulator(path=None) -> SpectralEmulator:
    """Load an emulator ``.npz`` (default: the shipped version named in ``data_files/emulator/manifest.json``).

    ``path`` may also name a shipped version when no such file exists: ``"v2"`` or ``"emulator_v2.npz"``
    (the manifest's ``versions``)."""
    root = resources.files("specvit") / "data_files" / "emulator"
    if path is None:
        manifest = json.loads((root / "manifest.json").read_text())
        with resources.as_file(root / manifest["default"]) as p:
            return load_emulator(p)
    if not Path(path).exists() and "/" not in str(path) and "\\" not in str(path):
        versions = json.loads((root / "manifest.json").read_text())["versions"]
        name = str(path) if str(path).endswith(".npz") else f"emulator_{path}.npz"
        if name in versions:
            with resources.as_file(root / name) as p:
                return load_emulator(p)
    path = Path(path)
    if not path.exists():
        raise InputError("emulator weights not found (neither a file nor a shipped version)", file=path)
    d = np.load(path, allow_pickle=False)
    for k in _REQUIRED:
        if k not in d.files:
            raise InputError("emulator file misses a field", file=path, field=k)
    if int(d["format_version"]) > FORMAT_VERSION:
        raise InputError("emulator file is newer than this specvit", file=path, field="format_version",
                         value=int(d["format_version"]))
    names = tuple(str(s) for s in d["label_names"])
    sd = {k[4:]: torch.as_tensor(d[k]) for k in d.files if k.startswith("net.")}
    depth = int(d["n_hidden_layers"])
    width = int(sd["mlp.0.weight"].shape[0])
    n_out = int(sd[f"mlp.{2 * depth}.weight"].shape[0])
    net = EmulatorNet(n_labels=len(names), n_out=n_out, width=width, depth=depth)
    net.load_state_dict(sd)
    meta = json.loads(str(d["meta_json"])) if "meta_json" in d.files else {}
    return SpectralEmulator(
        wave=d["wave_A"], resolution=float(d["resolution"]), label_names=names,
        bounds={n: (float(lo), float(hi)) for n, lo, hi in zip(names, d["label_lo"], d["label_hi"])},
        train_lo=d["train_lo"], train_hi=d["train_hi"], net=net, norm_mean=d["norm_mean"],
        norm_basis=d["norm_basis"], lncont_mean=d["lncont_mean"], lncont_basis=d["lncont_basis"],
        lncont_baseline=str(d["lncont_baseline"]) if "lncont_baseline" in d.files else "none", meta=meta,
    )


def _coeff_block(rows: int) -> int:
    """Rows per MLP call in the fast path: a multiple of the pixel-loop block, about 256."""
    return rows * max(1, 256 // rows)


_DEFAULT: SpectralEmulator | None = None
_BLAS: list = []


def _blas_controller():
    """threadpoolctl controller of the BLAS libraries loaded in this process (created once)."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0]


def default_emulator() -> SpectralEmulator:
    """The shipped emulator, loaded once (no network)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_emulator()
    return _DEFAULT

