"""Derive the ``pfs-etc`` instrument preset tables from the official PFS exposure-time calculator.

Source: https://github.com/Subaru-PFS/spt_ExposureTimeCalculator (pure-Python engine
``pfsspecsim.etc``, v2.0.0 / commit aac84fa; licence MIT per its pyproject.toml, author Kiyoto Yabe).
The ETC is NOT a dependency of specvit: this script imports it from a source checkout
(``--etc-src DIR``, the directory holding ``pfsspecsim/``; its ``pfsspecsim/__init__.py`` imports
the ``pfs.datamodel`` simulator, so we register a bare package stub and import ``pfsspecsim.etc`` only)
and writes per-pixel / per-field tables into ``src/specvit/data_files/observe/pfs_etc_mr/``.

The ETC's MR red arm (config ``PFS.redMR.20240714.dat``, 'ave' spectrograph) has the same pixel grid
as specvit (7100 A + 0.42724609375 A per pixel, 4096 pixels, vacuum). Per PFS pixel centre we evaluate:

* ``throughput.txt``: system throughput T(lambda) (the config's throughput x the ETC's MR adjustment,
  degrade = 1, i.e. *without* the field-dependent obscuration correction) x the fraction of the
  object's trace inside the extraction window (``psf.frac_trace(tr=0)``).
* ``field.txt``: per field angle, vignetting x obscuration correction (``params.calc_obscuration``)
  and the fibre diameter on the sky (fibre entrance radius / EFL).
* ``aperture.npz``: the ETC's fibre aperture fraction of a point source (``psf.geometric_throughput``,
  r_eff = 0, the ETC's default 0.10" fibre offset) on a grid of seeing FWHM at 800 nm x field angle x
  wavelength.
* ``extinction.txt``: k(lambda) = -2.5 log10 T_atm / X with T_atm the ETC's atmospheric transmission
  (continuum extinction + Kitt Peak / ATRAN telluric O2 and H2O lines) smoothed by the spectrograph PSF
  (``noise.smoothed_transmission``), at the calibration zenith angle 22.5 deg.
* ``sky.txt``: the ETC's sky electrons per pixel (UVES + OH line lists deposited with the spectrograph
  PSF + sky continuum, model 0x11006) at the calibration setup, converted to an absolute surface
  brightness F_lambda at zenith (erg/s/cm^2/A/arcsec^2) *as specvit's chain sees it* (i.e. divided by
  specvit's response with ``throughput.txt``, the fibre area, the field factor and the airmass).
* ``scalars.json``: telescope diameter, obscuration, read noise, dark, extraction width, stray light
  and noise adjustment of the ETC; and the ETC's own per-pixel SNR at the calibration setup
  (reference numbers for tests and docs).

Run: ``python scripts/derive_pfs_etc_data.py --etc-src /path/to/spt_ExposureTimeCalculator/src``
"""
from __future__ import annotations

import argparse
import importlib.machinery
import json
import math
import sys
import types
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "specvit" / "data_files" / "observe" / "pfs_etc_mr"
#: calibration setup (docs/observe.md): 4 x 900 s, zenith 22.5 deg, field 0.325 deg, seeing 1.0" at
#: 5000 A and zenith = 0.95" at 800 nm and X(22.5 deg) (Kolmogorov X^0.6 lambda^-0.2), no Moon
SETUP = dict(seeing=0.95, zenith_ang=22.5, field_ang=0.325, moon_zenith_ang=90.0, moon_phase=0.0,
             exp_time=900.0, exp_num=4, mr_mode=True, reff=0.0, n_workers=1)
MAGS = (18.0, 20.0, 21.5, 22.0, 22.5, 23.0)
H_C_ERG_A = 6.62607015e-27 * 2.99792458e18


