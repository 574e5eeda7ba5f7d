"""Site and sky: airmass, extinction, night-sky emission, moonlight, foreground reddening.

* Airmass X = 1 / sqrt(1 - 0.96 sin^2 z) (SPEC section 3; Krisciunas & Schaefer 1991 eq. 3).
* Extinction: Mauna Kea k(lambda) in mag/airmass (Buton et al. 2013, via the pypeit
  wheel; telluric bands at R~1000); transmission = 10^(-0.4 k X).
* Sky emission: the ESO/Paranal night-sky spectrum from the pypeit wheel (continuum +
  OH/O2 lines, vacuum wavelengths), scaled so that its photon-weighted HSC i surface
  brightness equals ``sky_mag_i_arcsec2`` at zenith; airglow grows ~ X with airmass.
* Moon: Krisciunas & Schaefer (1991) scattered moonlight in V, spread with a solar
  (5778 K Planck) spectral shape.
* Reddening: Cardelli, Clayton & Mathis (1989), R_V = 3.1.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from specvit.errors import InputError


def data_path(name: str) -> Path:
    return Path(str(resources.files("specvit") / "data_files" / "observe" / name))


def airmass(zenith_angle_deg) -> np.ndarray:
    """X = 1 / sqrt(1 - 0.96 sin^2 z)."""
    z = np.radians(np.asarray(zenith_angle_deg, dtype=float))
    return 1.0 / np.sqrt(1.0 - 0.96 * np.sin(z) ** 2)


def _read_table(path, *, field: str) -> tuple[np.ndarray, np.ndarray]:
    p = Path(path)
    if not p.exists():
        raise InputError("table file not found", file=p, field=field)
    try:
        t = np.loadtxt(p, comments="#", ndmin=2)
    except ValueError as e:
        raise InputError(f"cannot read a two-column table: {e}", file=p, field=field) from None
    if t.shape[1] < 2 or len(t) < 2 or not np.all(np.isfinite(t[:, :2])) or not np.all(np.diff(t[:, 0]) > 0):
        raise InputError("needs >= 2 rows of finite (wave_A, value), wavelength increasing", file=p, field=field)
    return t[:, 0], t[:, 1]


def load_extinction(path=None) -> tuple[np.ndarray, np.ndarray]:
    """(wave_A, k mag/airmass); default Mauna Kea."""
    return _read_table(path or data_path("extinction_mko.txt"), field="extinction_file")


def load_sky(path=None, resolution=np.inf) -> tuple[np.ndarray, np.ndarray, float]:
    """(wave_A vacuum, relative photon-independent F_lambda, resolving power) of the night sky."""
    if path is None:
        d = np.load(data_path("sky_paranal_6400_9100.npz"))
        w = d["wave_A"]
        return w, d["flux"].astype(float), float(np.median(w) / d["fwhm_A"])
    w, f = _read_table(path, field="sky_file")
    return w, f, float(resolution)


def moon_v_surface_brightness(moon_phase, moon_zenith_deg, target_zenith_deg, moon_target_deg, k_v=0.172):
    """V surface brightness of scattered moonlight, mag/arcsec^2 (Krisciunas & Schaefer 1991).

    ``moon_phase``: fraction of the synodic month, 0 = new, 0.5 = full (phase angle
    alpha = 360 |phase - 0.5| deg). Returns +inf where the Moon is below the horizon.
    """
    phase = np.asarray(moon_phase, dtype=float)
    alpha = 360.0 * np.abs(phase - 0.5)
    istar = 10 ** (-0.4 * (3.84 + 0.026 * alpha + 4e-9 * alpha**4))
    rho = np.asarray(moon_target_deg, dtype=float)
    f_rho = 10**5.36 * (1.06 + np.cos(np.radians(rho)) ** 2) + 10 ** (6.15 - rho / 40.0)
    zm = np.asarray(moon_zenith_deg, dtype=float)
    up = zm < 90.0
    xm = airmass(np.where(up, zm, 0.0))
    x = airmass(target_zenith_deg)
    b_nl = f_rho * istar * 10 ** (-0.4 * k_v * xm) * (1 - 10 ** (-0.4 * k_v * x))  # nanoLamberts
    with np.errstate(divide="ignore"):
        v = (20.7233 - np.log(np.where(up, b_nl, 0.0) / 34.08)) / 0.92104
    return np.where(up, v, np.inf)


def ccm89_a_lambda_over_av(wave_A, r_v: float = 3.1) -> np.ndarray:
    """A_lambda / A_V of Cardelli, Clayton & Mathis (1989), optical and IR branches."""
    x = 1e4 / np.asarray(wave_A, dtype=float)  # 1/micron
    y = x - 1.82
    a_opt = 1 + 0.17699 * y - 0.50447 * y**2 - 0.02427 * y**3 + 0.72085 * y**4 + 0.01979 * y**5 - 0.77530 * y**6 + 0.32999 * y**7
    b_opt = 1.41338 * y + 2.28305 * y**2 + 1.07233 * y**3 - 5.38434 * y**4 - 0.62251 * y**5 + 5.30260 * y**6 - 2.09002 * y**7
    a_ir, b_ir = 0.574 * x**1.61, -0.527 * x**1.61
    ir = x < 1.1
    return np.where(ir, a_ir + b_ir / r_v, a_opt + b_opt / r_v)
