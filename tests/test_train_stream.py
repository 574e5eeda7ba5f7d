"""Training on fresh simulations (data.source=simulate): pure-function batches, exact resume, DDP shards, bad priors."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from specvit.errors import ConfigError, InputError
from specvit.train import Trainer, load_train_config

B, PER_EPOCH = 16, 64  # 4 steps per epoch in one process, 2 per rank with two


@pytest.fixture(scope="module")
def val_file(tmp_path_factory):
    """A small FIXED validation file made by specvit simulate (the stream's prior and instrument)."""
    from specvit.data.simulate import SimulateConfig, simulate

    d = tmp_path_factory.mktemp("stream")
    simulate(SimulateConfig(), d / "val.h5", n=48, seed=2, progress=False)
    return d / "val.h5"


def stream_cfg(out, val=None, *, overrides=(), **sections):
    data = {
        "data": {"source": "simulate", "val": [str(val)] if val else [], "labels": ["log_g", "T_eff"],
                 "simulate": {"samples_per_epoch": PER_EPOCH, "stats_samples": 64}, "prefetch_batches": 1},
        "model": {"name": "mlp_small"},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 2, "min_lr": 1e-4},
        "run": {"out_dir": str(out), "epochs": 2, "batch_size": B, "progress": False, "log_every_steps": 1,
                "tensorboard": False, "seed": 11, "num_threads": 1},
    }
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return load_train_config(data=data, overrides=list(overrides))


def _stream(rank=0, world=1, seed=11, **kw):
    from specvit.data.stream import SimulateStreamConfig, SimulatedStream

    return SimulatedStream(cfg=SimulateStreamConfig(samples_per_epoch=PER_EPOCH, stats_samples=64),
                           label_names=["log_g", "T_eff"], batch_size=B, seed=seed, rank=rank, world_size=world, **kw)


# --------------------------------------------------------------------------- the stream itself
def test_batches_are_a_pure_function_of_seed_step_rank():
    s = _stream()
    a, again = s.batch_at(5), _stream().batch_at(5)  # a new stream object: same batch, bit for bit
    assert torch.equal(a["flux"], again["flux"]) and torch.equal(a["labels"], again["labels"])
    assert a["flux"].shape == (B, s.n_pixels) and a["flux"].dtype == torch.float32 and torch.isfinite(a["flux"]).all()
    assert not torch.equal(s.batch_at(6)["flux"], a["flux"])  # every step a fresh draw
    assert not torch.equal(_stream(seed=12).batch_at(5)["labels"], a["labels"])
    it = list(s.iter_epoch(1, start_batch=1))  # epoch 1 from its 2nd batch = global steps 5, 6, 7
    assert len(it) == 3 and torch.equal(it[0]["flux"], a["flux"])
    # labels within the prior box; targets z-scored with the stats draw's scaler
    lab = a["labels"].numpy()
    assert (lab[:, 0] >= 1.0).all() and (lab[:, 0] <= 5.0).all()
    assert np.allclose(a["target"].numpy(), s.scaler.transform(lab), atol=1e-6)
    # noise: noiseless stream differs only by noise_level * sigma * z
    quiet = _stream(noise_level=0.0).batch_at(5)
    assert torch.equal(quiet["labels"], a["labels"]) and not torch.equal(quiet["flux"], a["flux"])


def test_ranks_draw_disjoint_streams():
    r0, r1 = _stream(0, 2), _stream(1, 2)
    assert r0.batches_per_epoch() == PER_EPOCH // (2 * B)
    assert not np.isin(r0.batch_at(0)["labels"].numpy()[:, 0], r1.batch_at(0)["labels"].numpy()[:, 0]).any()
    assert np.array_equal(r0.scaler.mean, r1.scaler.mean)  # the label scaler: the same on every rank
    from specvit.data.stream import SimulateStreamConfig, SimulatedStream

    other_batch = SimulatedStream(cfg=SimulateStreamConfig(samples_per_epoch=PER_EPOCH, stats_samples=64),
                                  label_names=["log_g", "T_eff"], batch_size=8, seed=11)
    assert np.array_equal(other_batch.scaler.std, r0.scaler.std)  # ... and for any batch size


