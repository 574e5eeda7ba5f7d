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

Release 2024 (Meszaros et al. 2024, A&A 688, A197; MAST HLSP ``bosz``): Synspec spectra on MARCS
(2800-8000 K) and ATLAS9 (7500-16000 K) atmospheres, files
``bosz2024_{atmos}_t{TEFF}_g{+L.L}_m{+M.MM}_a{+A.AA}_c{+C.CC}_v{VT}_r{R}_resam.txt.gz`` (``atmos``:
``ms``/``mp`` MARCS spherical / plane-parallel, ``ap`` ATLAS9; labels written out in full) with two
columns, flux (Eddington flux H; F = 4 pi H, the constant does not matter here) and continuum, on the
wavelengths (Angstrom) of the shared file ``bosz2024_wave_r{R}.txt`` (one value per line) in the same
folder or a parent; files at the original resolution (``_rorig_``) carry the wavelength as a first column.

Medium: detected from the data, else taken from the release (:func:`detect_medium`). The Ca II
infrared triplet (air 8498.02, 8542.09, 8662.14 Angstrom; vacuum 2.33-2.38 Angstrom redder) is the
strongest feature of cool stars in this range; its line centres (flux minimum with a parabolic
refinement) tell air from vacuum in every file with T_eff <= 6500 K (hotter stars are skipped: there
the Paschen lines P13/P15/P16 fall within 3 A of the Ca II lines and of their vacuum positions).
Files that disagree, or a file whose three lines disagree, are an error naming the file and the
line centres. Without a decisive file the release decides: 2024 is **air** (measured on real
BOSZ 2024 files: the Ca II centres sit 0.03-0.05 A from the air values and 2.4 A from vacuum,
issue #15); the 2017 release is taken as **vacuum** (SYNTHE computes on a vacuum log-lambda grid and
pfsspec did no conversion; not confirmed on the files). The wavelengths are then converted to
``to_medium`` (default vacuum, the medium of specvit's models and of the PFS pixels) with
:func:`specvit.physics.air_to_vacuum`; ``medium=`` forces the input medium (a decisive detection
that contradicts it is an error).
"""
from __future__ import annotations

import functools
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from specvit.errors import InputError
from specvit.physics import air_to_vacuum, vacuum_to_air
from specvit.spectra.grid import RegularGrid

BOSZ_R_SYNTH = 300000
BOSZ_WAVE_MIN_NM = 100.0
BOSZ_WAVE_MAX_NM = 32000.0

FILENAME_RE = re.compile(
    r"^am(?P<mh>[mp]\d{2})c(?P<cm>[mp]\d{2})o(?P<am>[mp]\d{2})t(?P<teff>\d{4,5})g(?P<logg>\d{2})"
    r"v(?P<vt>\d{2})modrt(?P<vrot>\d+)b(?P<R>\d+)rs\.(?P<ext>asc\.bz2|asc|fits)$"
)

FILENAME_2024_RE = re.compile(
    r"^bosz(?P<release>\d{4})_(?P<atmos>[a-z]{2})_t(?P<teff>\d{4,5})_g(?P<logg>[+-]\d+\.\d+)"
    r"_m(?P<mh>[+-]\d+\.\d+)_a(?P<am>[+-]\d+\.\d+)_c(?P<cm>[+-]\d+\.\d+)_v(?P<vt>\d+)"
    r"_r(?P<R>\d+|orig)_(?P<prod>[a-z]+)\.(?P<ext>txt\.gz|txt)$"
)
#: Medium of each release when the data cannot tell (see the module docstring).
RELEASE_MEDIUM = {"2017": "vacuum", "2024": "air"}
#: Ca II infrared triplet, air wavelengths (Angstrom; NIST): the lines that tell the medium.
CA_II_AIR_A = (8498.02, 8542.09, 8662.14)
#: Files hotter than this are not used to detect the medium (Paschen lines near the Ca II lines).
MEDIUM_DETECT_MAX_TEFF = 6500.0

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
    """Labels, resolution and release ("2017" or "2024") from a BOSZ file name (InputError if it matches neither)."""
    m = FILENAME_RE.match(Path(name).name)
    if m:
        return {
            "M_H": _abundance(m["mh"]), "C_M": _abundance(m["cm"]), "a_M": _abundance(m["am"]),
            "T_eff": float(m["teff"]), "log_g": int(m["logg"]) / 10.0, "v_turb": int(m["vt"]) / 10.0,
            "v_rot": float(m["vrot"]), "R": int(m["R"]), "ext": m["ext"], "release": "2017",
        }
    m = FILENAME_2024_RE.match(Path(name).name)
    if m:
        return {
            "M_H": float(m["mh"]), "C_M": float(m["cm"]), "a_M": float(m["am"]), "T_eff": float(m["teff"]),
            "log_g": float(m["logg"]), "v_turb": float(m["vt"]), "v_rot": 0.0,
            "R": 0 if m["R"] == "orig" else int(m["R"]), "ext": m["ext"], "release": m["release"],
            "atmos": m["atmos"],
        }
    raise InputError("not a BOSZ file name (am..c..o..t..g..v..modrt..b..rs.asc.bz2|.fits, or "
                     "bosz2024_..._t.._g.._m.._a.._c.._v.._r.._resam.txt.gz)", file=name)


def bosz2024_filename(*, M_H, C_M, a_M, T_eff, log_g, R, atmos="mp", v_turb=2, prod="resam") -> str:
    """The BOSZ 2024 file name for these labels (inverse of :func:`parse_bosz_filename`)."""
    r = "orig" if not R else str(int(R))
    return (f"bosz2024_{atmos}_t{int(T_eff)}_g{log_g:+.1f}_m{M_H:+.2f}_a{a_M:+.2f}_c{C_M:+.2f}_v{int(v_turb)}"
            f"_r{r}_{prod}.txt.gz")


def _line_centre(wave, norm, lo, hi):
    """Wavelength of the flux minimum in [lo, hi] (parabola through the lowest sample and its neighbours),
    and the line depth 1 - min; None if fewer than 3 samples."""
    i = np.flatnonzero((wave >= lo) & (wave <= hi))
    if len(i) < 3:
        return None
    k = i[np.argmin(norm[i])]
    if k == 0 or k == len(wave) - 1:
        return None
    y0, y1, y2 = norm[k - 1], norm[k], norm[k + 1]
    x0, x1, x2 = wave[k - 1], wave[k], wave[k + 1]
    den = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den
    c = float(-b / (2 * a)) if a > 0 else float(x1)
    return (c if x0 <= c <= x2 else float(x1)), float(1.0 - y1)


def detect_medium(wave_A, flux, cont, *, file=None, min_depth: float = 0.1) -> str | None:
    """"air" or "vacuum" from the Ca II triplet centres of one spectrum; None when it cannot tell
    (lines not covered, or shallower than ``min_depth`` of the continuum).

    A line votes for a medium when its centre lies within 0.6 A of that medium's position and more than
    1.5 A from the other's (they are 2.33-2.38 A apart). Two agreeing votes decide (a third, blended line
    may abstain); lines that vote differently, or two or more deep lines of which fewer than two vote, are an
    :class:`InputError` naming the file and the centres (ambiguous data).
    """
    wave = np.asarray(wave_A, dtype=np.float64)
    norm = np.asarray(flux, dtype=np.float64) / np.asarray(cont, dtype=np.float64)
    votes, centres = [], []
    for air in CA_II_AIR_A:
        vac = float(air_to_vacuum(air))
        found = _line_centre(wave, norm, air - 1.2, vac + 1.2)
        if found is None or found[1] < min_depth:
            continue
        c = found[0]
        centres.append(round(c, 3))
        if abs(c - air) <= 0.6 and abs(c - vac) >= 1.5:
            votes.append("air")
        elif abs(c - vac) <= 0.6 and abs(c - air) >= 1.5:
            votes.append("vacuum")
        else:
            votes.append("?")
    decided = [v for v in votes if v != "?"]
    if len(set(decided)) > 1 or (len(votes) >= 2 and len(decided) < 2):  # deep lines at neither position
        raise InputError(f"cannot tell the wavelength medium: the Ca II triplet centres {centres} A are neither all "
                         f"at the air {CA_II_AIR_A} nor all at the vacuum positions; pass medium='air' or 'vacuum'",
                         file=file, field="medium", value=centres)
    return decided[0] if len(decided) >= 2 else None


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


def _wave_file_2024(path: Path, R: int, root: Path | None = None) -> Path:
    """``bosz2024_wave_r{R}.txt`` in the file's folder or a parent (up to ``root``)."""
    name = f"bosz2024_wave_r{R}.txt"
    for d in [path.parent, *path.parent.parents]:
        if (d / name).exists():
            return d / name
        if root is not None and d == root:
            break
    raise InputError(f"BOSZ 2024 wavelength file {name} not found next to the spectrum or in a parent folder",
                     file=path, field="wave")


