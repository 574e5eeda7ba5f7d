"""Named instrument presets: ``paper`` (the default) and ``pfs-etc`` (the official PFS ETC's MR red arm).

* ``paper``: the calibration that reproduces the paper's SNR table (SPEC section 3): every
  :class:`~specvit.observe.config.InstrumentConfig` default, unchanged.
* ``pfs-etc``: the real instrument as the official PFS exposure-time calculator
  (Subaru-PFS/spt_ExposureTimeCalculator v2.0.0, MIT licence) models the MR red arm. Its tables
  (``data_files/observe/pfs_etc_mr/``, made by ``scripts/derive_pfs_etc_data.py``, see the README there)
  hold the ETC's throughput curve x extraction fraction, vignetting x obscuration correction and fibre
  diameter vs field angle, fibre-aperture fraction (seeing x field x wavelength), the atmospheric
  transmission with telluric O2/H2O at the instrument's resolution (as k(lambda) per airmass) and its
  sky (UVES + OH lines at the ETC's spectrograph PSF, continuum) per pixel. The scalars (diameter,
  obscuration, read noise, dark, extraction width, stray light, sky-subtraction floor) are the ETC's;
  its empirical background-noise adjustment (x1.015 in variance, ``ADJUST_NOISE_MR``) is folded into
  the sky table, the read noise (x sqrt 1.015) and the dark (x1.015), and the floor is divided by
  sqrt 1.015 so that the floor term keeps the ETC's factor 1.015.

A preset fills every field that is still at its ``paper`` default; explicit values win (a value
equal to the paper default cannot override a preset, set ``preset: paper`` for that).
"""
from __future__ import annotations

import dataclasses
import math
import warnings

from specvit.errors import ConfigError

#: the ETC's empirical noise adjustment of the MR red arm (pfsspecsim.etc.constants.ADJUST_NOISE_MR[1])
ETC_NOISE_ADJUST = 1.015


def _etc_file(name: str) -> str:
    from specvit.observe.atmosphere import data_path

    return str(data_path(f"pfs_etc_mr/{name}"))


def _pfs_etc() -> dict:
    return {
        "throughput_file": _etc_file("throughput.txt"),
        "lsf_fwhm_file": _etc_file("lsf.txt"),
        "extinction_file": _etc_file("extinction.txt"),
        "sky_pixel_file": _etc_file("sky.txt"),
        "field_file": _etc_file("field.txt"),
        "fibre_aperture_file": _etc_file("aperture.npz"),
        "telescope_diameter_m": 8.3,
        "central_obscuration": 0.22,
        "field_radius_deg": 0.65,
        "read_noise_e": 4.0 * math.sqrt(ETC_NOISE_ADJUST),
        "dark_e_per_pix_s": 1e-4 * ETC_NOISE_ADJUST,
        "extraction_pixels": 5,
        "stray_light_fraction": 0.015,
        "sky_subtraction_floor": 0.01 / math.sqrt(ETC_NOISE_ADJUST),
    }


#: table field -> the scalar fields it replaces (they have no effect while the table is set)
SUPERSEDED = {
    "throughput_file": ("optics_throughput",),
    "lsf_fwhm_file": ("resolution",),
    "sky_pixel_file": ("sky_mag_i_arcsec2", "sky_file", "sky_file_resolution"),
    "field_file": ("vignetting_at_edge", "fibre_diameter_arcsec", "fibre_diameter_edge_arcsec"),
    "fibre_aperture_file": ("psf_moffat_beta",),
}

#: preset name -> function returning {InstrumentConfig field: value}
PRESETS = {"paper": dict, "pfs-etc": _pfs_etc}


def preset_values(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown instrument preset {name!r}; known presets: {', '.join(PRESETS)}",
                          field="preset", value=name)
    return PRESETS[name]()


def apply_preset(cfg) -> None:
    """Fill ``cfg``'s fields that are at their paper default with the values of ``cfg.preset`` (in place)."""
    values = preset_values(cfg.preset)
    if not values:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for key, value in values.items():
        if getattr(cfg, key) == defaults[key]:
            setattr(cfg, key, value)
    ignored = [k for table, keys in SUPERSEDED.items() if getattr(cfg, table) for k in keys
               if getattr(cfg, k) != defaults[k]]
    if ignored:
        warnings.warn(f"instrument preset {cfg.preset!r}: these fields have no effect (a table of the preset "
                      f"replaces them; see docs/observe.md): {', '.join(ignored)}", stacklevel=3)
