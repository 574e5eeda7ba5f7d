"""Equal-compute ablations: every variant trains for the same CPU-time budget (``specvit ablation``).

A variant is a base training config (:class:`specvit.train.config.TrainConfig` as a dict) plus
dotted overrides (``model.overrides.conv_stem: [16, 32]``, ``optim.lr: 3.0e-3``). Models of
different cost are compared at EQUAL COMPUTE, not at equal steps:

1. timing: the variant trains ``timing_warmup_steps + timing_steps`` steps (no validation); the CPU
   time of the training process (:func:`time.process_time`: every thread, including the simulated
   stream's forward model) over the last ``timing_steps`` steps gives CPU-s per step;
2. training: ``max_steps = floor(budget_cpu_s / cpu_s_per_step)``, one validation at the last step;
   the score is the validation R² (mean over labels) of the final model.

Run it with one thread (``run.num_threads: 1``, ``OMP_NUM_THREADS=1``) so that CPU-s are
comparable. Output folder::

    <out_dir>/<variant>/seed<k>/timing.json   CPU-s per step (kept: a rerun does not re-time)
    <out_dir>/<variant>/seed<k>/train/        the trainer's run folder (checkpoints: a killed run resumes)
    <out_dir>/<variant>/seed<k>/result.json   written last; a (variant, seed) with it is skipped on rerun
    <out_dir>/results.csv, results.md         one row per finished (variant, seed)

Several runners may share one config (e.g. one per core): each locks the (variant, seed) it works
on and skips those locked by another; a last rerun writes the complete table.

If ``val_simulate`` is set and the validation file (the base's ``data.val[0]``) does not exist, it
is simulated first (``specvit simulate`` with that ``n`` and ``seed``).
"""
from __future__ import annotations

import copy
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from specvit.atomic import write_text_atomic
from specvit.config import load_config, write_resolved_config
from specvit.errors import ConfigError


@dataclass
class AblationVariant:
    """One variant: a name (folder) and dotted training-config overrides of the base."""

    name: str
    set: dict[str, Any] = field(default_factory=dict)  #: dotted TrainConfig key -> value
    seeds: list[int] | None = None  #: training seeds of this variant (None = the config's seeds)

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError("variant names may use letters, digits, _ - . only", field="variants.name",
                              value=self.name)


@dataclass
class ValSimulate:
    """How to make the validation file if it is missing."""

    n: int = 1000
    seed: int = 2


@dataclass
class AblationConfig:
    """``specvit ablation --config FILE`` (YAML + ``--set key=value``)."""

    base: dict[str, Any]  #: a training config (sections data / model / optim / schedule / loss / run)
    variants: list[AblationVariant]
    out_dir: str = "runs/ablation"
    budget_cpu_s: float = 200.0  #: CPU seconds (one thread) of training per variant
    timing_steps: int = 8  #: steps timed to get CPU-s per step
    timing_warmup_steps: int = 3  #: steps run (not timed) before them
    seeds: list[int] = field(default_factory=lambda: [0])  #: training seeds (run.seed) of every variant
    val_simulate: ValSimulate | None = None  #: simulate data.val[0] first if it does not exist

    def __post_init__(self):
        if not self.variants:
            raise ConfigError("at least one variant is needed", field="variants")
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError("variant names must be unique", field="variants.name", value=dup[0])
        if not (math.isfinite(self.budget_cpu_s) and self.budget_cpu_s > 0):
            raise ConfigError("must be a finite number > 0", field="budget_cpu_s", value=self.budget_cpu_s)
        for k in ("timing_steps", "timing_warmup_steps"):
            if getattr(self, k) < (1 if k == "timing_steps" else 0):
                raise ConfigError("must be >= 1" if k == "timing_steps" else "must be >= 0", field=k,
                                  value=getattr(self, k))
        if not self.seeds:
            raise ConfigError("at least one seed is needed", field="seeds")


def load_ablation_config(path=None, overrides=()) -> AblationConfig:
    return load_config(AblationConfig, path, overrides)