def import_etc(src: Path):
    sys.path.insert(0, str(src))
    pkg = types.ModuleType("pfsspecsim")
    pkg.__path__ = [str(src / "pfsspecsim")]
    pkg.__spec__ = importlib.machinery.ModuleSpec("pfsspecsim", None, is_package=True)
    pkg.__spec__.submodule_search_locations = pkg.__path__
    sys.modules["pfsspecsim"] = pkg
    from pfsspecsim.etc import config, engine, noise, params, psf  # noqa: E402
    return config, engine, noise, params, psf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--etc-src", required=True, type=Path)
    ap.add_argument("--commit", default="aac84fa")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    config, engine, noise, params, psf = import_etc(a.etc_src)
    EtcParams = params.EtcParams
    OUT.mkdir(parents=True, exist_ok=True)

    cfg_path = a.etc_src / "pfsspecsim" / "config" / "PFS.redMR.20240714.dat"  # mr_mode, 'ave', 20240714
    SETUP["instr_config"] = cfg_path
    p0 = EtcParams(**SETUP, mag=18.0, outfile_snl=None)
    sp1 = config.load_spectrograph_config(cfg_path, 1.0)  # degrade 1: no obscuration correction
    ia = 1  # internal index of the red arm (output arm id 3 in MR mode)
    assert sp1.MR and abs(sp1.lmin[ia] - 710.0) < 1e-9 and int(sp1.npix[ia]) == 4096
    dl = float(sp1.dl[ia])
    assert abs(dl * 10 - 0.42724609375) < 1e-12
    lam_nm = sp1.lmin[ia] + (np.arange(4096) + 0.5) * dl
    wave_A = lam_nm * 10

    geom_m2 = math.pi / 4 * sp1.D_outer**2 * (1 - sp1.centobs**2)
    vig0 = config.field_interp(sp1.vignette, 0.0, sp1.rfov)
    T = psf.effective_area(sp1, ia, lam_nm, 0.0) / geom_m2 / vig0
    mtf = psf.spectro_mtf(sp1, ia, lam_nm, psf.U_GRID)
    frac0 = psf.frac_trace(sp1, ia, lam_nm, tr=0, mtf=mtf)
    thr = T * frac0
    hdr = (f"PFS MR red arm system throughput x extraction fraction (object trace), per PFS pixel centre.\n"
           f"From the official PFS ETC (Subaru-PFS/spt_ExposureTimeCalculator {a.commit}, MIT), config "
           f"{cfg_path.name}; scripts/derive_pfs_etc_data.py.\ncolumns: wave_A (vacuum), throughput, "
           f"instrument_throughput, extraction_fraction")
    np.savetxt(OUT / "throughput.txt", np.column_stack([wave_A, thr, T, frac0]), fmt="%.6f %.6e %.6e %.6e",
               header=hdr)

    # line-spread function: the Gaussian (integrated over pixels) that best fits the ETC's per-pixel profile of
    # an unresolved line (psf.spectro_dist, sigma 0: optics + defocus + pixel MTF) -> FWHM in A per wavelength
    from scipy.optimize import minimize_scalar
    from scipy.special import ndtr

    lsf_lam = np.linspace(710.5, 884.5, 30)
    prof = psf.spectro_dist(sp1, ia, lsf_lam, 15.5, 0.0, 32)
    xpix = np.arange(32)
    sig = []
    for row in prof / prof.sum(1, keepdims=True):
        def cost(s, row=row):
            return float(((ndtr((xpix + 0.5 - 15.5) / s) - ndtr((xpix - 0.5 - 15.5) / s) - row) ** 2).sum())
        sig.append(minimize_scalar(cost, bounds=(0.3, 3.0), method="bounded").x)
    fwhm_A = 2 * math.sqrt(2 * math.log(2)) * np.array(sig) * dl * 10
    np.savetxt(OUT / "lsf.txt", np.column_stack([lsf_lam * 10, fwhm_A]), fmt="%.3f %.5f",
               header="PFS MR red arm line-spread function: FWHM of the Gaussian (integrated over pixels) that best fits "
                      "the official PFS ETC's per-pixel profile of an unresolved line (psf.spectro_dist).\n"
                      "columns: wave_A (vacuum), fwhm_A")

    fields = np.linspace(0.0, 0.70, 29)
    field_fac = np.array([config.field_interp(sp1.vignette, f, sp1.rfov) * params.calc_obscuration(f)[1]
                          for f in fields])
    diam = np.array([2 * noise._fiber_radius_arcsec(sp1, f) for f in fields])
    np.savetxt(OUT / "field.txt", np.column_stack([fields, field_fac, diam]), fmt="%.4f %.6f %.6f",
               header="PFS field-angle dependence in the official PFS ETC (vignetting x obscuration correction "
                      "calc_obscuration (PIPE2D-980); fibre diameter on the sky = 2 x fibre entrance radius / EFL).\n"
                      "columns: field_deg, transmission, fibre_diameter_arcsec")

    seeing = np.round(np.arange(0.30, 2.501, 0.05), 3)
    ap_fields = np.linspace(0.0, 0.70, 8)
    ap_wave_nm = np.linspace(705.0, 890.0, 8)
    frac = np.empty((len(seeing), len(ap_fields), len(ap_wave_nm)))
    for i, s in enumerate(seeing):
        for j, f in enumerate(ap_fields):
            frac[i, j] = psf.geometric_throughput(sp1, ap_wave_nm, 0.0, p0.fiber_offset, float(f), float(s))
    np.savez_compressed(OUT / "aperture.npz", seeing_800nm_arcsec=seeing, field_deg=ap_fields,
                        wave_A=ap_wave_nm * 10, fraction=frac, fiber_offset_arcsec=np.array(p0.fiber_offset))

    z = SETUP["zenith_ang"]
    X = 1.0 / math.sqrt(1.0 - 0.96 * math.sin(math.radians(z)) ** 2)
    trans = noise.smoothed_transmission(sp1, ia, lam_nm, z, p0.sky_type, mtf=mtf)
    k = -2.5 * np.log10(trans) / X
    np.savetxt(OUT / "extinction.txt", np.column_stack([wave_A, k]), fmt="%.6f %.6e",
               header=f"extinction k(lambda), mag per airmass, incl. telluric O2/H2O at the PFS MR resolution: "
                      f"-2.5 log10(T_atm)/X, T_atm = the official PFS ETC's PSF-smoothed transmission at zenith "
                      f"{z} deg (X = {X:.5f}).\ncolumns: wave_A (vacuum), k_mag_per_airmass")

    # sky at the calibration setup (the degrade used by the ETC run includes the obscuration correction)
    deg = params.resolve_degrade(p0)
    spd = config.load_spectrograph_config(cfg_path, deg)
    arm_noise = noise.compute_noise_arm(p0, spd, ia)
    assert np.allclose(arm_noise.lam, lam_nm)
    sky_e = arm_noise.sky  # electrons per exposure per pixel (sample factor 1 in the red arm)
    f_cal = SETUP["field_ang"]
    ff = config.field_interp(sp1.vignette, f_cal, sp1.rfov) * params.calc_obscuration(f_cal)[1]
    d_cal = 2 * noise._fiber_radius_arcsec(sp1, f_cal)
    resp = wave_A / H_C_ERG_A * (dl * 10) * geom_m2 * 1e4 * thr  # e- / s per (erg/s/cm^2/A), specvit's base
    adjust = float(noise.ADJUST_NOISE_MR[ia])  # the ETC's empirical noise adjustment of the red MR arm
    sky_fl = adjust * sky_e / (resp * SETUP["exp_time"] * math.pi / 4 * d_cal**2 * X * ff)
    np.savetxt(OUT / "sky.txt", np.column_stack([wave_A, sky_fl]), fmt="%.6f %.6e",
               header="night sky at zenith as specvit's chain sees it, per PFS pixel (already at the instrument "
                      "resolution): erg/s/cm^2/A/arcsec^2.\nFrom the official PFS ETC's sky electrons (sky model "
                      f"0x{p0.sky_type}: UVES + OH lines, continuum) at zenith {z} deg, field {f_cal} deg, divided "
                      "by specvit's response with throughput.txt, field.txt, the fibre area and the airmass, times the ETC's "
                      f"empirical noise adjustment {adjust} (ADJUST_NOISE_MR; it scales all background variance).\n"
                      "columns: wave_A (vacuum), sky_flambda")

    # the ETC's own per-pixel SNR at the calibration setup (reference numbers)
    ref = {}
    for m in MAGS:
        r = engine.run_etc(EtcParams(**SETUP, mag=m, outfile_snl=None))
        sel = np.asarray(r.snc["arm"]) == 3
        snr = np.asarray(r.snc["snr"])[sel]
        ref[f"{m:g}"] = {"median": float(np.median(snr)), "p10": float(np.percentile(snr, 10)),
                         "p90": float(np.percentile(snr, 90))}
        if m == 18.0:
            np.savetxt(OUT / "etc_snr_flat_ab.txt",
                       np.column_stack([wave_A, snr]), fmt="%.6f %.6e",
                       header="official PFS ETC per-pixel SNR (snc output, arm 3 = MR red), flat AB spectrum "
                              "i = 18, calibration setup (4 x 900 s, seeing 0.95\" at 800 nm, zenith 22.5 deg, "
                              "field 0.325 deg, no Moon, fibre offset 0.1\"); the ETC evaluates the object at "
                              "each pixel's left edge.\ncolumns: wave_A (pixel centre, vacuum), snr")
    scal = {
        "source": f"Subaru-PFS/spt_ExposureTimeCalculator {a.commit} (pfsspecsim.etc, v2.0.0), MIT licence",
        "config": cfg_path.name,
        "telescope_diameter_m": float(sp1.D_outer), "central_obscuration": float(sp1.centobs),
        "read_noise_e": float(sp1.read[ia]), "dark_e_per_pix_s": float(sp1.dark[ia]),
        "extraction_pixels": int(sp1.width[ia]),
        "stray_light_fraction": float(p0.diffuse_stray * sp1.width[ia] * sp1.pix[ia] / sp1.sep[ia]),
        "background_variance_scale": adjust,
        "sky_subtraction_floor": float(p0.sky_sub_floor),
        "field_radius_deg": float(sp1.rfov),
        "setup": {k: v for k, v in SETUP.items() if k != "instr_config"}, "etc_snr_flat_ab": ref,
    }
    (OUT / "scalars.json").write_text(json.dumps(scal, indent=1) + "\n")
    print(json.dumps({k: v for k, v in scal.items() if k != "setup"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
