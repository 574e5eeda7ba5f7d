"""specvit ablation: equal CPU-time budgets per variant, resumable, runners share the list."""
import json
import subprocess
import sys

import pytest

from specvit.atomic import lock_path_for
from specvit.errors import ConfigError
from specvit.evaluate import ablation
from specvit.evaluate.ablation import load_ablation_config, run_ablation
from test_scaling import write_splits


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("ablation_data"), n_train=200, n_val=60, n_test=10)


def _cfg(splits, out, **kw):
    doc = {
        "out_dir": str(out), "budget_cpu_s": 0.4, "timing_steps": 2, "timing_warmup_steps": 1, "seeds": [0],
        "base": {"data": {"train": [splits["train"]], "val": [splits["val"]], "labels": ["log_g"]},
                 "model": {"name": "specvit_tiny"},
                 "run": {"batch_size": 32, "num_threads": 1, "device": "cpu"}},
        "variants": [{"name": "base"}, {"name": "stem", "set": {"model.overrides.conv_stem": [4]}}],
    }
    doc.update(kw)
    return ablation.load_config(ablation.AblationConfig, data=doc)


def test_every_variant_gets_the_budget_and_a_rerun_skips(splits, tmp_path, monkeypatch):
    cfg = _cfg(splits, tmp_path / "abl")
    table = run_ablation(cfg, log=lambda *_: None)
    assert list(table["variant"]) == ["base", "stem"]
    for name in ("base", "stem"):
        folder = tmp_path / "abl" / name / "seed0"
        res = json.loads((folder / "result.json").read_text())
        per_step = json.loads((folder / "timing.json").read_text())["cpu_s_per_step"]
        assert per_step > 0
        assert res["steps"] == max(1, int(0.4 // per_step))  # budget / measured CPU-s per step
        assert res["samples_seen"] == res["steps"] * 32
        assert res["steps_this_session"] == res["steps"]
        assert -10 < res["val_r2"] < 1
    assert (tmp_path / "abl" / "results.md").read_text().count("\n") == 4  # header, rule, 2 rows
    # a rerun trains nothing
    monkeypatch.setattr(ablation, "_train", lambda *a, **k: pytest.fail("a finished variant was retrained"))
    again = run_ablation(cfg, log=lambda *_: None)
    assert list(again["val_r2"]) == list(table["val_r2"])


def test_a_variant_locked_by_another_runner_is_skipped(splits, tmp_path, monkeypatch):
    cfg = _cfg(splits, tmp_path / "abl", variants=[{"name": "base"}])
    folder = tmp_path / "abl" / "base" / "seed0"
    lock = lock_path_for(folder)
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"), str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(ablation, "_train", lambda *a, **k: pytest.fail("trained a locked variant"))
        table = run_ablation(cfg, log=lambda *_: None)
        assert table.empty and not (folder / "result.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_bad_configs_are_refused(splits, tmp_path):
    with pytest.raises(ConfigError, match="unique"):
        _cfg(splits, tmp_path, variants=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(ConfigError) as e:
        run_ablation(_cfg(splits, tmp_path, variants=[{"name": "a", "set": {"optim.lr": -1.0}}]), log=lambda *_: None)
    assert "variant 'a'" in str(e.value) and "optim.lr" in str(e.value)
    with pytest.raises(ConfigError):
        _cfg(splits, tmp_path, budget_cpu_s=0)
    with pytest.raises(ConfigError) as e:  # a misspelt key is named before anything trains
        run_ablation(_cfg(splits, tmp_path, variants=[{"name": "b", "set": {"optim.learning_rate": 1e-3}}]),
                     log=lambda *_: None)
    assert "optim.learning_rate" in str(e.value) and "unknown config key" in str(e.value)


@pytest.mark.parametrize("name", ["ablation_specvit.yaml", "ablation_specvit_flatten.yaml"])
def test_the_shipped_config_validates(tmp_path, name):
    cfg = load_ablation_config(f"configs/{name}", [f"out_dir={tmp_path}"])
    for v in cfg.variants:
        tc = ablation.variant_config(cfg, v, 0, tmp_path / v.name, max_steps=5, timing=False)
        assert tc.data.source == "simulate" and tc.run.max_steps == 5 and tc.run.eval_every_steps == 5