@functools.lru_cache(maxsize=8)
def _read_wave_file(path: str) -> np.ndarray:
    try:
        w = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except Exception as e:
        raise InputError(f"cannot read BOSZ wavelength file: {e}", file=path) from None
    if w.ndim != 1 or len(w) < 2 or not np.all(np.diff(w) > 0):
        raise InputError("BOSZ wavelength file must hold one increasing column", file=path, field="wave")
    return w


def _read_2024(path: Path, info: dict, root=None):
    import pandas as pd

    try:
        df = pd.read_csv(path, sep=r"\s+", header=None, comment="#", dtype=np.float64,
                         compression="gzip" if info["ext"] == "txt.gz" else None)
    except Exception as e:
        raise InputError(f"cannot read BOSZ file: {e}", file=path) from None
    if df.shape[1] == 3:  # original resolution: wave, flux, continuum
        wave, flux, cont = (df[c].to_numpy() for c in df.columns)
    elif df.shape[1] == 2:
        if not info["R"]:
            raise InputError("an original-resolution BOSZ 2024 file needs a wavelength column", file=path,
                             field="columns", value=2)
        wave = _read_wave_file(str(_wave_file_2024(path, info["R"], root)))
        flux, cont = (df[c].to_numpy() for c in df.columns)
        if len(wave) != len(flux):
            raise InputError(f"{len(flux)} rows but {len(wave)} wavelengths in bosz2024_wave_r{info['R']}.txt",
                             file=path, field="wave", value=len(flux))
    else:
        raise InputError(f"expected 2 columns (flux, continuum) or 3 (wave, flux, continuum), found {df.shape[1]}",
                         file=path, field="columns", value=df.shape[1])
    return wave, flux, cont


