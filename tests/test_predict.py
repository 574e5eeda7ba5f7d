"""`specvit train` and `specvit predict` end to end: config file, CLI, catalogue columns and flags."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from specvit.cli import main
from specvit.train import load_train_config
from test_train_data import write_dataset

REPO = Path(__file__).resolve().parents[1]
N_PIX = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("pred")
    write_dataset(d / "train.h5", n_rows=192, n_pixels=N_PIX, seed=0)
    write_dataset(d / "val.h5", n_rows=48, n_pixels=N_PIX, seed=1)
    write_dataset(d / "test.h5", n_rows=50, n_pixels=N_PIX, seed=2, nan_row=4)
    cfg = {
        "data": {"train": [str(d / "train.h5")], "val": [str(d / "val.h5")], "labels": ["log_g", "T_eff"],
                 "chunk_rows": 32, "buffer_rows": 64},
        "model": {"name": "mlp_small"},
        "loss": {"kind": "gaussian_nll"},
        "run": {"out_dir": str(d / "run"), "epochs": 2, "batch_size": 32, "progress": False, "tensorboard": False},
    }
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["train", "--config", str(d / "cfg.yaml"), "--set", "model.overrides.gaussian=true",
               "--set", "optim.lr=3e-3"])
    assert rc == 0
    return d


def test_train_cli_writes_model_and_logs(trained):
    run = trained / "run"
    assert (run / "model" / "config.json").exists() and (run / "metrics.csv").exists()
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["config"]["optim"]["lr"] == 3e-3 and resolved["config"]["model"]["overrides"]["gaussian"] is True
    assert "train" in resolved["provenance"]["command"] or resolved["provenance"]["command"]


def test_predict_catalogue_columns_flags_uncertainties(trained, capsys):
    out = trained / "cat.csv"
    rc = main(["predict", "--model", str(trained / "run" / "model"), "--input", str(trained / "test.h5"),
               "--out", str(out), "--noise-level", "1", "--seed", "3"])
    assert rc == 0
    cat = pd.read_csv(out)
    assert list(cat.columns) == ["id", "row", "log_g", "log_g_err", "log_g_err_raw", "T_eff", "T_eff_err",
                                 "T_eff_err_raw", "snr", "flag_nan_input", "flag_label_range", "flag_snr_range",
                                 "flags"]  # the trainer wrote model/calibration.json: _err calibrated, _err_raw raw
    assert len(cat) == 50 and list(cat["id"]) == list(range(50))
    assert cat.loc[4, "flag_nan_input"] and np.isnan(cat.loc[4, "log_g"]) and cat.loc[4, "flags"] & 1
    ok = cat.drop(index=4)
    assert ok["log_g_err"].gt(0).all() and ok["T_eff_err"].gt(10).all()  # label units (K), not z units
    truth = pd.read_hdf(trained / "test.h5", "dataset/params")
    assert np.allclose(ok["snr"], truth["snr"].drop(index=4), rtol=1e-5)  # noise level 1: the stored SNR
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert meta["seed"] == 3 and meta["noise_level"] == 1.0 and meta["n_rows"] == 50
    # label-range flag is exactly "a prediction outside the training label range"
    from specvit.models.io import read_meta

    r = read_meta(trained / "run" / "model").extras["training_ranges"]
    lo, hi = np.array(r["label_min"]), np.array(r["label_max"])
    pred = ok[["log_g", "T_eff"]].to_numpy()
    assert np.array_equal(ok["flag_label_range"].to_numpy(), ((pred < lo) | (pred > hi)).any(axis=1))


def test_predict_noise_is_seeded_and_snr_flag(trained):
    m, inp = str(trained / "run" / "model"), str(trained / "test.h5")
    for name, extra in [("a", ["--seed", "1"]), ("b", ["--seed", "1"]), ("c", ["--seed", "2"])]:
        assert main(["predict", "--model", m, "--input", inp, "--out", str(trained / f"{name}.csv"),
                     "--noise-level", "1", *extra]) == 0
    a, b, c = (pd.read_csv(trained / f"{n}.csv") for n in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["log_g"].drop(index=4), c["log_g"].drop(index=4))
    # ten times the noise: SNR ten times lower, far outside the training SNR range -> flagged
    assert main(["predict", "--model", m, "--input", inp, "--out", str(trained / "loud.csv"),
                 "--noise-level", "10"]) == 0
    loud = pd.read_csv(trained / "loud.csv").drop(index=4)
    assert np.allclose(loud["snr"], a["snr"].drop(index=4) / 10, rtol=1e-6)
    assert loud["flag_snr_range"].all() and (loud["flags"] & 4).all()
    assert main(["predict", "--model", m, "--input", inp, "--out", str(trained / "quiet.csv"), "--noiseless"]) == 0
    quiet = pd.read_csv(trained / "quiet.csv")
    assert not np.allclose(quiet["log_g"].drop(index=4), a["log_g"].drop(index=4))


def test_predict_wrong_pixel_count(trained, tmp_path, capsys):
    write_dataset(tmp_path / "wide.h5", n_rows=5, n_pixels=2 * N_PIX)
    rc = main(["predict", "--model", str(trained / "run" / "model"), "--input", str(tmp_path / "wide.h5"),
               "--out", str(tmp_path / "x.csv")])
    assert rc == 2 and "pixels" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_train_cli_unknown_key_exit_2(trained, capsys):
    rc = main(["train", "--config", str(trained / "cfg.yaml"), "--set", "run.epoks=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "run.epoks" in err and "unknown config key" in err


def test_cli_help_lists_train_and_predict(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "train" in out and "predict" in out
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = capsys.readouterr().out
    for opt in ("--model", "--input", "--out", "--noise-level", "--noiseless", "--seed"):
        assert opt in out


@pytest.mark.parametrize("name", ["tiny_cpu", "paper", "paper_stream", "cnn_paper", "mlp_paper"])
def test_shipped_configs_load(name):
    cfg = load_train_config(REPO / "configs" / f"{name}.yaml")
    if name == "paper_stream":  # the paper's run on fresh simulations: 200 x 1M spectra seen
        assert (cfg.data.source, cfg.data.simulate.samples_per_epoch, cfg.run.epochs) == ("simulate", 1_000_000, 200)
    if name in ("paper", "paper_stream"):
        assert (cfg.model.name, cfg.run.epochs, cfg.run.batch_size, cfg.run.precision) == \
            ("specvit_p16_h256_l6", 200, 256, "bf16")
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.min_lr, cfg.optim.clip_grad_norm, cfg.run.seed) == \
            (3e-4, 0.01, 1e-5, 0.5, 42)


def test_trainer_writes_calibration_and_predict_applies_it(trained, tmp_path):
    """Gaussian model + validation: model/calibration.json; predict's _err = scale x raw; --raw-sigma gives raw."""
    from specvit.train.calibration import CALIBRATION_FILE, SigmaCalibration
    from specvit.train.predict import calibrate_model_dir

    model = trained / "run" / "model"
    cal = SigmaCalibration.load(model / CALIBRATION_FILE)
    assert cal.labels == ["log_g", "T_eff"] and cal.n_rows == 48 and cal.method == "coverage68"
    assert np.allclose(cal.calibrated["cov68"], 0.6827, atol=1 / 48 + 1e-9)  # the quantile on 48 rows
    metrics = json.loads((trained / "run" / "metrics.json").read_text())
    assert metrics["sigma_calibration"]["scale"] == cal.scale
    # `specvit calibrate` re-fits from the same validation spectra: the trainer's noise is predict's
    src = cal.source  # data.noise_seed of the config (default 0), recorded by the trainer
    assert src["noise_seed"] == 0 and src["noise_level"] == 1.0 and src["fitted_by"] == "trainer"
    refit = calibrate_model_dir(model, trained / "val.h5", noise_level=1.0, noise_seed=0, write=False)
    assert np.allclose(refit.scale, cal.scale, rtol=1e-4)
    args = ["predict", "--model", str(model), "--input", str(trained / "test.h5"), "--noise-level", "1", "--seed", "3"]
    assert main(args + ["--out", str(tmp_path / "c.csv")]) == 0
    assert main(args + ["--out", str(tmp_path / "r.csv"), "--raw-sigma"]) == 0
    c, r = pd.read_csv(tmp_path / "c.csv"), pd.read_csv(tmp_path / "r.csv")
    assert "log_g_err_raw" not in r.columns
    for j, name in enumerate(cal.labels):
        assert np.allclose(r[f"{name}_err"], c[f"{name}_err_raw"], equal_nan=True)
        assert np.allclose(c[f"{name}_err"], cal.scale[j] * r[f"{name}_err"], equal_nan=True)
    meta = json.loads((tmp_path / "c.csv.json").read_text())
    assert meta["sigma"] == "calibrated" and meta["sigma_scale"]["T_eff"] == cal.scale[1]
    assert json.loads((tmp_path / "r.csv.json").read_text())["sigma"] == "raw (calibration disabled)"


