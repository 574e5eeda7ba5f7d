"""Batch inference: a trained model directory + a dataset file -> a catalogue CSV.

Columns: ``id`` (the params ``id`` column, else the row index), ``row``, one
column per label (label units), ``<label>_err`` (1-sigma, label units; only for
models with a Gaussian head: the CALIBRATED sigma when the model directory has a ``calibration.json``
(:mod:`specvit.train.calibration`, fitted on the validation split) and ``calibrate`` is True, which is
the default; then ``<label>_err_raw`` holds the network's own sigma; without a calibration, or with
``calibrate=False`` (``specvit predict --raw-sigma``), ``<label>_err`` is the raw sigma), ``snr`` (median over pixels of flux / (s * error) of the
stored arrays, s = the noise level added, else 1: the same definition as the training SNR range, which is
the ``snr`` column / training noise level), and flags:

* ``flag_nan_input``  (bit 1): flux has NaN/inf, or no error pixel is usable; the predictions are NaN
  (masked error pixels, NaN/inf/zero/negative, are patched by the masked-pixel policy of
  :mod:`specvit.data.checks` and counted in the log, not flagged);
* ``flag_label_range`` (bit 2): a predicted label lies outside the training label range;
* ``flag_snr_range``  (bit 4): the SNR lies outside the training SNR range;
* ``flags``: the bitwise OR.

Noise: by default the stored flux is used as it is (observed spectra, or a
noiseless test of a simulated set); ``noise_level=X`` adds fixed noise per row
(:func:`specvit.observe.noise.fixed_normal` with ``seed``) exactly as validation
does. The CSV is written atomically, with a ``.json`` sidecar recording the
model, input, noise level, seed and command.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from specvit.atomic import atomic_path, write_text_atomic
from specvit.config import provenance
from specvit.observe.noise import fixed_normal
from specvit.errors import InputError
from specvit.train.losses import split_output

if TYPE_CHECKING:  # the return type of calibrate_model_dir, imported there at run time
    from specvit.train.calibration import SigmaCalibration

FLAG_NAN_INPUT, FLAG_LABEL_RANGE, FLAG_SNR_RANGE = 1, 2, 4


def spectrum_snr(flux: np.ndarray, error: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Median over pixels of flux / (scale * error) (pixels with error <= 0 ignored)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(error > 0, flux / (scale * error), np.nan)
    if not ratio.size:
        return np.zeros(len(flux))
    with warnings.catch_warnings():  # a row without a usable pixel: NaN (it is flagged)
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(ratio, axis=1)


@torch.no_grad()
def network_predict(model, flux, *, label_mean, label_std, batch_size: int = 256,
                    device: str = "cpu") -> tuple[np.ndarray, np.ndarray | None]:
    """Label-unit means (N, n_labels) and raw 1-sigma (or None without a Gaussian head) of flux rows.

    The one batched inference loop of every caller (``specvit predict``, the PFS route, the scaling and
    learning-curve scores): ``flux`` (N, n_pix) in batches of ``batch_size`` through ``model`` in eval
    mode (its mode is restored afterwards), outputs unscaled with the training label mean/std. The
    sigmas are the network's own, before any calibration (:mod:`specvit.train.calibration`).
    """
    if int(batch_size) < 1:
        raise InputError("must be >= 1", field="batch_size", value=batch_size)
    if label_mean is None or label_std is None:
        raise InputError("the model has no label scaler (label_mean/label_std)", field="label_scaler", value=None)
    mean_, std_ = np.asarray(label_mean, dtype=float), np.asarray(label_std, dtype=float)
    was = model.training
    model.eval()
    means, sigmas = [], []
    try:
        for a in range(0, len(flux), int(batch_size)):
            x = torch.from_numpy(np.ascontiguousarray(flux[a:a + int(batch_size)], dtype=np.float32)).to(device)
            mean, log_var = split_output(model(x))
            means.append(mean.double().cpu().numpy() * std_ + mean_)
            if log_var is not None:
                sigmas.append(np.exp(0.5 * log_var.double().cpu().numpy()) * std_)
    finally:
        model.train(was)
    n_out = len(mean_)
    mean_out = np.concatenate(means) if means else np.empty((0, n_out))
    return mean_out, (np.concatenate(sigmas) if sigmas else None)


@torch.no_grad()
def predict_dataset(model_dir, input_path, *, noise_level: float = 0.0, seed: int = 0, batch_size: int = 256,
                    device: str = "cpu", max_rows: int | None = None, calibrate: bool = True) -> pd.DataFrame:
    """Predict every row of ``input_path`` (streamed in batches); returns the catalogue DataFrame.

    ``calibrate``: apply the model directory's sigma calibration (if it has one; a calibration for
    another label set or other weights is an :class:`InputError`). ``cat.attrs["sigma"]`` says which
    sigmas ``<label>_err`` holds ("calibrated", "raw (no calibration.json)", "raw (calibration disabled)").
    """
    from specvit.data import open_dataset
    from specvit.data.checks import check_dataset, patch_masked_errors
    from specvit.models.io import load_model

    if not (math.isfinite(noise_level) and noise_level >= 0):
        raise InputError("noise level must be finite and >= 0", field="--noise-level", value=noise_level)
    if int(batch_size) < 1:
        raise InputError("must be >= 1", field="--batch-size", value=batch_size)
    if max_rows is not None and int(max_rows) < 1:
        raise InputError("must be >= 1", field="max_rows", value=max_rows)
    model, meta = load_model(model_dir, map_location=device)
    if meta.label_mean is None or not meta.label_names:
        raise InputError("model directory has no label names / scaler", file=str(model_dir), field="label_scaler")
    n_model = getattr(model.config, "n_pixels", None)
    names = list(meta.label_names)
    ranges = meta.extras.get("training_ranges", {})
    lo = np.asarray(ranges.get("label_min", [-np.inf] * len(names)), dtype=float)
    hi = np.asarray(ranges.get("label_max", [np.inf] * len(names)), dtype=float)
    snr_lo = ranges.get("snr_min") if ranges.get("snr_min") is not None else -np.inf
    snr_hi = ranges.get("snr_max") if ranges.get("snr_max") is not None else np.inf
    std = np.asarray(meta.label_std, dtype=float)
    with open_dataset(input_path) as ds:
        n_pix = ds.n_wave
        if n_model is not None and n_pix != n_model:
            raise InputError(f"spectra have {n_pix} pixels but the model takes {n_model}", file=str(input_path),
                             field="spectrumdataset/wave", value=n_pix)
        n = len(ds) if max_rows is None else min(len(ds), int(max_rows))
        # the shared dataset checks, before any prediction: grid vs the model's; rows with NaN/inf flux or
        # without any usable error pixel are flagged (flag_nan_input), as documented above
        report = check_dataset(ds, role="predict input (--input)", n_rows=n, ref_wave=meta.wave_A,
                               ref_name="the model's training set", nonfinite="flag")
        ids = ds.params["id"].to_numpy()[:n] if "id" in ds.params.columns else np.arange(n)
        mean_out = np.full((n, len(names)), np.nan)
        err_out = np.full((n, len(names)), np.nan)
        snr = np.full(n, np.nan)
        nan_in = np.zeros(n, dtype=bool)
        gaussian = False
        for a in range(0, n, batch_size):
            b = min(a + batch_size, n)
            flux = np.asarray(ds.flux[a:b], dtype=np.float32)
            error, _ = patch_masked_errors(np.asarray(ds.error[a:b], dtype=np.float32))  # masked-pixel policy
            bad = report.flagged[a:b]  # the check's policy: NaN/inf flux, or no unmasked error pixel
            nan_in[a:b] = bad
            # SNR of what the model sees: the stored flux at noise level X (the noiseless flux when we add noise)
            snr[a:b] = spectrum_snr(flux, error, noise_level if noise_level > 0 else 1.0)
            if noise_level > 0:
                flux = flux + np.float32(noise_level) * error * fixed_normal(np.arange(a, b), n_pix, seed)
            mean, sigma = network_predict(model, np.where(bad[:, None], 0.0, flux), label_mean=meta.label_mean,
                                          label_std=std, batch_size=b - a, device=device)
            mean_out[a:b] = mean
            if sigma is not None:
                gaussian = True
                err_out[a:b] = sigma
    mean_out[nan_in] = np.nan
    err_out[nan_in] = np.nan
    snr[nan_in] = np.nan
    cat = pd.DataFrame({"id": ids, "row": np.arange(n)})
    cal = None
    if gaussian and calibrate:
        from specvit.train.calibration import CALIBRATION_FILE, load_model_calibration

        cal = load_model_calibration(model_dir, label_names=names)
        cal_err = cal.apply(err_out, names, file=str(Path(model_dir) / CALIBRATION_FILE)) if cal is not None else None
    for j, name in enumerate(names):
        cat[name] = mean_out[:, j]
        if gaussian:
            cat[f"{name}_err"] = err_out[:, j] if cal is None else cal_err[:, j]
            if cal is not None:
                cat[f"{name}_err_raw"] = err_out[:, j]
    cat["snr"] = snr
    label_out = ((mean_out < lo) | (mean_out > hi)).any(axis=1)
    snr_out = (snr < snr_lo) | (snr > snr_hi)
    cat["flag_nan_input"] = nan_in
    cat["flag_label_range"] = label_out & ~nan_in
    cat["flag_snr_range"] = snr_out & ~nan_in
    cat["flags"] = (FLAG_NAN_INPUT * nan_in + FLAG_LABEL_RANGE * cat["flag_label_range"].to_numpy()
                    + FLAG_SNR_RANGE * cat["flag_snr_range"].to_numpy()).astype(np.int64)
    if gaussian:
        cat.attrs["sigma"] = ("calibrated" if cal is not None else
                              "raw (calibration disabled)" if not calibrate else "raw (no calibration.json)")
        if cal is not None:
            cat.attrs["sigma_scale"] = dict(zip(cal.labels, cal.scale))
            cat.attrs["sigma_calibration_method"] = cal.method
    return cat


def write_catalog(cat: pd.DataFrame, out, *, info: dict) -> Path:
    """Write the catalogue CSV atomically plus ``<out>.json`` (provenance: model, input, noise, seed, command)."""
    out = Path(out)
    with atomic_path(out) as tmp:
        cat.to_csv(tmp, index=False)
    extra = {k: cat.attrs[k] for k in ("sigma", "sigma_scale", "sigma_calibration_method") if k in cat.attrs}
    write_text_atomic(out.with_name(out.name + ".json"),
                      json.dumps(provenance({**info, **extra, "n_rows": len(cat), "columns": list(cat.columns)}),
                                 indent=2))
    return out


def calibrate_model_dir(model_dir, val_path, *, noise_level: float, noise_seed: int, method: str = "coverage68",
                        max_rows: int | None = None, batch_size: int = 256, write: bool = True) -> SigmaCalibration:
    """Fit (and by default write) ``model_dir/calibration.json`` from a validation dataset.

    The same noisy validation spectra the trainer uses (fixed per-row noise ``noise_level``, ``noise_seed``,
    :func:`specvit.observe.noise.fixed_normal`); rows the predictor flags as bad input are an error.
    ``specvit calibrate`` runs this (e.g. for a model trained before calibration existed)."""
    from specvit.data import open_dataset
    from specvit.train.calibration import CALIBRATION_FILE, SigmaCalibration, weights_digest

    cat = predict_dataset(model_dir, val_path, noise_level=noise_level, seed=noise_seed, batch_size=batch_size,
                          max_rows=max_rows, calibrate=False)
    if "sigma" not in cat.attrs:
        raise InputError("the model has no Gaussian head: nothing to calibrate", file=str(model_dir),
                         field="model_config/gaussian", value=False)
    names = [c[: -len("_err")] for c in cat.columns if c.endswith("_err")]
    with open_dataset(val_path) as ds:
        missing = [n for n in names if n not in ds.params.columns]
        if missing:
            raise InputError("validation set has no true values for this label", file=str(val_path),
                             field=f"params/{missing[0]}", value=missing[0])
        truth = ds.labels(names)[: len(cat)]
    cal = SigmaCalibration.fit(truth, cat[names].to_numpy(float), cat[[f"{n}_err" for n in names]].to_numpy(float),
                               label_names=names, method=method,
                               source={"val": str(val_path), "noise_level": noise_level, "noise_seed": noise_seed,
                                       "max_val_rows": max_rows, "fitted_by": "specvit calibrate"})
    cal.weights_sha256 = weights_digest(model_dir)
    if write:
        cal.save(Path(model_dir) / CALIBRATION_FILE)
    return cal
