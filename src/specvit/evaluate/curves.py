"""Learning curves on the simulated stream: test R² against SAMPLES SEEN and against time.

The stream mode of ``specvit scaling`` (a ``stream:`` section in the scaling config). Every
neural model trains ONCE on fresh simulations (``data.source: simulate``,
:mod:`specvit.data.stream`; the prior ``stream.simulate`` is shared by all models) and is
scored on the fixed test file at checkpoints of samples seen on a doubling grid
(``stream.first_samples`` · 2^k up to the model's ``max_samples``); the classical baselines
(LightGBM, Ridge) run on prefixes of ``data.train`` of ``sizes`` rows, as in the file mode.
Every model sees the same test rows with the same fixed noise (``data.eval_noise_seed``).

Why one run with a constant learning rate: a point of the curve must not depend on how far
the run will go, so the run can be extended later (raise ``max_samples`` and re-run) and an
interrupted run resumes onto the same curve. ``schedule.kind`` must therefore be ``constant``
with a warm-up in steps (``schedule.warmup_steps``; ``warmup_frac`` would scale with the budget).

The neural runs advance in ROUNDS: every model is brought to the first grid point, then every
model to the second, ...: whenever the job stops, every model has a curve up to about the same
budget. A grid point is recorded once (``points/s<samples>.json``, written last), and the
trainer is checkpointed right after it, so a run killed at any moment resumes from its last
checkpoint and replays exactly the batches it would have drawn (same curve; timing aside).

Timing per grid point: ``train_wall_s`` (perf counter) and ``train_cpu_s`` (process CPU time,
prefetch thread included) of training so far, excluding the test evaluations; the counters are
saved with every checkpoint and restored on resume, so work redone after a kill is not counted
twice. Wall time depends on the machine's load; CPU time much less.

Output folder (``out_dir``)::

    config.yaml
    runs/<model>/stream/            the trainer's folder (checkpoints/, model/, metrics.csv)
    runs/<model>/stream/points/s<samples>.json   one grid point: samples seen, step, times, test metrics
    runs/<model>/stream/points/s<samples>.csv    its predictions (the shared table)
    runs/<model>/stream/timing.json              training clocks at each checkpointed step
    runs/<model>/n<size>/result.json             baselines, as in the file mode
    ceiling.json                    van Trees / CRLB ceilings per SNR bin at the test labels
    bayes/catalogue.csv             posterior means of the first ``stream.bayes_spectra`` test spectra
    curves.csv                      one row per (model, budget, label): R², band, MAE, RMSE, samples, times
    curves_by_snr.csv               the same per SNR bin (+ the ceilings and the Bayes estimator)
    curves_<label>.png, curves_time_<label>.png, curves_snr_<label>.png
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from specvit.atomic import write_text_atomic
from specvit.config import _deep_merge
from specvit.errors import ConfigError, InputError

#: data keys a neural model's options may not set in stream mode (the scaling config owns them)
STREAM_OWNED_DATA_KEYS = ("source", "simulate", "train", "val", "labels", "noise_level", "noise_seed",
                          "max_train_rows", "val_noise_level", "error_channel")


@dataclass
class StreamCurves:
    """``stream:`` section of a scaling config: neural models train once on fresh simulations.

    simulate : the ``data.simulate`` section of every neural model (prior, observing, samples_per_epoch, ...;
        :class:`specvit.data.stream.SimulateStreamConfig`); the test file must be drawn from the same prior
    first_samples : first grid point (samples seen); the grid doubles from it
    max_samples : default budget of every neural model (samples seen); per model: ``models[].max_samples``
    checkpoint_minutes : also checkpoint a run this often (wall minutes) between grid points
    fisher_points : van Trees / CRLB ceilings per SNR bin at the labels of the first N test spectra (0 = skip)
    fisher_mags : magnitudes at which the ceilings are evaluated (their SNRs fill the bins)
    fisher_nuisance : "5d" (every simulated label free, as in the simulation) or "3d"
    bayes_spectra : posterior mean (``specvit baseline bayes``) of the first N test spectra (0 = skip)
    bayes : extra keys of :class:`specvit.baselines.bayes.BayesConfig`
    baseline_after : order of the job only: the baselines on a file of n rows run once the neural models have
        been brought to ``baseline_after · n`` samples seen (they are expensive at large n; the rounds keep
        every curve growing together)
    """

    simulate: dict[str, Any] = field(default_factory=dict)
    first_samples: int = 8192
    max_samples: int = 2_097_152
    checkpoint_minutes: float = 5.0
    fisher_points: int = 0
    fisher_mags: list[float] = field(default_factory=lambda: [19.0, 20.0, 20.5, 21.0, 21.25, 21.5, 21.75, 22.0,
                                                              22.25, 22.5, 23.0])
    fisher_nuisance: str = "5d"
    bayes_spectra: int = 0
    bayes: dict[str, Any] = field(default_factory=dict)
    baseline_after: float = 1.0

    def __post_init__(self):
        for k in ("first_samples", "max_samples"):
            if int(getattr(self, k)) < 1:
                raise ConfigError("must be >= 1", field=f"stream.{k}", value=getattr(self, k))
        if self.max_samples < self.first_samples:
            raise ConfigError("must be >= stream.first_samples", field="stream.max_samples", value=self.max_samples)
        if not (self.checkpoint_minutes > 0):
            raise ConfigError("must be > 0", field="stream.checkpoint_minutes", value=self.checkpoint_minutes)
        if self.fisher_points < 0 or self.bayes_spectra < 0:
            raise ConfigError("must be >= 0", field="stream.fisher_points/bayes_spectra",
                              value=[self.fisher_points, self.bayes_spectra])
        if not (self.baseline_after > 0):
            raise ConfigError("must be > 0", field="stream.baseline_after", value=self.baseline_after)
        if self.fisher_nuisance not in ("3d", "5d"):
            raise ConfigError("must be 3d or 5d", field="stream.fisher_nuisance", value=self.fisher_nuisance)
        for k in ("input", "output", "max_spectra", "noise_level", "noise_seed"):
            if k in self.bayes:
                raise ConfigError("this key is set by the scaling config", field=f"stream.bayes.{k}")


def sample_grid(first: int, last: int) -> list[int]:
    """``first · 2^k`` for every k with a value below ``last``, then ``last`` (samples seen)."""
    out, s = [], int(first)
    while s < last:
        out.append(s)
        s *= 2
    out.append(int(last))
    return out


def model_budget(cfg, m) -> int:
    return int(m.max_samples if m.max_samples is not None else cfg.stream.max_samples)


def stream_dir(cfg, m) -> Path:
    return Path(cfg.out_dir) / "runs" / m.name / "stream"


def stream_train_config(cfg, m, *, upto_samples: int | None = None):
    """The :class:`~specvit.train.config.TrainConfig` of neural model ``m`` (stream mode).

    ``upto_samples``: stop once this many samples were seen (``run.max_steps``); the epochs always
    cover the model's whole budget, so the schedule (constant) and checkpoints do not depend on it.
    """
    from specvit.train.config import load_train_config

    opts = dict(m.options)
    user_data = dict(opts.pop("data", {}) or {})
    owned = [k for k in user_data if k in STREAM_OWNED_DATA_KEYS]
    if owned:
        raise ConfigError("this data key is set by the scaling config (stream mode)",
                          field=f"models[{m.name}].options.data.{owned[0]}")
    run_opts = dict(opts.get("run", {}) or {})
    for k in ("epochs", "max_steps", "out_dir", "early_stopping_patience", "resume"):
        if k in run_opts:
            raise ConfigError("this run key is set by the scaling config (stream mode)",
                              field=f"models[{m.name}].options.run.{k}")
    sched = dict(opts.get("schedule", {}) or {})
    if sched.get("kind", "cosine") != "constant":
        raise ConfigError("stream learning curves need a constant learning rate (a point must not depend on the "
                          "budget): set schedule.kind: constant", field=f"models[{m.name}].options.schedule.kind",
                          value=sched.get("kind", "cosine (default)"))
    if float(sched.get("warmup_frac", 0.0)) != 0.0:
        raise ConfigError("warmup_frac scales with the budget; use schedule.warmup_steps",
                          field=f"models[{m.name}].options.schedule.warmup_frac", value=sched["warmup_frac"])
    d = cfg.data
    simulate = dict(cfg.stream.simulate)
    base = {
        "data": {"source": "simulate", "val": [], "labels": list(d.labels), "noise_level": d.noise_level,
                 "noise_seed": d.eval_noise_seed, "simulate": simulate, **user_data},
        "run": {"seed": cfg.seed, "progress": False, "tensorboard": False},
    }
    merged = _deep_merge(base, opts)
    out = stream_dir(cfg, m)
    try:
        tc = load_train_config(data={**merged, "run": {**merged.get("run", {}), "out_dir": str(out)}})
    except ConfigError as e:
        raise ConfigError(f"in models[{m.name}].options: {e}") from None
    per_step = tc.run.batch_size * tc.optim.grad_accum_steps
    budget = model_budget(cfg, m)
    spe = tc.data.simulate.samples_per_epoch
    tc.run.epochs = max(1, math.ceil(budget / spe))
    tc.run.max_steps = math.ceil((budget if upto_samples is None else min(budget, upto_samples)) / per_step)
    return tc


# ------------------------------------------------------------------------------------------------
# the fixed test set and the evaluation of a live network
# ------------------------------------------------------------------------------------------------
class TestSet:
    """The test rows with their fixed noise, held in memory (float32) and reused for every evaluation."""

    __test__ = False  # not a pytest class

    def __init__(self, path, *, labels, noise_level: float, noise_seed: int, max_rows=None, chunk_rows=1024):
        from specvit.baselines.common import iter_noisy_chunks, n_rows, open_split, prediction_table

        ds = open_split(path, labels, split="test")
        try:
            self.n = n_rows(ds, max_rows)
            self.x = np.concatenate([x.astype(np.float32) for _, x in iter_noisy_chunks(
                ds, stop=self.n, noise_level=noise_level, seed=noise_seed, chunk_rows=chunk_rows)])
            self.table = prediction_table(ds, self.n, labels, np.zeros((self.n, len(labels))))
        finally:
            ds.close()
        self.labels = list(labels)

    def predict(self, model, *, label_names, label_mean, label_std, batch_size: int = 256) -> pd.DataFrame:
        """The shared prediction table of ``model`` (a torch module in any mode; restored afterwards)."""
        from specvit.train.predict import network_predict

        cols = [list(label_names).index(n) for n in self.labels]
        mean, _ = network_predict(model, self.x, label_mean=label_mean, label_std=label_std, batch_size=batch_size)
        df = self.table.copy()
        for j, n in enumerate(self.labels):
            df[f"{n}_pred"] = mean[:, cols[j]]
        return df


class CurveRecorder:
    """Trainer callback: at each grid point of samples seen, score the live model on the test set.

    Writes ``points/s<samples>.json`` (+ ``.csv`` predictions) once per grid point, then checkpoints
    the trainer, so a checkpoint at step s implies every grid point up to s is on disk. Also
    checkpoints every ``checkpoint_minutes`` and keeps the training clocks in ``timing.json``.
    """

    def __init__(self, out_dir, grid, test: TestSet, *, seed: int, n_resamples: int, checkpoint_minutes: float,
                 log=print, name: str = ""):
        self.dir = Path(out_dir)
        self.points = self.dir / "points"
        self.grid = sorted(int(g) for g in grid)
        self.test, self.seed, self.n_resamples = test, seed, n_resamples
        self.every_s = 60.0 * checkpoint_minutes
        self.log, self.name = log, name
        self.timing = self._read_timing()
        self._base = None  # (wall, cpu) of training at the session's resumed step
        self.reset_clock()
        self._eval_wall = self._eval_cpu = 0.0
        self._last_ckpt = time.perf_counter()

    # -------------------------------------------------------------- clocks
    def _read_timing(self) -> dict:
        p = self.dir / "timing.json"
        return {int(k): v for k, v in json.loads(p.read_text()).items()} if p.exists() else {}

    def clocks(self) -> tuple[float, float]:
        """Training wall and CPU seconds so far (evaluations excluded)."""
        wall = time.perf_counter() - self._t0 - self._eval_wall
        cpu = time.process_time() - self._c0 - self._eval_cpu
        return self._base[0] + wall, self._base[1] + cpu

    def reset_clock(self) -> None:
        """Start the session's clocks (call right before ``Trainer.fit``: resume + the first step count)."""
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def start(self, resumed_step: int) -> None:
        if resumed_step == 0:
            self._base = (0.0, 0.0)
        elif resumed_step in self.timing:
            t = self.timing[resumed_step]
            self._base = (t["train_wall_s"], t["train_cpu_s"])
        else:  # a checkpoint without clocks (should not happen): continue from the latest earlier entry
            earlier = [s for s in self.timing if s <= resumed_step]
            t = self.timing[max(earlier)] if earlier else {"train_wall_s": math.nan, "train_cpu_s": math.nan}
            self._base = (t["train_wall_s"], t["train_cpu_s"])

    def _save_clocks(self, step: int) -> None:
        wall, cpu = self.clocks()
        self.timing[int(step)] = {"train_wall_s": wall, "train_cpu_s": cpu}
        keep = sorted(self.timing)[-64:]
        self.timing = {s: self.timing[s] for s in keep}
        write_text_atomic(self.dir / "timing.json", json.dumps({str(k): v for k, v in self.timing.items()}))

    def checkpoint(self, trainer) -> None:
        """Clocks first, then the trainer's checkpoint (both at the same step)."""
        self._save_clocks(trainer.global_step)
        trainer.checkpoint(step_file=False)
        self._last_ckpt = time.perf_counter()

    # -------------------------------------------------------------- the callback
    def point_path(self, samples: int) -> Path:
        return self.points / f"s{samples:010d}.json"

    def recorded(self) -> list[int]:
        return sorted(int(p.stem[1:]) for p in self.points.glob("s*.json"))

    def __call__(self, trainer, global_step: int) -> None:
        if self._base is None:
            self.start(global_step - 1)
        cfg = trainer.cfg
        per_step = cfg.run.batch_size * cfg.optim.grad_accum_steps * trainer.dist.world_size
        seen = global_step * per_step
        due = [g for g in self.grid if (g - 1) // per_step + 1 == global_step]  # first step with seen >= g
        wrote = False
        for g in due:
            if not self.point_path(g).exists():
                self._record(trainer, g, seen, global_step)
                wrote = True
        # the trainer checkpoints after this callback at an epoch end and at its last step: clocks for those
        epoch_end = trainer.step_in_epoch >= trainer.steps_per_epoch
        last = global_step >= trainer.total_steps
        if wrote or time.perf_counter() - self._last_ckpt > self.every_s:
            self.checkpoint(trainer)
        elif epoch_end or last:
            self._save_clocks(global_step)

    def _record(self, trainer, grid_samples: int, seen: int, step: int) -> None:
        from specvit.baselines.common import write_csv
        from specvit.evaluate.report import to_jsonable
        from specvit.scores import evaluate_predictions

        wall, cpu = self.clocks()
        w0, c0 = time.perf_counter(), time.process_time()
        sc = trainer.scaler_labels
        df = self.test.predict(trainer.model, label_names=trainer.label_names, label_mean=sc.mean,
                               label_std=sc.std)
        test = evaluate_predictions(df, self.test.labels, "snr", self.seed, n_resamples=self.n_resamples)
        self.points.mkdir(parents=True, exist_ok=True)
        write_csv(self.point_path(grid_samples).with_suffix(".csv"), df)
        doc = {"grid_samples": grid_samples, "samples_seen": seen, "step": step, "train_wall_s": wall,
               "train_cpu_s": cpu, "test": test}
        write_text_atomic(self.point_path(grid_samples), json.dumps(to_jsonable(doc), indent=1))
        self._eval_wall += time.perf_counter() - w0
        self._eval_cpu += time.process_time() - c0
        r2 = ", ".join(f"{k} R2={v['overall']['r2']:.4f}" for k, v in test["labels"].items())
        self.log(f"curves {self.name}: {seen} samples seen (step {step}, {wall:.0f} s wall, {cpu:.0f} s CPU): {r2}")


# ------------------------------------------------------------------------------------------------
# the job
# ------------------------------------------------------------------------------------------------
def advance(cfg, m, upto: int, test: TestSet, *, log=print, callbacks=()) -> None:
    """Train neural model ``m`` on the stream until ``upto`` samples seen (resuming), recording grid points.

    ``callbacks``: more trainer callbacks after the recorder (tests use one to simulate a kill)."""
    from specvit.train.trainer import Trainer

    tc = stream_train_config(cfg, m, upto_samples=upto)
    grid = sample_grid(cfg.stream.first_samples, model_budget(cfg, m))
    rec = CurveRecorder(stream_dir(cfg, m), grid, test, seed=cfg.seed, n_resamples=cfg.bootstrap_resamples,
                        checkpoint_minutes=cfg.stream.checkpoint_minutes, log=log, name=m.name)
    if all(rec.point_path(g).exists() for g in grid if g <= upto):
        return
    trainer = Trainer(tc, callbacks=[rec, *callbacks])
    rec.reset_clock()
    trainer.fit()


def run_ceilings(cfg, out: Path, log=print) -> dict | None:
    """van Trees (and CRLB) ceiling per SNR bin at the labels of the first ``fisher_points`` test spectra."""
    from specvit.evaluate.report import to_jsonable

    s = cfg.stream
    path = out / "ceiling.json"
    if s.fisher_points <= 0:
        return None
    if path.exists():
        return json.loads(path.read_text())
    from specvit.data import open_dataset
    from specvit.fisher.ceiling import ceiling_at_dataset_labels

    label = cfg.data.labels[0]
    t0 = time.perf_counter()
    _, _, by_bin, var = ceiling_at_dataset_labels(cfg.data.test, label=label, n_points=s.fisher_points,
                                                  mags=s.fisher_mags, nuisance=s.fisher_nuisance,
                                                  noise_level=cfg.data.noise_level)
    with open_dataset(cfg.data.test) as ds:
        n_rows = len(ds)
    doc = {"label": label, "label_var": var, "points": int(min(n_rows, s.fisher_points)),
           "mags": list(s.fisher_mags), "nuisance": s.fisher_nuisance, "by_snr_bin": by_bin,
           "seconds": time.perf_counter() - t0}
    write_text_atomic(path, json.dumps(to_jsonable(doc), indent=1))
    log(f"curves: ceilings per SNR bin -> {path} ({doc['seconds']:.0f} s)")
    return doc


def run_bayes_reference(cfg, out: Path, log=print) -> dict | None:
    """Posterior means of the first ``bayes_spectra`` test spectra (same fixed noise), via the public API;
    scored by :func:`specvit.baselines.bayes.score_bayes` (rows flagged ok / low_ess; the others counted)."""
    from specvit.baselines.common import write_csv
    from specvit.evaluate.report import to_jsonable

    s = cfg.stream
    if s.bayes_spectra <= 0:
        return None
    pred = out / "bayes" / "predictions.csv"
    done = out / "bayes" / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    from specvit.baselines.bayes import BayesConfig, run_bayes, score_bayes
    from specvit.config import load_config

    bc = load_config(BayesConfig, data={"seed": cfg.seed, **s.bayes, "input": cfg.data.test, "output": "",
                                        "max_spectra": s.bayes_spectra, "noise_level": cfg.data.noise_level,
                                        "noise_seed": cfg.data.eval_noise_seed})
    w0, c0 = time.perf_counter(), time.process_time()
    cat = run_bayes(bc)
    # the one scoring of a posterior catalogue: rows flagged ok / low_ess scored, the others counted
    table, scored = score_bayes(cat, cfg.data.labels, rng=cfg.seed, n_resamples=cfg.bootstrap_resamples)
    table.insert(0, "id", table["row"])
    write_csv(out / "bayes" / "catalogue.csv", cat)
    write_csv(pred, table)
    doc = {"model": "bayes", "n_spectra": scored["n_spectra"], "n_scored": scored["n_scored"],
           "n_not_scored": scored["n_not_scored"], "flags": scored["flags"], "coverage": scored["coverage"],
           "seconds": time.perf_counter() - w0, "cpu_seconds": time.process_time() - c0, "test": scored["test"]}
    write_text_atomic(done, json.dumps(to_jsonable(doc), indent=1))
    log(f"curves: Bayes posterior mean of {len(table)} test spectra ({doc['seconds']:.0f} s)")
    return doc


def run_stream_scaling(cfg, *, log=print) -> pd.DataFrame:
    """The stream-mode job: ceilings, neural rounds interleaved with the baselines, Bayes; table + figures."""
    from specvit.config import write_resolved_config
    from specvit.evaluate.runs import baseline_config as _baseline_config, check_train_rows, run_dir

    out = Path(cfg.out_dir)
    neural = [m for m in cfg.models if m.kind == "neural"]
    baselines = [m for m in cfg.models if m.kind != "neural"]
    for m in neural:  # every config validated before anything runs
        stream_train_config(cfg, m)
    base_jobs = [(m, s, _baseline_config(cfg, m, s, run_dir(cfg, m, s))) for s in cfg.sizes for m in baselines]
    if base_jobs:
        check_train_rows(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(cfg, out / "config.yaml", extra={"seed": cfg.seed, "eval_noise_seed": cfg.data.eval_noise_seed})
    test = TestSet(cfg.data.test, labels=cfg.data.labels, noise_level=cfg.data.noise_level,
                   noise_seed=cfg.data.eval_noise_seed, max_rows=cfg.data.max_test_rows)
    run_ceilings(cfg, out, log)
    budgets = sorted({g for m in neural for g in sample_grid(cfg.stream.first_samples, model_budget(cfg, m))})
    pending = list(base_jobs)  # sizes ascending
    for i, g in enumerate(budgets):
        for m in neural:
            if g <= model_budget(cfg, m):
                log(f"curves: {m.name} -> {g} samples seen")
                advance(cfg, m, g, test, log=log)
        # a baseline on a file of n rows runs once the neural models have seen baseline_after * n samples
        while pending and pending[0][1] * cfg.stream.baseline_after <= g:
            _run_baseline_once(cfg, *pending.pop(0), log)
        if i == 0:
            run_bayes_reference(cfg, out, log)
        write_outputs(cfg, log=lambda s: None)
    for job in pending:
        _run_baseline_once(cfg, *job, log)
    run_bayes_reference(cfg, out, log)
    return write_outputs(cfg, log=log)


def _run_baseline_once(cfg, m, size, rc, log) -> None:
    from specvit.evaluate.report import to_jsonable
    from specvit.evaluate.runs import run_baseline as _run_baseline, run_dir

    done = run_dir(cfg, m, size) / "result.json"
    if done.exists():
        return
    log(f"curves: {m.name} on {size} rows")
    w0, c0 = time.perf_counter(), time.process_time()
    res = _run_baseline(m, rc, log)
    res.update(model=m.name, kind=m.kind, n_train=size, seconds=time.perf_counter() - w0,
               cpu_seconds=time.process_time() - c0)
    write_text_atomic(done, json.dumps(to_jsonable(res), indent=2))
    log(f"curves: {m.name} n={size}: " + ", ".join(f"{k} R2={v['overall']['r2']:.4f}"
                                                    for k, v in res["test"]["labels"].items()))


# ------------------------------------------------------------------------------------------------
# tables and figures
# ------------------------------------------------------------------------------------------------
def collect(cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, curves_by_snr) from whatever is on disk (finished points and baseline runs)."""
    from specvit.evaluate.runs import run_dir

    rows, bins = [], []

    def add(model, kind, samples, step, wall, cpu, test, n_train=None):
        for label, e in test["labels"].items():
            o = e["overall"]
            rows.append({"model": model, "kind": kind, "samples_seen": samples, "n_train_rows": n_train,
                         "step": step, "train_wall_s": wall, "train_cpu_s": cpu, "label": label, "r2": o["r2"],
                         "r2_lo": o.get("r2_lo"), "r2_hi": o.get("r2_hi"), "mae": o["mae"], "rmse": o["rmse"],
                         "bias": o["bias"], "n_test": o["n"]})
            for b in e.get("snr_bins") or []:
                if isinstance(b, dict) and "r2" in b:
                    bins.append({"model": model, "kind": kind, "samples_seen": samples, "label": label,
                                 "snr_bin": b["bin"], "r2": b.get("r2"), "r2_lo": b.get("r2_lo"),
                                 "r2_hi": b.get("r2_hi"), "n": b.get("n")})

    for m in cfg.models:
        if m.kind == "neural":
            for p in sorted((stream_dir(cfg, m) / "points").glob("s*.json")):
                d = json.loads(p.read_text())
                add(m.name, "neural", d["samples_seen"], d["step"], d["train_wall_s"], d["train_cpu_s"], d["test"])
        else:
            for size in cfg.sizes:
                f = run_dir(cfg, m, size) / "result.json"
                if f.exists():
                    d = json.loads(f.read_text())
                    # a baseline sees each of its n rows once per noisy copy: samples seen = rows x n_augment
                    aug = int(m.options.get("n_augment", 1))
                    add(m.name, m.kind, size * aug, None, d.get("seconds"), d.get("cpu_seconds"), d["test"], size)
    out = Path(cfg.out_dir)
    bayes = out / "bayes" / "result.json"
    if bayes.exists():
        d = json.loads(bayes.read_text())
        add("bayes", "reference", None, None, d["seconds"], d.get("cpu_seconds"), d["test"])
    ceil = out / "ceiling.json"
    if ceil.exists():
        c = json.loads(ceil.read_text())
        for name, b in c["by_snr_bin"].items():
            if isinstance(b, dict):
                bins.append({"model": "van_trees", "kind": "ceiling", "samples_seen": None, "label": c["label"],
                             "snr_bin": name, "r2": b.get("r2max_bayes"), "r2_lo": None, "r2_hi": None,
                             "n": b.get("n_points")})
                bins.append({"model": "crlb_median", "kind": "ceiling", "samples_seen": None, "label": c["label"],
                             "snr_bin": name, "r2": b.get("r2max_median"), "r2_lo": b.get("r2max_p10"),
                             "r2_hi": b.get("r2max_p90"), "n": b.get("n_points")})
    return pd.DataFrame(rows), pd.DataFrame(bins)


def slope_per_decade(xs, ys, last: int = 2) -> float:
    """dR²/dlog10(samples) over the last ``last`` points (least squares; NaN with fewer points)."""
    xs, ys = np.asarray(xs, float)[-last:], np.asarray(ys, float)[-last:]
    if len(xs) < 2:
        return math.nan
    return float(np.polyfit(np.log10(xs), ys, 1)[0])


def summarise_curves(table: pd.DataFrame, *, target: str, label: str) -> dict:
    """Where ``target`` (a neural model) passes every other model, in samples seen; slopes per decade.

    Another neural model is compared at the same grid points; a baseline at file size n is compared with
    ``target`` at n samples seen (log-linear interpolation of the baseline between its sizes, only inside
    them). ``passes_at``: the first compared point from which the target's R² is >= the other's at every
    later compared point (it passes and stays ahead); None if it is behind at the last compared point
    (``gap_at_last``: other − target there). ``first_ahead_at``: the first compared point with the target
    ahead at all, which can be an early lead that is lost again.
    ``exceeds_other_best_at``: the first target point whose R² reaches the other model's best measured R²
    at any budget (``other_best_r2`` at ``other_best_at``), e.g. a baseline's largest file so far.
    """
    t = table[(table["label"] == label) & table["samples_seen"].notna()]
    curves = {m: g.sort_values("samples_seen") for m, g in t.groupby("model")}
    out: dict[str, Any] = {"target": target, "label": label, "models": {}}
    for m, g in curves.items():
        out["models"][m] = {"largest_samples": int(g["samples_seen"].iloc[-1]), "r2_at_largest": float(g["r2"].iloc[-1]),
                            "slope_per_decade_last2": slope_per_decade(g["samples_seen"], g["r2"], 2),
                            "slope_per_decade_last3": slope_per_decade(g["samples_seen"], g["r2"], 3)}
    if target not in curves:
        return out
    a = curves[target]
    ax, ay = a["samples_seen"].to_numpy(float), a["r2"].to_numpy(float)
    cmp = {}
    for m, g in curves.items():
        if m == target:
            continue
        bx, by = g["samples_seen"].to_numpy(float), g["r2"].to_numpy(float)
        sel = (ax >= bx.min()) & (ax <= bx.max())
        above_best = ay >= by.max()
        best = {"other_best_r2": float(by.max()), "other_best_at": int(bx[np.argmax(by)]),
                "exceeds_other_best_at": int(ax[np.argmax(above_best)]) if above_best.any() else None}
        if not sel.any():
            cmp[m] = {"compared_points": 0, **best}
            continue
        other = np.interp(np.log10(ax[sel]), np.log10(bx), by)
        ahead = ay[sel] >= other
        first = int(ax[sel][np.argmax(ahead)]) if ahead.any() else None
        behind = np.flatnonzero(~ahead)
        stays = None if not ahead[-1] else int(ax[sel][behind[-1] + 1 if behind.size else 0])
        cmp[m] = {"compared_points": int(sel.sum()), "passes_at": stays, "first_ahead_at": first,
                  "last_compared_samples": int(ax[sel][-1]), "gap_at_last": float(other[-1] - ay[sel][-1]), **best}
    out["versus"] = cmp
    return out


def paired_gaps(cfg, summary: dict, *, label: str, n_resamples: int = 2000) -> None:
    """Add ``paired`` to each neural model in ``summary["versus"]``: the paired bootstrap of
    R²(target) − R²(other) at the last point both reached (same test rows, same noise; predictions read
    from the points' ``.csv``), so "passes" can be read against the test-set noise. Seeded by ``cfg.seed``."""
    from specvit.scores import bootstrap_r2_difference

    by_name = {m.name: m for m in cfg.models if m.kind == "neural"}
    target = summary.get("target")
    if target not in by_name:
        return
    for name, v in summary.get("versus", {}).items():
        if name not in by_name:
            continue
        samples = int(v["last_compared_samples"])
        paths = [stream_dir(cfg, by_name[m]) / "points" / f"s{samples:010d}.csv" for m in (target, name)]
        if not all(p.exists() for p in paths):
            continue
        a, b = (pd.read_csv(p) for p in paths)
        t, pred = f"{label}_true", f"{label}_pred"
        if len(a) != len(b) or not np.array_equal(a["row"].to_numpy(), b["row"].to_numpy()) \
                or not np.allclose(a[t].to_numpy(), b[t].to_numpy()):
            raise InputError(f"{paths[0]} and {paths[1]} are not predictions for the same test rows",
                             field="row", value=str(paths[1]))
        v["paired"] = {"samples_seen": samples, **bootstrap_r2_difference(
            a[t], a[pred], b[pred], np.random.default_rng(cfg.seed), n_resamples=n_resamples)}


def ceiling_gaps(bins: pd.DataFrame, *, label: str, min_snr: float = 5.0, tolerance: float = 0.05) -> dict:
    """Per SNR bin: the best R² of any trained model at any budget against the van Trees ceiling.

    Bins whose centre (geometric mean of the edges) is >= ``min_snr`` count for the target "the best
    model per SNR bin within ``tolerance`` of the van Trees ceiling"; ``met`` is None without a ceiling.
    With the Bayes posterior mean (the MMSE estimator under the simulator's own prior: what is
    attainable), each bin also gets ``gap_to_bayes`` = its R² − the best model's, and
    ``met_bayes`` says whether every counted bin is within ``tolerance`` of it. (The van Trees R² is
    taken against the variance of its smoothed prior, the models' and the posterior's against the
    spread of the test labels in the bin: the two R² are not on one scale; docs/evaluation.md.)
    """
    b = bins[bins["label"] == label]
    vt = b[b["model"] == "van_trees"].set_index("snr_bin")["r2"]
    est = b[~b["kind"].isin(["ceiling", "reference"])]  # trained models only; the Bayes estimator is listed apart
    ref = b[b["kind"] == "reference"].set_index("snr_bin")["r2"]
    out: dict[str, Any] = {"label": label, "min_snr": min_snr, "tolerance": tolerance, "bins": {}}
    for name in vt.index:
        lo, hi = (float(v) for v in name.split("-"))
        e = est[est["snr_bin"] == name].dropna(subset=["r2"])
        if e.empty:
            continue
        best = e.loc[e["r2"].idxmax()]
        out["bins"][name] = {"van_trees": float(vt[name]), "best_model": best["model"],
                             "best_samples": None if pd.isna(best["samples_seen"]) else int(best["samples_seen"]),
                             "best_r2": float(best["r2"]), "gap": float(vt[name] - best["r2"]),
                             "counts": bool(math.sqrt(lo * hi) >= min_snr),
                             "bayes_posterior_mean": float(ref[name]) if name in ref.index else None}
        bayes = out["bins"][name]["bayes_posterior_mean"]
        out["bins"][name]["gap_to_bayes"] = None if bayes is None else float(bayes - best["r2"])
    counted = [v for v in out["bins"].values() if v["counts"]]
    out["met"] = None if not counted else all(v["gap"] <= tolerance for v in counted)
    to_bayes = [v["gap_to_bayes"] for v in counted]
    out["met_bayes"] = None if not counted or None in to_bayes else all(g <= tolerance for g in to_bayes)
    return out


def markdown_tables(table: pd.DataFrame, bins: pd.DataFrame, *, label: str) -> str:
    """``curves_<label>.md``: R² (and training CPU s) per samples seen and model; R² per SNR bin at the largest."""
    t = table[(table["label"] == label) & table["samples_seen"].notna()]
    models = list(dict.fromkeys(t["model"]))
    lines = ["| samples seen (rows for baselines) | " + " | ".join(models) + " |",
             "|---|" + "---|" * len(models)]
    for s in sorted(t["samples_seen"].unique()):
        cells = []
        for m in models:
            r = t[(t["model"] == m) & (t["samples_seen"] == s)]
            cells.append("" if r.empty else f"{r['r2'].iloc[0]:.3f} ({r['train_cpu_s'].iloc[0]:.0f} CPU-s)")
        lines.append(f"| {int(s):,} | " + " | ".join(cells) + " |")
    ref = table[(table["label"] == label) & (table["model"] == "bayes")]
    if not ref.empty:
        lines.append(f"\nBayes posterior mean: R² = {ref['r2'].iloc[0]:.3f} on the first {int(ref['n_test'].iloc[0])} "
                     "test spectra.")
    b = bins[bins["label"] == label] if not bins.empty else bins
    if not b.empty:
        names = list(dict.fromkeys(b["snr_bin"]))
        lines += ["", "| model (largest budget) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for m, g in b.groupby("model", sort=False):
            s = pd.to_numeric(g["samples_seen"], errors="coerce")
            if s.notna().any():
                g = g[s == s.max()]
            v = g.set_index("snr_bin")["r2"].reindex(names)
            tag = f"{m} @ {int(s.max()):,}" if s.notna().any() else m
            lines.append(f"| {tag} | " + " | ".join("" if pd.isna(x) else f"{x:.3f}" for x in v) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(cfg, *, log=print) -> pd.DataFrame:
    from specvit.baselines.common import write_csv

    out = Path(cfg.out_dir)
    table, bins = collect(cfg)
    if table.empty:
        return table
    write_csv(out / "curves.csv", table)
    from specvit.evaluate.report import to_jsonable

    targets = [m.name for m in cfg.models if m.kind == "neural" and "specvit" in m.name.lower()]
    summary = {label: summarise_curves(table, target=targets[0], label=label) for label in cfg.data.labels} \
        if targets else {}
    for label, sm in summary.items():
        paired_gaps(cfg, sm, label=label)
    if not bins.empty and (bins["model"] == "van_trees").any():
        for label in cfg.data.labels:
            summary.setdefault(label, {})["ceiling_gaps"] = ceiling_gaps(bins, label=label)
    write_text_atomic(out / "curves_summary.json", json.dumps(to_jsonable(summary), indent=1))
    if not bins.empty:
        write_csv(out / "curves_by_snr.csv", bins)
    for label in cfg.data.labels:
        write_text_atomic(out / f"curves_{label}.md", markdown_tables(table, bins, label=label))
    from specvit.evaluate.curve_figures import plot_curves, plot_snr_at_largest
    from specvit.evaluate.runs import save_png as _save

    for label in cfg.data.labels:
        t = table[table["label"] == label]
        _save(plot_curves(t, x="samples_seen", label=label), out / f"curves_{label}.png")
        _save(plot_curves(t, x="train_wall_s", label=label), out / f"curves_time_{label}.png")
        _save(plot_curves(t, x="train_cpu_s", label=label), out / f"curves_cpu_{label}.png")
        if not bins.empty:
            _save(plot_snr_at_largest(bins[bins["label"] == label], label=label), out / f"curves_snr_{label}.png")
    log(f"curves: wrote {out / 'curves.csv'} and figures")
    return table
