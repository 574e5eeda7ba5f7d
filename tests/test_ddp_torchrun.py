"""`torchrun --nproc_per_node=2 -m specvit.cli train` on CPU (gloo): the documented multi-process launch works."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_train_data import write_dataset


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    write_dataset(tmp_path / "train.h5", n_rows=128, n_pixels=32, seed=0)
    write_dataset(tmp_path / "val.h5", n_rows=30, n_pixels=32, seed=1)
    cfg = {
        "data": {"train": [str(tmp_path / "train.h5")], "val": [str(tmp_path / "val.h5")], "chunk_rows": 16},
        "model": {"name": "mlp_small"},
        "run": {"out_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 16, "device": "cpu", "progress": False,
                "tensorboard": False},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "specvit.cli", "train",
         "--config", str(tmp_path / "cfg.yaml")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 128 // 32 and metrics["val_n"] == 30
    assert (tmp_path / "run" / "model" / "weights.safetensors").exists()
    assert proc.stdout.count('"global_step"') == 1  # only rank 0 prints the summary
