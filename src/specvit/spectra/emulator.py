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

Weights: one ``.npz`` per version (``format_version``, arrays only, no pickle) in
``specvit/data_files/emulator/``; :func:`load_emulator` / :func:`specvit.spectra.default_model`.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from specvit.errors import InputError
from specvit.spectra.base import SpectralModel

FORMAT_VERSION = 1
#: h c / k_B in Angstrom K, and 2 h c^2 in erg A^4 s^-1 cm^-2 (so B_lambda is per Angstrom).
HC_OVER_K_A_K = 1.4387769e8


def ln_pi_planck(wave_A, teff_K):
    """ln(pi B_lambda(T)) in erg s-1 cm-2 A-1 for wavelengths in Angstrom (numpy or torch, broadcasting).

    B_lambda = 2 h c^2 / lambda^5 / (exp(h c / (lambda k T)) - 1); with lambda in cm this is per cm,
    times 1e-8 per Angstrom.
    """
    lib = torch if isinstance(teff_K, torch.Tensor) else np
    lam_cm = wave_A * 1e-8
    x = HC_OVER_K_A_K / (wave_A * teff_K)
    return (np.log(np.pi * 2 * 6.62607015e-27 * 2.99792458e10 ** 2 * 1e-8) - 5 * lib.log(lam_cm)
            - lib.log(lib.expm1(x)))
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
        self._planck_num = t(np.pi * 2 * 6.62607015e-27 * 2.99792458e10 ** 2 * 1e-8 / (self.wave * 1e-8) ** 5)
        self._hc_k_over_wave = t(HC_OVER_K_A_K / self.wave)

    # ---- core (torch)
    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._lo.to(x)) / (self._hi - self._lo).to(x) - 0.5

    def _coeffs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.net(self._scale(x.to(torch.float32)))
        return c[:, : self.n_components], c[:, self.n_components :]

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
            teff = x[:, :1].to(torch.float32)
            c = c * (self._planck_num / torch.expm1(self._hc_k_over_wave / teff))
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

    def flux(self, labels, *, extrapolate: bool = False):
        """F_lambda (N, n_wave), erg s-1 cm-2 A-1 surface flux; numpy or torch (autograd) in and out."""
        return self._dispatch(labels, self.flux_torch, extrapolate)

    def continuum(self, labels, *, extrapolate: bool = False):
        """Continuum flux (N, n_wave), same units as :meth:`flux`."""
        return self._dispatch(labels, self.continuum_torch, extrapolate)

    def normalized_flux(self, labels, *, extrapolate: bool = False):
        """Continuum-normalised flux F / C (N, n_wave)."""
        return self._dispatch(labels, self.norm_torch, extrapolate)

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
    """Load an emulator ``.npz`` (default: the shipped version named in ``data_files/emulator/manifest.json``)."""
    if path is None:
        root = resources.files("specvit") / "data_files" / "emulator"
        manifest = json.loads((root / "manifest.json").read_text())
        with resources.as_file(root / manifest["default"]) as p:
            return load_emulator(p)
    path = Path(path)
    if not path.exists():
        raise InputError("emulator weights not found", file=path)
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


_DEFAULT: SpectralEmulator | None = None


def default_emulator() -> SpectralEmulator:
    """The shipped emulator, loaded once (no network)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_emulator()
    return _DEFAULT

