"""The one set of checks every consumer of a dataset runs before any work (train, val, test, predict, baselines).

:func:`check_dataset` reads the rows a consumer will use once, in chunks, and looks at

* the wavelength grid: finite and increasing, and equal to the reference grid (the
  training set's, or the model's) when there is one;
* the flux: NaN / inf pixels;
* the error: pixels :func:`bad_error_pixels` calls bad (NaN, inf, zero or negative) are *masked*
  pixels (counted, not refused; see "Masked pixels" below); a row whose every error pixel is bad
  is a problem;
* the labels: the columns exist, are finite and lie inside the model's label range
  when a model (with a range) is given.

It collects every problem and reports them all at once, in one :class:`InputError`
whose message names the file, the field and the rows (the first few, plus the count).
:func:`raise_problems` joins the reports of several files (train + val + test).

Policy lives in one place: :func:`bad_error_pixels` decides which error pixels are
bad, :func:`patch_masked_errors` what a consumer does with them.

Masked pixels (THE policy for bad error pixels)
-----------------------------------------------
An error pixel that is NaN, inf, zero or negative is a *masked pixel* (pfsspec files carry NaN
errors in the first and last pixels; the paper's loader patched them). It never makes a
file unusable: every consumer (training stream, validation, predict, baselines) replaces
the error of a masked pixel by the error of the nearest unmasked pixel of the same
spectrum (ties: the bluer one), so noise is drawn at the level of its neighbours and the
flux there is used as it is (it must be finite: NaN/inf flux stays a problem). Weighted
fits (the template fit) give masked pixels zero weight instead. The number of masked
pixels and of rows having any is counted by :func:`check_dataset` and logged
(logger ``specvit.data``). A row with no unmasked error pixel at all is refused (train,
baselines) or flagged (predict).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from specvit.errors import InputError

FLUX_KEY = "dataset/arrays/flux/value"
ERROR_KEY = "dataset/arrays/error/value"
WAVE_KEY = "spectrumdataset/wave"
PARAMS_KEY = "dataset/params"

#: magnitudes (HSC i, AB) a simulation or a Fisher ceiling accepts: beyond them the observer's SNR is meaningless
MAG_RANGE = (10.0, 30.0)

#: rows named in a message (the count says how many there are in all)
MAX_ROWS_SHOWN = 5
#: two grids are the same if no pixel differs by more than this, Angstrom
WAVE_ATOL_A = 1e-3


log = logging.getLogger("specvit.data")


def bad_error_pixels(error: np.ndarray) -> np.ndarray:
    """Boolean mask of masked 1-sigma error pixels: NaN, inf, zero or negative (THE error policy)."""
    return ~(np.isfinite(error) & (error > 0))


def patch_masked_errors(error: np.ndarray, bad: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply the masked-pixel policy to (N, P) errors: each bad pixel takes the error of the nearest good
    pixel of its row (ties: the bluer one). Returns ``(patched copy, bad)``; rows without any good pixel
    are left as they are (the caller refuses or flags them: ``~(~bad).any(axis=1)``)."""
    error = np.asarray(error)
    bad = bad_error_pixels(error) if bad is None else np.asarray(bad, dtype=bool)
    if not bad.any():
        return error, bad
    out = error.copy()
    n_pix = error.shape[-1]
    idx = np.arange(n_pix)
    for i in np.flatnonzero(bad.any(axis=1)):
        good = np.flatnonzero(~bad[i])
        if good.size == 0:
            continue
        pos = np.searchsorted(good, idx)
        left = good[np.clip(pos - 1, 0, good.size - 1)]
        right = good[np.clip(pos, 0, good.size - 1)]
        nearest = np.where(np.abs(idx - left) <= np.abs(right - idx), left, right)
        out[i, bad[i]] = error[i, nearest[bad[i]]]
    return out, bad


def bad_flux_pixels(flux: np.ndarray) -> np.ndarray:
    """Boolean mask of unusable flux pixels: NaN or inf."""
    return ~np.isfinite(flux)


