"""Architecture / hyper-parameter sweeps with Optuna (``specvit sweep``).

A sweep is a base training config (:class:`specvit.train.config.TrainConfig`
as a dict) plus a search space keyed by dotted config keys, e.g.
``model.overrides.patch_size`` or ``optim.lr``. Each trial trains one model
through :class:`specvit.train.Trainer` and is scored on the VALIDATION set
(never the test set) by ``metric``.

Resuming: the study lives in SQLite (``<out_dir>/study.db``, opened with
``load_if_exists=True``) and every trial trains in a folder named by a hash of
its parameters. After a kill, the next run marks trials left RUNNING as failed,
re-queues their parameters (same folder, so the trainer continues from its
last checkpoint), and runs only the trials still missing from ``n_trials``.
The TPE sampler is seeded; note that a resumed study is not bitwise the same
sequence of suggestions as an uninterrupted one (Optuna does not store the
sampler's RNG state), though every finished trial is kept.

Outputs: ``study.db``, ``trials.csv`` (one row per trial: number, state, value,
params, folder), ``best.json``, ``ablation.png`` (metric per setting of every
swept parameter, mean ± standard error over trials), ``importance.png``
(hyper-parameter importances, when enough trials finished),
``config.yaml``. Importances use PED-ANOVA (Watanabe et al. 2023, IJCAI, "PED-ANOVA:
Efficiently Quantifying Hyperparameter Importance in Arbitrary Subspaces"), which needs
no scikit-learn (Optuna's fANOVA does).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from specvit.atomic import write_text_atomic
from specvit.config import _deep_merge, load_config, write_resolved_config
from specvit.errors import ConfigError, InputError

#: metric -> (key in the trainer's result, optimisation direction)
METRICS = {"val_r2": ("val_r2", "maximize"), "val_loss": ("val_loss", "minimize"), "val_mae": ("val_mae_z", "minimize")}


@dataclass
class ParamSpec:
    """One dimension of the search space."""

    type: Literal["categorical", "int", "float"]
    choices: list[Any] | None = None  #: categorical values (numbers, strings, booleans)
    low: float | None = None  #: int/float lower bound
    high: float | None = None  #: int/float upper bound
    log: bool = False  #: sample on a log scale (int/float)
    step: float | None = None  #: grid step (int/float, not with log)

    def check(self, name: str) -> None:
        if self.type == "categorical":
            if not self.choices:
                raise ConfigError("a categorical parameter needs choices", field=f"space.{name}.choices")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ConfigError("needs low < high", field=f"space.{name}", value=(self.low, self.high))
        elif self.log and self.low <= 0:
            raise ConfigError("a log-scale range needs low > 0", field=f"space.{name}.low", value=self.low)

    def first(self):
        """A representative value (used to validate the key before the sweep starts)."""
        if self.type == "categorical":
            return self.choices[0]
        return int(self.low) if self.type == "int" else float(self.low)

    def suggest(self, trial, name: str):
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)


@dataclass
class SweepConfig:
    """``specvit sweep --config FILE`` (YAML + ``--set key=value``)."""

    base: dict[str, Any]  #: a TrainConfig as a mapping (data, model, optim, schedule, loss, run)
    space: dict[str, ParamSpec]  #: dotted TrainConfig key -> distribution
    out_dir: str = "runs/sweep"
    study_name: str = "specvit_sweep"
    n_trials: int = 20  #: finished trials wanted in total (complete, pruned, invalid combinations or diverged)
    seed: int = 42  #: seed of the TPE sampler
    metric: Literal["val_r2", "val_loss", "val_mae"] = "val_r2"  #: validation score to optimise
    pruning: bool = False  #: stop unpromising trials early (median pruner on validation evaluations)
    pruner_warmup_evals: int = 1  #: evaluations before a trial may be pruned
    n_startup_trials: int = 5  #: random trials before TPE (and before pruning starts)
    requeue_interrupted: bool = True  #: on start, fail + re-queue trials left RUNNING (set false with parallel workers)

    def __post_init__(self):
        if self.n_trials < 1:
            raise ConfigError("must be >= 1", field="n_trials", value=self.n_trials)
        if not self.space:
            raise ConfigError("the search space is empty", field="space")
        for name, spec in self.space.items():
            spec.check(name)


def load_sweep_config(path=None, overrides=(), *, data: dict | None = None) -> SweepConfig:
    return load_config(SweepConfig, path, overrides, data=data)


def _nest(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        cur = out
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return out


def params_key(params: dict) -> str:
    """Stable short hash of a parameter set (the trial's folder name)."""
    blob = json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def trial_config(cfg: SweepConfig, params: dict, out: Path):
    """The TrainConfig of one trial: ``base`` with ``params`` (dotted keys) applied, run.out_dir = ``out``."""
    from specvit.train.config import load_train_config

    merged = _deep_merge(cfg.base, _nest(params))
    merged = _deep_merge({"run": {"progress": False, "tensorboard": False}}, merged)
    merged["run"] = {**merged["run"], "out_dir": str(out)}
    return load_train_config(data=merged)


def _check_space(cfg: SweepConfig) -> None:
    """Every space key must be a real TrainConfig key (model overrides are checked by the model factory)."""
    try:
        trial_config(cfg, {k: s.first() for k, s in cfg.space.items()}, Path(cfg.out_dir) / "trials" / "_check")
    except ConfigError as e:
        raise ConfigError(f"search space or base config: {e}") from None


def _open_study(cfg: SweepConfig):
    import optuna

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.n_startup_trials)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.pruner_warmup_evals)
              if cfg.pruning else optuna.pruners.NopPruner())
    return optuna.create_study(storage=f"sqlite:///{(out / 'study.db').resolve()}", study_name=cfg.study_name,
                               sampler=sampler, pruner=pruner, direction=METRICS[cfg.metric][1], load_if_exists=True)


