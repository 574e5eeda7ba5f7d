"""The quickstart's default models: valid configs, and the fairness rule of issue #13."""
from specvit.evaluate.scaling import ScalingConfig, ScalingData, _neural_config
from specvit.models import create_model
from specvit.quickstart import QuickstartConfig, load_quickstart_config


def _run_configs(tmp_path):
    cfg = load_quickstart_config(overrides=[f"out_dir={tmp_path}"])
    sc = ScalingConfig(data=ScalingData(train="t.h5", val="v.h5", test="x.h5", labels=[cfg.label]),
                       sizes=[cfg.n_train], models=cfg.models, out_dir=str(tmp_path), seed=cfg.seed)
    return cfg, {m.name: _neural_config(sc, m, cfg.n_train, tmp_path / m.name) for m in cfg.models if m.kind == "neural"}


def test_default_models_validate_and_build(tmp_path):
    cfg, rcs = _run_configs(tmp_path)
    assert [m.name for m in cfg.models] == ["specvit", "cnn", "mlp", "lightgbm", "ridge"]
    for rc in rcs.values():
        m = create_model(rc.model.name, **rc.model.overrides)
        assert m.config.n_pixels == 4096


def test_neural_models_see_the_same_fresh_spectra_budget(tmp_path):
    cfg, rcs = _run_configs(tmp_path)
    budgets = {name: (rc.data.source, rc.run.epochs * rc.data.simulate.samples_per_epoch, rc.run.batch_size,
                      rc.run.early_stopping_patience, rc.data.val) for name, rc in rcs.items()}
    assert len(set(map(str, budgets.values()))) == 1, budgets  # equal samples seen, same stopping rule
    assert budgets["specvit"][0] == "simulate"
    # the stream's prior is the prior the quickstart's training file is simulated from
    from specvit.data.simulate import SimulateConfig
    from specvit.config import config_to_dict

    sim = config_to_dict(SimulateConfig())
    for rc in rcs.values():
        stream = config_to_dict(rc.data.simulate)
        for key in ("labels", "observing", "instrument", "model"):
            assert stream[key] == sim[key], key
    # the classical baselines stay on the file
    assert all(not m.options.get("data") for m in cfg.models if m.kind != "neural")
    assert QuickstartConfig().models[0].options["model"]["name"].startswith("specvit")


def test_shipped_one_thread_config_matches_the_quickstart_entries():
    # configs/quickstart_neural.yaml reproduces docs/models.md's numbers: it must stay the quickstart's entries
    from specvit.evaluate.scaling import load_scaling_config

    shipped = {m.name: m.options for m in load_scaling_config("configs/quickstart_neural.yaml").models}
    for m in QuickstartConfig().models:
        if m.kind != "neural":
            continue
        want = {k: v for k, v in m.options.items()}
        got = shipped[m.name]
        assert got["model"] == want["model"] and got["optim"] == want["optim"] and got["schedule"] == want["schedule"]
        assert got["data"]["source"] == want["data"]["source"]
        assert got["data"]["simulate"]["samples_per_epoch"] == want["data"]["simulate"]["samples_per_epoch"]
        for k in ("batch_size", "epochs", "early_stopping_metric", "early_stopping_patience"):
            assert got["run"][k] == want["run"][k], k


def test_r2_title_says_what_each_model_learned_from():
    """Default models: the networks on fresh simulations, LightGBM/Ridge on the file; file-only configs keep N_train."""
    from specvit.evaluate.scaling import ScalingModel
    from specvit.quickstart import QuickstartConfig, _r2_title

    title = _r2_title(QuickstartConfig())
    assert title.endswith("(networks: fresh simulations; others: N_train = 8000)")
    file_only = QuickstartConfig(models=[ScalingModel("ridge", "ridge", {})], n_train=500)
    assert _r2_title(file_only).endswith("(N_train = 500)")