@dataclass
class Problem:
    field: str
    message: str
    rows: np.ndarray | None = None  # global row indices (all of them)

    def describe(self, ds=None) -> str:
        text = f"{self.field}: {self.message}"
        if self.rows is not None and len(self.rows):
            shown = [int(r) for r in self.rows[:MAX_ROWS_SHOWN]]
            where = ", ".join(f"row {r}{_shard_note(ds, r)}" for r in shown)
            more = f" (first {len(shown)} of {len(self.rows)} rows)" if len(self.rows) > len(shown) else ""
            n = len(self.rows)
            text += f" in {n} row{'s' if n != 1 else ''}: {where}{more}"
        return text


def _shard_note(ds, row: int) -> str:
    paths = getattr(ds, "paths", None)
    if ds is None or not paths or len(paths) < 2:
        return ""
    s = int(ds.shard_of([row])[0])
    return f" ({paths[s].name}, row {row - int(ds.shard_offsets[s])})"


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found in one dataset."""

    role: str
    file: str
    n_rows: int
    problems: list[Problem] = field(default_factory=list)
    #: rows with non-finite flux or error when the caller flags them instead (``nonfinite="flag"``)
    flagged: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    #: masked error pixels (the masked-pixel policy) in all, and rows that have any
    masked_pixels: int = 0
    masked_rows: int = 0
    ds: object = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        lines = [f"{self.role} dataset {self.file}:"] + [f"  - {p.describe(self.ds)}" for p in self.problems]
        return "\n".join(lines)

    def raise_if_bad(self) -> "DatasetReport":
        raise_problems([self])
        return self


def raise_problems(reports: Sequence[DatasetReport]) -> None:
    """One InputError listing every problem of every report (nothing if all are fine)."""
    bad = [r for r in reports if not r.ok]
    if not bad:
        return
    n = sum(len(r.problems) for r in bad)
    head = f"unusable input data ({n} problem{'s' if n != 1 else ''}; nothing was run):"
    text = "\n".join([head] + [r.describe() for r in bad])
    first = bad[0]
    raise InputError(text, file=first.file if len(bad) == 1 else ", ".join(r.file for r in bad),
                     field=first.problems[0].field)


def _describe_path(ds) -> str:
    paths = getattr(ds, "paths", None)
    if paths:
        return ",".join(str(p) for p in paths)
    return str(getattr(ds, "path", "?"))


def check_wave(wave, *, ref_wave=None, ref_name: str = "the reference grid") -> list[Problem]:
    """Problems of a wavelength grid (own sanity, then equality with ``ref_wave``)."""
    wave = np.asarray(wave, dtype=np.float64)
    out = []
    if not np.isfinite(wave).all():
        out.append(Problem(WAVE_KEY, f"{int((~np.isfinite(wave)).sum())} non-finite wavelengths"))
        return out
    if wave.size > 1 and not np.all(np.diff(wave) > 0):
        i = int(np.argmax(~(np.diff(wave) > 0)))
        out.append(Problem(WAVE_KEY, f"wavelengths must increase (pixel {i + 1}: {wave[i + 1]:g} after {wave[i]:g})"))
    if ref_wave is not None:
        ref = np.asarray(ref_wave, dtype=np.float64)
        if ref.shape != wave.shape:
            out.append(Problem(WAVE_KEY, f"{wave.size} pixels but {ref_name} has {ref.size}"))
        else:
            diff = np.abs(wave - ref)
            if not np.all(diff <= WAVE_ATOL_A):
                i = int(np.argmax(diff))
                out.append(Problem(WAVE_KEY, f"wavelength grid differs from {ref_name}'s (largest difference "
                                             f"{diff[i]:.4g} A at pixel {i}: {wave[i]:.4f} vs {ref[i]:.4f} A)"))
    return out


def check_dataset(ds, *, role: str, label_names: Sequence[str] = (), n_rows: int | None = None, ref_wave=None,
                  ref_name: str = "the training set", label_bounds: dict | None = None, nonfinite: str = "error",
                  chunk_rows: int = 2048, raise_errors: bool = True) -> DatasetReport:
    """Check rows ``[0, n_rows)`` of an open dataset ``ds`` (a :class:`SpectrumDataset`) before any work.

    Parameters
    ----------
    role : what the file is for ("train", "val", "test", "predict input", ...), used in the message.
    label_names : label columns the consumer uses: they must exist and be finite.
    ref_wave, ref_name : the reference grid (the training set's or the model's) and how to call it.
    label_bounds : ``{name: (low, high)}`` of the model; labels outside are problems.
    nonfinite : "error" (NaN/inf flux, or a row without any unmasked error pixel, is a problem) or
        "flag" (such rows are returned in ``report.flagged``). Masked error pixels (NaN, inf, zero,
        negative: :func:`bad_error_pixels`) are counted in ``masked_pixels`` / ``masked_rows`` and logged.
    raise_errors : raise an InputError listing every problem (else return the report).
    """
    if nonfinite not in ("error", "flag"):
        raise ValueError(nonfinite)
    n = len(ds) if n_rows is None else min(len(ds), int(n_rows))
    rep = DatasetReport(role=role, file=_describe_path(ds), n_rows=n, ds=ds)
    rep.problems += check_wave(ds.wave, ref_wave=ref_wave, ref_name=ref_name)
    # labels
    params = ds.params
    for name in label_names:
        if name not in params.columns:
            rep.problems.append(Problem(f"{PARAMS_KEY}/{name}", f"missing label column (columns: "
                                                                f"{', '.join(map(str, params.columns))})"))
            continue
        y = params[name].to_numpy(dtype=np.float64)[:n]
        bad = np.flatnonzero(~np.isfinite(y))
        if bad.size:
            rep.problems.append(Problem(f"{PARAMS_KEY}/{name}", "non-finite label", bad))
        if label_bounds and name in label_bounds:
            lo, hi = label_bounds[name]
            out = np.flatnonzero(np.isfinite(y) & ((y < lo) | (y > hi)))
            if out.size:
                rep.problems.append(Problem(f"{PARAMS_KEY}/{name}", f"label outside the model's range [{lo:g}, {hi:g}] "
                                                                    f"(e.g. {y[out[0]]:g})", out))
    # flux and error, in chunks
    flagged = np.zeros(n, dtype=bool)
    bad_flux, no_err = [], []
    n_masked, rows_masked = 0, 0
    step = max(1, int(chunk_rows))
    for a in range(0, n, step):
        b = min(n, a + step)
        flux = np.asarray(ds.flux[a:b])
        error = np.asarray(ds.error[a:b])
        fbad = bad_flux_pixels(flux).any(axis=1)
        epix = bad_error_pixels(error)
        none_good = epix.all(axis=1)
        n_masked += int(epix[~none_good].sum())
        rows_masked += int((epix.any(axis=1) & ~none_good).sum())
        if nonfinite == "flag":
            flagged[a:b] = fbad | none_good
        else:
            bad_flux.append(a + np.flatnonzero(fbad))
            no_err.append(a + np.flatnonzero(none_good))
    if bad_flux and np.concatenate(bad_flux).size:
        rep.problems.append(Problem(FLUX_KEY, "NaN or inf flux", np.concatenate(bad_flux)))
    if no_err and np.concatenate(no_err).size:
        rep.problems.append(Problem(ERROR_KEY, "no usable error pixel (every pixel NaN, inf, zero or negative)",
                                    np.concatenate(no_err)))
    rep.masked_pixels, rep.masked_rows = n_masked, rows_masked
    if n_masked:
        log.warning("%s dataset %s: %d masked error pixels (NaN, inf, zero or negative) in %d of %d rows; each "
                    "takes the error of its nearest unmasked pixel (masked-pixel policy, docs/data.md)",
                    role, rep.file, n_masked, rows_masked, n)
    rep.flagged = flagged
    if raise_errors:
        rep.raise_if_bad()
    return rep
