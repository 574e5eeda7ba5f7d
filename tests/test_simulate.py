"""`specvit simulate`: determinism, workers, resume, shards, layout, grids, bad input."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from specvit.cli import main
from specvit.data import open_dataset
from specvit.data.pfsspec import FLUX_KEY, PARAMS_KEY, PFSSPEC_PARAM_COLUMNS, WAVE_KEY
from specvit.data.simulate import LabelDist, SimulateConfig, shard_paths, simulate
from specvit.errors import ConfigError, InputError
from specvit.spectra.grid import RegularGrid

from toymodel import TOY_GRID_NODES as NODES  # noqa: E402
from toymodel import write_toy_grid  # noqa: E402


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    """A small 5-D grid made from the analytic ToyModel (Planck x lines), with one invalid node:
    4500 K, log g 3, [M/H] -1, a_M -0.25, C_M -0.75."""
    return write_toy_grid(tmp_path_factory.mktemp("grid") / "toygrid.h5", invalid_node=(1, 1, 1, 0, 0))


def _cfg(grid_file, **kw):
    kw.setdefault("chunk_size", 64)
    return SimulateConfig(model=str(grid_file), **kw)


@pytest.fixture(autouse=True)
def _only_data_cli(monkeypatch):
    """Run the real `specvit` entry point with only this package's commands (others may be absent)."""
    import specvit.cli

    monkeypatch.setattr(specvit.cli, "COMMAND_MODULES", ["specvit.data.cli"])


def _read_all(path):
    with open_dataset(path) as ds:
        return ds.flux[:], ds.error[:], ds.params


def test_layout_physics_and_provenance(grid_file, tmp_path):
    out = simulate(_cfg(grid_file, interpolation="linear"), tmp_path / "d.h5", n=150, seed=3, progress=False)[0]
    with h5py.File(out, "r") as f:  # plain h5py: the pfsspec layout
        assert f[WAVE_KEY].shape == (4096,) and f["spectrumdataset/wave_edges"].shape == (4097,)
        assert f[FLUX_KEY].shape == (150, 4096) and f[FLUX_KEY].dtype == np.float32
        assert f["dataset/arrays/error/value"].shape == (150, 4096)
        assert f.attrs["array_dtype"] == "float32" and f.attrs["seed"] == 3
        assert "_progress" not in f
    params = pd.read_hdf(out, PARAMS_KEY)  # plain pandas
    assert set(PFSSPEC_PARAM_COLUMNS) <= set(params.columns)
    np.testing.assert_array_equal(params["id"], np.arange(150))
    with open_dataset(out) as ds:
        flux, err = ds.flux[:].astype(float), ds.error[:].astype(float)
        assert ds.attrs["config"]["model"] == str(grid_file)
        assert "numpy" in ds.attrs["provenance"]["versions"]
        p = ds.params
    # SPEC section 3: median normalised flux 0.5, snr = median(flux / error), conditions in their ranges
    np.testing.assert_allclose(np.median(flux, axis=1), 0.5, rtol=1e-5)
    np.testing.assert_allclose(p["snr"], np.median(flux / err, axis=1), rtol=1e-4)
    assert p["mag"].between(20.5, 22.5).all() and p["seeing"].between(0.5, 1.5).all()
    assert (p["exp_count"] == 12).all() and (p["exp_time"] == 900).all()
    assert p["T_eff"].between(3750, 6000).all() and p["log_g"].between(1, 5).all()
    # fainter -> lower SNR (same physics, independent draws)
    assert stats.spearmanr(p["mag"], p["snr"]).correlation < -0.5
    assert (p["interp_param"] == "").all()


def test_same_seed_same_file_any_workers(grid_file, tmp_path):
    cfg = _cfg(grid_file)
    a = simulate(cfg, tmp_path / "a.h5", n=200, seed=11, progress=False)[0]
    b = simulate(cfg, tmp_path / "b.h5", n=200, seed=11, workers=2, progress=False)[0]
    c = simulate(cfg, tmp_path / "c.h5", n=200, seed=12, progress=False)[0]
    fa, ea, pa = _read_all(a)
    fb, eb, pb = _read_all(b)
    fc, _, pc = _read_all(c)
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(ea, eb)
    pd.testing.assert_frame_equal(pa, pb)
    assert not np.array_equal(pa["T_eff"], pc["T_eff"])


