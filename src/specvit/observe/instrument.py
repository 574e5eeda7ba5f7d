"""The telescope + PFS throughput, fibre aperture loss and vignetting.

Total throughput (default) = primary-mirror reflectivity (bare aluminium, one
reflection at prime focus) x CCD quantum efficiency (fully depleted 200 micron
red-arm CCD) x ``optics_throughput`` (wide-field corrector, fibres, spectrograph;
flat, calibrated). The two curves are coarse tabulations (nodes below,
interpolated linearly); a user can replace the whole product with
``InstrumentConfig.throughput_file``.

Fibre aperture loss: fraction of a circular Moffat PSF (FWHM = seeing x X^0.6 x
(lambda / 5000 A)^-0.2, Kolmogorov scaling with airmass and wavelength) that
falls into the fibre of diameter d: 1 - (1 + (d/2 / a)^2)^(1 - beta),
a = FWHM / (2 sqrt(2^(1/beta) - 1)). The fibre diameter on the sky shrinks from
1.12" at the field centre to 1.02" at the edge (PFS instrument parameters,
https://pfs.ipmu.jp/research/parameters.html); this is the field-angle
dependence of both the object light and the sky area.
"""
from __future__ import annotations

import numpy as np

from specvit.observe.atmosphere import _read_table
from specvit.observe.config import InstrumentConfig

#: Bare Al reflectivity at normal incidence (e.g. Bass, Handbook of Optics; the 8260 A interband dip).
AL_REFLECTIVITY = (np.array([6500.0, 7000, 7500, 8000, 8260, 8500, 9000, 9500]),
                   np.array([0.905, 0.898, 0.886, 0.868, 0.861, 0.866, 0.889, 0.920]))
#: QE of a fully depleted thick CCD in 6500-9500 A (typical LBNL/Hamamatsu curve, rounded).
CCD_QE = (np.array([6500.0, 7000, 8000, 8500, 9000, 9500]),
          np.array([0.90, 0.92, 0.93, 0.91, 0.86, 0.75]))


def throughput(wave_A, cfg: InstrumentConfig) -> np.ndarray:
    """Total throughput (0..1) at ``wave_A`` excluding atmosphere, fibre aperture loss and vignetting."""
    wave_A = np.asarray(wave_A, dtype=float)
    if cfg.throughput_file:
        w, t = _read_table(cfg.throughput_file, field="throughput_file")
        return np.interp(wave_A, w, t)
    return np.interp(wave_A, *AL_REFLECTIVITY) * np.interp(wave_A, *CCD_QE) * cfg.optics_throughput


def collecting_area_cm2(cfg: InstrumentConfig) -> float:
    """pi/4 D^2 (1 - obscuration^2), cm^2."""
    return float(np.pi / 4 * (cfg.telescope_diameter_m * 100) ** 2 * (1 - cfg.central_obscuration**2))


def fibre_diameter_arcsec(field_angle_deg, cfg: InstrumentConfig) -> np.ndarray:
    """Fibre diameter on the sky vs distance from the field centre (plate scale): d0 + (d_edge - d0) (theta/R)^2."""
    t = np.asarray(field_angle_deg, dtype=float) / cfg.field_radius_deg
    return cfg.fibre_diameter_arcsec + (cfg.fibre_diameter_edge_arcsec - cfg.fibre_diameter_arcsec) * t**2


def delivered_fwhm_arcsec(seeing_arcsec, airmass, wave_A):
    """Seeing FWHM at zenith and 5000 A -> at airmass X and wavelength (Kolmogorov: X^0.6 lambda^-0.2)."""
    return np.asarray(seeing_arcsec) * np.asarray(airmass) ** 0.6 * (np.asarray(wave_A) / 5000.0) ** -0.2


def fibre_fraction(fwhm_arcsec, diameter_arcsec, cfg: InstrumentConfig) -> np.ndarray:
    """Fraction of a Moffat(beta) PSF of FWHM ``fwhm_arcsec`` inside a centred fibre of ``diameter_arcsec``."""
    beta = cfg.psf_moffat_beta
    a = np.asarray(fwhm_arcsec, dtype=float) / (2 * np.sqrt(2 ** (1 / beta) - 1))
    r = np.asarray(diameter_arcsec, dtype=float) / 2
    return 1 - (1 + (r / a) ** 2) ** (1 - beta)


def vignetting(field_angle_deg, cfg: InstrumentConfig) -> np.ndarray:
    """Transmitted fraction vs distance from the field centre: 1 - v_edge (theta / R)^2, clipped at 0."""
    t = np.asarray(field_angle_deg, dtype=float) / cfg.field_radius_deg
    return np.clip(1 - cfg.vignetting_at_edge * t**2, 0.0, 1.0)


# ---------------------------------------------------------------- tabulated (e.g. the pfs-etc preset)
def load_field_table(path) -> np.ndarray:
    """(n, 3) field-angle table: field_deg (increasing), transmission, fibre_diameter_arcsec."""
    from pathlib import Path

    from specvit.errors import InputError

    p = Path(path)
    if not p.exists():
        raise InputError("table file not found", file=p, field="field_file")
    t = np.loadtxt(p, comments="#", ndmin=2)
    if t.shape[1] < 3 or len(t) < 2 or not np.all(np.isfinite(t[:, :3])) or not np.all(np.diff(t[:, 0]) > 0) \
            or not np.all(t[:, 1:3] > 0):
        raise InputError("needs >= 2 rows of (field_deg increasing, transmission > 0, fibre diameter > 0)",
                         file=p, field="field_file")
    return t[:, :3]


def field_table_values(table: np.ndarray, field_angle_deg) -> tuple[np.ndarray, np.ndarray]:
    """(transmission, fibre diameter in arcsec) at ``field_angle_deg`` (linear; clamped at the table ends)."""
    f = np.asarray(field_angle_deg, dtype=float)
    return np.interp(f, table[:, 0], table[:, 1]), np.interp(f, table[:, 0], table[:, 2])


def load_aperture_table(path):
    """RegularGridInterpolator over (seeing FWHM at 8000 A, field_deg, wave_A) of the fibre-aperture fraction."""
    from pathlib import Path

    from scipy.interpolate import RegularGridInterpolator

    from specvit.errors import InputError

    p = Path(path)
    if not p.exists():
        raise InputError("table file not found", file=p, field="fibre_aperture_file")
    try:
        d = np.load(p)
        axes = (d["seeing_800nm_arcsec"], d["field_deg"], d["wave_A"])
        frac = d["fraction"]
    except (KeyError, ValueError, OSError) as e:
        raise InputError(f"cannot read the aperture table: {e}", file=p, field="fibre_aperture_file") from None
    return RegularGridInterpolator(axes, frac, bounds_error=False, fill_value=None)


def aperture_table_values(interp, fwhm800_arcsec, field_angle_deg, wave_A) -> np.ndarray:
    """(N, len(wave_A)) aperture fraction; seeing and field are clamped to the table's range."""
    s = np.clip(np.asarray(fwhm800_arcsec, dtype=float), interp.grid[0][0], interp.grid[0][-1])
    f = np.clip(np.asarray(field_angle_deg, dtype=float), interp.grid[1][0], interp.grid[1][-1])
    w = np.asarray(wave_A, dtype=float)
    pts = np.stack(np.broadcast_arrays(s[:, None], f[:, None], w[None, :]), axis=-1)
    return np.clip(interp(pts.reshape(-1, 3)).reshape(len(s), len(w)), 0.0, 1.0)
