"""Import original BOSZ files (Bohlin et al. 2017, AJ 153, 234) into a :class:`RegularGrid`.

Files, as served by the STScI archive (https://archive.stsci.edu/prepds/bosz/):

* ``.asc.bz2``: three whitespace-separated columns: wavelength (Angstrom),
  flux, continuum;
* ``.fits``: HDU 1 binary table with columns ``Wavelength``,
  ``SpecificIntensity``, ``Continuum``.

Names: ``am{m|p}{MM}c{m|p}{CC}o{m|p}{OO}t{TEFF}g{10*LOGG}v20modrt0b{R}rs.asc.bz2``
(e.g. ``amm03cm03om03t3500g25v20modrt0b5000rs.asc.bz2``). The archive avoids
decimals and rounds: ``mm13`` is [M/H] = -1.25 and ``m03`` is -0.25 (archive
page example), i.e. the true value is the code / 10 snapped to the 0.25 dex
grid step; ``g25`` is log g = 2.5; ``b5000`` is the resolving power R.

Wavelengths: the column in the files is rounded, so it is rebuilt: the
synthesis (Kurucz SYNTHE) grid is log-uniform with ratio 1 + 1/300000 from
100 nm to 32000 nm, and a file at resolution R keeps every d-th point,
d = 300000 // R // 2 (two samples per resolution element). This is what
pfsspec's BOSZ reader does (``correct_wave_grid``). Each file's rounded
column is matched to that grid (and checked to lie within a quarter of a
sample of it), so partial/cropped files work too.

Medium: BOSZ is treated as **vacuum** wavelengths: SYNTHE computes on a
vacuum log-lambda grid and pfsspec applied no air/vacuum conversion to
BOSZ. We could not confirm this on the archive page offline; pass
``medium="air"`` to :func:`import_bosz` if your files differ.
"""
from __future__ import annotations

import functools
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from specvit.errors import InputError
from specvit.spectra.grid import RegularGrid

BOSZ_R_SYNTH = 300000
BOSZ_WAVE_MIN_NM = 100.0
BOSZ_WAVE_MAX_NM = 32000.0

FILENAME_RE = re.compile(
    r"^am(?P<mh>[mp]\d{2})c(?P<cm>[mp]\d{2})o(?P<am>[mp]\d{2})t(?P<teff>\d{4,5})g(?P<logg>\d{2})"
    r"v(?P<vt>\d{2})modrt(?P<vrot>\d+)b(?P<R>\d+)rs\.(?P<ext>asc\.bz2|asc|fits)$"
)

#: pfsspec axis order for BOSZ grids.
BOSZ_AXES = ("M_H", "T_eff", "log_g", "C_M", "a_M")
#: Grid spacing of the paper's BOSZ nodes (SPEC section 2), label units (in the relevant range: 250 K
#: above 3500 K). The one definition: the Fisher ceiling's grid points and default FD steps, and the
#: template fit's ``grid`` mode use it.
BOSZ_STEPS = {"T_eff": 250.0, "log_g": 0.5, "M_H": 0.25, "a_M": 0.25, "C_M": 0.25}


def _abundance(code: str) -> float:
    """'m03' -> -0.25, 'p08' -> +0.75: code/10 snapped to the 0.25 dex step."""
    step = BOSZ_STEPS["M_H"]  # the same 0.25 dex for [M/H], [C/M], [alpha/M]
    v = round(int(code[1:]) / 10.0 / step) * step
    return -v if code[0] == "m" else v


def _abundance_code(x: float) -> str:
    return ("m" if x < 0 else "p") + "%02d" % int(abs(x) * 10 + 0.5)


