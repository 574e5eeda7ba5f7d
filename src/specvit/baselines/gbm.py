"""LightGBM gradient-boosted trees on the raw noisy flux (the paper's strongest classical baseline).

Paper settings (SPEC section 6): learning rate 0.05, 63 leaves, early stopping on a
validation split, all cores, trained on raw noisy flux; test R²(log g) = 0.614 with 1M
spectra. One booster per requested label (Ke et al. 2017, NeurIPS, "LightGBM").

Training data are the fixed noisy realisations of :mod:`specvit.baselines.common`
(``n_augment`` copies per row). Two ways to build LightGBM's training set:

* ``stream: false`` (default): noisy flux is read in chunks into a list of float32
  blocks handed to LightGBM without concatenation (memory ≈ 4 bytes × rows × pixels
  for the raw blocks, freed once LightGBM has binned them);
* ``stream: true``: a :class:`lightgbm.Sequence` over the HDF5 file adds the fixed
  noise on the fly, so only LightGBM's own binned copy (~1 byte × rows × pixels) is
  held. Bin boundaries come from a row sample (``bin_construct_sample_cnt``), read
  row by row, so this mode is slower to start.

For data beyond one machine, LightGBM's Dask interface (``lightgbm.DaskLGBMRegressor``
with the same parameters and a ``dask.distributed`` cluster) trains on partitions held by
many workers; it is not wired here.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specvit.baselines.common import (
    DataConfig,
    checked_labels,
    finish_run,
    iter_noisy_chunks,
    iter_training_chunks,
    noisy_chunk,
    open_splits,
    prediction_table,
)
from specvit.errors import InputError


@dataclass
class LightGBMConfig:
    """``specvit baseline lightgbm`` config (YAML + ``--set key=value``). Defaults = paper settings."""

    data: DataConfig
    out_dir: str = "runs/lightgbm"  #: output folder
    learning_rate: float = 0.05
    num_leaves: int = 63
    n_estimators: int = 5000  #: maximum boosting rounds (early stopping usually ends sooner)
    early_stopping_rounds: int = 50  #: stop when validation L2 has not improved for this many rounds
    min_data_in_leaf: int = 20
    feature_fraction: float = 1.0
    bagging_fraction: float = 1.0
    bagging_freq: int = 0
    lambda_l2: float = 0.0
    max_bin: int = 255
    bin_construct_sample_cnt: int = 200000
    n_jobs: int = 0  #: threads; 0 = all cores of this machine
    seed: int = 42  #: LightGBM's seed (bagging, feature sampling)
    deterministic: bool = True  #: LightGBM's deterministic mode (same result for the same data and threads)
    stream: bool = False  #: build the training set through lightgbm.Sequence (lower memory)
    log_every: int = 100  #: print validation L2 every this many rounds (0 = quiet)
    eval_seed: int = 0  #: bootstrap seed of the evaluation

    def __post_init__(self):
        for name in ("num_leaves", "n_estimators", "early_stopping_rounds", "min_data_in_leaf", "max_bin"):
            if getattr(self, name) < 1:
                raise InputError("must be >= 1", field=name, value=getattr(self, name))
        if not (0 < self.learning_rate <= 1):
            raise InputError("must be in (0, 1]", field="learning_rate", value=self.learning_rate)

    def lgb_params(self) -> dict:
        return {
            "objective": "regression",
            "metric": "l2",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "max_bin": self.max_bin,
            "bin_construct_sample_cnt": self.bin_construct_sample_cnt,
            "num_threads": self.n_jobs if self.n_jobs > 0 else (os.cpu_count() or 1),
            "seed": self.seed,
            "deterministic": self.deterministic,
            "force_row_wise": True,
            "verbosity": -1,
        }


def _sequence_class():
    import lightgbm as lgb

    class NoisyFluxSequence(lgb.Sequence):
        """Rows ``k * n + r`` = copy k of training row r with the fixed noise (seed + k, r)."""

        def __init__(self, ds, n: int, n_copies: int, noise_level: float, seed: int, batch_size: int):
            self.ds, self.n, self.n_copies = ds, n, n_copies
            self.noise_level, self.seed, self.batch_size = noise_level, seed, batch_size

        def __len__(self):
            return self.n * self.n_copies

        def _block(self, k: int, a: int, b: int) -> np.ndarray:
            return noisy_chunk(self.ds, a, b, noise_level=self.noise_level, seed=self.seed + k)

        def __getitem__(self, idx):
            if isinstance(idx, (int, np.integer)):
                # LightGBM samples single rows in increasing order: read a block ahead and serve from it
                k, r = divmod(int(idx), self.n)
                c = getattr(self, "_cache", None)
                if c is None or c[0] != k or not (c[1] <= r < c[1] + len(c[2])):
                    c = self._cache = (k, r, self._block(k, r, min(self.n, r + self.batch_size)))
                return c[2][r - c[1]].astype(np.float64)  # LightGBM wants sampled rows as float64
            start, stop, step = idx.indices(len(self))
            if step != 1:
                raise IndexError("only contiguous slices are supported")
            parts, i = [], start
            while i < stop:  # split at copy boundaries
                k, r = divmod(i, self.n)
                j = min(stop, (k + 1) * self.n)
                parts.append(self._block(k, r, r + (j - i)))
                i = j
            return np.concatenate(parts) if len(parts) > 1 else parts[0]

    return NoisyFluxSequence


def _training_set(train, cfg: LightGBMConfig, n_train: int):
    """(list of float32 blocks or [Sequence], labels (n_train * n_augment, L))."""
    d = cfg.data
    y = np.tile(checked_labels(train, d.labels, n_train), (d.n_augment, 1))
    if cfg.stream:
        seq = _sequence_class()(train, n_train, d.n_augment, d.noise_level, d.train_noise_seed, d.chunk_rows)
        return [seq], y
    return [x for x, _ in iter_training_chunks(train, d, n_train)], y


def run_lightgbm(cfg: LightGBMConfig, *, log=print) -> dict:
    """Train one booster per label with early stopping on validation; predict the test split.

    Writes ``lightgbm_<label>.txt`` (LightGBM text model), ``predictions.csv``,
    ``metrics.json`` and ``config.yaml`` to ``cfg.out_dir``; returns the metrics dict.
    """
    import lightgbm as lgb

    d = cfg.data
    t0 = time.perf_counter()
    (train, val, test), (n_train, n_val, n_test) = open_splits(d)
    try:
        params = cfg.lgb_params()
        blocks, y = _training_set(train, cfg, n_train)
        xv = np.concatenate([x for _, x in iter_noisy_chunks(val, stop=n_val, noise_level=d.noise_level,
                                                             seed=d.eval_noise_seed, chunk_rows=d.chunk_rows)])
        yv = checked_labels(val, d.labels, n_val)
        # one binned Dataset shared by all labels (labels swapped per booster)
        dtrain = lgb.Dataset(blocks if len(blocks) > 1 or cfg.stream else blocks[0], label=y[:, 0], params=params,
                             free_raw_data=True)
        dtrain.construct()
        del blocks
        t_data = time.perf_counter() - t0
        log(f"lightgbm: training set {len(y)} rows x {train.n_wave} px built in {t_data:.1f} s "
            f"({params['num_threads']} threads)")
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        boosters, info = [], {}
        for j, name in enumerate(d.labels):
            dtrain.set_label(y[:, j])
            dval = lgb.Dataset(xv, label=yv[:, j], reference=dtrain, params=params)
            callbacks = [lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)]
            if cfg.log_every > 0:
                callbacks.append(lgb.log_evaluation(cfg.log_every))
            t1 = time.perf_counter()
            booster = lgb.train(params, dtrain, num_boost_round=cfg.n_estimators, valid_sets=[dval],
                                valid_names=["val"], callbacks=callbacks)
            booster.save_model(str(out / f".lightgbm_{name}.txt.partial"), num_iteration=booster.best_iteration)
            os.replace(out / f".lightgbm_{name}.txt.partial", out / f"lightgbm_{name}.txt")
            info[name] = {"best_iteration": int(booster.best_iteration),
                          "val_l2": float(booster.best_score["val"]["l2"]),
                          "train_seconds": time.perf_counter() - t1}
            log(f"lightgbm: {name}: best iteration {booster.best_iteration}, val L2 {info[name]['val_l2']:.4g} "
                f"({info[name]['train_seconds']:.1f} s)")
            boosters.append(booster)
        pt = np.concatenate([
            np.stack([b.predict(x, num_iteration=b.best_iteration, num_threads=params["num_threads"])
                      for b in boosters], axis=1)
            for _, x in iter_noisy_chunks(test, stop=n_test, noise_level=d.noise_level, seed=d.eval_noise_seed,
                                          chunk_rows=d.chunk_rows)])
        df = prediction_table(test, n_test, d.labels, pt)
        extra = {"n_train_rows": int(n_train), "n_train_samples": int(len(y)), "n_val": int(n_val),
                 "n_test": int(n_test), "boosters": info, "lightgbm_params": params,
                 "timings_s": {"dataset": t_data, "total": time.perf_counter() - t0}}
        metrics = finish_run(out, cfg, "lightgbm", df, eval_seed=cfg.eval_seed, extra_metrics=extra,
                             provenance_extra={"lightgbm_seed": cfg.seed}, log=log)
        return metrics
    finally:
        for ds in (train, val, test):
            ds.close()


def load_boosters(out_dir, label_names) -> dict:
    """Load the saved boosters of a run: ``{label: lightgbm.Booster}``."""
    import lightgbm as lgb

    out = {}
    for n in label_names:
        p = Path(out_dir) / f"lightgbm_{n}.txt"
        if not p.exists():
            raise InputError("no saved LightGBM model for this label", file=p, field=n)
        out[n] = lgb.Booster(model_file=str(p))
    return out
