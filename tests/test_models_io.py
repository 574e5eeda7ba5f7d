"""Versioned model directories: round trip, scaler, migrations, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import specvit
from specvit.errors import InputError
from specvit.models import create_model
from specvit.models import io as mio

N_PIX = 256


def _model(**kw):
    torch.manual_seed(0)
    return create_model("specvit_tiny", n_pixels=N_PIX, **kw).eval()


def _x():
    return 1 + 0.1 * torch.randn(4, N_PIX, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name,kw", [
    ("specvit_tiny", dict(gaussian=True, n_labels=2, pos_encoding="wavelength", wave=np.linspace(7100, 8850, N_PIX),
                          chunk_norm="continuum", chunk_size=64)),
    ("specvit_tiny", dict(tokenizer="sw", pos_encoding="rope", pool="mean", n_labels=2)),
    ("cnn_small", dict(n_labels=2)),
    ("mlp_small", dict(n_labels=2)),
])
def test_round_trip_gives_identical_outputs(tmp_path, name, kw):
    torch.manual_seed(0)
    m = create_model(name, n_pixels=N_PIX, **kw).eval()
    wave = np.linspace(7100, 8850, N_PIX)
    path = mio.save_model(tmp_path / "model", m, label_names=["T_eff", "log_g"], label_mean=[5000.0, 3.0],
                          label_std=[600.0, 1.2], wave_A=wave, extras={"seed": 42, "train": {"lr": 3e-4}})
    m2, meta = specvit.load_model(path)
    x = _x()
    out, out2 = m(x), m2(x)
    for a, b in zip(out if isinstance(out, tuple) else [out], out2 if isinstance(out2, tuple) else [out2]):
        assert torch.equal(a, b)
    assert meta.model_name == name and meta.label_names == ["T_eff", "log_g"]
    assert np.allclose(meta.wave_A, wave) and meta.extras["seed"] == 42
    y = torch.tensor([[0.0, 1.0]])
    assert torch.allclose(meta.unscale(y), torch.tensor([[5000.0, 4.2]], dtype=y.dtype))
    assert not (tmp_path / ".model.partial").exists()


def test_overwrite_replaces_the_directory(tmp_path):
    m = _model()
    mio.save_model(tmp_path / "m", m)
    m.head.linear.bias.data += 1
    mio.save_model(tmp_path / "m", m)
    m2, _ = mio.load_model(tmp_path / "m")
    assert torch.equal(m2.head.linear.bias, m.head.linear.bias)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_newer_format_is_refused_clearly(tmp_path):
    mio.save_model(tmp_path / "m", _model())
    cfg = tmp_path / "m" / "config.json"
    d = json.loads(cfg.read_text())
    d["format_version"] = mio.FORMAT_VERSION + 1
    cfg.write_text(json.dumps(d))
    with pytest.raises(InputError, match="upgrade specvit") as e:
        mio.load_model(tmp_path / "m")
    assert "config.json" in str(e.value) and "format_version" in str(e.value)


def test_migration_hook_upgrades_old_directories(tmp_path, monkeypatch):
    """Pretend the current format is v+1 and v stored the head size under an old key."""
    m = _model(n_labels=3)
    mio.save_model(tmp_path / "m", m)
    cfg = tmp_path / "m" / "config.json"
    d = json.loads(cfg.read_text())
    d["model_config"]["num_outputs"] = d["model_config"].pop("n_labels")
    cfg.write_text(json.dumps(d))
    v = mio.FORMAT_VERSION

    def upgrade(meta):
        meta["model_config"]["n_labels"] = meta["model_config"].pop("num_outputs")
        return meta

    monkeypatch.setattr(mio, "FORMAT_VERSION", v + 1)
    monkeypatch.setitem(mio.MIGRATIONS, v, upgrade)
    m2, meta = mio.load_model(tmp_path / "m")
    assert meta.format_version == v + 1 and m2.config.n_labels == 3
    assert torch.equal(m2(_x()), m(_x()))
    monkeypatch.delitem(mio.MIGRATIONS, v)
    with pytest.raises(InputError, match="no migration"):
        mio.load_model(tmp_path / "m")


def test_weights_from_another_config_are_a_clear_error(tmp_path):
    mio.save_model(tmp_path / "m", _model())
    cfg = tmp_path / "m" / "config.json"
    d = json.loads(cfg.read_text())
    d["model_config"]["hidden"] = 64
    cfg.write_text(json.dumps(d))
    with pytest.raises(InputError, match="do not match the model configuration") as e:
        mio.load_model(tmp_path / "m")
    assert "weights.safetensors" in str(e.value) and "shape mismatch" in str(e.value)


def test_unknown_config_key_and_missing_files(tmp_path):
    mio.save_model(tmp_path / "m", _model())
    cfg = tmp_path / "m" / "config.json"
    d = json.loads(cfg.read_text())
    d["model_config"]["hiddden"] = 64
    cfg.write_text(json.dumps(d))
    with pytest.raises(InputError, match="hiddden"):
        mio.load_model(tmp_path / "m")
    with pytest.raises(InputError, match="no config.json"):
        mio.load_model(tmp_path / "nothing")
    mio.save_model(tmp_path / "w", _model())
    (tmp_path / "w" / "weights.safetensors").unlink()
    with pytest.raises(InputError, match="weights file missing"):
        mio.load_model(tmp_path / "w")


def test_save_validates_the_label_scaler(tmp_path):
    m = _model(n_labels=2)
    with pytest.raises(InputError, match="label_mean"):
        mio.save_model(tmp_path / "m", m, label_mean=[1.0], label_std=[1.0])
    with pytest.raises(InputError, match="label_std"):
        mio.save_model(tmp_path / "m", m, label_mean=[1.0, 2.0], label_std=[1.0, 0.0])
    assert not (tmp_path / "m").exists()


def test_cli_models_list_info_show(tmp_path, capsys):
    from specvit.cli import main

    assert main(["models", "list", "specvit_p16*"]) == 0
    out = capsys.readouterr().out
    assert "specvit_p16_h256_l6" in out and "4,809,729" in out
    assert main(["models", "info", "specvit_tiny", "--set", "tokenizer=sw", "--set", "n_labels=3"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["tokenizer"] == "sw" and info["config"]["n_labels"] == 3
    assert main(["models", "info", "nope"]) == 2
    assert "specvit_tiny" in capsys.readouterr().err  # the error lists the registered names
    mio.save_model(tmp_path / "m", _model(n_labels=2), label_names=["T_eff", "log_g"], label_mean=[5000, 3],
                   label_std=[500, 1])
    assert main(["models", "show", str(tmp_path / "m")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["label_names"] == ["T_eff", "log_g"] and shown["format_version"] == mio.FORMAT_VERSION