def parse_bosz_filename(name: str) -> dict:
    """Labels and resolution from a BOSZ file name (InputError if it does not match)."""
    m = FILENAME_RE.match(Path(name).name)
    if not m:
        raise InputError("not a BOSZ file name (am..c..o..t..g..v..modrt..b..rs.asc.bz2|.fits)", file=name)
    return {
        "M_H": _abundance(m["mh"]), "C_M": _abundance(m["cm"]), "a_M": _abundance(m["am"]),
        "T_eff": float(m["teff"]), "log_g": int(m["logg"]) / 10.0, "v_turb": int(m["vt"]) / 10.0,
        "v_rot": float(m["vrot"]), "R": int(m["R"]), "ext": m["ext"],
    }


def bosz_filename(*, M_H, C_M, a_M, T_eff, log_g, R, ext="asc.bz2") -> str:
    """The archive file name for these labels (inverse of :func:`parse_bosz_filename`)."""
    return (f"am{_abundance_code(M_H)}c{_abundance_code(C_M)}o{_abundance_code(a_M)}t{int(T_eff)}"
            f"g{int(round(log_g * 10)):02d}v20modrt0b{int(R)}rs.{ext}")


def bosz_wave_grid(R: int) -> np.ndarray:
    """True BOSZ wavelength grid (Angstrom) of a file at resolving power ``R`` (a read-only array)."""
    return _bosz_wave_grid(int(R))


