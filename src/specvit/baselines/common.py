"""What every classical baseline shares: the data section of its config, noisy flux read
in chunks from lazy dataset files, the prediction table and the output folder.

Noise (SPEC section 3): stored flux is noiseless; a noisy spectrum is
``flux + noise_level * error * z``. Every ``z`` here is the counter-based fixed draw of
:func:`specvit.observe.noise.fixed_noisy_flux`, a pure function of (seed, global row,
pixel). So

* validation and test use ``eval_noise_seed`` (default 42): every model that uses
  :func:`iter_noisy_chunks` with the same seed sees the SAME noisy test spectra;
* training uses one fixed noisy realisation per row and copy: copy ``k`` of the training
  set uses seed ``train_noise_seed + k`` (``n_augment`` copies in all), as the paper
  trained LightGBM/Ridge on a fixed noisy realisation of the training flux.

The model-derived ``error`` array is never a model input (leakage trap, SPEC section 3):
it only scales the noise.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from specvit.atomic import atomic_path, write_text_atomic
from specvit.errors import InputError
from specvit.labels import canonical_label

#: Default seed of the fixed validation/test noise shared by all baselines.
EVAL_NOISE_SEED = 42


@dataclass
class DataConfig:
    """Which files and labels a baseline uses, and how noise is added.

    Paths may be one file, a list, a directory of shards or a glob (see
    :func:`specvit.data.pfsspec.open_dataset`).
    """

    train: str  #: training dataset (pfsspec layout)
    val: str  #: validation dataset (early stopping / alpha choice)
    test: str  #: test dataset (predictions and metrics)
    labels: list[str] = field(default_factory=lambda: ["log_g"])  #: labels to regress (pfsspec names or aliases)
    noise_level: float = 1.0  #: multiplies the stored 1-sigma error
    train_noise_seed: int = 1  #: fixed training noise: copy k uses seed train_noise_seed + k
    eval_noise_seed: int = EVAL_NOISE_SEED  #: fixed noise of validation and test rows
    n_augment: int = 1  #: noisy copies of each training row (K)
    max_train_rows: int | None = None  #: use only the first rows of the training set (prefix, as the paper's scaling)
    max_val_rows: int | None = None
    max_test_rows: int | None = None
    chunk_rows: int = 1024  #: rows read from disk at a time (4096 px float32: 16 MB per 1024 rows)

    def __post_init__(self):
        self.labels = [canonical_label(n) for n in self.labels]
        if not self.labels:
            raise InputError("at least one label is needed", field="data.labels")
        if self.n_augment < 1:
            raise InputError("must be >= 1", field="data.n_augment", value=self.n_augment)
        if self.chunk_rows < 1:
            raise InputError("must be >= 1", field="data.chunk_rows", value=self.chunk_rows)
        if not (self.noise_level >= 0):
            raise InputError("must be >= 0", field="data.noise_level", value=self.noise_level)
        for name in ("max_train_rows", "max_val_rows", "max_test_rows"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputError("must be >= 1 or null", field=f"data.{name}", value=v)


def open_split(path, labels, *, split: str):
    """Open a dataset file lazily and check it has every requested label column."""
    from specvit.data.pfsspec import open_dataset

    ds = open_dataset(path)
    missing = [n for n in labels if n not in ds.params.columns]
    if missing:
        ds.close()
        raise InputError(f"{split} dataset has no label column {missing[0]!r} "
                         f"(columns: {', '.join(map(str, ds.params.columns))})", file=ds.path, field=missing[0])
    return ds


def open_splits(d: "DataConfig"):
    """Open the train / val / test datasets of ``d`` (label columns checked) and count their rows.

    Returns ``((train, val, test), (n_train, n_val, n_test))`` with the counts capped by
    ``max_*_rows``; the caller closes the datasets. If one split fails to open, the ones
    already open are closed before the error propagates.
    """
    opened = []
    try:
        for path, split in ((d.train, "train"), (d.val, "val"), (d.test, "test")):
            opened.append(open_split(path, d.labels, split=split))
    except BaseException:
        for ds in opened:
            ds.close()
        raise
    train, val, test = opened
    counts = (n_rows(train, d.max_train_rows), n_rows(val, d.max_val_rows), n_rows(test, d.max_test_rows))
    try:
        check_splits(opened, counts, d.labels)
    except BaseException:
        for ds in opened:
            ds.close()
        raise
    return (train, val, test), counts


def check_splits(opened, counts, labels) -> None:
    """The shared dataset checks (:func:`specvit.data.checks.check_dataset`) of train / val / test, before any
    fitting: val and test on the training grid, finite flux, usable errors, finite labels; every problem at once."""
    from specvit.data.checks import check_dataset, raise_problems

    train = opened[0]
    reports = [check_dataset(ds, role=f"{split} (data.{split})", label_names=labels, n_rows=n,
                             ref_wave=None if split == "train" else train.wave, ref_name="the training set",
                             raise_errors=False)
               for ds, n, split in zip(opened, counts, ("train", "val", "test"))]
    raise_problems(reports)


def checked_labels(ds, names, stop: int) -> np.ndarray:
    """Labels ``names`` of rows ``0:stop`` as float64 (stop, L); a non-finite label is an error naming it."""
    y = ds.labels(names)[:stop]
    bad = ~np.isfinite(y)
    if bad.any():
        r, j = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(f"non-finite label in row {r}", file=_row_file(ds, r), field=names[j], value=float(y[r, j]))
    return y


def n_rows(ds, cap: int | None) -> int:
    return len(ds) if cap is None else min(len(ds), int(cap))


def _row_file(ds, row: int):
    s = int(ds.shard_of([row])[0])
    return ds.paths[s]


def noisy_chunk(ds, start: int, stop: int, *, noise_level: float, seed: int) -> np.ndarray:
    """Noisy float32 flux of rows ``start:stop`` with the fixed draw keyed by (seed, row)."""
    from specvit.observe.noise import fixed_noisy_flux

    flux = np.asarray(ds.flux[start:stop], dtype=np.float32)
    error = np.asarray(ds.error[start:stop], dtype=np.float32)
    from specvit.data.checks import bad_flux_pixels, patch_masked_errors

    bad = bad_flux_pixels(flux)
    if bad.any():
        r = start + int(np.argwhere(bad)[0][0])
        raise InputError(f"non-finite flux in row {r}", file=_row_file(ds, r), field="dataset/arrays/flux/value")
    error, masked = patch_masked_errors(error)  # the masked-pixel policy (docs/data.md)
    empty = masked.all(axis=1)
    if empty.any():
        r = start + int(np.argmax(empty))
        raise InputError(f"no usable error pixel (every pixel NaN, inf, zero or negative) in row {r}",
                         file=_row_file(ds, r), field="dataset/arrays/error/value")
    rows = np.arange(start, stop, dtype=np.int64)
    return fixed_noisy_flux(flux, error, noise_level, rows, seed).astype(np.float32, copy=False)


def iter_noisy_chunks(ds, *, stop: int, noise_level: float, seed: int, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, noisy_flux)`` over rows ``0:stop`` of ``ds``, ``chunk_rows`` at a time."""
    for start in range(0, stop, chunk_rows):
        yield start, noisy_chunk(ds, start, min(stop, start + chunk_rows), noise_level=noise_level, seed=seed)


