"""`specvit simulate` with worker processes: shared-memory hand-off, slot reuse, errors from workers.

The workers write flux and error straight into shared-memory slots (``PFSObserver.observe(out=...)``);
these tests check that this gives the same numbers as the in-process path, bit for bit, also when
slots are reused many times and the last chunk is short, and that errors raised while a worker
builds its model reach the caller (no hang, no file).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from specvit.data import open_dataset
from specvit.data.simulate import ChunkSimulator, SimulateConfig, _Slots, simulate
from specvit.errors import ConfigError, InputError

from toymodel import write_toy_grid  # noqa: E402


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    return write_toy_grid(tmp_path_factory.mktemp("grid") / "toygrid.h5")


def _read(path):
    with open_dataset(path) as ds:
        return ds.flux[:], ds.error[:], ds.params


def test_observe_out_writes_the_same_numbers(grid_file):
    from specvit.observe import draw_conditions

    sim = ChunkSimulator(SimulateConfig(model=str(grid_file), interpolation="linear"))
    rng = np.random.default_rng(3)
    _, f, _ = sim.model_flux(rng, 40)
    cond = draw_conditions(sim.cfg.observing, 40, rng)
    f = f.astype(np.float32)
    ref = sim.observer.observe(f, cond)
    buf = np.full((2, 50, 4096), np.nan, dtype=np.float32)  # rows beyond the 40 must stay untouched
    got = sim.observer.observe(f, cond, out=(buf[0, :40], buf[1, :40]))
    assert np.shares_memory(got.flux, buf[0]) and np.shares_memory(got.error, buf[1])
    np.testing.assert_array_equal(buf[0, :40], ref.flux)
    np.testing.assert_array_equal(buf[1, :40], ref.error)
    np.testing.assert_array_equal(got.snr, ref.snr)
    assert np.isnan(buf[:, 40:]).all()
    with pytest.raises(InputError, match="out"):  # wrong dtype / shape is refused, not silently cast
        sim.observer.observe(f, cond, out=(np.empty((40, 4096)), np.empty((40, 4096))))
    with pytest.raises(InputError, match="out"):
        sim.observer.observe(f, cond, out=(buf[0, :39], buf[1, :39]))
    # ChunkSimulator.run with out= equals run without
    a = sim.run(7, 0, 2, 0, 30, 0)
    slots = _Slots(np.zeros(2 * 2 * 32 * 4096 * 4, dtype=np.int8).data, 2, 32, 4096, np.float32)
    b = sim.run(7, 0, 2, 0, 30, 0, out=slots.get(1, 30))
    np.testing.assert_array_equal(a["flux"], slots.get(1, 30)[0])
    np.testing.assert_array_equal(a["error"], b["error"])
    pd.testing.assert_frame_equal(a["params"], b["params"])


def test_many_chunks_reuse_slots_same_file_as_in_process(grid_file, tmp_path):
    # 11 chunks (the last one short) through 2 * workers slots: every slot is reused, results come
    # back in any order; the file must equal the in-process one bit for bit
    cfg = SimulateConfig(model=str(grid_file), chunk_size=64, interpolation="linear")
    a = simulate(cfg, tmp_path / "a.h5", n=700, seed=21, workers=1, progress=False)[0]
    b = simulate(cfg, tmp_path / "b.h5", n=700, seed=21, workers=3, progress=False)[0]
    fa, ea, pa = _read(a)
    fb, eb, pb = _read(b)
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(ea, eb)
    pd.testing.assert_frame_equal(pa, pb)
    np.testing.assert_array_equal(pb["id"], np.arange(700))
    assert np.isfinite(fb).all() and (eb > 0).all()


def test_float64_output_through_workers(grid_file, tmp_path):
    cfg = SimulateConfig(model=str(grid_file), chunk_size=64, interpolation="linear", dtype="float64")
    a = simulate(cfg, tmp_path / "a.h5", n=150, seed=2, workers=1, progress=False)[0]
    b = simulate(cfg, tmp_path / "b.h5", n=150, seed=2, workers=2, progress=False)[0]
    fa, ea, _ = _read(a)
    fb, eb, _ = _read(b)
    assert fb.dtype == np.float64
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(ea, eb)


def test_error_while_workers_build_the_model_reaches_the_caller(grid_file, tmp_path):
    cfg = SimulateConfig(model=str(grid_file), chunk_size=64)
    cfg.labels.T_eff.low = 3000.0  # outside the grid: raised by the worker's ChunkSimulator
    with pytest.raises(ConfigError, match="labels.T_eff"):
        simulate(cfg, tmp_path / "x.h5", n=300, seed=1, workers=2, progress=False)
    with pytest.raises(InputError, match="missing.h5"):
        simulate(SimulateConfig(model=str(tmp_path / "missing.h5")), tmp_path / "y.h5", n=300, seed=1,
                 workers=2, progress=False)
    assert list(tmp_path.iterdir()) == []  # validated before any file was touched