def _counted(trial) -> bool:
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and "invalid" in trial.user_attrs)


def run_sweep(cfg: SweepConfig, *, log=print):
    """Run (or resume) the study until ``n_trials`` trials are finished; write table and figures.

    Returns the Optuna study.
    """
    import optuna
    from optuna.trial import TrialState

    from specvit.train.trainer import StopTraining, Trainer

    _check_space(cfg)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we log trials ourselves
    out = Path(cfg.out_dir)
    study = _open_study(cfg)
    write_resolved_config(cfg, out / "config.yaml", extra={"sampler_seed": cfg.seed, "study": str(out / "study.db")})
    if cfg.requeue_interrupted:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
            log(f"sweep: trial {t.number} was interrupted; re-queued with the same parameters")
    key, _ = METRICS[cfg.metric]

    def objective(trial):
        params = {name: spec.suggest(trial, name) for name, spec in cfg.space.items()}
        folder = out / "trials" / params_key(params)
        trial.set_user_attr("dir", str(folder))
        try:
            tc = trial_config(cfg, params, folder)
            reported = {"n": 0}

            def report(trainer, step):
                h = trainer.history
                while reported["n"] < len(h):
                    row = h[reported["n"]]
                    reported["n"] += 1
                    if key in row and np.isfinite(row[key]):
                        trial.report(float(row[key]), reported["n"])
                        if cfg.pruning and trial.should_prune():
                            trial.set_user_attr("pruned_at_eval", reported["n"])
                            raise StopTraining()

            trainer = Trainer(tc, callbacks=[report])
        except (InputError, ValueError) as e:  # an impossible combination, e.g. hidden not divisible by heads
            trial.set_user_attr("invalid", str(e))
            log(f"sweep: trial {trial.number} invalid: {e}")
            return float("nan")
        try:
            result = trainer.fit()
        except FloatingPointError as e:  # diverged (non-finite loss): a result of these parameters, not a crash
            trial.set_user_attr("invalid", f"diverged: {e}")
            log(f"sweep: trial {trial.number} diverged: {e}")
            return float("nan")
        if "pruned_at_eval" in trial.user_attrs:
            raise optuna.TrialPruned()
        value = result.get(key)
        if value is None or not np.isfinite(value):
            raise InputError("the training run gave no validation metric (is data.val set?)", field="base.data.val",
                             value=cfg.base.get("data", {}).get("val"))
        trial.set_user_attr("train_seconds", result.get("train_seconds_this_session"))
        log(f"sweep: trial {trial.number} {params} -> {cfg.metric} = {value:.4f}")
        return float(value)

    remaining = cfg.n_trials - sum(_counted(t) for t in study.get_trials(deepcopy=False))
    if remaining > 0:
        log(f"sweep: {remaining} trial(s) to run (study {cfg.study_name!r} in {out / 'study.db'})")
        study.optimize(objective, n_trials=remaining, catch=())
    else:
        log("sweep: all trials finished earlier")
    write_outputs(cfg, study, log=log)
    return study


