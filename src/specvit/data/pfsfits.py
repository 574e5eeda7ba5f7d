"""Read reduced PFS spectra (``pfsObject`` / ``pfsSingle`` FITS files of the PFS datamodel) onto a model's pixel grid.

Layout read (Subaru-PFS/datamodel: ``PfsSimpleSpectrum`` / ``PfsFiberArray`` and ``datamodel.txt``):

* ``FLUX``  image (NROW,) float32, flux density in **nJy** (no ``BUNIT`` card = nJy, the datamodel's
  unit; a ``BUNIT`` card is honoured if astropy can convert it to nJy or to erg/s/cm^2/A);
* ``MASK``  (compressed) image (NROW,) int32, mask planes named by ``MP_<NAME>`` header cards;
* ``COVAR`` image (3, NROW), row 0 = the variance of FLUX;
* ``WAVELENGTH`` image (NROW,) float64, **nm, vacuum**; or, without that HDU, a linear WCS
  (``CTYPE1 = 'WAVE'``, ``CUNIT1 = 'nm'``) in the FLUX header, read as ``WavelengthArray.fromFitsHeader``
  does (from ``pixel_to_world(1)`` to ``pixel_to_world(NROW)``);
* ``OBSERVATIONS`` table (one row per visit) with the ``arm`` string of each (e.g. ``'bmn'``; MR = ``'m'``);
* ``TARGET`` table whose header carries ``CATID``, ``TRACT``, ``PATCH``, ``OBJID`` (identity; the file
  name is used when it is missing).

Steps for each file (:func:`prepare_pfs_spectrum`):

1. unusable pixels: non-finite flux, non-finite or non-positive variance, or a bad mask plane
   (:data:`BAD_MASK_PLANES`; any set bit when the header names no planes);
2. the radial velocity, if given, is removed: ``lambda_rest = lambda_obs / D`` with the relativistic
   Doppler factor ``D = sqrt((1 + v/c) / (1 - v/c))`` (without one the spectrum must be in the rest frame);
3. ``F_lambda [erg s^-1 cm^-2 A^-1] = F_nu [nJy] * 1e-32 * c / lambda^2`` (c in A/s, lambda in A), the
   same factor for the 1-sigma error ``sqrt(variance)``;
4. flux-conserving resampling onto the model's pixels (edges half-way between centres): each model pixel
   takes the overlap-weighted mean of the good input pixels it overlaps, ``f = sum(o_j f_j) / sum(o_j)``,
   with ``var = sum(o_j^2 var_j) / (sum o_j)^2`` (input pixels taken as independent: the near-diagonal
   covariance is not propagated); a model pixel less than :data:`MIN_COVERAGE` covered by good input
   pixels is masked; model pixels outside the spectrum are masked;
5. normalisation as the training sets are stored: median 0.5 over the unmasked pixels (flux and error
   scaled by the same factor);
6. masked pixels: flux linearly interpolated from the nearest unmasked pixels, error by the
   masked-pixel policy (:func:`specvit.data.checks.patch_masked_errors`); weighted fits give them weight 0.

Everything that can go wrong with one file (missing HDU, wrong arm, a wavelength range that misses
the model's, all pixels masked, flux units it cannot read) raises :class:`InputError` naming the file,
the HDU/field and the value; :func:`load_pfs_batch` turns it into a flagged row and goes on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specvit.errors import InputError
from specvit.physics import C_LIGHT_A_S

#: file name patterns of the reduced spectra specvit reads
PFS_KINDS = ("pfsObject", "pfsSingle")
#: mask planes that make a pixel unusable (DRP names); other planes are informational
BAD_MASK_PLANES = ("NO_DATA", "BAD", "SAT", "CR", "BAD_FLAT", "BAD_SKY", "BAD_FLUXCAL", "BAD_FIBERNORMS",
                   "UNMASKEDNAN", "EDGE")
#: a model pixel needs at least this fraction of its width covered by good input pixels
MIN_COVERAGE = 0.5
#: rows with more masked model pixels than this are flagged (the prediction is still made)
MAX_MASKED_FRACTION = 0.2
#: nJy in erg s^-1 cm^-2 Hz^-1
NJY_CGS = 1e-32
C_KM_S = 299792.458


def is_pfs_fits(path) -> bool:
    """True if ``path`` is a FITS file, or a directory holding ``pfsObject-*.fits`` / ``pfsSingle-*.fits``."""
    p = Path(path)
    if p.is_dir():
        return bool(_fits_in_dir(p))
    return p.name.lower().endswith((".fits", ".fits.gz", ".fit", ".fts"))


def _fits_in_dir(p: Path) -> list[Path]:
    return sorted(q for q in p.iterdir() if q.is_file() and q.name.startswith(PFS_KINDS)
                  and q.name.lower().endswith((".fits", ".fits.gz")))


def list_pfs_files(path) -> list[Path]:
    """The FITS files of ``--input``: one file, a glob, or every ``pfsObject-*`` / ``pfsSingle-*`` FITS of a folder
    (sorted)."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    out: list[Path] = []
    for x in paths:
        p = Path(x)
        if any(c in str(x) for c in "*?[") and not p.exists():
            import glob

            files = sorted(Path(q) for q in glob.glob(str(x)) if Path(q).is_file())
            if not files:
                raise InputError("glob matches no files", file=str(x))
            out.extend(files)
        elif p.is_dir():
            files = _fits_in_dir(p)
            if not files:
                raise InputError("folder holds no pfsObject-*.fits or pfsSingle-*.fits files", file=p)
            out.extend(files)
        elif not p.exists():
            raise InputError("input file not found", file=p)
        else:
            out.append(p)
    return out