def test_spline_mode_snaps_and_avoids_invalid_node(grid_file, tmp_path):
    out = simulate(_cfg(grid_file, interpolation="spline"), tmp_path / "s.h5", n=300, seed=5, progress=False)[0]
    p = pd.read_hdf(out, PARAMS_KEY)
    assert set(p["interp_param"]) <= set(NODES) and p["interp_param"].nunique() >= 4
    for name, nodes in NODES.items():
        other = p["interp_param"] != name
        assert np.isin(p.loc[other, name], nodes).all()  # non-chosen labels sit on nodes
    # the invalid node is never used: rows whose snapped labels equal it would need it
    bad = np.array([4500.0, 3.0, -1.0, -0.25, -0.75])
    lab = p[list(NODES)].to_numpy()
    assert not (np.abs(lab - bad).sum(1) == 0).any()


def test_resume_after_kill_gives_the_same_file(grid_file, tmp_path):
    cfg = _cfg(grid_file)
    ref = simulate(cfg, tmp_path / "ref.h5", n=256, seed=9, progress=False)[0]
    model = RegularGrid.load(grid_file, wave_range_A=cfg.wave_range_A, interpolation=cfg.interpolation)

    class Killed(BaseException):
        pass

    calls = {"n": 0}
    orig = model.interpolate

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed()
        return orig(*a, **k)

    model.interpolate = dying
    out = tmp_path / "run.h5"
    with pytest.raises(Killed):
        simulate(cfg, out, n=256, seed=9, model=model, progress=False)
    partial = tmp_path / ".run.h5.partial"
    assert partial.exists() and not out.exists()
    with h5py.File(partial, "r") as f:
        done = int(f["_progress/done"][()].sum())
        assert 0 < done < 256 and done % 64 == 0  # whole chunks finished before the kill
    model.interpolate = orig
    simulate(cfg, out, n=256, seed=9, model=model, progress=False)
    assert out.exists() and not partial.exists()
    f1, e1, p1 = _read_all(ref)
    f2, e2, p2 = _read_all(out)
    np.testing.assert_array_equal(f1, f2)
    pd.testing.assert_frame_equal(p1, p2)
    # a finished file of the same job is skipped; a different job refuses to overwrite
    simulate(cfg, out, n=256, seed=9, model=model, progress=False)
    with pytest.raises(InputError, match="different job"):
        simulate(cfg, out, n=256, seed=10, model=model, progress=False)


def test_shards_directory_and_pattern(grid_file, tmp_path):
    cfg = _cfg(grid_file)
    files = simulate(cfg, tmp_path / "train", n=130, seed=1, shards=3, progress=False)
    assert [f.name for f in files] == ["shard_000.h5", "shard_001.h5", "shard_002.h5"]
    with open_dataset(tmp_path / "train") as ds:
        assert len(ds) == 130
        np.testing.assert_array_equal(ds.params["id"], np.arange(130))
        assert [int(len(open_dataset(f))) for f in files] == [44, 43, 43]
    assert [p.name for p in shard_paths(tmp_path / "v_{shard}.h5", 2)] == ["v_000.h5", "v_001.h5"]


def test_beta_prior(grid_file, tmp_path):
    from specvit.data.simulate import ChunkSimulator

    cfg = _cfg(grid_file)
    cfg.labels.log_g = LabelDist(1.0, 5.0, dist="beta")
    rng = np.random.default_rng(0)
    x = ChunkSimulator(cfg)._sample_labels(rng, 4000)[:, 1]
    u = (x - 1.0) / 4.0
    assert stats.kstest(u, stats.beta(0.7, 0.7).cdf).pvalue > 1e-3
    assert stats.kstest(u, "uniform").pvalue < 1e-6


