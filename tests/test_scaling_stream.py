"""specvit scaling (and so the quickstart) with a neural model trained on fresh simulations."""
import json

import pytest
import yaml

from specvit.data.simulate import SimulateConfig, simulate
from specvit.errors import ConfigError
from specvit.evaluate.scaling import load_scaling_config, plan, run_scaling


@pytest.fixture(scope="module")
def sim_splits(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream_scaling")
    return {name: str(simulate(SimulateConfig(), d / f"{name}.h5", n=n, seed=seed)[0])
            for name, n, seed in (("train", 40, 1), ("val", 30, 2), ("test", 30, 3))}


def _cfg(splits, out, sizes=(40,)):
    stream = {"source": "simulate", "simulate": {"samples_per_epoch": 128, "stats_samples": 64, "threads": 1}}
    return load_scaling_config(data={
        "out_dir": str(out), "sizes": list(sizes), "seed": 3, "bootstrap_resamples": 10,
        "data": {"train": splits["train"], "val": splits["val"], "test": splits["test"], "labels": ["log_g"]},
        "models": [
            {"name": "mlp_stream", "options": {"model": {"name": "mlp_small"}, "data": stream,
                                               "run": {"epochs": 1, "batch_size": 32, "num_threads": 1}}},
            {"name": "ridge", "kind": "ridge"},
        ]})


def test_streamed_model_trains_on_simulations_and_is_tested_on_the_shared_file(sim_splits, tmp_path):
    cfg = _cfg(sim_splits, tmp_path / "out")
    (_, _, rc), (_, _, ridge_rc) = plan(cfg)
    assert rc.data.source == "simulate" and rc.data.train == [] and rc.data.max_train_rows is None
    assert rc.data.val == [sim_splits["val"]]
    assert ridge_rc.data.train == sim_splits["train"] and ridge_rc.data.max_train_rows == 40
    table = run_scaling(cfg, log=lambda *_: None)
    assert set(table["model"]) == {"mlp_stream", "ridge"}
    res = json.loads((tmp_path / "out/runs/mlp_stream/n40/result.json").read_text())
    assert res["test"]["labels"]["log_g"]["overall"]["n"] == 30  # scored on the shared test file
    assert res["train"]["global_step"] == 128 // 32  # one "epoch" of the stream, not 40 rows
    run_cfg = yaml.safe_load((tmp_path / "out/runs/mlp_stream/n40/config.yaml").read_text())
    assert run_cfg["config"]["data"]["source"] == "simulate"


def test_streamed_model_refuses_several_sizes(sim_splits, tmp_path):
    with pytest.raises(ConfigError) as e:
        plan(_cfg(sim_splits, tmp_path / "out", sizes=(20, 40)))
    assert "data.source" in str(e.value.field)
