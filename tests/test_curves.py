"""specvit scaling, stream mode: learning curves vs samples seen on the simulated stream (evaluate/curves.py)."""
import json

import numpy as np
import pandas as pd
import pytest

from specvit.errors import ConfigError
from specvit.evaluate.curves import TestSet, advance, sample_grid, stream_dir
from specvit.evaluate.scaling import load_scaling_config, run_scaling


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny train / val / test files from specvit simulate (the stream's default prior and instrument)."""
    from specvit.data.simulate import SimulateConfig, simulate

    d = tmp_path_factory.mktemp("curves")
    out = {}
    for name, n, seed in (("train", 64, 1), ("val", 32, 2), ("test", 40, 3)):
        simulate(SimulateConfig(), d / f"{name}.h5", n=n, seed=seed, progress=False)
        out[name] = str(d / f"{name}.h5")
    return out


def doc(files, out, *, models=None, **stream):
    mlp = {"name": "mlp", "options": {"model": {"name": "mlp_small"}, "optim": {"lr": 3e-3},
                                      "schedule": {"kind": "constant", "warmup_steps": 2},
                                      "data": {"prefetch_batches": 0}, "run": {"batch_size": 32, "num_threads": 1}}}
    return {"out_dir": str(out), "sizes": [64], "seed": 5, "bootstrap_resamples": 10,
            "data": {"train": files["train"], "val": files["val"], "test": files["test"], "labels": ["log_g"]},
            "stream": {"simulate": {"samples_per_epoch": 96, "stats_samples": 32}, "first_samples": 64,
                       "max_samples": 256, **stream},
            "models": models if models is not None else [mlp]}


def test_sample_grid_doubles_and_ends_at_the_budget():
    assert sample_grid(8192, 65536) == [8192, 16384, 32768, 65536]
    assert sample_grid(64, 200) == [64, 128, 200]
    assert sample_grid(64, 64) == [64]


def _points(cfg, name="mlp"):
    d = stream_dir(cfg, next(m for m in cfg.models if m.name == name)) / "points"
    return {int(p.stem[1:]): (json.loads(p.read_text()), pd.read_csv(p.with_suffix(".csv")))
            for p in sorted(d.glob("s*.json"))}


class Kill(Exception):
    pass


def test_killed_run_resumes_onto_the_same_curve_and_records_each_point_once(files, tmp_path):
    full = load_scaling_config(data=doc(files, tmp_path / "full"))
    test = TestSet(files["test"], labels=["log_g"], noise_level=1.0, noise_seed=42)
    logs_full = []
    advance(full, full.models[0], 256, test, log=logs_full.append)
    ref = _points(full)
    assert sorted(ref) == [64, 128, 256]  # 32 samples per step: grid points at steps 2, 4, 8
    assert [ref[g][0]["step"] for g in (64, 128, 256)] == [2, 4, 8]
    walls = [ref[g][0]["train_wall_s"] for g in (64, 128, 256)]
    assert walls == sorted(walls) and walls[0] > 0

    cut = load_scaling_config(data=doc(files, tmp_path / "cut"))
    logs = []

    def kill(trainer, step):
        if step == 6:  # after the 128 point (step 4, checkpointed), before the 256 point
            raise Kill()

    with pytest.raises(Kill):
        advance(cut, cut.models[0], 256, test, log=logs.append, callbacks=[kill])
    assert sorted(_points(cut)) == [64, 128]
    advance(cut, cut.models[0], 256, test, log=logs.append)  # the same call again resumes
    got = _points(cut)
    assert sorted(got) == [64, 128, 256]
    recorded = [line.split(":")[1].split(" samples")[0].strip() for line in logs]
    assert recorded == ["64", "128", "256"]  # each grid point once over both sessions
    for g in (64, 128, 256):
        np.testing.assert_allclose(got[g][1]["log_g_pred"], ref[g][1]["log_g_pred"], rtol=0, atol=1e-6)
        assert got[g][0]["samples_seen"] == ref[g][0]["samples_seen"] == g
    # the clock resumed from the checkpoint's value, not from zero
    assert got[256][0]["train_wall_s"] > got[128][0]["train_wall_s"] > 0
    # asking again for a finished budget trains nothing
    before = (stream_dir(cut, cut.models[0]) / "checkpoints" / "last.pt").stat().st_mtime_ns
    advance(cut, cut.models[0], 256, test, log=logs.append)
    assert (stream_dir(cut, cut.models[0]) / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_stream_job_writes_table_and_figures_and_extends(files, tmp_path):
    d = doc(files, tmp_path / "job", baseline_after=1,
            models=[*doc(files, tmp_path)["models"], {"name": "ridge", "kind": "ridge"}])
    d["stream"]["max_samples"] = 128
    t = run_scaling(load_scaling_config(data=d))
    assert set(t["model"]) == {"mlp", "ridge"}
    mlp = t[t["model"] == "mlp"].sort_values("samples_seen")
    assert mlp["samples_seen"].tolist() == [64, 128] and mlp["n_test"].eq(40).all()
    assert t[t["model"] == "ridge"]["n_train_rows"].tolist() == [64]
    out = tmp_path / "job"
    for f in ("curves.csv", "curves_by_snr.csv", "curves_log_g.png", "curves_time_log_g.png",
              "curves_cpu_log_g.png", "curves_snr_log_g.png"):
        assert (out / f).stat().st_size > 0, f
    # raising the budget and re-running extends the same run (earlier points kept, one new point)
    d["stream"]["max_samples"] = 256
    t2 = run_scaling(load_scaling_config(data=d))
    m2 = t2[t2["model"] == "mlp"].sort_values("samples_seen")
    assert m2["samples_seen"].tolist() == [64, 128, 256]
    pd.testing.assert_frame_equal(m2.iloc[:2].reset_index(drop=True), mlp.reset_index(drop=True))


@pytest.mark.parametrize("change, field", [
    (lambda d: d["models"][0]["options"].pop("schedule"), "models[mlp].options.schedule.kind"),
    (lambda d: d["models"][0]["options"]["schedule"].update(warmup_frac=0.1), "models[mlp].options.schedule.warmup_frac"),
    (lambda d: d["models"][0]["options"]["data"].update(source="file"), "models[mlp].options.data.source"),
    (lambda d: d["models"][0]["options"]["run"].update(epochs=3), "models[mlp].options.run.epochs"),
    (lambda d: d["stream"].update(max_samples=32), "stream.max_samples"),
    (lambda d: d["models"][0].update(max_samples=0), "models[mlp].max_samples"),
    (lambda d: d.pop("stream") and d["models"][0].update(max_samples=100), "models.max_samples"),
    (lambda d: d["stream"].update(bayes={"input": "x.h5"}), "stream.bayes.input"),
])
def test_bad_stream_config_is_rejected_before_anything_runs(files, tmp_path, change, field):
    d = doc(files, tmp_path / "bad")
    change(d)
    with pytest.raises(ConfigError) as e:
        run_scaling(load_scaling_config(data=d))
    assert field in str(e.value.field), str(e.value)
    assert not (tmp_path / "bad").exists()
