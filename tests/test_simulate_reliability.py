"""`specvit simulate` outputs under stress (issue #17 items 1, 2, 9): a second writer, a full disk,
a read-only directory, finished and truncated files. See docs/reliability.md."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from specvit.atomic import OutputLock, lock_path_for
from specvit.cli import main
from specvit.data import open_dataset
from specvit.data.simulate import SimulateConfig, simulate
from specvit.errors import DiskFullError, InputError, OutputError, OutputLockedError

from toymodel import write_toy_grid  # noqa: E402

N, SEED = 256, 7


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    return write_toy_grid(tmp_path_factory.mktemp("grid") / "toygrid.h5")


@pytest.fixture(scope="module")
def reference(grid_file, tmp_path_factory):
    """The file an uninterrupted run writes."""
    return simulate(_cfg(grid_file), tmp_path_factory.mktemp("ref") / "ref.h5", n=N, seed=SEED, progress=False)[0]


@pytest.fixture(autouse=True)
def _only_data_cli(monkeypatch):
    import specvit.cli

    monkeypatch.setattr(specvit.cli, "COMMAND_MODULES", ["specvit.data.cli"])


def _cfg(grid_file):
    return SimulateConfig(model=str(grid_file), chunk_size=64, interpolation="linear")


def _cli(grid_file, out, *extra, n=N, seed=SEED):
    return main(["simulate", "--out", str(out), "--n", str(n), "--seed", str(seed), "--no-progress",
                 "--set", f"model={grid_file}", "--set", "chunk_size=64", "--set", "interpolation=linear", *extra])


def assert_same_file(a, b):
    """Same data: flux, error, wave, params and the job's attributes (provenance has the command line)."""
    with open_dataset(a) as x, open_dataset(b) as y:
        np.testing.assert_array_equal(x.flux[:], y.flux[:])
        np.testing.assert_array_equal(x.error[:], y.error[:])
        np.testing.assert_array_equal(x.wave, y.wave)
        pd.testing.assert_frame_equal(x.params, y.params)
        for k in ("seed", "resume_key", "config", "n_total", "array_dtype", "complete"):
            assert x.attrs[k] == y.attrs[k], k
    with h5py.File(a, "r") as f:
        assert "_progress" not in f


