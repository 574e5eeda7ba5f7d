"""Run folders of `specvit train` and `specvit synthesis run` are locked while a process writes them
(issue #17 item 1; docs/reliability.md)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HOLD = """
import sys, time
from specvit.atomic import OutputLock
OutputLock(sys.argv[1]).acquire()
print("LOCKED", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture
def held(tmp_path):
    """Start a process that holds the lock of a path; yields (hold(path) -> pid)."""
    procs = []

    def hold(path: Path) -> int:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        procs.append(p)
        t0 = time.time()
        while p.stdout.readline().strip() != "LOCKED":
            assert p.poll() is None and time.time() - t0 < 60, p.stderr.read()
        return p.pid

    yield hold
    for p in procs:
        p.stdin.close()
        p.wait(timeout=30)


def test_train_run_folder_is_locked(held, tmp_path):
    pytest.importorskip("torch")
    from specvit.errors import OutputLockedError
    from specvit.train import Trainer
    from test_train import make_cfg
    from test_train_data import write_dataset

    data = tmp_path / "data"
    data.mkdir()
    write_dataset(data / "train.h5", n_rows=64, n_pixels=256, seed=0)
    write_dataset(data / "val.h5", n_rows=32, n_pixels=256, seed=1)
    out = tmp_path / "run"
    pid = held(out)
    with pytest.raises(OutputLockedError) as e:
        Trainer(make_cfg(data, out, run={"epochs": 1})).fit()
    assert f"pid {pid}" in str(e.value) and ".run.lock" in str(e.value)
    assert not (out / "checkpoints").exists() and not (out / "config.yaml").exists()


def test_synthesis_run_folder_is_locked(held, tmp_path):
    from specvit.errors import OutputLockedError
    from specvit.spectra.synthesis.runner import run_design

    out = tmp_path / "spectra"
    pid = held(out)
    with pytest.raises(OutputLockedError) as e:
        run_design(tmp_path / "design.csv", out, cache_dir=tmp_path / "cache", workers=1)
    assert f"pid {pid}" in str(e.value) and "synthesis output folder" in str(e.value)
    assert not out.exists()