@dataclass
class PfsSpectrum:
    """One reduced spectrum as stored (datamodel units: nm vacuum, nJy)."""

    file: Path
    kind: str  #: "pfsObject", "pfsSingle" or "" (not told by the file name)
    identity: dict
    wave_nm: np.ndarray
    flux_njy: np.ndarray
    variance: np.ndarray  #: in the FLUX unit squared
    mask: np.ndarray
    bad: np.ndarray  #: unusable pixels (step 1)
    arms: list = field(default_factory=list)
    flux_unit: str = "nJy"


_NAME_RE = {
    "pfsObject": re.compile(r"^pfsObject-(\d+)-(\d+)-(.*)-([0-9a-fA-F]+)-(\d+)-0x([0-9a-fA-F]+)\.fits"),
    "pfsSingle": re.compile(r"^pfsSingle-(\d+)-(\d+)-(.*)-([0-9a-fA-F]+)-(\d+)\.fits"),
}


def _identity_from_name(name: str) -> tuple[str, dict]:
    for kind, rx in _NAME_RE.items():
        m = rx.match(name)
        if m:
            ident = {"catId": int(m.group(1)), "tract": int(m.group(2)), "patch": m.group(3),
                     "objId": int(m.group(4), 16)}
            ident["nVisit" if kind == "pfsObject" else "visit"] = int(m.group(5))
            return kind, ident
    return ("pfsObject" if name.startswith("pfsObject") else "pfsSingle" if name.startswith("pfsSingle") else ""), {}


def _hdu(fits, name, path):
    try:
        return fits[name]
    except KeyError:
        have = [h.name for h in fits]
        raise InputError(f"missing HDU {name} (not a pfsObject/pfsSingle file? HDUs: {', '.join(have)})",
                         file=path, field=name) from None


def _wavelength_nm(fits, path, n: int) -> np.ndarray:
    if "WAVELENGTH" in fits:
        wave = np.asarray(fits["WAVELENGTH"].data, dtype=np.float64).reshape(-1)
        if wave.shape != (n,):
            raise InputError(f"WAVELENGTH has {wave.size} values but FLUX has {n}", file=path, field="WAVELENGTH",
                             value=wave.size)
        return wave
    hdr = fits["FLUX"].header
    if str(hdr.get("CTYPE1", "")).strip().upper() != "WAVE":
        raise InputError("no WAVELENGTH HDU and no wavelength WCS (CTYPE1 = 'WAVE') in the FLUX header", file=path,
                         field="WAVELENGTH", value=hdr.get("CTYPE1"))
    import astropy.units as u
    from astropy.wcs import WCS

    try:
        wcs = WCS(hdr).sub([1])
        # as the datamodel reads it (WavelengthArray.fromFitsHeader): the wavelengths run linearly from
        # pixel_to_world(1) to pixel_to_world(n) (astropy's 0-based pixels; its writer puts CRPIX1 there)
        world = wcs.pixel_to_world(np.arange(1, n + 1, dtype=float))
        q = world.to(u.nm) if hasattr(world, "to") else u.Quantity(world[0]).to(u.nm)
    except Exception as e:
        raise InputError(f"cannot read the wavelength WCS of FLUX ({e})", file=path, field="FLUX/CTYPE1") from None
    return np.asarray(q.value, dtype=np.float64).reshape(-1)