# --------------------------------------------------------------------------- training
def test_train_on_stream_learns_and_writes_model(val_file, tmp_path):
    cfg = stream_cfg(tmp_path, val_file, run={"epochs": 3})
    tr = Trainer(cfg)
    assert tr.steps_per_epoch == PER_EPOCH // B and tr.total_steps == 12
    before = tr.evaluate()
    res = tr.fit()
    assert res["val_n"] == 48 and res["val_loss"] < before["val_loss"]
    import specvit

    _, meta = specvit.load_model(tmp_path / "model")
    rng = meta.extras["training_ranges"]
    assert rng["source"] == "simulate" and rng["label_min"] == [1.0, 3750.0] and rng["snr_min"] > 0
    assert meta.extras["train_config"]["data"]["source"] == "simulate"


def test_killed_run_resumes_with_the_same_next_batch_and_weights(val_file, tmp_path):
    kw = dict(run={"epochs": 2, "checkpoint_every_steps": 3})
    full = Trainer(stream_cfg(tmp_path / "full", val_file, **kw))
    seen_full = {}
    orig = full.train_data.batch_at
    full.train_data.batch_at = lambda g: seen_full.setdefault(g, orig(g))
    full.fit()
    assert sorted(seen_full) == list(range(8))

    def kill(trainer, step):
        if step == 7:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        Trainer(stream_cfg(tmp_path / "cut", val_file, **kw), callbacks=[kill]).fit()
    probe = Trainer(stream_cfg(tmp_path / "cut", val_file, **kw))
    assert probe.resume() and probe.global_step == 6  # the last checkpoint (every 3 steps) before the kill
    nxt = next(probe.train_data.iter_epoch(probe.epoch, start_batch=probe.step_in_epoch))
    assert torch.equal(nxt["flux"], seen_full[6]["flux"]) and torch.equal(nxt["target"], seen_full[6]["target"])
    other_prior = Trainer(stream_cfg(tmp_path / "cut", val_file, overrides=["data.simulate.observing.mag=[20,21]"], **kw))
    with pytest.raises(InputError, match="different model configuration") as e:  # not resumed under another prior
        other_prior.resume()
    assert "simulate.observing" in str(e.value)
    steps = []  # the forward model's thread count is timing only: it may change on resume
    resumed = Trainer(stream_cfg(tmp_path / "cut", val_file, overrides=["data.simulate.threads=1"], **kw),
                      callbacks=[lambda t, s: steps.append(s)])
    resumed.fit()
    assert steps == [7, 8]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_input_statistics_and_scaler_are_deterministic(tmp_path):
    cfg = stream_cfg(tmp_path)  # mlp_small standardises its input
    one, two = Trainer(cfg), Trainer(cfg)
    from specvit.models.inputnorm import input_standardizers

    one.fit_input_statistics(), two.fit_input_statistics()
    la, lb = input_standardizers(one.model), input_standardizers(two.model)
    assert la and all(torch.equal(x, y) for p, q in zip(la, lb) for x, y in zip(p.buffers(), q.buffers()))
    assert not torch.equal(la[0].mean, torch.zeros_like(la[0].mean))  # fitted
    assert np.array_equal(one.scaler_labels.mean, two.scaler_labels.mean)


# --------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize("override,field", [
    ("data.simulate.labels.log_g.low=nan", "data.simulate.labels.log_g.low"),
    ("data.simulate.labels.log_g.dist=gamma", "data.simulate.labels.log_g.dist"),
    ("data.simulate.observing.mag=[25,5]", "data.simulate.observing.mag"),
    ("data.simulate.observing.mag=[3,22]", "data.simulate.observing.mag"),
    ("data.simulate.observing.seeing_arcsec=[0.5,50]", "data.simulate.observing.seeing_arcsec"),
    ("data.simulate.labels.log_g.high=1.0", "data.simulate.labels.log_g"),  # fixed label cannot be learnt
    ("data.simulate.instrument.resolution=-1", "data.simulate.instrument.resolution"),
    ("data.simulate.samples_per_epoch=0", "data.simulate.samples_per_epoch"),
    ("data.simulate.exposure=3", "data.simulate.exposure"),
    ("data.source=simulated", "data.source"),
])
def test_bad_prior_is_a_clear_config_error(tmp_path, override, field):
    with pytest.raises(ConfigError) as e:
        stream_cfg(tmp_path, overrides=[override])
    assert e.value.field == field, str(e.value)


