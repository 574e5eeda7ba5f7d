"""A small analytic spectral model for tests only (not shipped, not physics).

Planck continuum times Gaussian absorption lines whose depths change smoothly
with the labels. It implements :class:`specvit.spectra.base.SpectralModel`
and works with numpy arrays or torch tensors (autograd flows), so tests of
observe/, data/, fisher/ and baselines/ need neither synthesis nor the emulator.
"""
from __future__ import annotations

import numpy as np

from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES
from specvit.spectra.base import SpectralModel

H_C_OVER_K_A_K = 1.438777e8  # h c / k in Angstrom * K


class ToyModel(SpectralModel):
    medium = "vacuum"
    differentiable = True

    def __init__(self, wave_min=7000.0, wave_max=8950.0, step=0.2, resolution=20000.0, n_lines=60, seed=0):
        self.wave = np.arange(wave_min, wave_max + step / 2, step)
        self.resolution = float(resolution)
        self.label_names = LABEL_NAMES
        self.bounds = dict(DEFAULT_LABEL_BOUNDS)
        rng = np.random.default_rng(seed)
        strong = np.array([8500.36, 8544.44, 8664.52, 8185.5, 8197.1, 7701.1])  # Ca II triplet, Na I, K I (vacuum)
        self.line_wave = np.concatenate([strong, rng.uniform(wave_min + 50, wave_max - 50, n_lines)])
        n = len(self.line_wave)
        # depth = base * exp(a*logg + b*M_H + c*(Teff-4750)/1000 + d*a_M + e*C_M), clipped smoothly below 1
        self.coef = np.zeros((n, 6))
        self.coef[:, 0] = np.log(rng.uniform(0.05, 0.4, n))
        self.coef[:, 1] = rng.normal(0, 0.1, n)
        self.coef[:, 2] = rng.uniform(0.3, 1.0, n)
        self.coef[:, 3] = rng.normal(-0.3, 0.2, n)
        self.coef[:, 4] = rng.normal(0, 0.2, n)
        self.coef[:, 5] = rng.normal(0, 0.2, n)
        self.coef[:3, 0] = np.log(0.6)
        self.coef[:3, 1] = -0.15  # Ca triplet weakens with log g
        self.coef[3:5, 1] = 0.25  # Na strengthens with log g
        self.sigma_A = self.line_wave / self.resolution / 2.3548

    def flux(self, labels, *, extrapolate=False):
        try:
            import torch
        except ImportError:  # pragma: no cover
            torch = None
        if torch is not None and isinstance(labels, torch.Tensor):
            xp, lab = torch, labels
            if lab.ndim == 1:
                lab = lab[None]
            tt = lambda a: torch.as_tensor(a, dtype=lab.dtype)  # noqa: E731
        else:
            xp = np
            lab = self.labels_array(labels)
            self.check_labels(lab, extrapolate=extrapolate)
            tt = lambda a: a  # noqa: E731
        teff, logg, mh, am, cm = (lab[:, i : i + 1] for i in range(5))
        wave = tt(self.wave)[None, :]
        planck = 1.0 / (wave**5 * (xp.exp(H_C_OVER_K_A_K / (wave * teff)) - 1.0))
        c = tt(self.coef)
        x = (tt(np.ones(1)) * c[:, 0] + c[:, 1] * (logg - 3.0) + c[:, 2] * mh
             + c[:, 3] * (teff - 4750.0) / 1000.0 + c[:, 4] * am + c[:, 5] * cm)  # (N, n_lines)
        depth = 0.9 * xp.tanh(xp.exp(x))  # in (0, 0.9)
        prof = xp.exp(-0.5 * ((wave[:, :, None] - tt(self.line_wave)[None, None, :]) / tt(self.sigma_A)[None, None, :]) ** 2)
        absorb = (depth[:, None, :] * prof).sum(-1)
        return planck * 1e20 * xp.exp(-absorb)


class HoleyModel:
    """Wraps a spectral model; its flux is negative where log g > 4.5 (like an emulator extrapolating
    outside its training set), so code that must drop invalid points can be tested."""

    def __init__(self, model):
        self.m = model
        for k in ("wave", "medium", "resolution", "label_names", "bounds", "differentiable"):
            setattr(self, k, getattr(model, k))

    def flux(self, labels, **kw):
        f = self.m.flux(labels, **kw)
        bad = (labels[:, 1] > 4.5)[:, None]
        return f * (1 - 2 * bad) if not hasattr(f, "detach") else f * (1 - 2 * bad.to(f.dtype))


#: Nodes of the small 5-D test grid of :func:`write_toy_grid` (BOSZ-like spacing, few nodes).
TOY_GRID_NODES = {"T_eff": [3750.0, 4500.0, 5250.0, 6000.0], "log_g": [1.0, 3.0, 5.0], "M_H": [-2.5, -1.0, 0.75],
                  "a_M": [-0.25, 0.5], "C_M": [-0.75, 0.5]}


def write_toy_grid(path, *, invalid_node=None):
    """Save a RegularGrid of the ToyModel on TOY_GRID_NODES (R = 20,000); ``invalid_node``: an index
    tuple whose flux is set to NaN (an invalid grid node). Returns the saved path."""
    from specvit.spectra.grid import RegularGrid

    toy = ToyModel(step=1.0, resolution=20000.0)
    nodes = TOY_GRID_NODES
    mesh = np.stack(np.meshgrid(*nodes.values(), indexing="ij"), -1).reshape(-1, 5)
    flux = toy.flux(mesh).reshape(tuple(len(v) for v in nodes.values()) + (len(toy.wave),))
    if invalid_node is not None:
        flux[invalid_node] = np.nan
    g = RegularGrid(axes=nodes, wave=toy.wave, flux=flux.astype(np.float32), resolution=20000.0)
    return g.save(path)
