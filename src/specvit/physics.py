"""Physical constants and the Planck function: the one place specvit writes them.

CGS units with wavelengths in Angstrom, as everywhere in specvit. The SI 2019 defining
constants h, c and k are exact; the values below are those constants (h c and h c / k
to the 9 and 8 significant digits the code has always used).
"""
from __future__ import annotations

import numpy as np

#: Planck constant, erg s (exact, SI 2019).
H_PLANCK_ERG_S = 6.62607015e-27
#: Speed of light, cm / s (exact).
C_LIGHT_CM_S = 2.99792458e10
#: Speed of light, Angstrom / s.
C_LIGHT_A_S = 2.99792458e18
#: Boltzmann constant, erg / K (exact, SI 2019).
K_BOLTZMANN_ERG_K = 1.380649e-16
#: h c, erg Angstrom (photon energy = H_C_ERG_A / lambda_A).
H_C_ERG_A = 1.98644586e-8
#: Second radiation constant h c / k_B, Angstrom K.
HC_OVER_K_A_K = 1.4387769e8
#: AB magnitude zero point, erg / s / cm^2 / Hz.
AB_ZERO_FNU = 3631e-23
#: ln(pi 2 h c^2) with the per-Angstrom factor 1e-8: ln pi B_lambda = this - 5 ln(lambda_cm) - ln(e^x - 1).
LN_PI_2HC2_PER_A = float(np.log(np.pi * 2 * H_PLANCK_ERG_S * C_LIGHT_CM_S**2 * 1e-8))


def pi_planck_numerator(wave_A):
    """pi 2 h c^2 / lambda^5 per Angstrom (numpy, float64): pi B_lambda = this / (e^x - 1), x = hc / (lambda k T)."""
    wave_A = np.asarray(wave_A, dtype=np.float64)
    return np.pi * 2 * H_PLANCK_ERG_S * C_LIGHT_CM_S**2 * 1e-8 / (wave_A * 1e-8) ** 5


def ln_pi_planck(wave_A, teff_K):
    """ln(pi B_lambda(T)), B_lambda in erg s-1 cm-2 A-1 sr-1, wavelengths in Angstrom (numpy or torch, broadcasting).

    B_lambda = 2 h c^2 / lambda^5 / (exp(h c / (lambda k T)) - 1).
    """
    import torch

    lib = torch if isinstance(teff_K, torch.Tensor) or isinstance(wave_A, torch.Tensor) else np
    x = HC_OVER_K_A_K / (wave_A * teff_K)
    return LN_PI_2HC2_PER_A - 5 * lib.log(wave_A * 1e-8) - lib.log(lib.expm1(x))


def dln_pi_planck_dteff(wave_A, teff_K, *, x=None):
    """d ln B_lambda / dT = x / (T (1 - e^-x)), x = h c / (lambda k T), per K (numpy or torch, broadcasting).

    ``x`` may be given instead of ``wave_A`` when the caller has it (e.g. h c / (lambda k) tabulated in
    float32, divided by T); the arithmetic is then exactly this function's. No overflow at large x.
    """
    import torch

    if x is None:
        x = HC_OVER_K_A_K / (wave_A * teff_K)
    lib = torch if isinstance(x, torch.Tensor) else np
    return x / (teff_K * -lib.expm1(-x))


def planck_shape(wave_A, teff_K):
    """lambda^-5 / (e^x - 1): the Planck spectrum up to a constant (numpy)."""
    return 1.0 / (wave_A**5 * np.expm1(HC_OVER_K_A_K / (wave_A * teff_K)))


# ---------------------------------------------------------------- air <-> vacuum (one place)
def air_to_vacuum(wave_air_A) -> np.ndarray:
    """Air -> vacuum wavelength (Angstrom), float64.

    The inversion of the Ciddor (1996) / Birch & Downs (1994) IAU standard refractive index by
    N. Piskunov, as used by VALD3 (Morton 2000): ``s = 1e4 / lambda_air``,
    ``n = 1 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s^2) + 1.599740894897e-4 / (38.92568793293 - s^2)``,
    ``lambda_vac = n * lambda_air``. Good to ~1e-4 A at 7000-9000 A (Ca II 8542.09 air -> 8544.44 vacuum).
    Used by the synthesis line lists (``spectra.synthesis.prepare``), the BOSZ import (``spectra.bosz``) and
    the observer (``observe.lsf``).
    """
    w = np.asarray(wave_air_A, dtype=np.float64)
    s2 = (1e4 / w) ** 2
    n = 1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s2) + 1.599740894897e-4 / (38.92568793293 - s2)
    return w * n


def vacuum_to_air(wave_vac_A) -> np.ndarray:
    """Vacuum -> air (Angstrom), IAU standard (Morton 2000 / Ciddor 1996), as used by VALD3."""
    w = np.asarray(wave_vac_A, dtype=np.float64)
    s2 = (1e4 / w) ** 2
    n = 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)
    return w / n