def _flux_unit_factor(unit_str, path):
    """(factor to nJy or None, factor to F_lambda-per-A-at-wave function or None) for a BUNIT card."""
    import astropy.units as u

    try:
        unit = u.Unit(unit_str)
    except (ValueError, TypeError):
        raise InputError("flux unit it cannot read (BUNIT)", file=path, field="FLUX/BUNIT", value=unit_str) from None
    if unit.is_equivalent(u.nJy):
        return float(unit.to(u.nJy)), None
    flam = u.erg / u.s / u.cm**2 / u.AA
    if unit.is_equivalent(flam):
        return None, float(unit.to(flam))
    raise InputError("flux unit is neither a flux density per frequency (nJy) nor per wavelength", file=path,
                     field="FLUX/BUNIT", value=unit_str)


def read_pfs_spectrum(path) -> PfsSpectrum:
    """Read one pfsObject / pfsSingle FITS file (see the module docstring); InputError on anything unusable."""
    from astropy.io import fits as afits

    path = Path(path)
    try:
        hdul = afits.open(path, memmap=False)
    except (OSError, ValueError) as e:
        raise InputError(f"not a readable FITS file ({e})", file=path) from None
    with hdul:
        flux_hdu = _hdu(hdul, "FLUX", path)
        flux = np.asarray(flux_hdu.data, dtype=np.float64)
        if flux.ndim != 1 or flux.size < 2:
            raise InputError("FLUX must be one spectrum (1-D; pfsCoadd/pfsMerged files hold many)", file=path,
                             field="FLUX", value=None if flux_hdu.data is None else flux.shape)
        n = flux.size
        mask_hdu = _hdu(hdul, "MASK", path)
        mask = np.asarray(mask_hdu.data).astype(np.int64).reshape(-1)
        covar = np.asarray(_hdu(hdul, "COVAR", path).data, dtype=np.float64)
        if covar.ndim != 2 or covar.shape[-1] != n or mask.shape != (n,):
            raise InputError(f"COVAR must be (3, {n}) and MASK ({n},)", file=path, field="COVAR",
                             value=(covar.shape, mask.shape))
        variance = covar[0]
        wave = _wavelength_nm(hdul, path, n)
        obs = _hdu(hdul, "OBSERVATIONS", path)
        if "arm" not in obs.columns.names:
            raise InputError("OBSERVATIONS has no 'arm' column", file=path, field="OBSERVATIONS/arm")
        arms = [str(a).strip() for a in obs.data["arm"]]
        kind, ident = _identity_from_name(path.name)
        if "TARGET" in hdul:
            h = hdul["TARGET"].header
            for key in ("catId", "tract", "patch", "objId"):
                if key.upper() in h:
                    ident[key] = h[key.upper()]
        if kind == "pfsSingle" and "visit" not in ident and len(obs.data):
            ident["visit"] = int(obs.data["visit"][0])
        unit = flux_hdu.header.get("BUNIT")
        flux_unit = "nJy"
        if unit is not None and str(unit).strip():
            to_njy, to_flam = _flux_unit_factor(str(unit).strip(), path)
            flux_unit = str(unit).strip()
            if to_njy is not None:
                flux, variance = flux * to_njy, variance * to_njy**2
            else:  # F_lambda already: express in nJy at each wavelength so that one conversion follows
                lam_a = wave * 10.0
                k = to_flam * lam_a**2 / C_LIGHT_A_S / NJY_CGS
                flux, variance = flux * k, variance * k**2
        bits = _bad_bits(mask_hdu.header)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(flux) | ~(np.isfinite(variance) & (variance > 0)) | ((mask & bits) != 0)
    return PfsSpectrum(file=path, kind=kind, identity=ident, wave_nm=wave, flux_njy=flux, variance=variance,
                       mask=mask, bad=bad, arms=arms, flux_unit=flux_unit)


def _bad_bits(header) -> int:
    planes = {}
    for key, value in header.items():
        k = key[len("HIERARCH "):] if key.startswith("HIERARCH ") else key
        if k.startswith("MP_"):
            planes[k[3:]] = int(value)
    if not planes:
        return ~0  # no plane names: any set bit is bad
    bits = 0
    for name in BAD_MASK_PLANES:
        if name in planes:
            bits |= 1 << planes[name]
    return bits


def cell_edges(centres: np.ndarray) -> np.ndarray:
    mid = 0.5 * (centres[1:] + centres[:-1])
    return np.concatenate([[centres[0] - (mid[0] - centres[0])], mid, [centres[-1] + (centres[-1] - mid[-1])]])


