"""The one set of checks every consumer of a dataset runs before any work (train, val, test, predict, baselines).

:func:`check_dataset` reads the rows a consumer will use once, in chunks, and looks at

* the wavelength grid: finite and increasing, and equal to the reference grid (the
  training set's, or the model's) when there is one;
* the flux: NaN / inf pixels;
* the error: pixels :func:`bad_error_pixels` calls bad (NaN, inf, negative);
* the labels: the columns exist, are finite and lie inside the model's label range
  when a model (with a range) is given.

It collects every problem and reports them all at once, in one :class:`InputError`
whose message names the file, the field and the rows (the first few, plus the count).
:func:`raise_problems` joins the reports of several files (train + val + test).

Policy lives in one place: :func:`bad_error_pixels` decides which error pixels are
bad (to treat non-finite error pixels at the spectrum edges as masked, change that
one function).
"""
from __future__ import annotations

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


def bad_error_pixels(error: np.ndarray) -> np.ndarray:
    """Boolean mask of unusable 1-sigma error pixels: NaN, inf or negative (THE error policy)."""
    return ~(np.isfinite(error) & (error >= 0))


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
    nonfinite : "error" (NaN/inf flux or error is a problem) or "flag" (such rows are returned in
        ``report.flagged``; negative errors are still problems).
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
    bad_flux, bad_err, neg_err = [], [], []
    step = max(1, int(chunk_rows))
    for a in range(0, n, step):
        b = min(n, a + step)
        flux = np.asarray(ds.flux[a:b])
        error = np.asarray(ds.error[a:b])
        fbad = bad_flux_pixels(flux).any(axis=1)
        epix = bad_error_pixels(error)
        if nonfinite == "flag":
            negative = error < 0
            neg_err.append(a + np.flatnonzero((epix & negative).any(axis=1)))
            flagged[a:b] = fbad | (epix & ~negative).any(axis=1)
        else:
            bad_flux.append(a + np.flatnonzero(fbad))
            bad_err.append(a + np.flatnonzero(epix.any(axis=1)))
    if bad_flux and np.concatenate(bad_flux).size:
        rep.problems.append(Problem(FLUX_KEY, "NaN or inf flux", np.concatenate(bad_flux)))
    if bad_err and np.concatenate(bad_err).size:
        rep.problems.append(Problem(ERROR_KEY, "NaN, inf or negative error", np.concatenate(bad_err)))
    if neg_err and np.concatenate(neg_err).size:
        rep.problems.append(Problem(ERROR_KEY, "negative error", np.concatenate(neg_err)))
    rep.flagged = flagged
    if raise_errors:
        rep.raise_if_bad()
    return rep