@functools.lru_cache(maxsize=4)
def _bosz_wave_grid(R: int) -> np.ndarray:
    ratio_lg = np.log10(1.0 + 1.0 / BOSZ_R_SYNTH)
    i_beg = int(np.round(np.log10(BOSZ_WAVE_MIN_NM) / ratio_lg))
    if 10 ** (i_beg * ratio_lg) < BOSZ_WAVE_MIN_NM:
        i_beg += 1
    i_end = int(np.round(np.log10(BOSZ_WAVE_MAX_NM) / ratio_lg))
    if 10 ** (i_end * ratio_lg) >= BOSZ_WAVE_MAX_NM:
        i_end -= 1
    d = max(1, BOSZ_R_SYNTH // int(R) // 2)
    full = 10.0 * 10.0 ** (np.linspace(i_beg * ratio_lg, i_end * ratio_lg, i_end - i_beg + 1))
    out = np.ascontiguousarray(full[::d])
    out.flags.writeable = False
    return out


def match_wave(rounded: np.ndarray, R: int, *, file=None) -> np.ndarray:
    """Indices into :func:`bosz_wave_grid` of a file's rounded wavelength column (checked)."""
    grid = bosz_wave_grid(R)
    rounded = np.asarray(rounded, dtype=np.float64)
    i = np.clip(np.searchsorted(grid, rounded), 1, len(grid) - 1)
    i = np.where(np.abs(grid[i - 1] - rounded) < np.abs(grid[i] - rounded), i - 1, i)
    spacing = grid[np.minimum(i + 1, len(grid) - 1)] - grid[np.minimum(i, len(grid) - 2)]
    bad = np.abs(grid[i] - rounded) > 0.25 * spacing
    if bad.any() or (len(i) > 1 and not np.all(np.diff(i) == 1)):
        k = int(np.flatnonzero(bad)[0]) if bad.any() else int(np.flatnonzero(np.diff(i) != 1)[0])
        raise InputError(f"wavelength column does not follow the BOSZ grid for R={R} (row {k})", file=file,
                         field="wave", value=float(rounded[k]))
    return i


def read_bosz_file(path, *, wave_range_A=None):
    """Read one BOSZ file -> (wave_A true grid, flux, continuum, labels dict)."""
    path = Path(path)
    info = parse_bosz_filename(path.name)
    try:
        if info["ext"] == "fits":
            from astropy.io import fits

            with fits.open(path, memmap=False) as hdul:
                tab = hdul[1].data
                for col in ("SpecificIntensity", "Continuum"):
                    if col not in tab.columns.names:
                        raise InputError("missing FITS column in HDU 1", file=path, field=col)
                wcol = "Wavelength" if "Wavelength" in tab.columns.names else None
                flux = np.asarray(tab["SpecificIntensity"], dtype=np.float64)
                cont = np.asarray(tab["Continuum"], dtype=np.float64)
                rounded = np.asarray(tab[wcol], dtype=np.float64) if wcol else None
        else:
            import pandas as pd

            df = pd.read_csv(path, sep=r"\s+", header=None, compression="bz2" if info["ext"] == "asc.bz2" else None,
                             dtype=np.float64)
            if df.shape[1] != 3:
                raise InputError(f"expected 3 columns (wave, flux, continuum), found {df.shape[1]}", file=path,
                                 field="columns", value=df.shape[1])
            rounded, flux, cont = (df[c].to_numpy() for c in df.columns)
    except InputError:
        raise
    except Exception as e:  # bz2/EOF/parse/FITS errors
        raise InputError(f"cannot read BOSZ file: {e}", file=path) from None
    if rounded is None:  # FITS without a wavelength column: assume the full grid
        idx = np.arange(len(flux))
        if len(flux) != len(bosz_wave_grid(info["R"])):
            raise InputError("FITS file has no Wavelength column and is not the full BOSZ grid", file=path,
                             field="Wavelength")
    else:
        idx = match_wave(rounded, info["R"], file=path)
    wave = bosz_wave_grid(info["R"])[idx]
    if wave_range_A is not None:
        keep = (wave >= wave_range_A[0]) & (wave <= wave_range_A[1])
        wave, flux, cont = wave[keep], flux[keep], cont[keep]
    labels = {k: info[k] for k in BOSZ_AXES}
    return wave, flux, cont, labels, info["R"]


def _read_one(args):
    path, wave_range_A = args
    return read_bosz_file(path, wave_range_A=wave_range_A)


def import_bosz(folder, *, wave_range_A=None, medium: str = "vacuum", workers: int = 1,
                dtype=np.float32, pattern: str = "*rs.*") -> RegularGrid:
    """Build a :class:`RegularGrid` from a folder of BOSZ ``.asc.bz2`` / ``.fits`` files.

    Axes are the sorted distinct label values found (pfsspec order M_H, T_eff,
    log_g, C_M, a_M); nodes without a file stay NaN and are marked invalid.
    ``wave_range_A=(lo, hi)`` crops to that wavelength range (Angstrom).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("BOSZ folder not found", file=folder)
    files = sorted(p for p in folder.rglob(pattern) if FILENAME_RE.match(p.name))
    if not files:
        raise InputError("no BOSZ files (am*...rs.asc.bz2 / .fits) in folder", file=folder)
    infos = [parse_bosz_filename(p.name) for p in files]
    Rs = {i["R"] for i in infos}
    if len(Rs) != 1:
        raise InputError(f"files of several resolutions in one folder: {sorted(Rs)}", file=folder, field="R")
    R = Rs.pop()
    axes = {k: np.unique([i[k] for i in infos]) for k in BOSZ_AXES}
    shape = tuple(len(v) for v in axes.values())
    jobs = [(p, wave_range_A) for p in files]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            results = list(ex.map(_read_one, jobs, chunksize=8))
    else:
        results = [_read_one(j) for j in jobs]
    wave = results[0][0]
    if len(wave) < 2:
        raise InputError("wavelength range selects fewer than 2 samples", file=folder, field="wave_range_A",
                         value=wave_range_A)
    flux = np.full(shape + (len(wave),), np.nan, dtype=dtype)
    cont = np.full(shape + (len(wave),), np.nan, dtype=dtype)
    for p, (w, fl, co, lab, _) in zip(files, results):
        if len(w) != len(wave) or not np.array_equal(w, wave):
            raise InputError("wavelength coverage differs from the first file's", file=p, field="wave",
                             value=(float(w[0]), float(w[-1]), len(w)) if len(w) else None)
        idx = tuple(int(np.searchsorted(axes[k], lab[k])) for k in BOSZ_AXES)
        flux[idx] = fl
        cont[idx] = co
    return RegularGrid(axes=axes, wave=wave, flux=flux, continuum=cont, medium=medium, resolution=float(R),
                       source=str(folder))
