from dataclasses import dataclass, field

import numpy as np
import pytest

from specvit.config import load_config
from specvit.errors import ConfigError, InputError, LabelRangeError
from specvit.labels import as_label_array, canonical_label
from specvit.observe.pfs import pfs_mr_wave, pfs_mr_wave_edges


@dataclass
class Inner:
    lr: float = 3e-4
    layers: int = 6


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    sizes: list[int] = field(default_factory=lambda: [1, 2])


def test_config_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: y\ninner:\n  layers: 4\n")
    cfg = load_config(Outer, p, ["inner.lr=1e-3", "sizes=[5,6]"])
    assert cfg.name == "y" and cfg.inner.layers == 4 and cfg.inner.lr == 1e-3 and cfg.sizes == [5, 6]


def test_config_unknown_key_names_file_and_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inner:\n  layerz: 4\n")
    with pytest.raises(ConfigError, match="inner.layerz") as e:
        load_config(Outer, p)
    assert "c.yaml" in str(e.value)
    with pytest.raises(ConfigError, match="bogus"):
        load_config(Outer, None, ["bogus=1"])
    with pytest.raises(ConfigError, match="inner.layers"):
        load_config(Outer, None, ["inner.layers=abc"])


def test_pfs_grid():
    w = pfs_mr_wave()
    assert w.shape == (4096,)
    assert w[0] == pytest.approx(7100.2136, abs=1e-4) and w[-1] == pytest.approx(8849.7864, abs=1e-4)
    assert np.allclose(0.5 * (pfs_mr_wave_edges()[1:] + pfs_mr_wave_edges()[:-1]), w)


def test_labels(toy_model):
    assert canonical_label("logg") == "log_g"
    with pytest.raises(InputError, match="label"):
        canonical_label("gravity")
    with pytest.raises(InputError, match="M_H"):
        as_label_array({"T_eff": [5000], "log_g": [2], "M_H": [np.nan], "a_M": [0], "C_M": [0]})
    with pytest.raises(LabelRangeError, match="T_eff.*9000"):
        toy_model.flux([[9000, 2, 0, 0, 0]])
    f = toy_model.flux([[4500, 2, 0, 0, 0], [5500, 4, -1, 0.2, 0]])
    assert f.shape == (2, toy_model.n_wave) and np.isfinite(f).all() and (f > 0).all()


def test_python_dash_m_specvit_is_the_cli():
    """``python -m specvit`` runs the same command as ``specvit``: help, version and the error exit code."""
    import os
    import subprocess
    from pathlib import Path
    import sys

    import specvit

    env = {**os.environ, "PYTHONPATH": str(Path(specvit.__file__).parents[1])}
    res = subprocess.run([sys.executable, "-m", "specvit", "--version"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout.strip() == f"specvit {specvit.__version__}", res.stderr
    res = subprocess.run([sys.executable, "-m", "specvit", "train", "--config", "/nonexistent/x.yaml"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "/nonexistent/x.yaml" in res.stderr, (res.returncode, res.stderr[-500:])
