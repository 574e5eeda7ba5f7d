"""DistributedDataParallel on CPU: two gloo processes == one process with the same global batch."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from specvit.train import Trainer, load_train_config
from test_train_data import write_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(d, out):
    return {
        "data": {"train": [str(d / "train.h5")], "val": [str(d / "val.h5")], "labels": ["log_g", "T_eff"],
                 "chunk_rows": 16, "buffer_rows": 48},
        "model": {"name": "mlp_small"},
        "optim": {"lr": 3e-3, "clip_grad_norm": 0.5},
        "schedule": {"warmup_steps": 2},
        "run": {"out_dir": str(out), "epochs": 2, "batch_size": 16, "progress": False, "tensorboard": False,
                "seed": 5, "eval_every_epochs": 1000, "resume": "never", "log_every_steps": 1},
    }


def _worker(rank, world, port, cfg_data, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from specvit.train.distributed import cleanup

    tr = Trainer(load_train_config(data=cfg_data))
    res = tr.fit()
    torch.save({"params": tr.model.state_dict(), "res": res, "steps": tr.steps_per_epoch}, f"{out}/rank{rank}.pt")
    cleanup()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    write_dataset(d / "train.h5", n_rows=256, n_pixels=64, seed=0)
    write_dataset(d / "val.h5", n_rows=75, n_pixels=64, seed=1)
    cfg = _cfg(d, d / "run")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        assert k not in os.environ
    mp.spawn(_worker, args=(2, _free_port(), cfg, str(d)), nprocs=2, join=True)
    return d, cfg, [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_both_ranks_hold_identical_parameters(ddp_run):
    _, _, (r0, r1) = ddp_run
    assert r0["steps"] == r1["steps"] == 256 // (2 * 16)
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert r0["res"]["val_r2"] == r1["res"]["val_r2"]  # metrics all-reduced: every rank sees the same numbers


def test_ddp_equals_single_process_with_global_batch(ddp_run):
    d, cfg, (r0, _) = ddp_run
    # one process, global batch 2 x 16 (so its schedule has the same number of steps)
    single = Trainer(load_train_config(data={**cfg, "run": {**cfg["run"], "out_dir": str(d / "single"), "batch_size": 32}}))
    assert single.dist.world_size == 1 and single.total_steps == 2 * r0["steps"]
    from specvit.data.torchdata import SpectraStream

    shards = [SpectraStream(path=cfg["data"]["train"], label_names=cfg["data"]["labels"], batch_size=16, train=True,
                            seed=5, chunk_rows=16, buffer_rows=48, rank=r, world_size=2) for r in range(2)]
    single.fit_input_statistics()  # what fit() does first on every rank
    model, opt = single.model, single.optimizer
    model.train()
    for epoch in range(2):
        its = [s.iter_epoch(epoch) for s in shards]
        for _ in range(shards[0].batches_per_epoch()):
            parts = [next(it) for it in its]  # the global batch = both ranks' local batches
            flux = torch.cat([p["flux"] for p in parts])
            target = torch.cat([p["target"] for p in parts])
            opt.zero_grad()
            single.loss_fn(model(flux), target).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            single.scheduler.step()
    for k, v in model.state_dict().items():
        assert torch.allclose(v, r0["params"][k], atol=1e-6, rtol=1e-5), k
    # R2 over the whole validation set: the all-reduced DDP value equals one process evaluating all 75 rows
    model.load_state_dict(r0["params"])
    res = single.evaluate()
    assert res["val_n"] == r0["res"]["val_n"] == 75
    assert res["val_r2"] == pytest.approx(r0["res"]["val_r2"], rel=1e-9, abs=1e-12)
    assert res["val_mae_log_g"] == pytest.approx(r0["res"]["val_mae_log_g"], rel=1e-9)


def test_only_rank0_wrote_outputs(ddp_run):
    d, _, _ = ddp_run
    run = d / "run"
    assert (run / "model" / "config.json").exists() and (run / "metrics.json").exists()
    import pandas as pd

    log = pd.read_csv(run / "metrics.csv").dropna(subset=["train_loss"])
    assert list(log["step"]) == list(range(1, 17))  # one row per step, not one per process
