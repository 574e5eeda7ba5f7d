"""``specvit predict`` on reduced PFS spectra (``pfsObject`` / ``pfsSingle`` FITS, one file or a folder).

Each file is read and brought to the model's pixel grid by :mod:`specvit.data.pfsfits` (MR red arm,
nJy -> F_lambda, flux-conserving resampling with error propagation and masks, median-0.5
normalisation), then a trained model directory or the template fit (``--model templatefit``) gives
the labels. A file that cannot be used becomes a flagged row (``flag_input``, reason in ``status``);
the batch always finishes.

Radial velocity: spectra are taken to be in the rest frame unless ``--rv-table`` gives ``v_los``
(km/s) per ``objId`` or ``file``; then the wavelengths are divided by the relativistic Doppler factor
before resampling. specvit does not measure radial velocities.

Catalogue columns: ``file, kind, catId, tract, patch, objId, visit, v_los_applied``, one column per
label (+ ``<label>_err``), ``snr`` (median flux/error over unmasked pixels), ``masked_fraction``,
flags ``flag_input`` (8), ``flag_label_range`` (2), ``flag_snr_range`` (4), ``flag_masked`` (16: more
than ``MAX_MASKED_FRACTION`` of the pixels masked), ``flag_param_edge`` (32: template fit at the
label box edge), ``flags`` (OR) and ``status``.

:func:`write_stellarparam` writes the GA pipeline's ``STELLARPARAM`` table schema (``PfsGAObject`` of
Subaru-PFS/datamodel: method, frame, param, covarId, unit, value, valueErr, flag, status), one row
per (spectrum, label), plus identification columns, and a ``STELLARCOVAR`` image (N, L, L).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from specvit.errors import InputError

FLAG_LABEL_RANGE, FLAG_SNR_RANGE, FLAG_INPUT, FLAG_MASKED, FLAG_PARAM_EDGE = 2, 4, 8, 16, 32
FLAG_NAMES = {FLAG_INPUT: "INPUT", FLAG_LABEL_RANGE: "LABELRANGE", FLAG_SNR_RANGE: "SNRRANGE",
              FLAG_MASKED: "MASKED", FLAG_PARAM_EDGE: "PARAMEDGE"}
#: physical unit of each label in the STELLARPARAM table
LABEL_UNITS = {"T_eff": "K", "log_g": "dex", "M_H": "dex", "a_M": "dex", "C_M": "dex"}
#: GA datamodel version of the STELLARPARAM schema written (StellarParams.damdVer)
GA_DAMD_VER = 2
#: files read and prepared at a time (at least ``batch_size``)
FILES_PER_BLOCK = 1024
STELLARPARAM_COLUMNS = ("method", "frame", "param", "covarId", "unit", "value", "valueErr", "flag", "status")


def _snr(flux, error, masked):
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(~masked & (error > 0), flux / error, np.nan)
    out = np.full(len(flux), np.nan)
    ok = np.isfinite(r).any(axis=1)
    out[ok] = np.nanmedian(r[ok], axis=1)
    return out


def predict_pfs(model, input_path, *, batch_size: int = 256, device: str = "cpu", rv_table=None,
                templatefit_config=None, forward=None, calibrate: bool = True) -> tuple[pd.DataFrame, dict]:
    """Predict labels for every pfsObject / pfsSingle FITS file of ``input_path``.

    ``model`` is a trained model directory, or ``"templatefit"`` (``templatefit_config``: a
    :class:`TemplateFitConfig` or YAML path; ``forward`` overrides its spectral model). Returns the
    catalogue and ``{"method", "labels", "wave_A"}`` (+ ``sigma``: which sigmas ``<label>_err`` holds).
    A network with a Gaussian head and ``calibration.json`` gets calibrated sigmas unless ``calibrate``
    is False (:mod:`specvit.train.calibration`, as :func:`specvit.train.predict.predict_dataset`).
    """
    from specvit.data.pfsfits import MAX_MASKED_FRACTION, list_pfs_files, load_pfs_batch, read_rv_table

    files = list_pfs_files(input_path)
    rv = read_rv_table(rv_table) if rv_table else None
    if str(model) == "templatefit":
        wave, names, run = _templatefit_runner(templatefit_config, forward)
        method = "specvit-templatefit"
    else:
        wave, names, run, method, ranges, sigma_kind = _network_runner(model, device, batch_size, calibrate)
    n = len(files)
    ok = np.zeros(n, dtype=bool)
    mean = np.full((n, len(names)), np.nan)
    err = np.full((n, len(names)), np.nan)
    edge = np.zeros(n, dtype=bool)
    snr = np.full(n, np.nan)
    info = []
    step = max(int(batch_size), FILES_PER_BLOCK)
    for a in range(0, n, step):  # a block of files at a time: memory does not grow with the folder
        batch = load_pfs_batch(files[a:a + step], wave, rv_table=rv)
        good = ~batch.failed
        sl = slice(a, a + len(batch.files))
        ok[sl] = good
        if good.any():
            m, e, b = run(batch.flux[good], batch.error[good], batch.masked[good])
            idx = a + np.flatnonzero(good)
            mean[idx], err[idx], edge[idx] = m, e, b
        snr[sl] = _snr(batch.flux, batch.error, batch.masked)
        info.extend(batch.info)
    cat = pd.DataFrame(info)
    status = cat.pop("status")
    for j, name in enumerate(names):
        cat[name] = mean[:, j]
        cat[f"{name}_err"] = err[:, j]
    cat["snr"] = snr
    mf = cat.pop("masked_fraction")
    cat["masked_fraction"] = mf
    if str(model) != "templatefit":
        lo = np.asarray(ranges.get("label_min", [-np.inf] * len(names)), dtype=float)
        hi = np.asarray(ranges.get("label_max", [np.inf] * len(names)), dtype=float)
        snr_lo = ranges.get("snr_min") if ranges.get("snr_min") is not None else -np.inf
        snr_hi = ranges.get("snr_max") if ranges.get("snr_max") is not None else np.inf
        label_out = ((mean < lo) | (mean > hi)).any(axis=1) & ok
        snr_out = ((cat["snr"] < snr_lo) | (cat["snr"] > snr_hi)).to_numpy() & ok
    else:
        label_out = np.zeros(n, dtype=bool)
        snr_out = np.zeros(n, dtype=bool)
    masked_flag = (mf.to_numpy(dtype=float) > MAX_MASKED_FRACTION) & ok
    cat["flag_input"] = ~ok
    cat["flag_label_range"] = label_out
    cat["flag_snr_range"] = snr_out
    cat["flag_masked"] = masked_flag
    cat["flag_param_edge"] = edge & ok
    cat["flags"] = (FLAG_INPUT * ~ok + FLAG_LABEL_RANGE * label_out + FLAG_SNR_RANGE * snr_out
                    + FLAG_MASKED * masked_flag + FLAG_PARAM_EDGE * (edge & ok)).astype(np.int64)
    cat["status"] = status.to_numpy()
    info = {"method": method, "labels": list(names), "wave_A": [float(wave[0]), float(wave[-1])],
            "n_pixels": int(len(wave))}
    if str(model) != "templatefit" and sigma_kind is not None:
        info["sigma"] = sigma_kind
    return cat, info


def _network_runner(model_dir, device, batch_size, calibrate: bool = True):
    from specvit.models.io import load_model
    from specvit.observe.pfs import pfs_mr_wave
    from specvit.train.predict import network_predict

    model, meta = load_model(model_dir, map_location=device)
    if meta.label_mean is None or not meta.label_names:
        raise InputError("model directory has no label names / scaler", file=str(model_dir), field="label_scaler")
    wave = np.asarray(meta.wave_A, dtype=np.float64) if meta.wave_A is not None else pfs_mr_wave()
    n_model = getattr(model.config, "n_pixels", None)
    if n_model is not None and n_model != len(wave):
        raise InputError(f"the model takes {n_model} pixels but its wavelength grid has {len(wave)}",
                         file=str(model_dir), field="wave_A", value=len(wave))
    names = list(meta.label_names)
    std = np.asarray(meta.label_std, dtype=float)
    scale, sigma_kind = np.ones(len(names)), None
    if getattr(model.config, "gaussian", False):
        from specvit.train.calibration import load_model_calibration

        cal = load_model_calibration(model_dir, label_names=names) if calibrate else None
        if cal is not None:
            scale = cal.scales_for(names)
        sigma_kind = ("calibrated" if cal is not None else
                      "raw (calibration disabled)" if not calibrate else "raw (no calibration.json)")

    def run(flux, error, masked):
        mean, sigma = network_predict(model, flux, label_mean=meta.label_mean, label_std=std,
                                      batch_size=batch_size, device=device)
        err = np.full(mean.shape, np.nan) if sigma is None else sigma * scale
        return mean, err, np.zeros(len(flux), dtype=bool)

    name = meta.model_name or meta.model_class
    return wave, names, run, f"specvit-{name}", meta.extras.get("training_ranges", {}), sigma_kind


def _templatefit_runner(config, forward):
    from specvit.baselines.templatefit import (TemplateFitConfig, forward_wave, fit_grid, fit_lm,
                                               templatefit_forward)
    from specvit.config import load_config

    if config is None:
        cfg = TemplateFitConfig()
    elif isinstance(config, TemplateFitConfig):
        cfg = config
    else:
        cfg = load_config(TemplateFitConfig, config, [])
    forward = forward if forward is not None else templatefit_forward(cfg)
    wave = forward_wave(forward)
    if wave is None:
        raise InputError("the template fit's spectral model has no wavelength grid", field="model", value=cfg.model)
    free = list(cfg.free_labels)
    all_names = list(forward.label_names)
    rng = np.random.default_rng(cfg.seed)

    def run(flux, error, masked):
        y = np.asarray(flux, dtype=np.float64)
        e = np.where(masked, np.nan, np.asarray(error, dtype=np.float64))  # masked pixels: weight 0
        n = len(y)
        mean = np.full((n, len(free)), np.nan)
        err = np.full((n, len(free)), np.nan)
        edge = np.zeros(n, dtype=bool)
        for a in range(0, n, cfg.batch_size):
            sl = slice(a, a + cfg.batch_size)
            if cfg.mode == "lm":
                res = fit_lm(forward, y[sl], e[sl], free=free, fixed_values=cfg.fixed_values, noise_level=1.0,
                             degree=cfg.flux_correction_degree, n_starts=cfg.n_starts, max_iter=cfg.max_iter,
                             rng=rng, grid_start=cfg.grid_start, method=cfg.lm_method, polish_steps=cfg.polish_steps)
            else:
                res = fit_grid(forward, y[sl], e[sl], free=free, fixed_values=cfg.fixed_values, noise_level=1.0,
                               degree=cfg.flux_correction_degree, steps=cfg.grid_steps, refine=cfg.parabolic_refine)
            idx = [all_names.index(f) for f in free]
            mean[sl] = res.labels[:, idx]
            err[sl] = res.sigma[:, idx]
            edge[sl] = res.at_bound
        return mean, err, edge

    return wave, free, run


def write_stellarparam(cat: pd.DataFrame, labels, method: str, out) -> Path:
    """Write the ``STELLARPARAM`` table (GA datamodel schema) of a catalogue, plus ``STELLARCOVAR``, atomically."""
    from astropy.io import fits

    from specvit.atomic import atomic_path

    rows = []
    for _, r in cat.iterrows():
        for j, name in enumerate(labels):
            bits = int(r["flags"])
            status = " ".join(v for k, v in FLAG_NAMES.items() if bits & k)
            if bits & FLAG_INPUT and r.get("status"):
                status += f": {r['status']}"
            rows.append({"method": method, "frame": "", "param": name, "covarId": j,
                         "unit": LABEL_UNITS.get(name, ""), "value": r[name], "valueErr": r[f"{name}_err"],
                         "flag": bool(bits) or not np.isfinite(r[name]), "status": status,
                         "catId": r["catId"], "objId": r["objId"], "visit": r["visit"], "file": r["file"]})
    df = pd.DataFrame(rows, columns=list(STELLARPARAM_COLUMNS) + ["catId", "objId", "visit", "file"])

    def text(name):
        vals = [str(v) for v in df[name]]
        return fits.Column(name=name, format=f"{max([1] + [len(v) for v in vals])}A", array=vals)

    def ints(name, fmt, fill):
        return fits.Column(name=name, format=fmt, array=pd.to_numeric(df[name], errors="coerce").fillna(fill)
                           .to_numpy().astype(np.int64))

    cols = [text("method"), text("frame"), text("param"),
            fits.Column(name="covarId", format="B", array=df["covarId"].to_numpy(dtype=np.uint8)),
            text("unit"),
            fits.Column(name="value", format="E", array=df["value"].to_numpy(dtype=np.float32)),
            fits.Column(name="valueErr", format="E", array=df["valueErr"].to_numpy(dtype=np.float32)),
            fits.Column(name="flag", format="L", array=df["flag"].to_numpy(dtype=bool)),
            text("status"), ints("catId", "J", -1), ints("objId", "K", -1), ints("visit", "J", -1), text("file")]
    docs = ["Measurement method", "Reference frame of velocity (empty for stellar parameters)", "Stellar parameter",
            "Param position within covariance matrix", "Physical unit of parameter", "Stellar parameter value",
            "Stellar parameter error", "Measurement flag (true means bad)", "Measurement flags",
            "PFS catalog identifier", "Object identifier", "Visit (pfsSingle) or number of visits (pfsObject)",
            "Input file"]
    header = fits.Header()
    header["DAMD_VER"] = (GA_DAMD_VER, "StellarParams datamodel version")
    header["INHERIT"] = True
    for i, d in enumerate(docs):
        header[f"TDOC{i + 1}"] = d
    table = fits.BinTableHDU.from_columns(cols, name="STELLARPARAM", header=header)
    n, L = len(cat), len(labels)
    cov = np.zeros((n, L, L), dtype=np.float32)
    e = cat[[f"{x}_err" for x in labels]].to_numpy(dtype=np.float64) if L else np.zeros((n, 0))
    for j in range(L):
        cov[:, j, j] = e[:, j] ** 2
    covar = fits.ImageHDU(cov, name="STELLARCOVAR")
    covar.header["COMMENT"] = "diagonal: valueErr**2 per spectrum (axis 0 = catalogue row); no correlations"
    primary = fits.PrimaryHDU()
    primary.header["METHOD"] = method
    out = Path(out)
    with atomic_path(out) as tmp:
        fits.HDUList([primary, table, covar]).writeto(tmp, overwrite=True)
    return out
