"""A Planck-continuum spectral model: the fallback for SNR calibration when no spectral model is installed.

No lines (so no physics beyond the SED); the SNR of the calibration setup depends
on the SED shape, the magnitude and the sky, not on lines, to ~1%.
"""
from __future__ import annotations

import numpy as np

from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES
from specvit.physics import HC_OVER_K_A_K, pi_planck_numerator
from specvit.spectra.base import SpectralModel


class PlanckModel(SpectralModel):
    """F_lambda = pi B_lambda(T_eff) on 7000-8950 A at 0.2 A steps (vacuum); other labels ignored."""

    medium = "vacuum"
    resolution = float("inf")

    def __init__(self, *, wave_min_A: float = 7000.0, wave_max_A: float = 8950.0, step_A: float = 0.2):
        self.wave = np.arange(wave_min_A, wave_max_A + step_A / 2, step_A)
        self.label_names = LABEL_NAMES
        self.bounds = dict(DEFAULT_LABEL_BOUNDS)

    def flux(self, labels, *, extrapolate: bool = False):
        lab = self.labels_array(labels)
        self.check_labels(lab, extrapolate=extrapolate)
        t = lab[:, :1]
        w = self.wave[None, :]
        return pi_planck_numerator(w) / np.expm1(HC_OVER_K_A_K / (w * t))  # pi B_lambda: surface flux per A