def test_calibration_of_other_labels_or_weights_is_refused(trained, tmp_path, capsys):
    import shutil

    from specvit.train.calibration import CALIBRATION_FILE

    model = tmp_path / "model"
    shutil.copytree(trained / "run" / "model", model)
    doc = json.loads((model / CALIBRATION_FILE).read_text())
    args = ["predict", "--model", str(model), "--input", str(trained / "test.h5"), "--out", str(tmp_path / "x.csv")]
    (model / CALIBRATION_FILE).write_text(json.dumps({**doc, "labels": ["log_g", "M_H"]}))
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "calibration is for labels ['log_g', 'M_H']" in err and str(model / CALIBRATION_FILE) in err
    (model / CALIBRATION_FILE).write_text(json.dumps({**doc, "weights_sha256": "0" * 64}))
    assert main(args) != 0
    assert "other weights" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    assert main(args + ["--raw-sigma"]) == 0  # the raw sigmas need no calibration


def test_network_predict_is_the_batched_unscaled_output():
    """The one inference loop: label units, batch-size invariant, raw sigma, training mode restored."""
    import torch

    from specvit.errors import InputError
    from specvit.models import create_model
    from specvit.train.predict import network_predict

    torch.manual_seed(0)
    model = create_model("mlp_small", n_pixels=64, n_labels=2, gaussian=True)
    model.train()
    x = np.random.default_rng(1).normal(size=(10, 64)).astype(np.float32)
    mean_l, std_l = np.array([4500.0, 2.5]), np.array([800.0, 1.2])
    m3, s3 = network_predict(model, x, label_mean=mean_l, label_std=std_l, batch_size=3)
    m10, s10 = network_predict(model, x, label_mean=mean_l, label_std=std_l, batch_size=10)
    assert model.training  # restored
    model.eval()
    from specvit.train.losses import split_output

    with torch.no_grad():
        mean, log_var = split_output(model(torch.from_numpy(x)))
    np.testing.assert_allclose(m3, mean.double().numpy() * std_l + mean_l, rtol=1e-6)
    np.testing.assert_allclose(s3, np.exp(0.5 * log_var.double().numpy()) * std_l, rtol=1e-6)
    np.testing.assert_allclose(m3, m10, rtol=1e-6)
    np.testing.assert_allclose(s3, s10, rtol=1e-6)
    with pytest.raises(InputError, match="batch_size"):
        network_predict(model, x, label_mean=mean_l, label_std=std_l, batch_size=0)
