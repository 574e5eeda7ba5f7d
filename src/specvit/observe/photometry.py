"""Synthetic AB magnitudes in the HSC i band (photon weighted), vectorised over spectra.

m_AB = -2.5 log10( int F_lambda T lambda dlambda / int f_nu0 c/lambda^2 T lambda dlambda ),
f_nu0 = 3631 Jy (Oke & Gunn 1983), T = ``speclite.filters.load_filter('hsc2017-i')``
(Kawanomoto et al. 2018 HSC filter curves, as shipped by speclite).

HSC i transmits between ~6770 and ~8760 A (1% of peak), while a model may start at
~7050 A. The part of the filter outside the model range is filled with a power law
F_lambda ~ lambda^alpha fitted per spectrum to the mean flux of the first (last)
two 60 A windows of the model, i.e. the model's own local SED slope. For the
default 7050 A model start this part carries 8.5% of the band's photon weight
(flat f_nu source), so a 10% error in the extrapolated flux moves the magnitude by
~0.01 mag (tests/test_observe.py checks Planck SEDs to 0.01 mag).
"""
from __future__ import annotations

import functools

import numpy as np

from specvit.physics import AB_ZERO_FNU, C_LIGHT_A_S

_WINDOW_A = 60.0
#: allowed power-law index of the extension (Planck slopes in the red for T >= 2000 K)
ALPHA_RANGE = (-5.0, 6.0)


@functools.lru_cache(maxsize=1)
def load_hsc_i():
    """(wave_A, response) of the HSC i filter from speclite (no hand-typed curve)."""
    import speclite.filters

    f = speclite.filters.load_filter("hsc2017-i")
    return np.asarray(f.wavelength, dtype=float), np.asarray(f.response, dtype=float)


class SyntheticPhotometry:
    """Photon-weighted AB magnitude of spectra on a fixed wavelength grid ``wave_A``."""

    def __init__(self, wave_A, *, filter_wave_A=None, filter_response=None, ext_step_A: float = 10.0):
        self.wave = np.asarray(wave_A, dtype=float)
        if filter_wave_A is None:
            filter_wave_A, filter_response = load_hsc_i()
        fw, fr = np.asarray(filter_wave_A, float), np.asarray(filter_response, float)
        w = self.wave
        dw = np.gradient(w)
        T = np.interp(w, fw, fr, left=0.0, right=0.0)
        #: weights so that  F @ weights = int F T lambda dlambda  over the model range
        self.weights = T * w * dw
        # AB reference over the whole filter
        fine = np.linspace(fw[0], fw[-1], 20001)
        Tf = np.interp(fine, fw, fr)
        self.ab_norm = np.trapezoid(AB_ZERO_FNU * C_LIGHT_A_S / fine**2 * Tf * fine, fine)
        # extension grids outside the model range
        self.blue = self._ext_grid(fw, fr, fw[0], w[0], ext_step_A)
        self.red = self._ext_grid(fw, fr, w[-1], fw[-1], ext_step_A)
        self.win_blue = self._windows(w[0], +1)
        self.win_red = self._windows(w[-1], -1)
        total = np.trapezoid(Tf * fine / fine**2, fine)  # flat-f_nu photon weight
        inside = np.trapezoid(np.where((fine >= w[0]) & (fine <= w[-1]), Tf, 0) / fine, fine)
        #: fraction of the filter's photon weight (flat f_nu source) outside the model range
        self.outside_fraction = float(1 - inside / total)

    @staticmethod
    def _ext_grid(fw, fr, lo, hi, step):
        if hi <= lo:
            return None
        n = max(int(np.ceil((hi - lo) / step)), 1)
        edges = np.linspace(lo, hi, n + 1)
        mid = 0.5 * (edges[1:] + edges[:-1])
        T = np.interp(mid, fw, fr, left=0.0, right=0.0)
        return mid, T * mid * np.diff(edges)

    def _windows(self, start, sign):
        w = self.wave
        if sign > 0:
            m1 = (w >= start) & (w < start + _WINDOW_A)
            m2 = (w >= start + _WINDOW_A) & (w < start + 2 * _WINDOW_A)
        else:
            m1 = (w <= start) & (w > start - _WINDOW_A)
            m2 = (w <= start - _WINDOW_A) & (w > start - 2 * _WINDOW_A)
        A = np.stack([m1 / m1.sum(), m2 / m2.sum()], axis=1)  # (n_wave, 2) averaging matrix
        return A, np.array([w[m1].mean(), w[m2].mean()])

    def _extension(self, f_win, grid, lam):
        """Integral of the power-law extension given the two window means ``f_win`` (N, 2), numpy or torch."""
        mid, wt = grid
        if not isinstance(f_win, np.ndarray):  # torch, float64, on f_win's device
            mid, wt = (f_win.new_tensor(a) for a in (mid, wt))
            f = f_win.clamp(min=1e-300)
            alpha = (f[:, 1] / f[:, 0]).log() / np.log(lam[1] / lam[0])
            alpha = alpha.clamp(*ALPHA_RANGE)
            return (f[:, :1] * (mid[None, :] / lam[0]) ** alpha[:, None]) @ wt
        f = np.clip(f_win, 1e-300, None)
        alpha = np.log(f[:, 1] / f[:, 0]) / np.log(lam[1] / lam[0])
        # A window inside a molecular band (TiO at 7050-7250 A in cool stars) can make the fitted
        # slope absurd (|alpha| of hundreds), and the extension then dominates the magnitude.
        # Keep alpha within the range of Planck slopes d ln B_lambda / d ln lambda at 6800-9000 A
        # for T >= 2000 K (about -5 in the Rayleigh-Jeans limit to +6).
        alpha = np.clip(alpha, *ALPHA_RANGE)
        ext = f[:, :1] * (mid[None, :] / lam[0]) ** alpha[:, None]
        return ext @ wt

    @property
    def projector(self) -> np.ndarray:
        """(n_wave, 5): in-band weights, blue window means (2), red window means (2)."""
        if not hasattr(self, "_proj"):
            self._proj = np.column_stack([self.weights, self.win_blue[0], self.win_red[0]])
        return self._proj

    def photon_integral(self, flux) -> np.ndarray:
        """int F_lambda T lambda dlambda over the whole filter (N,), with the power-law extension."""
        flux = np.atleast_2d(flux)
        proj = flux @ self.projector.astype(flux.dtype, copy=False)  # one BLAS call
        return self.integral_from_projection(proj)

    def integral_from_projection(self, proj):
        """The photon integral (N,) from ``flux @ projector`` (N, 5): numpy (float64) or torch (float64, same device)."""
        if not isinstance(proj, np.ndarray):
            proj = proj.double()
        total = proj[:, 0].astype(float) if isinstance(proj, np.ndarray) else proj[:, 0]
        if self.blue is not None:
            total = total + self._extension(proj[:, 1:3].astype(float) if isinstance(proj, np.ndarray) else proj[:, 1:3],
                                            self.blue, self.win_blue[1])
        if self.red is not None:
            total = total + self._extension(proj[:, 3:5].astype(float) if isinstance(proj, np.ndarray) else proj[:, 3:5],
                                            self.red, self.win_red[1])
        return total

    def ab_mag(self, flux) -> np.ndarray:
        """AB magnitude (N,) of F_lambda in erg/s/cm^2/A (any other unit shifts it by a constant)."""
        return -2.5 * np.log10(self.photon_integral(flux) / self.ab_norm)
