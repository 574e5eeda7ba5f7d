"""The training engine: losses, options, resume == uninterrupted, early stopping, accumulation, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from specvit.errors import ConfigError, InputError
from specvit.train import StopTraining, Trainer, load_train_config
from specvit.train.losses import RegressionMetrics, make_loss
from specvit.train.schedule import lr_factor
from specvit.train.trainer import param_groups
from test_train_data import write_dataset

N_PIX = 256


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_data")
    write_dataset(d / "train.h5", n_rows=256, n_pixels=N_PIX, seed=0)
    write_dataset(d / "val.h5", n_rows=96, n_pixels=N_PIX, seed=1)
    return d


def make_cfg(files, out, *, overrides=(), **sections):
    data = {
        "data": {"train": [str(files / "train.h5")], "val": [str(files / "val.h5")], "labels": ["log_g", "T_eff"],
                 "chunk_rows": 32, "buffer_rows": 96, "noise_level": 1.0},
        "model": {"name": "mlp_small"},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 2, "min_lr": 1e-4},
        "run": {"out_dir": str(out), "epochs": 3, "batch_size": 32, "progress": False, "log_every_steps": 2,
                "tensorboard": False, "seed": 7},
    }
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return load_train_config(data=data, overrides=list(overrides))


def params_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- learning
@pytest.mark.parametrize("model,lr,epochs", [("mlp_small", 1e-2, 6), ("cnn_small", 3e-3, 4), ("specvit_tiny", 1e-3, 8)])
def test_loss_decreases_every_architecture(files, tmp_path, model, lr, epochs):
    cfg = make_cfg(files, tmp_path / model, run={"epochs": epochs, "batch_size": 16}, optim={"lr": lr},
                   model={"name": model})
    tr = Trainer(cfg)
    first = tr.evaluate()["val_loss"]
    res = tr.fit()
    assert res["val_loss"] < 0.8 * first
    assert res["val_r2"] > 0.3  # mean R2 over log_g and T_eff, on the whole validation set


@pytest.mark.parametrize("loss", ["mse", "l1", "huber", "gaussian_nll"])
def test_every_loss_trains(files, tmp_path, loss):
    over = {"gaussian": True} if loss == "gaussian_nll" else {}
    cfg = make_cfg(files, tmp_path, loss={"kind": loss, "huber_delta": 0.5},
                   model={"name": "cnn_small", "overrides": over}, run={"epochs": 3, "batch_size": 16})
    tr = Trainer(cfg)
    before = tr.evaluate()["val_loss"]
    res = tr.fit()
    assert np.isfinite(res["val_loss"]) and res["val_loss"] < before
    from specvit.models.io import read_meta

    meta = read_meta(tmp_path / "model")
    assert meta.model_config["gaussian"] is (loss == "gaussian_nll")
    assert meta.extras["train_config"]["loss"]["kind"] == loss
    # the sigma calibration (specvit.train.calibration) exists exactly for the Gaussian head
    assert (tmp_path / "model" / "calibration.json").exists() is (loss == "gaussian_nll")
    assert ("sigma_calibration" in res) is (loss == "gaussian_nll")


def test_loss_values_match_formulas():
    torch.manual_seed(0)
    p, y, lv = torch.randn(5, 2), torch.randn(5, 2), torch.randn(5, 2)
    assert torch.allclose(make_loss("mse")(p, y), ((p - y) ** 2).mean())
    assert torch.allclose(make_loss("l1")(p, y), (p - y).abs().mean())
    d = (p - y).abs()
    hub = torch.where(d < 0.5, 0.5 * d**2, 0.5 * (d - 0.25)).mean()
    assert torch.allclose(make_loss("huber", huber_delta=0.5)(p, y), hub)
    nll = (0.5 * (lv + (y - p) ** 2 / lv.exp())).mean()
    assert torch.allclose(make_loss("gaussian_nll")((p, lv), y), nll)
    w = make_loss("mse", label_weights=[3.0, 1.0])(p, y)
    assert torch.allclose(w, (3 * ((p - y) ** 2)[:, 0].mean() + ((p - y) ** 2)[:, 1].mean()) / 4)
    with pytest.raises(ConfigError, match="Gaussian head"):
        make_loss("gaussian_nll")(p, y)


def test_bf16_autocast_on_cpu_trains(files, tmp_path):
    cfg = make_cfg(files, tmp_path, run={"precision": "bf16", "epochs": 4})
    tr = Trainer(cfg)
    before = tr.evaluate()["val_loss"]
    assert tr.fit()["val_loss"] < before


def test_fp16_needs_cuda(files, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="fp16"):
        Trainer(make_cfg(files, tmp_path, run={"precision": "fp16"}))


def test_compile_option_goes_through_torch_compile(files, tmp_path):
    cfg = make_cfg(files, tmp_path, run={"compile": True, "compile_backend": "eager", "epochs": 1})
    tr = Trainer(cfg)
    assert type(tr.net).__name__ == "OptimizedModule"
    assert np.isfinite(tr.fit()["val_loss"])


# --------------------------------------------------------------------------- resume
@pytest.mark.parametrize("kill_at", [5, 11])
def test_killed_mid_epoch_resume_equals_uninterrupted(files, tmp_path, kill_at):
    kw = dict(model={"name": "specvit_tiny", "overrides": {"patch_size": 8, "dropout": 0.2}},
              run={"epochs": 2, "checkpoint_every_steps": 3, "log_every_steps": 1})
    full = Trainer(make_cfg(files, tmp_path / "full", **kw))
    full.fit()

    def kill(trainer, step):
        if step == kill_at:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        Trainer(make_cfg(files, tmp_path / "cut", **kw), callbacks=[kill]).fit()
    seen = []
    resumed = Trainer(make_cfg(files, tmp_path / "cut", **kw), callbacks=[lambda t, s: seen.append(s)])
    resumed.fit()
    assert seen[0] == (kill_at // 3) * 3 + 1  # continued after the last checkpoint, not from scratch
    a, b = params_of(full.model), params_of(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # same optimizer state and the same logged losses (no duplicated steps in the CSV)
    import pandas as pd

    la = pd.read_csv(tmp_path / "full" / "metrics.csv").dropna(subset=["train_loss"])
    lb = pd.read_csv(tmp_path / "cut" / "metrics.csv").dropna(subset=["train_loss"])
    assert list(la["step"]) == list(lb["step"])
    assert np.array_equal(la["train_loss"].to_numpy(), lb["train_loss"].to_numpy())


def test_resume_same_next_batch(files, tmp_path):
    cfg = make_cfg(files, tmp_path, run={"epochs": 1, "checkpoint_every_steps": 2})

    def stop(trainer, step):
        if step == 2:
            raise StopTraining

    Trainer(cfg, callbacks=[stop]).fit()
    tr = Trainer(cfg)
    assert tr.resume()
    assert (tr.epoch, tr.step_in_epoch, tr.global_step) == (0, 2, 2)
    nxt = next(tr.train_data.iter_epoch(tr.epoch, start_batch=tr.step_in_epoch))
    ref = list(tr.train_data.iter_epoch(0))[2]
    assert torch.equal(nxt["rows"], ref["rows"]) and torch.equal(nxt["flux"], ref["flux"])


def test_checkpoint_from_other_model_config_is_clear_error(files, tmp_path):
    Trainer(make_cfg(files, tmp_path, run={"epochs": 1})).fit()
    other = make_cfg(files, tmp_path, model={"name": "mlp_small", "overrides": {"hidden": [16]}})
    with pytest.raises(InputError, match="different model configuration") as e:
        Trainer(other).fit()
    assert "hidden" in str(e.value) and "last.pt" in str(e.value)


def test_resume_must_without_checkpoint(files, tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        Trainer(make_cfg(files, tmp_path, run={"resume": "must"})).fit()


# --------------------------------------------------------------------------- options
def test_grad_accumulation_equals_big_batch(files, tmp_path):
    common = dict(data={"noise_level": 0.0}, run={"epochs": 1, "seed": 3}, optim={"lr": 1e-3, "clip_grad_norm": 0.05})
    big = Trainer(make_cfg(files, tmp_path / "big", **{**common, "run": {**common["run"], "batch_size": 32}}))
    acc = Trainer(make_cfg(files, tmp_path / "acc", **{**common, "run": {**common["run"], "batch_size": 8},
                                                       "optim": {**common["optim"], "grad_accum_steps": 4}}))
    assert big.steps_per_epoch == acc.steps_per_epoch == 8
    big.fit(), acc.fit()
    a, b = params_of(big.model), params_of(acc.model)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-6, rtol=1e-5), k
    # and it is not trivially equal: one step fewer differs
    short = Trainer(make_cfg(files, tmp_path / "short", **{**common, "run": {**common["run"], "batch_size": 32,
                                                                             "max_steps": 7}}))
    short.fit()
    assert not all(torch.allclose(a[k], params_of(short.model)[k], atol=2e-6) for k in a)


def test_early_stopping_triggers(files, tmp_path):
    cfg = make_cfg(files, tmp_path, run={"epochs": 20, "early_stopping_metric": "val_r2",
                                         "early_stopping_patience": 2, "early_stopping_min_delta": 1e9})
    res = Trainer(cfg).fit()
    assert res["stopped_early"] and res["epochs_completed"] == 3  # best at epoch 1, then two without improvement
    assert res["best_step"] == Trainer(cfg).steps_per_epoch


def test_early_stopping_keeps_best_model(files, tmp_path):
    cfg = make_cfg(files, tmp_path, run={"epochs": 3, "early_stopping_metric": "val_mae"})
    tr = Trainer(cfg)
    res = tr.fit()
    best = min(h["val_mae_z"] for h in tr.history)
    assert res["val_mae_z"] == pytest.approx(best, rel=1e-6)


def test_max_train_rows_prefix_and_schedule(files, tmp_path):
    cfg = make_cfg(files, tmp_path, data={"max_train_rows": 128}, run={"epochs": 2},
                   schedule={"warmup_steps": 2, "min_lr": 1e-4})
    tr = Trainer(cfg)
    assert tr.train_data.n_rows == 128 and tr.steps_per_epoch == 4
    lrs = []
    tr.callbacks.append(lambda t, s: lrs.append(t.optimizer.param_groups[0]["lr"]))
    tr.fit()
    assert lrs[0] == pytest.approx(3e-3)  # after warm-up step 2 of 2 the peak is reached
    assert lrs[-1] == pytest.approx(1e-4)  # cosine ends at the floor


def test_lr_factor_shape():
    f = [lr_factor(s, total_steps=10, warmup_steps=2, min_ratio=0.1) for s in range(11)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[1:], f[2:])) and f[10] == pytest.approx(0.1)
    assert lr_factor(5, total_steps=10, warmup_steps=0, min_ratio=0.0, kind="constant") == 1.0


def test_no_weight_decay_on_norms_biases_embeddings():
    from specvit.models import create_model

    m = create_model("specvit_tiny", n_pixels=64, patch_size=8)
    decay, no_decay = param_groups(m, 0.01)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert all(m.get_parameter(n).ndim >= 2 for n in d)
    assert any("pos" in n for n in nd) and any("norm" in n for n in nd) and any(n.endswith("bias") for n in nd)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    # the tokenizer's projection and a conv stem are kernels like any other: decayed (a name match on
    # "token" exempted them before)
    for name in ("specvit_p32_h64_l3", "specvit_p32_h64_l3_stem"):
        m = create_model(name, n_pixels=4096)
        decay, no_decay = param_groups(m, 0.01)
        names = {id(p): n for n, p in m.named_parameters()}
        d = {names[id(p)] for p in decay["params"]}
        nd = {names[id(p)] for p in no_decay["params"]}
        assert {"cls_token", "pos.table"} <= nd
        assert any(n.startswith("tokenizer.") and n.endswith("weight") for n in d)
        assert all(m.get_parameter(n).ndim < 2 or n in ("cls_token", "pos.table") for n in nd)


def test_r2_over_whole_set_not_batch_mean():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(100, 1))
    p = y + rng.normal(scale=0.5, size=(100, 1))
    m = RegressionMetrics(1)
    batch_r2 = []
    for i in range(0, 100, 10):
        m.update(torch.from_numpy(p[i:i + 10]), torch.from_numpy(y[i:i + 10]))
        yy, pp = y[i:i + 10], p[i:i + 10]
        batch_r2.append(1 - ((yy - pp) ** 2).sum() / ((yy - yy.mean()) ** 2).sum())
    r2 = m.compute()["r2"][0]
    assert r2 == pytest.approx(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-12)
    assert abs(r2 - np.mean(batch_r2)) > 1e-3


# --------------------------------------------------------------------------- outputs and bad input
def test_output_directory_contents(files, tmp_path):
    res = Trainer(make_cfg(files, tmp_path, run={"epochs": 1})).fit()
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert resolved["config"]["run"]["seed"] == 7 and resolved["provenance"]["seed"] == 7
    assert "torch" in resolved["provenance"]["versions"] and "command" in resolved["provenance"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val_r2"] == pytest.approx(res["val_r2"]) and metrics["seed"] == 7
    assert (tmp_path / "checkpoints" / "last.pt").exists() and (tmp_path / "checkpoints" / "best.pt").exists()
    import specvit

    model, meta = specvit.load_model(tmp_path / "model")
    assert meta.label_names == ["log_g", "T_eff"]
    assert meta.extras["training_ranges"]["label_min"][0] >= 1.0


def test_tensorboard_log_written(files, tmp_path):
    Trainer(make_cfg(files, tmp_path, run={"epochs": 1, "tensorboard": True})).fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_unknown_config_key(files, tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        make_cfg(files, tmp_path, overrides=["optim.lrr=1"])
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  train: [a.h5]\nrun:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="run.epoch") as e:
        load_train_config(p)
    assert str(p) in str(e.value)


def test_missing_label_column(files, tmp_path):
    write_dataset(tmp_path / "nolabel.h5", n_rows=64, n_pixels=N_PIX, drop_label="log_g")
    cfg = make_cfg(files, tmp_path, data={"train": [str(tmp_path / "nolabel.h5")]})
    with pytest.raises(InputError, match="missing label column") as e:
        Trainer(cfg)
    assert "log_g" in str(e.value) and "nolabel.h5" in str(e.value)


def test_nan_flux_names_file_and_row(files, tmp_path):
    write_dataset(tmp_path / "nan.h5", n_rows=64, n_pixels=N_PIX, nan_row=37)
    cfg = make_cfg(files, tmp_path, data={"train": [str(tmp_path / "nan.h5")]})
    with pytest.raises(InputError, match="NaN") as e:
        Trainer(cfg).fit()
    assert "row 37" in str(e.value) and "nan.h5" in str(e.value)


def test_unknown_model_name(files, tmp_path):
    with pytest.raises(InputError, match="unknown model name"):
        Trainer(make_cfg(files, tmp_path, model={"name": "resnet9000"}))


def test_gaussian_loss_needs_gaussian_head(files, tmp_path):
    with pytest.raises(ConfigError, match="gaussian"):
        Trainer(make_cfg(files, tmp_path, loss={"kind": "gaussian_nll"},
                         model={"name": "mlp_small", "overrides": {"gaussian": False}}))


def test_remaining_options_take_effect(files, tmp_path, capsys):
    cfg = make_cfg(files, tmp_path, data={"max_val_rows": 50, "val_noise_level": 0.0, "prefetch_batches": 0},
                   loss={"label_weights": [2.0, 1.0]}, schedule={"kind": "constant", "warmup_frac": 0.25},
                   run={"epochs": 2, "eval_every_steps": 3, "checkpoint_every_steps": 2, "keep_checkpoints": 1,
                        "progress": True, "num_threads": 1})
    tr = Trainer(cfg)
    lrs = []
    tr.callbacks.append(lambda t, s: lrs.append(t.optimizer.param_groups[0]["lr"]))
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 / 4)  # lr of step 1 (warm-up 0.25 * 16 = 4)
    res = tr.fit()
    assert tr.total_steps == 16 and lrs[:3] == pytest.approx([3e-3 / 2, 3e-3 * 3 / 4, 3e-3])  # lr of steps 2, 3, 4
    assert lrs[-1] == pytest.approx(3e-3)  # constant after warm-up
    steps = [h["step"] for h in tr.history]
    assert steps[:3] == [3, 6, 8] and 15 in steps  # every 3 steps plus each epoch end (8, 16)
    assert res["val_n"] == 50
    assert len(list((tmp_path / "checkpoints").glob("step-*.pt"))) == 1
    assert "train" in capsys.readouterr().err  # tqdm bar on rank 0
    noisy = Trainer(make_cfg(files, tmp_path / "n", data={"max_val_rows": 50}, run={"epochs": 1}))
    quiet = Trainer(make_cfg(files, tmp_path / "q", data={"max_val_rows": 50, "val_noise_level": 0.0}, run={"epochs": 1}))
    assert noisy.evaluate()["val_loss"] != quiet.evaluate()["val_loss"]
