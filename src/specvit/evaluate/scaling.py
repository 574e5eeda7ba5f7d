"""Scaling curves: test R² against training-set size for every model (``specvit scaling``).

As in the paper (SPEC section 4), the training sets are PREFIXES of one
training set: size n uses its first n rows. Every model -- neural networks
through the training engine (:class:`specvit.train.Trainer`) and the classical
baselines (LightGBM, Ridge) -- is evaluated on the same test rows with the same
fixed noise (:func:`specvit.baselines.common.noisy_chunk`, seeded per row by
``data.eval_noise_seed``), so the numbers are comparable across models and sizes.

Output folder::

    config.yaml                   resolved config + provenance
    runs/<model>/n<size>/         one folder per run (trainer / baseline outputs, predictions.csv)
    runs/<model>/n<size>/result.json   written last: a run with it is finished and skipped on restart
    scaling.csv                   one row per (model, size, label): R², bootstrap band, MAE, RMSE, bias, seconds
    scaling_<label>.png           the scaling figure
    r2_vs_snr_n<size>_<label>.png R² per SNR bin of every model at the largest size

An interrupted run restarts where it stopped: finished (model, size) runs are
skipped, and a neural run resumes from its last checkpoint.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from specvit.atomic import write_text_atomic
from specvit.config import _deep_merge, load_config, write_resolved_config
from specvit.errors import ConfigError, InputError
from specvit.evaluate.curves import StreamCurves
from specvit.evaluate.runs import baseline_config as _baseline_config
from specvit.evaluate.runs import run_baseline as _run_baseline
from specvit.evaluate.runs import check_train_rows, run_dir
from specvit.evaluate.runs import save_png as _save
from specvit.labels import canonical_label

#: data keys a neural model's options may not set (the scaling config owns them)
_OWNED_DATA_KEYS = ("train", "val", "labels", "noise_level", "max_train_rows", "noise_seed", "val_noise_level")


@dataclass
class ScalingData:
    """The one split every model and size shares (paths: file, list of shards, directory or glob)."""

    train: str  #: training set; size n uses its first n rows
    val: str  #: validation set (early stopping, Ridge alpha)
    test: str  #: test set (the reported numbers)
    labels: list[str] = field(default_factory=lambda: ["log_g"])  #: labels to regress
    noise_level: float = 1.0  #: multiplies the stored 1-sigma error (train, val and test)
    eval_noise_seed: int = 42  #: seed of the fixed validation/test noise (same for every model)
    max_val_rows: int | None = None
    max_test_rows: int | None = None

    def __post_init__(self):
        self.labels = [canonical_label(n) for n in self.labels]
        if not self.labels:
            raise ConfigError("at least one label is needed", field="data.labels")


@dataclass
class ScalingModel:
    """One model of the scaling study.

    ``options`` for ``kind: neural`` are :class:`specvit.train.config.TrainConfig` sections
    (``model``, ``optim``, ``schedule``, ``loss``, ``run``, and data keys other than the split);
    ``data: {source: simulate, simulate: {...}}`` trains it on fresh simulations instead of the
    training-set prefix (validation and test stay the shared files; one size only);
    for ``lightgbm`` / ``ridge`` the fields of :class:`specvit.baselines.gbm.LightGBMConfig` /
    :class:`specvit.baselines.ridge.RidgeConfig` except ``data`` and ``out_dir``.
    """

    name: str  #: display name and folder name (letters, digits, _ - .)
    kind: Literal["neural", "lightgbm", "ridge"] = "neural"
    options: dict[str, Any] = field(default_factory=dict)
    #: stream mode only: this neural model's budget in samples seen (default ``stream.max_samples``)
    max_samples: int | None = None

    def __post_init__(self):
        if self.max_samples is not None and int(self.max_samples) < 1:
            raise ConfigError("must be >= 1, or null", field=f"models[{self.name}].max_samples", value=self.max_samples)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError("model names may use letters, digits, _ - . only", field="models.name", value=self.name)


@dataclass
class ScalingConfig:
    """``specvit scaling --config FILE`` (YAML + ``--set key=value``)."""

    data: ScalingData
    sizes: list[int]  #: training-set sizes (prefixes of data.train), spectra
    models: list[ScalingModel]
    out_dir: str = "runs/scaling"
    seed: int = 42  #: default training seed of every model (run.seed / LightGBM seed) and bootstrap seed
    bootstrap_resamples: int = 200  #: resamples of the R² bands (10-90%)
    #: stream mode (:mod:`specvit.evaluate.curves`): neural models train once on fresh simulations and are
    #: scored at checkpoints of samples seen; ``sizes`` are then the baselines' file sizes only
    stream: StreamCurves | None = None

    def __post_init__(self):
        if not self.sizes or any(s < 1 for s in self.sizes):
            raise ConfigError("sizes must be a non-empty list of positive integers", field="sizes", value=self.sizes)
        self.sizes = sorted(set(int(s) for s in self.sizes))
        if not self.models:
            raise ConfigError("at least one model is needed", field="models")
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError("model names must be unique", field="models.name", value=sorted(dup)[0])
        if self.stream is None and any(m.max_samples is not None for m in self.models):
            raise ConfigError("max_samples needs the stream mode (a stream: section)", field="models.max_samples")
        if self.stream is not None and "bayes" in names:
            raise ConfigError("'bayes' is the name of the reference estimator in stream mode", field="models.name")


def load_scaling_config(path=None, overrides=(), *, data: dict | None = None) -> ScalingConfig:
    return load_config(ScalingConfig, path, overrides, data=data)


# ------------------------------------------------------------------------------------------------
# building each run's config (all validated before anything trains)
# ------------------------------------------------------------------------------------------------
def _neural_config(cfg: ScalingConfig, m: ScalingModel, size: int, out: Path):
    from specvit.train.config import load_train_config

    opts = dict(m.options)
    user_data = dict(opts.pop("data", {}) or {})
    owned = [k for k in user_data if k in _OWNED_DATA_KEYS]
    if owned:
        raise ConfigError("this data key is set by the scaling config", field=f"models[{m.name}].options.data.{owned[0]}")
    d = cfg.data
    split = {"train": [d.train], "max_train_rows": size}
    if user_data.get("source") == "simulate":  # fresh simulations: no training file, no prefix
        split = {}
    base = {
        "data": {**split, "val": [d.val], "labels": list(d.labels), "noise_level": d.noise_level,
                 "noise_seed": d.eval_noise_seed, "max_val_rows": d.max_val_rows, **user_data},
        "run": {"seed": cfg.seed, "progress": False, "tensorboard": False},
    }
    merged = _deep_merge(base, opts)
    merged["run"] = {**merged.get("run", {}), "out_dir": str(out)}
    try:
        return load_train_config(data=merged)
    except ConfigError as e:
        raise ConfigError(f"in models[{m.name}].options: {e}") from None


def is_streamed(m: ScalingModel) -> bool:
    """True if the neural model trains on fresh simulations (``options.data.source: simulate``)."""
    return (m.options.get("data") or {}).get("source") == "simulate"


def plan(cfg: ScalingConfig) -> list[tuple[ScalingModel, int, Any]]:
    """Every (model, size, run config), validated up front (a bad option fails before any training)."""
    check_train_rows(cfg)
    streamed = [m.name for m in cfg.models if m.kind == "neural" and is_streamed(m)]
    if streamed and len(cfg.sizes) > 1:
        raise ConfigError("a model trained on fresh simulations (data.source=simulate) does not use the training "
                          "set, so its runs would be the same at every size; give one size or a separate config",
                          field=f"models[{streamed[0]}].options.data.source", value="simulate")
    out = []
    for size in cfg.sizes:
        for m in cfg.models:
            rd = run_dir(cfg, m, size)
            rc = _neural_config(cfg, m, size, rd) if m.kind == "neural" else _baseline_config(cfg, m, size, rd)
            out.append((m, size, rc))
    return out


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------
def predict_model_dir(model_dir, data_path, *, labels, noise_level: float, noise_seed: int, max_rows=None,
                      batch_size: int = 256, chunk_rows: int = 1024) -> pd.DataFrame:
    """Predictions of a saved neural model on a dataset with the shared fixed noise.

    The noisy flux is :func:`specvit.baselines.common.noisy_chunk` with ``noise_seed`` -- the very
    spectra the baselines are tested on. Returns the shared prediction table
    (``id, row, snr, <label>_true, <label>_pred[, <label>_sigma, <label>_sigma_raw]``): for a Gaussian head
    ``<label>_sigma`` is the calibrated sigma when the model directory has a ``calibration.json``
    (:mod:`specvit.train.calibration`, as ``specvit predict`` does) and ``<label>_sigma_raw`` the network's own.
    """
    from specvit.baselines.common import iter_noisy_chunks, n_rows, open_split, prediction_table
    from specvit.models.io import load_model
    from specvit.train.predict import network_predict

    model, meta = load_model(model_dir)
    missing = [n for n in labels if n not in meta.label_names]
    if missing:
        raise InputError(f"model predicts {meta.label_names}", file=model_dir, field="labels", value=missing[0])
    cols = [meta.label_names.index(n) for n in labels]
    ds = open_split(data_path, labels, split="test")
    try:
        n = n_rows(ds, max_rows)
        means, sigmas = [], []
        for _, x in iter_noisy_chunks(ds, stop=n, noise_level=noise_level, seed=noise_seed, chunk_rows=chunk_rows):
            mean, sigma = network_predict(model, x, label_mean=meta.label_mean, label_std=meta.label_std,
                                          batch_size=batch_size)
            means.append(mean)
            if sigma is not None:
                sigmas.append(sigma)
        pred = np.concatenate(means)[:, cols]
        sig = np.concatenate(sigmas)[:, cols] if sigmas else None
        if sig is None:
            return prediction_table(ds, n, labels, pred, None)
        from specvit.train.calibration import load_model_calibration

        cal = load_model_calibration(model_dir, label_names=meta.label_names)  # checks labels and weights
        cal_sig = sig if cal is None else sig * cal.scales_for(meta.label_names)[cols]
        df = prediction_table(ds, n, labels, pred, cal_sig)
        for j, name in enumerate(labels):
            df[f"{name}_sigma_raw"] = sig[:, j]
        return df
    finally:
        ds.close()


def _run_neural(cfg: ScalingConfig, rc, out: Path, log) -> dict:
    from specvit.baselines.common import write_csv
    from specvit.scores import evaluate_predictions
    from specvit.train.trainer import Trainer

    result = Trainer(rc).fit()
    d = cfg.data
    df = predict_model_dir(out / "model", d.test, labels=d.labels, noise_level=d.noise_level,
                           noise_seed=d.eval_noise_seed, max_rows=d.max_test_rows, chunk_rows=rc.data.chunk_rows)
    write_csv(out / "predictions.csv", df)
    test = evaluate_predictions(df, d.labels, "snr", cfg.seed, n_resamples=cfg.bootstrap_resamples)
    return {"test": test, "train": {k: v for k, v in result.items() if not isinstance(v, (dict, list))}}


def _rows(model: ScalingModel, size: int, test: dict, seconds: float) -> list[dict]:
    rows = []
    for label, entry in test["labels"].items():
        o = entry["overall"]
        rows.append({"model": model.name, "kind": model.kind, "n_train": size, "label": label, "r2": o["r2"],
                     "r2_lo": o.get("r2_lo"), "r2_hi": o.get("r2_hi"), "mae": o["mae"], "rmse": o["rmse"],
                     "bias": o["bias"], "n_test": o["n"], "seconds": seconds})
    return rows


def run_scaling(cfg: ScalingConfig, *, log=print) -> pd.DataFrame:
    """Train and test every model at every size (skipping finished runs); write the table and figures.

    With a ``stream:`` section: the learning curves of :func:`specvit.evaluate.curves.run_stream_scaling`.
    """
    if cfg.stream is not None:
        from specvit.evaluate.curves import run_stream_scaling

        return run_stream_scaling(cfg, log=log)
    out = Path(cfg.out_dir)
    jobs = plan(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(cfg, out / "config.yaml", extra={"seed": cfg.seed, "eval_noise_seed": cfg.data.eval_noise_seed})
    results: dict[tuple[str, int], dict] = {}
    for i, (m, size, rc) in enumerate(jobs, 1):
        rd = run_dir(cfg, m, size)
        done = rd / "result.json"
        tag = f"[{i}/{len(jobs)}] {m.name} n={size}"
        if done.exists():
            results[(m.name, size)] = json.loads(done.read_text())
            log(f"scaling {tag}: finished earlier, skipped")
            continue
        log(f"scaling {tag}: training ({m.kind})")
        t0 = time.perf_counter()
        res = _run_neural(cfg, rc, rd, log) if m.kind == "neural" else _run_baseline(m, rc, log)
        res.update(model=m.name, kind=m.kind, n_train=size, seconds=time.perf_counter() - t0)
        from specvit.evaluate.report import to_jsonable

        write_text_atomic(done, json.dumps(to_jsonable(res), indent=2))
        results[(m.name, size)] = res
        r2 = ", ".join(f"{k} R2={v['overall']['r2']:.4f}" for k, v in res["test"]["labels"].items())
        log(f"scaling {tag}: {r2} ({res['seconds']:.1f} s)")
    table = scaling_table(cfg, results)
    from specvit.baselines.common import write_csv

    write_csv(out / "scaling.csv", table)
    write_figures(cfg, table, results)
    log(f"scaling: wrote {out / 'scaling.csv'} and figures")
    return table


def scaling_table(cfg: ScalingConfig, results: dict) -> pd.DataFrame:
    rows = []
    for m in cfg.models:
        for size in cfg.sizes:
            r = results.get((m.name, size))
            if r is not None:
                rows.extend(_rows(m, size, r["test"], r["seconds"]))
    return pd.DataFrame(rows)


def write_figures(cfg: ScalingConfig, table: pd.DataFrame, results: dict) -> list[Path]:
    """``scaling_<label>.png`` and ``r2_vs_snr_n<largest>_<label>.png`` in ``cfg.out_dir``."""
    from specvit.evaluate.figures import plot_r2_vs_snr, plot_scaling

    out = Path(cfg.out_dir)
    paths = []
    for label in cfg.data.labels:
        t = table[table["label"] == label]
        if t.empty:
            continue
        fig = plot_scaling(t, lo_col="r2_lo", hi_col="r2_hi", label=label)
        p = out / f"scaling_{label}.png"
        _save(fig, p)
        paths.append(p)
        size = max(cfg.sizes)
        per_model = {m.name: results[(m.name, size)]["test"] for m in cfg.models if (m.name, size) in results}
        if per_model:
            edges = next(iter(per_model.values()))["snr_bin_edges"]
            fig = plot_r2_vs_snr(per_model, bin_edges=edges, label=label,
                                 title=f"$R^2$ vs SNR, {size} training spectra")
            p = out / f"r2_vs_snr_n{size}_{label}.png"
            _save(fig, p)
            paths.append(p)
    return paths