def trials_table(cfg: SweepConfig, study) -> pd.DataFrame:
    """One row per trial: number, state, value, every swept parameter (short names), folder, notes."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name, cfg.metric: t.value}
        row.update({k: t.params.get(k) for k in cfg.space})
        row["dir"] = t.user_attrs.get("dir")
        row["invalid"] = t.user_attrs.get("invalid")
        row["seconds"] = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append(row)
    return pd.DataFrame(rows)


def _level_text(v) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3g}"
    return str(v)


def _range_text(lo: float, hi: float) -> str:
    return f"{lo:.2g}" if f"{lo:.2g}" == f"{hi:.2g}" else f"{lo:.2g}\u2013\n{hi:.2g}"


def ablation_table(trials: pd.DataFrame, params, metric: str, *, continuous=(), max_levels: int = 8,
                   n_bins: int = 3) -> pd.DataFrame:
    """Mean ± standard error of ``metric`` over completed trials for each setting of each parameter.

    Parameters named in ``continuous`` (e.g. the learning rate) or with more than
    ``max_levels`` distinct values are grouped in ``n_bins`` quantile bins labelled by their
    range; the others by value. Rows: ``param, value, <metric>, err, best, n``.
    """
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[metric])
    rows = []
    for p in params:
        if p not in done or done[p].isna().all():
            continue
        col = done[p]
        if p in continuous or col.nunique() > max_levels:
            x = col.astype(float)
            k = min(n_bins, x.nunique())
            codes = pd.qcut(x.rank(method="first"), k, labels=False) if k > 1 else pd.Series(0, index=x.index)
            keys = [(_range_text(x[codes == c].min(), x[codes == c].max()), codes == c) for c in range(k)]
        else:
            keys = [(_level_text(v), col == v) for v in sorted(col.unique(), key=lambda v: (str(type(v)), v))]
        for label, sel in keys:
            v = done.loc[sel, metric].to_numpy(float)
            if len(v) == 0:
                continue
            rows.append({"param": p.split(".")[-1], "value": label, metric: float(v.mean()),
                         "err": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0,
                         "best": float(v.max()), "n": int(len(v))})
    return pd.DataFrame(rows)


def write_outputs(cfg: SweepConfig, study, *, log=print) -> dict[str, Path]:
    """``trials.csv``, ``best.json``, ``ablation.png`` and (if computable) ``importance.png``."""
    import optuna

    from specvit.baselines.common import write_csv
    from specvit.evaluate.figures import plot_ablation, plot_importance
    from specvit.evaluate.scaling import _save

    out = Path(cfg.out_dir)
    paths = {}
    table = trials_table(cfg, study)
    paths["trials"] = write_csv(out / "trials.csv", table)
    complete = table[table["state"] == "COMPLETE"]
    if complete.empty:
        log("sweep: no finished trial yet; no figures")
        return paths
    best = study.best_trial
    write_text_atomic(out / "best.json", json.dumps({
        "number": best.number, "metric": cfg.metric, "value": best.value, "params": best.params,
        "dir": best.user_attrs.get("dir"), "n_complete": int(len(complete)), "sampler_seed": cfg.seed}, indent=2))
    paths["best"] = out / "best.json"
    ab = ablation_table(table, list(cfg.space), cfg.metric,
                        continuous=[k for k, spec in cfg.space.items() if spec.type == "float"])
    if not ab.empty:
        fig = plot_ablation(ab, metric_col=cfg.metric, err_col="err", count_col="n",
                            metric_label=f"validation {cfg.metric} (mean ± s.e.)",
                            title=f"sweep ablation: {len(complete)} finished trials")
        _save(fig, out / "ablation.png")
        paths["ablation"] = out / "ablation.png"
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            imp = optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        except (RuntimeError, ValueError) as e:  # too few trials or no parameter variation
            caught.append(warnings.WarningMessage(str(e), RuntimeWarning, "", 0))
            imp = {}
    too_few = [str(w.message) for w in caught if "too small" in str(w.message) or not imp]
    if too_few:  # Optuna then returns equal importances: not a measurement, so no figure
        log(f"sweep: no importance figure ({too_few[0]})")
        imp = {}
    if imp:
        _save(plot_importance({k.split(".")[-1]: v for k, v in imp.items()}), out / "importance.png")
        paths["importance"] = out / "importance.png"
    log(f"sweep: best trial {best.number}: {cfg.metric} = {best.value:.4f} with {best.params}")
    return paths