def resample_flux_conserving(in_edges, flux, var, good, out_edges, min_coverage: float = MIN_COVERAGE):
    """Overlap-weighted (flux-conserving) resampling of one spectrum; returns (flux, var, masked) on the output
    pixels. Input pixels with ``good`` False carry no weight; an output pixel covered by good input for less
    than ``min_coverage`` of its width is masked (flux, var NaN)."""
    e_in = np.asarray(in_edges, dtype=np.float64)
    e_out = np.asarray(out_edges, dtype=np.float64)
    n_in = e_in.size - 1
    lo, hi = e_out[:-1], e_out[1:]
    j0 = np.clip(np.searchsorted(e_in, lo, side="right") - 1, 0, n_in - 1)
    j1 = np.clip(np.searchsorted(e_in, hi, side="left"), 0, n_in)
    width = max(1, int((j1 - j0).max()))
    J = j0[:, None] + np.arange(width)[None, :]
    valid = J < j1[:, None]
    J = np.minimum(J, n_in - 1)
    overlap = np.minimum(hi[:, None], e_in[J + 1]) - np.maximum(lo[:, None], e_in[J])
    w = np.where(valid & np.asarray(good)[J], np.clip(overlap, 0.0, None), 0.0)
    wsum = w.sum(axis=1)
    f = np.where(np.asarray(good)[J], flux[J], 0.0)
    v = np.where(np.asarray(good)[J], var[J], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out_f = (w * f).sum(axis=1) / wsum
        out_v = (w**2 * v).sum(axis=1) / wsum**2
    masked = ~(wsum >= min_coverage * (hi - lo))
    out_f[masked] = np.nan
    out_v[masked] = np.nan
    return out_f, out_v, masked


def doppler_factor(v_km_s: float) -> float:
    b = float(v_km_s) / C_KM_S
    return float(np.sqrt((1.0 + b) / (1.0 - b)))


@dataclass
class Prepared:
    flux: np.ndarray  #: (P,) normalised (median 0.5 over unmasked pixels), masked pixels filled
    error: np.ndarray  #: (P,) 1-sigma in the same units, masked pixels patched (masked-pixel policy)
    masked: np.ndarray  #: (P,) bool
    norm: float  #: normalised = F_lambda [erg/s/cm^2/A] * norm


def prepare_pfs_spectrum(spec: PfsSpectrum, model_wave_A, *, v_los_km_s: float | None = None,
                         arm: str = "m") -> Prepared:
    """Steps 2-6 of the module docstring for one spectrum; InputError (naming the file) if unusable."""
    from specvit.data.checks import patch_masked_errors

    model_wave_A = np.asarray(model_wave_A, dtype=np.float64)
    if spec.arms and not any(arm in a for a in spec.arms):
        raise InputError(f"wrong arm: the spectrum has no {'medium-resolution' if arm == 'm' else arm!r} arm data "
                         f"(OBSERVATIONS arm: {', '.join(sorted(set(spec.arms)))}); the model was trained on the "
                         "MR red arm ('m')", file=spec.file, field="OBSERVATIONS/arm", value=sorted(set(spec.arms)))
    lam = spec.wave_nm * 10.0  # nm -> A (both vacuum)
    if v_los_km_s is not None:
        if not (np.isfinite(v_los_km_s) and abs(v_los_km_s) < 0.1 * C_KM_S):
            raise InputError("radial velocity must be finite and |v| < 0.1 c", file=spec.file, field="v_los",
                             value=v_los_km_s)
        lam = lam / doppler_factor(v_los_km_s)
    if not np.all(np.diff(lam) > 0):
        raise InputError("wavelengths must increase", file=spec.file, field="WAVELENGTH")
    out_edges = cell_edges(model_wave_A)
    if lam[0] > out_edges[-1] or lam[-1] < out_edges[0]:
        raise InputError(f"wavelength range {lam[0]:.1f}-{lam[-1]:.1f} A (rest frame) misses the model's "
                         f"{out_edges[0]:.1f}-{out_edges[-1]:.1f} A (wrong arm?)", file=spec.file,
                         field="WAVELENGTH", value=[float(lam[0]), float(lam[-1])])
    k = NJY_CGS * C_LIGHT_A_S / lam**2  # nJy -> erg/s/cm^2/A
    good = ~spec.bad
    flam = np.where(good, spec.flux_njy, 0.0) * k
    var = np.where(good, spec.variance, 0.0) * k**2
    f, v, masked = resample_flux_conserving(cell_edges(lam), flam, var, good, out_edges)
    if masked.all():
        raise InputError("all pixels in the model's wavelength range are masked or missing", file=spec.file,
                         field="MASK", value=int(masked.size))
    med = float(np.median(f[~masked]))
    if not med > 0:
        raise InputError("median flux over the unmasked pixels is not positive", file=spec.file, field="FLUX",
                         value=med)
    norm = 0.5 / med
    flux = f * norm
    err = np.sqrt(v) * norm
    idx = np.arange(flux.size)
    good_pix = ~masked
    flux = np.where(masked, np.interp(idx, idx[good_pix], flux[good_pix]), flux)
    err_bad = masked | ~(err > 0)
    err, _ = patch_masked_errors(np.where(err_bad, np.nan, err)[None, :], err_bad[None, :])
    return Prepared(flux=flux, error=err[0], masked=masked | err_bad, norm=norm)


def read_rv_table(path) -> dict:
    """``{key: v_los km/s}`` from a CSV with a ``v_los`` column and an ``objId`` and/or ``file`` column."""
    import pandas as pd

    p = Path(path)
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the radial-velocity table ({e})", file=p) from None
    if "v_los" not in df.columns or not ({"objId", "file"} & set(df.columns)):
        raise InputError("radial-velocity table needs a v_los column (km/s) and an objId or file column", file=p,
                         field="v_los", value=list(df.columns))
    out = {}
    for _, r in df.iterrows():
        if "file" in df.columns and isinstance(r["file"], str) and r["file"]:
            out[("file", Path(r["file"]).name)] = float(r["v_los"])
        if "objId" in df.columns and np.isfinite(r["objId"]):
            out[("objId", int(r["objId"]))] = float(r["v_los"])
    return out


def rv_for(spec: PfsSpectrum, rv_table: dict | None):
    if not rv_table:
        return None
    v = rv_table.get(("file", spec.file.name))
    if v is None and "objId" in spec.identity:
        v = rv_table.get(("objId", int(spec.identity["objId"])))
    return v


@dataclass
class PfsBatch:
    """Spectra of a batch of files on the model grid; rows that failed have ``status`` set and NaN arrays."""

    files: list
    info: list  #: per row: dict of identity + kind + status + v_los + masked_fraction
    flux: np.ndarray
    error: np.ndarray
    masked: np.ndarray
    failed: np.ndarray  #: (N,) bool


def load_pfs_batch(files, model_wave_A, *, rv_table: dict | None = None, require_rv: bool = False) -> PfsBatch:
    """Read and prepare every file; a file that cannot be used becomes a failed row (its error in ``status``)."""
    n, p = len(files), len(model_wave_A)
    flux = np.full((n, p), np.nan, dtype=np.float32)
    error = np.full((n, p), np.nan, dtype=np.float32)
    masked = np.ones((n, p), dtype=bool)
    failed = np.zeros(n, dtype=bool)
    info = []
    for i, f in enumerate(files):
        kind, ident = _identity_from_name(Path(f).name)
        row = {"file": Path(f).name, "kind": kind, "catId": ident.get("catId"), "tract": ident.get("tract"),
               "patch": ident.get("patch"), "objId": ident.get("objId"),
               "visit": ident.get("visit", ident.get("nVisit")), "v_los_applied": np.nan,
               "masked_fraction": np.nan, "status": ""}
        try:
            spec = read_pfs_spectrum(f)
            row.update({"kind": spec.kind, **{k: spec.identity.get(k, row[k]) for k in ("catId", "tract", "patch",
                                                                                        "objId")}})
            row["visit"] = spec.identity.get("visit", spec.identity.get("nVisit", row["visit"]))
            v = rv_for(spec, rv_table)
            if v is None and require_rv:
                raise InputError("no radial velocity for this spectrum in --rv-table", file=f, field="v_los")
            prep = prepare_pfs_spectrum(spec, model_wave_A, v_los_km_s=v)
            flux[i], error[i], masked[i] = prep.flux, prep.error, prep.masked
            row["v_los_applied"] = 0.0 if v is None else float(v)  # 0: taken as already in the rest frame
            row["masked_fraction"] = float(prep.masked.mean())
        except InputError as e:
            failed[i] = True
            row["status"] = str(e)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:  # astropy on a damaged file
            failed[i] = True
            row["status"] = str(InputError(f"cannot read this file ({type(e).__name__}: {e})", file=f))
        info.append(row)
    return PfsBatch(files=list(files), info=info, flux=flux, error=error, masked=masked, failed=failed)