def test_prior_outside_the_model_or_bad_model_is_rejected_before_training(tmp_path):
    with pytest.raises(ConfigError, match="exceeds the spectral model") as e:
        Trainer(stream_cfg(tmp_path, overrides=["data.simulate.labels.log_g.low=0.2"]))
    assert e.value.field == "data.simulate.labels.log_g"
    with pytest.raises(ConfigError) as e:
        Trainer(stream_cfg(tmp_path, overrides=["data.simulate.model=no_such_file.npz"]))
    assert e.value.field == "data.simulate.model"
    with pytest.raises(ConfigError, match="smaller than one global batch"):
        Trainer(stream_cfg(tmp_path, overrides=["data.simulate.samples_per_epoch=8"]))
    assert not (tmp_path / "checkpoints").exists()


def test_cli_set_source_simulate(val_file, tmp_path, capsys):
    """``specvit train --config FILE --set data.source=simulate`` on a config written for files."""
    import yaml

    from specvit.cli import main

    cfg = {"data": {"train": ["not_used.h5"], "val": [str(val_file)], "labels": ["log_g"]},
           "model": {"name": "mlp_small"},
           "run": {"out_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": B, "progress": False,
                   "tensorboard": False, "device": "cpu", "num_threads": 1}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    rc = main(["train", "--config", str(p), "--set", "data.source=simulate",
               "--set", f"data.simulate.samples_per_epoch={2 * B}", "--set", "data.simulate.stats_samples=32"])
    assert rc == 0
    assert '"global_step": 2' in capsys.readouterr().out


# --------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg_data, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from specvit.train.distributed import cleanup

    tr = Trainer(load_train_config(data=cfg_data))
    seen = {}
    orig = tr.train_data.batch_at
    tr.train_data.batch_at = lambda g: seen.setdefault(g, orig(g))
    tr.fit()
    torch.save({"params": tr.model.state_dict(), "steps": tr.total_steps,
                "flux": {g: b["flux"] for g, b in seen.items()}}, f"{out}/rank{rank}.pt")
    cleanup()


def test_two_gloo_ranks_draw_disjoint_reproducible_batches(tmp_path):
    cfg = {
        "data": {"source": "simulate", "labels": ["log_g"], "prefetch_batches": 1,
                 "simulate": {"samples_per_epoch": PER_EPOCH, "stats_samples": 64}},
        "model": {"name": "mlp_small"}, "optim": {"lr": 3e-3},
        "run": {"out_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": B, "progress": False,
                "tensorboard": False, "seed": 11, "resume": "never", "log_every_steps": 1},
    }
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        assert k not in os.environ
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["steps"] == r1["steps"] == PER_EPOCH // (2 * B)
    assert sorted(r0["flux"]) == sorted(r1["flux"]) == [0, 1]
    for k in r0["params"]:  # gradients all-reduced: one model
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    for g in (0, 1):
        assert not torch.equal(r0["flux"][g], r1["flux"][g])  # disjoint streams
        for r, saved in enumerate((r0, r1)):  # and each reproducible from (seed, step, rank)
            from specvit.data.stream import SimulateStreamConfig, SimulatedStream

            s = SimulatedStream(cfg=SimulateStreamConfig(samples_per_epoch=PER_EPOCH, stats_samples=64),
                                label_names=["log_g"], batch_size=B, seed=11, rank=r, world_size=2)
            assert torch.equal(s.batch_at(g)["flux"], saved["flux"][g])
