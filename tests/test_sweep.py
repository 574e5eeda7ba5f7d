"""specvit sweep: Optuna study in SQLite, resumable, seeded; trials table and figures."""
import json

import optuna
import pandas as pd
import pytest
import yaml

from specvit.cli import main
from specvit.errors import ConfigError
from specvit.evaluate.sweep import ablation_table, load_sweep_config, params_key, run_sweep
from test_scaling import write_splits


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("sweep_data"), n_train=120, n_val=60, n_test=10)


def _cfg(splits, out, **kw):
    doc = {
        "out_dir": str(out), "n_trials": 3, "seed": 5, "n_startup_trials": 2,
        "base": {"data": {"train": [splits["train"]], "val": [splits["val"]], "labels": ["log_g"]},
                 "model": {"name": "specvit_tiny"}, "run": {"epochs": 1, "batch_size": 40}},
        "space": {"model.overrides.patch_size": {"type": "categorical", "choices": [8, 16]},
                  "model.overrides.heads": {"type": "categorical", "choices": [2, 3]},
                  "optim.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
    }
    doc.update(kw)
    return doc


def _study(out):
    return optuna.load_study(study_name="specvit_sweep", storage=f"sqlite:///{out / 'study.db'}")


def test_sweep_runs_resumes_and_requeues_interrupted_trials(splits, tmp_path):
    out = tmp_path / "sweep"
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(_cfg(splits, out)))
    assert main(["sweep", "--config", str(path)]) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and set(trials["state"]) <= {"COMPLETE", "FAIL"}
    # heads=3 does not divide hidden=32: such trials fail as "invalid" and count toward n_trials
    bad = trials[trials["model.overrides.heads"] == 3]
    assert (bad["state"] == "FAIL").all() and bad["invalid"].str.contains("divisible").all()
    good = trials[trials["state"] == "COMPLETE"]
    for _, t in good.iterrows():
        metrics = json.loads((out / "trials" / t["dir"].split("/")[-1] / "metrics.json").read_text())
        assert abs(metrics["val_r2"] - t["val_r2"]) < 1e-9  # the objective is the trainer's validation R²
    if len(good):
        assert (out / "best.json").exists() and (out / "ablation.png").read_bytes().startswith(b"\x89PNG")

    # simulate a kill in the middle of a trial: a RUNNING trial left in the database
    study = _study(out)
    t = study.ask()
    params = {"model.overrides.patch_size": t.suggest_categorical("model.overrides.patch_size", [8, 16]),
              "model.overrides.heads": t.suggest_categorical("model.overrides.heads", [2, 3]),
              "optim.lr": t.suggest_float("optim.lr", 1e-4, 3e-3, log=True)}
    stale = t.number
    logs = []
    run_sweep(load_sweep_config(path, ["n_trials=4"]), log=logs.append)
    assert any(f"trial {stale} was interrupted" in s for s in logs)
    trials = _study(out).trials
    assert trials[stale].state.name == "FAIL"
    rerun = [x for x in trials if x.user_attrs.get("requeued_from") == stale]
    assert len(rerun) == 1 and rerun[0].params == params
    assert rerun[0].user_attrs["dir"].endswith(params_key(params))
    assert len(pd.read_csv(out / "trials.csv")) == 5  # 3 + the stale one + its re-run
    # nothing left to do: a third call trains nothing
    logs = []
    run_sweep(load_sweep_config(path, ["n_trials=4"]), log=logs.append)
    assert any("all trials finished earlier" in s for s in logs)


def test_sweep_is_seeded(splits, tmp_path):
    cfg = {**_cfg(splits, tmp_path / "a"), "n_trials": 2,
           "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
           "pruning": True, "n_startup_trials": 1}
    s1 = run_sweep(load_sweep_config(data=cfg), log=lambda s: None)
    s2 = run_sweep(load_sweep_config(data={**cfg, "out_dir": str(tmp_path / "b")}), log=lambda s: None)
    assert [t.params for t in s1.trials] == [t.params for t in s2.trials]
    assert [t.value for t in s1.trials] == pytest.approx([t.value for t in s2.trials], rel=1e-6)


def test_sweep_config_errors(splits, tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        run_sweep(load_sweep_config(data=_cfg(splits, tmp_path / "x", space={
            "optim.lrr": {"type": "float", "low": 1e-4, "high": 1e-3}})))
    with pytest.raises(ConfigError, match="low < high"):
        load_sweep_config(data=_cfg(splits, tmp_path / "y", space={"optim.lr": {"type": "float", "low": 1, "high": 0}}))
    with pytest.raises(ConfigError, match="choices"):
        load_sweep_config(data=_cfg(splits, tmp_path / "z", space={"model.overrides.depth": {"type": "categorical"}}))
    with pytest.raises(ConfigError, match="type"):
        load_sweep_config(data=_cfg(splits, tmp_path / "w", space={"optim.lr": {"type": "uniform", "low": 0, "high": 1}}))
    assert not (tmp_path / "x" / "study.db").exists()


def test_ablation_table_groups_and_bins():
    trials = pd.DataFrame({"state": ["COMPLETE"] * 6 + ["FAIL"], "val_r2": [0.1, 0.3, 0.5, 0.2, 0.4, 0.6, None],
                           "patch": [8, 8, 8, 16, 16, 16, 32], "lr": [1e-4, 2e-4, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2]})
    ab = ablation_table(trials, ["patch", "lr"], "val_r2", continuous=["lr"], n_bins=2)
    p = ab[ab["param"] == "patch"].set_index("value")
    assert list(p.index) == ["8", "16"]  # the failed trial (patch 32) is not a level
    assert p.loc["8", "val_r2"] == pytest.approx(0.3) and p.loc["16", "n"] == 3
    assert p.loc["8", "err"] == pytest.approx(0.2 / 3**0.5)
    lr = ab[ab["param"] == "lr"]
    assert len(lr) == 2 and lr["n"].tolist() == [3, 3]
    assert lr["val_r2"].tolist() == pytest.approx([0.3, 0.4])


def test_shipped_small_sweep_config_is_valid(tmp_path):
    from pathlib import Path

    from specvit.evaluate.sweep import _check_space

    path = Path(__file__).resolve().parents[1] / "configs" / "sweep_small.yaml"
    cfg = load_sweep_config(path, [f"out_dir={tmp_path}"])
    _check_space(cfg)  # every swept key is a real training-config key
    assert "model.overrides.patch_size" in cfg.space and cfg.space["optim.lr"].log


def test_no_importance_figure_from_too_few_trials(splits, tmp_path):
    cfg = {**_cfg(splits, tmp_path / "few"), "n_trials": 1,
           "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}}}
    logs = []
    run_sweep(load_sweep_config(data=cfg), log=logs.append)
    assert any("no importance figure" in s for s in logs)
    assert not (tmp_path / "few" / "importance.png").exists()
    assert (tmp_path / "few" / "trials.csv").exists()