def read_bosz_file(path, *, wave_range_A=None, root=None, detect: bool = True):
    """Read one BOSZ file (either release) -> (wave_A as written, flux, continuum, labels dict, R, medium found).

    ``medium found``: :func:`detect_medium` on the whole file if T_eff <= ``MEDIUM_DETECT_MAX_TEFF`` (else
    None). ``wave_range_A`` crops with a 5 A pad on each side (the caller converts the medium and crops
    exactly). The wavelengths are those of the file, in its own medium.
    """
    path = Path(path)
    info = parse_bosz_filename(path.name)
    if info["release"] != "2017":
        wave, flux, cont = _read_2024(path, info, root)
    else:
        wave, flux, cont = _read_2017(path, info)
    found = None
    if detect and info["T_eff"] <= MEDIUM_DETECT_MAX_TEFF:
        found = detect_medium(wave, flux, cont, file=path)
    if wave_range_A is not None:
        keep = (wave >= wave_range_A[0] - 5.0) & (wave <= wave_range_A[1] + 5.0)
        wave, flux, cont = wave[keep], flux[keep], cont[keep]
    labels = {k: info[k] for k in BOSZ_AXES}
    return wave, flux, cont, labels, info["R"], found


def _read_2017(path: Path, info: dict):
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
    return bosz_wave_grid(info["R"])[idx], flux, cont


def _read_one(args):
    path, wave_range_A, root, detect = args
    return read_bosz_file(path, wave_range_A=wave_range_A, root=root, detect=detect)


def _convert(wave: np.ndarray, medium: str, to_medium: str) -> np.ndarray:
    if medium == to_medium:
        return wave
    return air_to_vacuum(wave) if to_medium == "vacuum" else vacuum_to_air(wave)