def _one_line_error(err: str, *needles):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("specvit simulate: error: "), err
    assert "Traceback" not in err
    for s in needles:
        assert s in lines[0], (s, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- item 1: a second writer
HOLDER = """
import os, sys, time
from specvit.data import pfsspec
from specvit.data.simulate import SimulateConfig, simulate
grid, out, go = sys.argv[1:4]
orig, calls = pfsspec.DatasetWriter.write_rows, [0]
def paused(self, *a, **k):
    r = orig(self, *a, **k)
    calls[0] += 1
    if calls[0] == 1:  # one chunk written: hold the output until the test says go
        print("WRITING", flush=True)
        t0 = time.time()
        while not os.path.exists(go) and time.time() - t0 < 120:
            time.sleep(0.05)
    return r
pfsspec.DatasetWriter.write_rows = paused
simulate(SimulateConfig(model=grid, chunk_size=64, interpolation="linear"), out, n=%d, seed=%d, progress=False)
print("DONE", flush=True)
""" % (N, SEED)


def test_second_writer_is_refused_while_the_first_lives(grid_file, reference, tmp_path, capsys):
    out, go = tmp_path / "t.h5", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(grid_file), str(out), str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        t0 = time.time()
        while first.stdout.readline().strip() != "WRITING":  # the first job is inside its run
            assert first.poll() is None and time.time() - t0 < 120, first.stderr.read()
        lock = lock_path_for(out)
        # the audit's reproduction: --restart (and --overwrite) from a second process while the first runs
        for extra in (["--restart"], [], ["--overwrite", "--restart"]):
            assert _cli(grid_file, out, *extra, n=128, seed=8) == 2
            _one_line_error(capsys.readouterr().err, "another process", f"pid {first.pid}", str(lock))
        assert lock.read_text().strip() == str(first.pid)
        with pytest.raises(OutputLockedError) as e:
            simulate(_cfg(grid_file), out, n=128, seed=8, restart=True, progress=False)
        assert e.value.details["pid"] == first.pid and e.value.details["lock"] == str(lock)
        assert (tmp_path / ".t.h5.partial").exists()  # the first job's partial file is untouched
        go.touch()
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0 and "DONE" in stdout, stderr
    assert_same_file(out, reference)  # the first job's data, complete
    assert not lock_path_for(out).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(grid_file, reference, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "s.h5"
    lock_path_for(out).write_text(f"{dead.pid}\n")  # left behind by a killed writer: no flock held
    simulate(_cfg(grid_file), out, n=N, seed=SEED, progress=False)
    assert_same_file(out, reference)
    assert not lock_path_for(out).exists()


def test_lock_is_per_process_and_reentrant(tmp_path):
    path = tmp_path / "x.h5"
    with OutputLock(path):
        with OutputLock(path):  # the same process again (simulate, then its DatasetWriter)
            assert lock_path_for(path).read_text().strip() == str(os.getpid())
        assert lock_path_for(path).exists()
        code = ("import sys; from specvit.atomic import OutputLock\n"
                "try:\n    OutputLock(sys.argv[1]).acquire()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
        assert res.stdout.startswith("OutputLockedError") and f"pid {os.getpid()}" in res.stdout, res.stderr
    assert not lock_path_for(path).exists()


# --------------------------------------------------------------------------- item 2: full disk, read-only
def _enospc_on_nth(monkeypatch, n: int, kind: str):
    """The n-th write of a flux block (or the n-th flush) fails as on a full disk."""
    calls = {"n": 0}
    if kind == "dataset":
        orig = h5py.Dataset.__setitem__

        def setitem(self, key, value):
            if self.name == "/dataset/arrays/flux/value":
                calls["n"] += 1
                if calls["n"] == n:
                    raise OSError(errno.ENOSPC, "No space left on device")
            return orig(self, key, value)

        monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    else:  # how h5py reports it: a RuntimeError carrying HDF5's error text
        orig = h5py.File.flush

        def flush(self):
            calls["n"] += 1
            if calls["n"] == n:
                raise RuntimeError("Unable to synchronously flush file (file write failed: time = now, filename = "
                                   "'x', file descriptor = 3, errno = 28, error message = 'No space left on device')")
            return orig(self)

        monkeypatch.setattr(h5py.File, "flush", flush)


@pytest.mark.parametrize("kind", ["dataset", "flush"])
def test_disk_full_midway_is_an_error_and_the_rerun_completes(grid_file, reference, tmp_path, monkeypatch,
                                                              capsys, kind):
    out = tmp_path / "d.h5"
    _enospc_on_nth(monkeypatch, 3 if kind == "dataset" else 5, kind)  # after two whole chunks
    assert _cli(grid_file, out) == 2
    line = _one_line_error(capsys.readouterr().err, "No space left on device", ".d.h5.partial", "rerun")
    assert "wrote" not in line
    partial = tmp_path / ".d.h5.partial"
    assert partial.exists() and not out.exists() and not lock_path_for(out).exists()
    with h5py.File(partial, "r") as f:
        assert int(f["_progress/done"][()].sum()) == 128
    monkeypatch.undo()
    import specvit.cli

    monkeypatch.setattr(specvit.cli, "COMMAND_MODULES", ["specvit.data.cli"])
    assert _cli(grid_file, out) == 0  # the same command again
    assert "wrote 128 spectra" in capsys.readouterr().err
    assert_same_file(out, reference)
    assert not partial.exists()


def test_hdf5_left_damaged_by_a_full_disk(grid_file, reference, tmp_path, monkeypatch, capsys):
    """The disk fills between the space check and the write, and HDF5 cannot even close the file (what
    made the old code segfault and leave an 'addr overflow' partial file): the partial file is set
    aside as .<name>.damaged, never written again, and the rerun copies its finished rows."""
    from specvit.atomic import HDF5_STATE

    out = tmp_path / "h.h5"
    monkeypatch.setitem(HDF5_STATE, "damaged", False)
    _enospc_on_nth(monkeypatch, 5, "flush")
    real_close = h5py.File.close

    def close(self):
        real_close(self)
        if (tmp_path / ".h.h5.partial").exists() and not (tmp_path / ".h.h5.damaged").exists():
            raise RuntimeError("Can't decrement id ref count (file write failed: errno = 28, "
                               "error message = 'No space left on device')")

    monkeypatch.setattr(h5py.File, "close", close)
    assert _cli(grid_file, out) == 2
    _one_line_error(capsys.readouterr().err, "No space left on device", "rerun")
    assert HDF5_STATE["damaged"]  # the specvit command leaves with os._exit: no HDF5 exit handler
    damaged = tmp_path / ".h.h5.damaged"
    assert damaged.exists() and not (tmp_path / ".h.h5.partial").exists() and not out.exists()
    monkeypatch.undo()
    import specvit.cli

    monkeypatch.setattr(specvit.cli, "COMMAND_MODULES", ["specvit.data.cli"])
    assert _cli(grid_file, out) == 0
    err = capsys.readouterr().err
    assert "wrote 128 spectra" in err and "128 resumed" in err  # the finished rows were kept
    assert_same_file(out, reference)
    assert not damaged.exists()


def test_not_enough_space_up_front(grid_file, reference, tmp_path, monkeypatch, capsys):
    import shutil

    out = tmp_path / "u.h5"
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1_000_000))
    assert _cli(grid_file, out) == 2
    line = _one_line_error(capsys.readouterr().err, "not enough free space", "bytes needed", "1000000 free", "u.h5")
    needed = int(line.split("needed_bytes=")[1].split(";")[0])
    assert needed >= N * 4096 * 4 * 2  # flux + error, float32
    assert list(tmp_path.iterdir()) == []
    # the space reservation fails (the disk filled between the check and the allocation): same error
    monkeypatch.setattr(shutil, "disk_usage", real)
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, size: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(DiskFullError, match="cannot reserve"):
        simulate(_cfg(grid_file), out, n=N, seed=SEED, progress=False)
    monkeypatch.undo()
    simulate(_cfg(grid_file), out, n=N, seed=SEED, progress=False)
    assert_same_file(out, reference)


CLI = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.argv = ["specvit"] + sys.argv[2:]
import specvit.cli
specvit.cli.COMMAND_MODULES = ["specvit.data.cli"]
specvit.cli.console_main()
"""


def test_file_size_limit_real_process(grid_file, reference, tmp_path):
    """A real process under `ulimit -f` 2 MB (the file needs 8 MB): the old code died in HDF5."""
    out = tmp_path / "l.h5"
    args = ["simulate", "--out", str(out), "--n", str(N), "--seed", str(SEED), "--no-progress", "--set",
            f"model={grid_file}", "--set", "chunk_size=64", "--set", "interpolation=linear"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", CLI, str(2 << 20), *args], capture_output=True, text=True, env=env)
    assert res.returncode == 2, res.stderr[-3000:]
    _one_line_error(res.stderr, "file-size limit", "l.h5")
    res = subprocess.run([sys.executable, "-c", CLI, str(1 << 40), *args], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_file(out, reference)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_directory_real(grid_file, tmp_path, capsys):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        assert _cli(grid_file, d / "r.h5") == 2
        _one_line_error(capsys.readouterr().err, "Permission denied", "r.h5")
    finally:
        d.chmod(0o755)


def test_read_only_directory_injected(grid_file, tmp_path, monkeypatch, capsys):
    """As root (permissions ignored) the OS's answer for a read-only directory is injected."""
    out = tmp_path / "r.h5"
    real_open, real_file = os.open, h5py.File.__init__

    def ro_open(path, flags, *a, **k):
        if str(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    def ro_file(self, name, mode="r", *a, **k):
        if str(name).startswith(str(tmp_path)) and mode in ("w", "w-", "x", "a"):
            raise PermissionError(errno.EACCES, f"Unable to synchronously create file (errno = 13, "
                                  f"error message = 'Permission denied', name = '{name}')")
        return real_file(self, name, mode, *a, **k)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(h5py.File, "__init__", ro_file)
    assert _cli(grid_file, out) == 2
    _one_line_error(capsys.readouterr().err, "Permission denied", "r.h5")
    with pytest.raises(OutputError):
        simulate(_cfg(grid_file), out, n=N, seed=SEED, progress=False)


# --------------------------------------------------------------------------- item 9: messages
def test_finished_job_messages(grid_file, tmp_path, capsys):
    out = tmp_path / "f.h5"
    assert _cli(grid_file, out, n=64) == 0
    assert "wrote 64 spectra" in capsys.readouterr().err
    mtime = out.stat().st_mtime_ns
    assert _cli(grid_file, out, n=64) == 0  # the same command again
    err = capsys.readouterr().err
    assert "already complete, nothing written" in err and "wrote" not in err
    assert _cli(grid_file, out, "--json", n=64) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 0
    assert _cli(grid_file, out, "--restart", n=64) == 2  # --restart on the finished file of this job
    line = _one_line_error(capsys.readouterr().err, "already complete", "same job", "f.h5")
    assert "different job" not in line
    assert out.stat().st_mtime_ns == mtime
    assert _cli(grid_file, out, "--overwrite", "--restart", n=64) == 0  # asked for explicitly: made again
    assert "wrote 64 spectra" in capsys.readouterr().err


def test_truncated_file_first_line(grid_file, tmp_path, capsys):
    good = simulate(_cfg(grid_file), tmp_path / "g.h5", n=64, seed=1, progress=False)[0]
    bad = tmp_path / "bad.h5"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError) as e:
        open_dataset(bad)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"truncated or corrupt HDF5 file {str(bad)!r}") and "truncated file" in msg
    # simulate meets a truncated output / a truncated partial file of its own job
    assert _cli(grid_file, bad, n=64, seed=1) == 2
    _one_line_error(capsys.readouterr().err, "truncated or corrupt", "bad.h5", "--overwrite")
    partial = tmp_path / ".p.h5.partial"
    partial.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    assert _cli(grid_file, tmp_path / "p.h5", n=64, seed=1) == 2
    _one_line_error(capsys.readouterr().err, "truncated or corrupt", ".p.h5.partial", "--restart")
    assert _cli(grid_file, tmp_path / "p.h5", "--restart", n=64, seed=1) == 0