def iter_training_chunks(ds, cfg: DataConfig, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(noisy_flux, labels)`` chunks over ``n_augment`` fixed noisy copies of rows ``0:stop``."""
    y = checked_labels(ds, cfg.labels, stop)
    for k in range(cfg.n_augment):
        for start, x in iter_noisy_chunks(ds, stop=stop, noise_level=cfg.noise_level, seed=cfg.train_noise_seed + k,
                                          chunk_rows=cfg.chunk_rows):
            yield x, y[start:start + len(x)]


def spectrum_snr(ds, stop: int, chunk_rows: int = 4096) -> np.ndarray:
    """Per-spectrum SNR (median over pixels of flux / error, noiseless, SPEC section 3).

    Uses the stored ``snr`` column when the params table has one.
    """
    if "snr" in ds.params.columns:
        return ds.params["snr"].to_numpy(dtype=np.float64)[:stop]
    out = np.empty(stop)
    for start in range(0, stop, chunk_rows):
        end = min(stop, start + chunk_rows)
        f = np.asarray(ds.flux[start:end], dtype=np.float64)
        e = np.asarray(ds.error[start:end], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):  # masked error pixels do not count
            out[start:start + len(f)] = np.nanmedian(np.where(e > 0, f / e, np.nan), axis=1)
    return out


def prediction_table(ds, stop: int, labels, pred: np.ndarray, sigma: np.ndarray | None = None) -> pd.DataFrame:
    """The shared prediction table: ``id, row, snr, <label>_true, <label>_pred[, <label>_sigma]``."""
    params = ds.params.iloc[:stop]
    df = pd.DataFrame({
        "id": params["id"].to_numpy() if "id" in params.columns else np.arange(stop),
        "row": np.arange(stop),
        "snr": spectrum_snr(ds, stop),
    })
    pred = np.asarray(pred, dtype=np.float64).reshape(stop, len(labels))
    for j, name in enumerate(labels):
        df[f"{name}_true"] = checked_labels(ds, [name], stop)[:, 0]
        df[f"{name}_pred"] = pred[:, j]
        if sigma is not None:
            df[f"{name}_sigma"] = np.asarray(sigma, dtype=np.float64).reshape(stop, len(labels))[:, j]
    return df


def write_csv(path, df: pd.DataFrame) -> Path:
    """Write a table as CSV atomically (full float precision)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.8g")
    return Path(path)


def write_json(path, obj) -> Path:
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n")
    return Path(path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def finish_run(out_dir, cfg, name: str, pred_df: pd.DataFrame, *, eval_seed: int, extra_metrics: dict | None = None,
               provenance_extra: dict | None = None, log=None) -> dict:
    """Write ``predictions.csv``, ``metrics.json`` and ``config.yaml`` (resolved config + provenance).

    With ``log`` (a print-like callable), the test R² of every label is logged as ``<name>: test <label>: R2 = x``.

    Returns the metrics dict (test metrics from :func:`specvit.scores.evaluate_predictions`
    under ``"test"``, plus ``extra_metrics``).
    """
    from specvit.config import write_resolved_config
    from specvit.scores import evaluate_predictions

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "predictions.csv", pred_df)
    metrics = {"model": name, "labels": list(cfg.data.labels),
               "test": evaluate_predictions(pred_df, cfg.data.labels, "snr", eval_seed)}
    metrics.update(extra_metrics or {})
    write_json(out_dir / "metrics.json", metrics)
    write_resolved_config(cfg, out_dir / "config.yaml", extra={
        "model": name, "eval_noise_seed": cfg.data.eval_noise_seed, "train_noise_seed": cfg.data.train_noise_seed,
        "bootstrap_seed": eval_seed, **(provenance_extra or {})})
    if log:
        for label in cfg.data.labels:
            log(f"{name}: test {label}: R2 = {metrics['test']['labels'][label]['overall']['r2']:.4f}")
    return metrics
