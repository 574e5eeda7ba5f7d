"""Configs of the observation simulator: the instrument, and the observing-condition distributions.

Both are typed dataclasses read with :func:`specvit.config.load_config`
(unknown key = error). Units are in the field names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

from specvit.errors import ConfigError

#: A distribution: one number (fixed) or ``[low, high]`` (uniform).
Dist = Union[float, tuple[float, float]]


@dataclass
class InstrumentConfig:
    """The PFS MR arm on Subaru, the site and the detector (see docs/observe.md for every number).

    The two calibrated numbers are ``optics_throughput`` and ``sky_mag_i_arcsec2``:
    they were chosen so that the median SNR of the calibration setup matches the
    paper's table (SPEC section 3) and are both inside their physical ranges.

    ``preset`` selects a named set of values (:mod:`specvit.observe.presets`): ``paper`` (these
    defaults, the paper's calibration) or ``pfs-etc`` (the real MR red arm of the official PFS
    exposure-time calculator). A preset fills every field that is still at its ``paper`` default;
    fields given explicitly with another value win.
    """

    #: Named instrument preset: 'paper' (default, reproduces the paper) or 'pfs-etc' (official PFS ETC).
    preset: str = "paper"

    #: Resolving power lambda / FWHM of the Gaussian LSF (R=5000: FWHM 1.6 A = 3.75 px at 8000 A).
    resolution: float = 5000.0
    #: Optional per-pixel LSF: text table (wave_A vacuum, FWHM_A of the Gaussian LSF), interpolated to
    #: the PFS pixels; replaces ``resolution``.
    lsf_fwhm_file: Optional[str] = None
    #: The LSF kernel is cut at this many sigma and renormalised to unit area.
    lsf_truncate_sigma: float = 4.0
    #: Primary mirror diameter, m (Subaru; SPEC section 3).
    telescope_diameter_m: float = 8.3
    #: Central obscuration as a fraction of the diameter (area lost = obscuration**2).
    central_obscuration: float = 0.22
    #: Fibre core diameter on the sky at the field centre, arcsec (PFS: 1.12", pfs.ipmu.jp instrument parameters).
    fibre_diameter_arcsec: float = 1.12
    #: Fibre core diameter on the sky at the field edge (``field_radius_deg``), arcsec (PFS: 1.02"; the plate
    #: scale changes across the field). In between it varies as (angle / radius)^2.
    fibre_diameter_edge_arcsec: float = 1.02
    #: Moffat beta of the seeing PSF (4.765 = Kolmogorov turbulence, Trujillo et al. 2001).
    psf_moffat_beta: float = 4.765
    #: Throughput of everything that is not the primary mirror or the CCD (corrector,
    #: fibre, spectrograph optics), wavelength independent. Calibrated (see docs).
    optics_throughput: float = 0.68
    #: Vignetting: fraction of light lost at ``field_radius_deg``; the loss grows as (angle / radius)^2.
    #: 0 by default (we have no citable number for the PFS corrector); set it if you know it.
    vignetting_at_edge: float = 0.0
    #: Radius of the PFS field of view, deg (1.38 deg diameter hexagon).
    field_radius_deg: float = 0.69
    #: Dark-sky brightness at zenith, AB mag / arcsec^2 in HSC i (photon weighted). Calibrated (see docs).
    sky_mag_i_arcsec2: float = 19.82
    #: Scale airglow with airmass (van Rhijn-like, proportional to X) if True.
    sky_scales_with_airmass: bool = True
    #: Extinction coefficient in V for the moonlight model (Krisciunas & Schaefer 1991, Mauna Kea).
    moon_k_v: float = 0.172
    #: Read noise per pixel per exposure, electrons.
    read_noise_e: float = 4.0
    #: Dark current, electrons / pixel / s.
    dark_e_per_pix_s: float = 1e-4
    #: Spatial extraction width, pixels (read noise and dark are paid on each).
    extraction_pixels: int = 5
    #: Stray light, as a fraction of the mean sky over the arm.
    stray_light_fraction: float = 0.02
    #: Sky-subtraction systematic floor, fraction of the local sky (max over pixels i-1, i, i+1).
    sky_subtraction_floor: float = 0.01
    #: Optional user sky table (text: wave_A vacuum, relative flux per A; scaled to sky_mag_i_arcsec2).
    sky_file: Optional[str] = None
    #: Resolving power of the user sky table (inf = unresolved lines).
    sky_file_resolution: float = float("inf")
    #: Optional user total-throughput table (text: wave_A, throughput 0..1). Replaces mirror x CCD x optics.
    throughput_file: Optional[str] = None
    #: Optional user extinction table (text: wave_A, mag per airmass). Default: Mauna Kea (Buton et al. 2013).
    extinction_file: Optional[str] = None
    #: Optional sky table already at the instrument resolution, absolute (text: wave_A vacuum,
    #: F_lambda at zenith in erg/s/cm^2/A/arcsec^2), interpolated to the pixels; replaces the sky
    #: model, ``sky_mag_i_arcsec2`` and the LSF smoothing of the sky.
    sky_pixel_file: Optional[str] = None
    #: Optional field-angle table (text: field_deg, transmission, fibre_diameter_arcsec), linear
    #: interpolation; replaces ``vignetting_at_edge`` and the fibre-diameter model.
    field_file: Optional[str] = None
    #: Optional fibre-aperture table (npz: seeing_800nm_arcsec, field_deg, wave_A, fraction[seeing, field, wave]):
    #: fraction of a point source in the fibre vs the delivered FWHM at 8000 A; replaces the Moffat model.
    fibre_aperture_file: Optional[str] = None

    def __post_init__(self):
        from specvit.observe.presets import apply_preset

        apply_preset(self)
        positive = ("resolution", "lsf_truncate_sigma", "telescope_diameter_m", "fibre_diameter_arcsec",
                    "fibre_diameter_edge_arcsec",
                    "psf_moffat_beta", "optics_throughput", "field_radius_deg", "extraction_pixels")
        for name in positive:
            v = getattr(self, name)
            if not v > 0:
                raise ConfigError("must be > 0", field=name, value=v)
        for name in ("central_obscuration", "vignetting_at_edge", "stray_light_fraction", "sky_subtraction_floor"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ConfigError("must be in [0, 1)", field=name, value=v)
        if self.psf_moffat_beta <= 1:
            raise ConfigError("must be > 1", field="psf_moffat_beta", value=self.psf_moffat_beta)
        for name in ("read_noise_e", "dark_e_per_pix_s"):
            if getattr(self, name) < 0:
                raise ConfigError("must be >= 0", field=name, value=getattr(self, name))


#: Order and meaning of the per-spectrum observing columns (pfsspec names) and their units.
CONDITION_COLUMNS: dict[str, str] = {
    "mag": "HSC i AB magnitude of the target",
    "redshift": "Doppler redshift z (observed = rest * (1 + z))",
    "exp_count": "number of exposures",
    "exp_time": "exposure time of one exposure, s",
    "seeing": "seeing FWHM at zenith and 5000 A, arcsec",
    "ext": "foreground reddening E(B-V), mag (Cardelli et al. 1989, R_V = 3.1)",
    "target_zenith_angle": "zenith angle of the target, deg",
    "target_field_angle": "distance of the fibre from the field centre, deg",
    "moon_zenith_angle": "zenith angle of the Moon, deg (>= 90: below the horizon)",
    "moon_target_angle": "Moon-target separation, deg",
    "moon_phase": "lunar phase as a fraction of the synodic month: 0 new, 0.5 full",
}


@dataclass
class ObservingConfig:
    """Per-spectrum observing-condition distributions (SPEC section 3 defaults).

    Each field is a number (fixed) or ``[low, high]`` (uniform). ``exp_count`` is
    drawn as an integer (uniform over low..high inclusive).
    """

    mag: Dist = (20.5, 22.5)  #: HSC i, AB mag
    redshift: Dist = 0.0
    exp_count: Dist = 12.0
    exp_time_s: Dist = 900.0
    seeing_arcsec: Dist = (0.5, 1.5)
    ext_ebv_mag: Dist = 0.0
    target_zenith_angle_deg: Dist = (0.0, 45.0)
    target_field_angle_deg: Dist = (0.0, 0.65)
    moon_zenith_angle_deg: Dist = 90.0
    moon_target_angle_deg: Dist = 60.0
    moon_phase: Dist = 0.0

    def __post_init__(self):
        for name, (lo, hi) in self.ranges().items():
            if lo > hi:
                raise ConfigError("low > high", field=name, value=[lo, hi])


    def ranges(self) -> dict[str, tuple[float, float]]:
        out = {}
        for name in _CFG_TO_COLUMN:
            v = getattr(self, name)
            if isinstance(v, (tuple, list)):
                if len(v) != 2:
                    raise ConfigError("needs one number or [low, high]", field=name, value=v)
                out[name] = (float(v[0]), float(v[1]))
            else:
                out[name] = (float(v), float(v))
        return out


#: ObservingConfig field -> condition column.
_CFG_TO_COLUMN = {
    "mag": "mag",
    "redshift": "redshift",
    "exp_count": "exp_count",
    "exp_time_s": "exp_time",
    "seeing_arcsec": "seeing",
    "ext_ebv_mag": "ext",
    "target_zenith_angle_deg": "target_zenith_angle",
    "target_field_angle_deg": "target_field_angle",
    "moon_zenith_angle_deg": "moon_zenith_angle",
    "moon_target_angle_deg": "moon_target_angle",
    "moon_phase": "moon_phase",
}

MediumName = Literal["vacuum", "air"]