def import_bosz(folder, *, wave_range_A=None, medium: str = "auto", to_medium: str = "vacuum", workers: int = 1,
                dtype=np.float32, pattern: str = "*") -> RegularGrid:
    """Build a :class:`RegularGrid` from a folder of BOSZ files of one release: 2017 ``.asc.bz2`` / ``.fits``
    or 2024 ``.txt.gz`` (with its ``bosz2024_wave_r{R}.txt``).

    Axes are the sorted distinct label values found (pfsspec order M_H, T_eff,
    log_g, C_M, a_M); nodes without a file stay NaN and are marked invalid.
    ``wave_range_A=(lo, hi)`` crops to that wavelength range (Angstrom, in ``to_medium``).
    ``medium``: "auto" (default: detected from the Ca II triplet, else the release's, see the module
    docstring), "air" or "vacuum" (forced; a decisive detection that contradicts it is an error).
    The grid's wavelengths are converted to ``to_medium`` ("vacuum": specvit's models and the PFS pixels).
    ``grid.medium_detection`` records how the medium was decided.
    """
    folder = Path(folder)
    if medium not in ("auto", "air", "vacuum") or to_medium not in ("air", "vacuum"):
        raise InputError("medium must be 'auto', 'air' or 'vacuum' (to_medium: 'air' or 'vacuum')", field="medium",
                         value=(medium, to_medium))
    if not folder.is_dir():
        raise InputError("BOSZ folder not found", file=folder)
    files = sorted(p for p in folder.rglob(pattern) if FILENAME_RE.match(p.name) or FILENAME_2024_RE.match(p.name))
    if not files:
        raise InputError("no BOSZ files (am*...rs.asc.bz2 / .fits, bosz2024_*.txt.gz) in folder", file=folder)
    infos = [parse_bosz_filename(p.name) for p in files]
    releases = {i["release"] for i in infos}
    if len(releases) != 1:
        raise InputError(f"files of several BOSZ releases in one folder: {sorted(releases)}", file=folder,
                         field="release")
    release = releases.pop()
    Rs = {i["R"] for i in infos}
    if len(Rs) != 1:
        raise InputError(f"files of several resolutions in one folder: {sorted(Rs)}", file=folder, field="R")
    R = Rs.pop()
    axes = {k: np.unique([i[k] for i in infos]) for k in BOSZ_AXES}
    shape = tuple(len(v) for v in axes.values())
    # the crop is applied in the files' own medium with a pad; exactly after the conversion
    jobs = [(p, wave_range_A, folder, True) for p in files]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            results = list(ex.map(_read_one, jobs, chunksize=8))
    else:
        results = [_read_one(j) for j in jobs]
    found = {p.name: r[5] for p, r in zip(files, results) if r[5] is not None}
    kinds = sorted(set(found.values()))
    if len(kinds) > 1:
        ex_ = {k: next(n for n, v in found.items() if v == k) for k in kinds}
        raise InputError(f"the files disagree on the wavelength medium (e.g. {ex_}); pass medium='air' or 'vacuum'",
                         file=folder, field="medium", value=ex_)
    if medium == "auto":
        if kinds:
            in_medium, how = kinds[0], f"detected from the Ca II triplet in {len(found)} file(s)"
        else:
            in_medium, how = RELEASE_MEDIUM.get(release, "vacuum"), f"release {release} (no file decisive)"
    else:
        if kinds and kinds[0] != medium:
            raise InputError(f"medium={medium!r} contradicts the Ca II triplet positions of {len(found)} file(s), "
                             f"which are at the {kinds[0]} wavelengths", file=folder, field="medium", value=medium)
        in_medium, how = medium, "given"
    wave0 = _convert(results[0][0], in_medium, to_medium)
    keep = np.ones(len(wave0), bool) if wave_range_A is None else \
        (wave0 >= wave_range_A[0]) & (wave0 <= wave_range_A[1])
    wave = wave0[keep]
    if len(wave) < 2:
        raise InputError("wavelength range selects fewer than 2 samples", file=folder, field="wave_range_A",
                         value=wave_range_A)
    flux = np.full(shape + (len(wave),), np.nan, dtype=dtype)
    cont = np.full(shape + (len(wave),), np.nan, dtype=dtype)
    seen = {}
    for p, (w, fl, co, lab, _, _) in zip(files, results):
        if len(w) != len(results[0][0]) or not np.array_equal(w, results[0][0]):
            raise InputError("wavelength coverage differs from the first file's", file=p, field="wave",
                             value=(float(w[0]), float(w[-1]), len(w)) if len(w) else None)
        idx = tuple(int(np.searchsorted(axes[k], lab[k])) for k in BOSZ_AXES)
        if idx in seen:
            raise InputError(f"two files for the same labels ({seen[idx]} and {p.name}: e.g. two atmosphere codes "
                             "or microturbulences); select one with pattern=", file=p, field="labels", value=lab)
        seen[idx] = p.name
        flux[idx] = fl[keep]
        cont[idx] = co[keep]
    grid = RegularGrid(axes=axes, wave=wave, flux=flux, continuum=cont, medium=to_medium,
                       resolution=float(R) if R else float("inf"), source=str(folder))
    grid.medium_detection = {"release": release, "file_medium": in_medium, "how": how, "medium": to_medium,
                             "converted": in_medium != to_medium}
    return grid
