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


def test_summary_finds_where_the_target_passes_each_model_and_the_slopes():
    from specvit.evaluate.curves import ceiling_gaps, summarise_curves

    t = pd.DataFrame({"model": ["vit"] * 3 + ["mlp"] * 3 + ["ridge"] * 2, "label": "log_g",
                      "samples_seen": [64, 128, 256, 64, 128, 256, 100, 200],
                      "r2": [0.1, 0.3, 0.6, 0.2, 0.35, 0.5, 0.25, 0.3]})
    s = summarise_curves(t, target="vit", label="log_g")
    assert s["versus"]["mlp"]["passes_at"] == 256 and s["versus"]["mlp"]["gap_at_last"] == pytest.approx(-0.1)
    # ridge at 128 rows, log-interpolated between 100 and 200: 0.25 + 0.05 log(1.28)/log(2) = 0.2678 < 0.3
    assert s["versus"]["ridge"]["passes_at"] == 128 and s["versus"]["ridge"]["compared_points"] == 1
    assert s["versus"]["ridge"]["exceeds_other_best_at"] == 128 and s["versus"]["mlp"]["exceeds_other_best_at"] == 256
    assert s["models"]["vit"]["slope_per_decade_last2"] == pytest.approx(0.3 / np.log10(2))
    t.loc[t["model"] == "vit", "r2"] = [0.0, 0.1, 0.2]
    assert summarise_curves(t, target="vit", label="log_g")["versus"]["mlp"]["passes_at"] is None
    # an early lead that is lost and regained: passes_at is where it stays ahead, first_ahead_at the early lead
    t.loc[t["model"] == "vit", "r2"] = [0.3, 0.3, 0.6]
    v = summarise_curves(t, target="vit", label="log_g")["versus"]["mlp"]
    assert v["passes_at"] == 256 and v["first_ahead_at"] == 64
    t.loc[t["model"] == "vit", "r2"] = [0.3, 0.4, 0.6]
    v = summarise_curves(t, target="vit", label="log_g")["versus"]["mlp"]
    assert v["passes_at"] == 64 and v["first_ahead_at"] == 64

    bins = pd.DataFrame({"model": ["van_trees", "van_trees", "mlp", "mlp", "vit", "bayes"], "label": "log_g",
                         "kind": ["ceiling", "ceiling", "neural", "neural", "neural", "reference"],
                         "samples_seen": [None, None, 256, 256, 128, None],
                         "snr_bin": ["2.5-3.5", "8.5-12.5", "2.5-3.5", "8.5-12.5", "8.5-12.5", "8.5-12.5"],
                         "r2": [0.5, 0.9, 0.1, 0.8, 0.87, 0.95]})
    g = ceiling_gaps(bins, label="log_g")
    # the Bayes reference (0.95) is listed but is not a trained model
    assert g["bins"]["8.5-12.5"]["best_model"] == "vit" and g["bins"]["8.5-12.5"]["gap"] == pytest.approx(0.03)
    assert g["bins"]["8.5-12.5"]["bayes_posterior_mean"] == pytest.approx(0.95)
    assert g["bins"]["2.5-3.5"]["counts"] is False and g["met"] is True  # the low-SNR bin does not count
    assert g["bins"]["8.5-12.5"]["gap_to_bayes"] == pytest.approx(0.08) and g["met_bayes"] is False
    assert g["bins"]["2.5-3.5"]["gap_to_bayes"] is None  # no posterior in that bin
    bins.loc[4, "r2"] = 0.84
    assert ceiling_gaps(bins, label="log_g")["met"] is False
    bins.loc[4, "r2"] = 0.92
    assert ceiling_gaps(bins, label="log_g")["met_bayes"] is True


def test_two_models_of_one_kind_get_different_colours():
    from specvit.evaluate.curve_figures import model_colors

    c = model_colors(["mlp_small", "specvit_p256", "specvit_flatten", "bayes", "specvit_p256"])
    assert len(c) == 4 and len(set(c.values())) == 4
    assert c["specvit_p256"] != c["specvit_flatten"] and c["mlp_small"] != c["specvit_p256"]


def test_paired_gap_at_the_last_common_point_reads_both_models_predictions(files, tmp_path):
    from specvit.errors import InputError
    from specvit.evaluate.curves import paired_gaps, summarise_curves

    vit = {**doc(files, tmp_path)["models"][0], "name": "specvit_tiny"}
    cfg = load_scaling_config(data=doc(files, tmp_path / "p", models=[vit, doc(files, tmp_path)["models"][0]]))
    rng = np.random.default_rng(3)
    t = rng.normal(3.0, 1.0, 200)
    preds = {"specvit_tiny": t + rng.normal(0, 0.3, 200), "mlp": t + rng.normal(0, 0.6, 200)}
    for m in cfg.models:
        p = stream_dir(cfg, m) / "points"
        p.mkdir(parents=True)
        pd.DataFrame({"id": range(200), "row": range(200), "snr": 10.0, "log_g_true": t,
                      "log_g_pred": preds[m.name]}).to_csv(p / "s0000000128.csv", index=False)
    table = pd.DataFrame({"model": ["specvit_tiny", "mlp"], "label": "log_g", "samples_seen": [128, 128],
                          "r2": [0.91, 0.64]})
    s = summarise_curves(table, target="specvit_tiny", label="log_g")
    paired_gaps(cfg, s, label="log_g")
    pr = s["versus"]["mlp"]["paired"]
    assert pr["samples_seen"] == 128 and pr["n"] == 200 and pr["lo"] < pr["diff"] < pr["hi"]
    assert pr["diff"] > 0.15 and pr["frac_not_above_0"] == 0.0
    # predictions for other rows than the target's are refused, naming the file
    f = stream_dir(cfg, cfg.models[1]) / "points" / "s0000000128.csv"
    pd.read_csv(f).assign(row=lambda x: x["row"] + 1).to_csv(f, index=False)
    with pytest.raises(InputError, match="s0000000128.csv"):
        paired_gaps(cfg, summarise_curves(table, target="specvit_tiny", label="log_g"), label="log_g")