def test_bad_input_clear_error_and_no_file(grid_file, tmp_path, capsys):
    out = tmp_path / "x.h5"
    rc = main(["simulate", "--out", str(out), "--n", "10", "--seed", "1", "--no-progress",
               "--set", f"model={grid_file}", "--set", "labels.logg.low=0"])
    assert rc == 2 and "labels.logg" in capsys.readouterr().err
    rc = main(["simulate", "--out", str(out), "--n", "10", "--seed", "1", "--no-progress",
               "--set", f"model={grid_file}", "--set", "labels.T_eff.low=3000"])
    assert rc == 2 and "labels.T_eff" in capsys.readouterr().err
    rc = main(["simulate", "--out", str(out), "--n", "10", "--seed", "1", "--no-progress",
               "--set", f"model={tmp_path / 'missing.h5'}"])
    assert rc == 2 and "missing.h5" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="low > high"):
        LabelDist(2.0, 1.0)

    class NaNModel(RegularGrid):
        def interpolate(self, *a, **k):
            r = super().interpolate(*a, **k)
            r.flux[0, 5] = np.nan
            return r

    g = RegularGrid.load(grid_file)
    bad = NaNModel(axes=g.axes, wave=g.wave, flux=g.flux_cube, valid=g.valid, resolution=g.resolution)
    with pytest.raises(InputError, match="non-finite"):
        simulate(_cfg(grid_file), out, n=10, seed=1, model=bad, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_help_and_run(grid_file, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = capsys.readouterr().out
    for opt in ("--out", "--n", "--seed", "--config", "--set", "--shards", "--workers", "--restart"):
        assert opt in text
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(f"model: {grid_file}\ninterpolation: nearest\nobserving:\n  mag: 19.0\nchunk_size: 32\n")
    out = tmp_path / "cli.h5"
    assert main(["simulate", "--out", str(out), "--n", "40", "--seed", "2", "--config", str(cfg),
                 "--no-progress", "--json"]) == 0
    assert '"n": 40' in capsys.readouterr().out
    p = pd.read_hdf(out, PARAMS_KEY)
    assert (p["mag"] == 19.0).all() and np.isin(p["T_eff"], NODES["T_eff"]).all()


KILL_SCRIPT = """
import os, signal, sys
from specvit.data import pfsspec
from specvit.data.simulate import SimulateConfig, simulate
grid, out = sys.argv[1], sys.argv[2]
orig, calls = pfsspec.DatasetWriter.write_rows, [0]
def dying(self, *a, **k):
    calls[0] += 1
    if calls[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup, no finally blocks
    return orig(self, *a, **k)
pfsspec.DatasetWriter.write_rows = dying
simulate(SimulateConfig(model=grid, chunk_size=64, interpolation="linear"), out, n=256, seed=4, progress=False)
"""


def test_sigkill_then_rerun_resumes(grid_file, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "k.h5"
    res = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(grid_file), str(out)], capture_output=True)
    assert res.returncode == -9, res.stderr.decode()[-2000:]
    partial = tmp_path / ".k.h5.partial"
    assert partial.exists() and not out.exists()
    with h5py.File(partial, "r") as f:
        assert int(f["_progress/done"][()].sum()) == 128  # two chunks finished, flushed, marked done
    cfg = _cfg(grid_file, interpolation="linear")
    simulate(cfg, out, n=256, seed=4, progress=False)
    ref = simulate(cfg, tmp_path / "ref.h5", n=256, seed=4, progress=False)[0]
    f1, e1, p1 = _read_all(out)
    f2, e2, p2 = _read_all(ref)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(e1, e2)
    pd.testing.assert_frame_equal(p1, p2)
    assert not partial.exists()


def test_default_model_end_to_end(tmp_path):
    """With the package's embedded default model (skipped only where its files are not installed)."""
    try:
        from specvit.spectra import default_model

        default_model()
    except (ImportError, OSError) as e:
        pytest.skip(f"default spectral model not available: {e}")
    out = simulate(SimulateConfig(chunk_size=32), tmp_path / "def.h5", n=64, seed=1, progress=False)[0]
    with open_dataset(out) as ds:
        flux, err, p = ds.flux[:].astype(float), ds.error[:].astype(float), ds.params
    np.testing.assert_allclose(np.median(flux, axis=1), 0.5, rtol=1e-4)
    assert np.isfinite(err).all() and (err > 0).all()
    assert p["snr"].between(1, 100).all() and (p["interp_param"] == "").all()
    assert p["T_eff"].between(3750, 6000).all() and p["C_M"].between(-0.75, 0.5).all()