def variant_config(cfg: AblationConfig, v: AblationVariant, seed: int, out: Path, *, max_steps: int, timing: bool):
    """The validated TrainConfig of one (variant, seed) run: the base, the variant's keys, then the runner's."""
    from specvit.config import set_dotted
    from specvit.train.config import TrainConfig, load_train_config

    d = copy.deepcopy(cfg.base)
    for k, value in v.set.items():  # every key checked against TrainConfig (a typo is a ConfigError naming it)
        set_dotted(d, k, copy.deepcopy(value), cls=TrainConfig, source=f"variants[{v.name}].set")
    run = d.setdefault("run", {})
    run.update(seed=seed, out_dir=str(out), max_steps=max_steps, epochs=max(int(run.get("epochs", 1)), 1_000_000),
               progress=False, tensorboard=False, early_stopping_patience=None, early_stopping_metric="val_r2",
               eval_every_steps=None if timing else max_steps)
    if not timing:
        run["checkpoint_every_steps"] = max(1, max_steps // 4)
    data = d.setdefault("data", {})
    if data.get("source") == "simulate":  # one "epoch" covers the whole run: no epoch-end evaluation
        data.setdefault("simulate", {})["samples_per_epoch"] = 10 ** 9
    if timing:
        data["val"] = []
    try:
        return load_train_config(data=d)
    except ConfigError as e:
        raise ConfigError(f"in variant {v.name!r}: {e}") from None


def _train(tc, step_times: list[float]):
    from specvit.train import Trainer

    tr = Trainer(tc, callbacks=[lambda _t, _s: step_times.append(time.process_time())])
    n_params = sum(p.numel() for p in tr.model.parameters())
    return tr.fit(), n_params


def _timing(cfg: AblationConfig, v, seed: int, folder: Path) -> dict:
    path = folder / "timing.json"
    if path.exists():
        return json.loads(path.read_text())
    n = cfg.timing_warmup_steps + cfg.timing_steps
    times: list[float] = []
    _train(variant_config(cfg, v, seed, folder / "timing", max_steps=n, timing=True), times)
    if len(times) < n:
        raise RuntimeError(f"timing run of {v.name} stopped after {len(times)} of {n} steps")
    per_step = (times[-1] - times[cfg.timing_warmup_steps - 1 if cfg.timing_warmup_steps else 0]) / (
        cfg.timing_steps if cfg.timing_warmup_steps else cfg.timing_steps - 1)
    out = {"cpu_s_per_step": per_step, "timed_steps": cfg.timing_steps, "warmup_steps": cfg.timing_warmup_steps}
    write_text_atomic(path, json.dumps(out, indent=2))
    return out


def run_variant(cfg: AblationConfig, v: AblationVariant, seed: int, *, log=print) -> dict | None:
    """Time, then train one (variant, seed) for the budget; returns (and writes) its result.json.

    The (variant, seed) folder is locked while it runs: a second runner on the same config skips it
    (returns None) and goes on with the next, so several runners can share one list of variants.
    """
    from specvit.atomic import OutputLock
    from specvit.errors import OutputLockedError

    folder = Path(cfg.out_dir) / v.name / f"seed{seed}"
    done = folder / "result.json"
    if done.exists():
        log(f"ablation: {v.name} seed {seed} done, skipped")
        return json.loads(done.read_text())
    try:
        lock = OutputLock(folder, what="ablation run").acquire()
    except OutputLockedError:
        log(f"ablation: {v.name} seed {seed} is running in another process, skipped")
        return None
    try:
        if done.exists():  # finished by another runner just before we took the lock
            return json.loads(done.read_text())
        return _run_variant_locked(cfg, v, seed, folder, log)
    finally:
        lock.release()


def _run_variant_locked(cfg: AblationConfig, v: AblationVariant, seed: int, folder: Path, log) -> dict:
    done = folder / "result.json"
    folder.mkdir(parents=True, exist_ok=True)
    timing = _timing(cfg, v, seed, folder)
    steps = max(1, int(cfg.budget_cpu_s // timing["cpu_s_per_step"]))
    tc = variant_config(cfg, v, seed, folder / "train", max_steps=steps, timing=False)
    resumed = (folder / "train" / "checkpoints" / "last.pt").exists()
    log(f"ablation: {v.name} seed {seed}: {timing['cpu_s_per_step']:.3f} CPU-s/step -> {steps} steps"
        + (" (resuming)" if resumed else ""))
    times: list[float] = []
    c0, w0 = time.process_time(), time.perf_counter()
    res, n_params = _train(tc, times)
    c1, w1 = time.process_time(), time.perf_counter()
    result = {
        "variant": v.name, "seed": seed, "set": v.set, "params": n_params, "budget_cpu_s": cfg.budget_cpu_s,
        "cpu_s_per_step_timed": timing["cpu_s_per_step"], "steps": steps,
        "samples_seen": steps * tc.run.batch_size * tc.optim.grad_accum_steps,
        "val_r2": res.get("val_r2"), "val_loss": res.get("val_loss"),
        # this session's CPU (all of it: statistics draw, steps, validation) and the steps' own CPU
        "cpu_s_session": c1 - c0, "wall_s_session": w1 - w0,
        "cpu_s_steps_session": (times[-1] - times[0]) if len(times) > 1 else None,
        "steps_this_session": len(times), "resumed": resumed,
    }
    write_text_atomic(done, json.dumps(result, indent=2))
    log(f"ablation: {v.name} seed {seed}: val R2 {result['val_r2']:.4f} ({steps} steps, {c1 - c0:.0f} CPU-s)")
    return result


def _ensure_val(cfg: AblationConfig, log) -> None:
    val = (cfg.base.get("data") or {}).get("val") or []
    if cfg.val_simulate is None or not val or Path(val[0]).exists():
        return
    from specvit.data.simulate import SimulateConfig, simulate

    log(f"ablation: simulating the validation file {val[0]} (n={cfg.val_simulate.n}, seed={cfg.val_simulate.seed})")
    simulate(SimulateConfig(), Path(val[0]), n=cfg.val_simulate.n, seed=cfg.val_simulate.seed)


def _markdown(table: pd.DataFrame) -> str:
    def fmt(x):
        return f"{x:.4g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def summarise(cfg: AblationConfig, results: list[dict]) -> pd.DataFrame:
    """One row per finished (variant, seed); written to results.csv and results.md."""
    cols = ["variant", "seed", "params", "budget_cpu_s", "steps", "samples_seen", "val_r2", "cpu_s_per_step_timed",
            "cpu_s_session", "resumed"]
    table = pd.DataFrame([{k: r.get(k) for k in cols} for r in results], columns=cols)
    out = Path(cfg.out_dir)
    write_text_atomic(out / "results.csv", table.to_csv(index=False))
    write_text_atomic(out / "results.md", _markdown(table))
    return table


def run_ablation(cfg: AblationConfig, *, log=print) -> pd.DataFrame:
    """Every (variant, seed) in order (finished ones skipped), then the summary table."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(cfg, out / "config.yaml")
    for v in cfg.variants:  # every config is validated before anything trains
        variant_config(cfg, v, 0, out / "_check", max_steps=1, timing=False)
    _ensure_val(cfg, log)
    results = [run_variant(cfg, v, s, log=log) for v in cfg.variants for s in (v.seeds or cfg.seeds)]
    return summarise(cfg, [r for r in results if r is not None])
