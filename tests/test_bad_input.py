"""Issue #17, items 3-9: bad input gives one clear error before any work (config values, datasets, model folders,
command-line values). Every test here failed on the code before the fix."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from specvit.cli import main
from specvit.config import load_config
from specvit.errors import ConfigError, InputError
from test_train_data import write_dataset

N_PIX = 64
WAVE0 = 7100.0 + (np.arange(N_PIX) + 0.5) * 0.42724609375


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_input")
    write_dataset(d / "train.h5", n_rows=96, n_pixels=N_PIX, seed=0)
    write_dataset(d / "val.h5", n_rows=32, n_pixels=N_PIX, seed=1)
    write_dataset(d / "test.h5", n_rows=32, n_pixels=N_PIX, seed=2)
    return d


def _copy(src, dst, *, wave_shift=None, flux=None, error=None, labels=None):
    """Copy a dataset file, then spoil it: shift the grid, set flux/error pixels {(row, px): v}, labels {(row, name): v}."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        if wave_shift is not None:
            f["spectrumdataset/wave"][...] = f["spectrumdataset/wave"][()] + wave_shift
        for key, spoil in (("flux", flux), ("error", error)):
            for (r, p), v in (spoil or {}).items():
                f[f"dataset/arrays/{key}/value"][r, p] = v
    if labels:
        params = pd.read_hdf(dst, "dataset/params")
        for (r, name), v in labels.items():
            params.loc[r, name] = v
        params.to_hdf(dst, key="dataset/params", mode="a", format="table")
    return dst


def _train_cfg(data, out, **data_kw):
    return {
        "data": {"train": [str(data / "train.h5")], "val": [str(data / "val.h5")], "labels": ["log_g"],
                 "chunk_rows": 32, "buffer_rows": 64, **data_kw},
        "model": {"name": "mlp_small"},
        "run": {"out_dir": str(out), "epochs": 1, "batch_size": 32, "progress": False, "tensorboard": False},
    }


# --------------------------------------------------------------------------- 3. partial label settings
def test_partial_label_override_merges_into_the_labels_default():
    from specvit.data.simulate import SimulateConfig

    cfg = load_config(SimulateConfig, overrides=["labels.log_g.dist=beta", "labels.T_eff.low=4000"])
    assert (cfg.labels.log_g.low, cfg.labels.log_g.high, cfg.labels.log_g.dist) == (1.0, 5.0, "beta")
    assert (cfg.labels.T_eff.low, cfg.labels.T_eff.high) == (4000.0, 6000.0)
    assert (cfg.labels.M_H.low, cfg.labels.M_H.high) == (-2.5, 0.75)  # untouched labels keep their own box


def test_partial_label_mapping_in_a_file(tmp_path):
    from specvit.data.simulate import SimulateConfig

    p = tmp_path / "sim.yaml"
    p.write_text(yaml.safe_dump({"labels": {"T_eff": {"low": 4000}}}))
    cfg = load_config(SimulateConfig, p)
    assert (cfg.labels.T_eff.low, cfg.labels.T_eff.high) == (4000.0, 6000.0)


def test_simulate_help_example_runs(tmp_path, capsys):
    """`simulate --help`'s own example, on 8 spectra."""
    out = tmp_path / "t.h5"
    rc = main(["simulate", "--out", str(out), "--n", "8", "--seed", "4", "--set", "labels.log_g.dist=beta",
               "--set", "labels.T_eff.low=4000", "--no-progress", "--set", "chunk_size=8"])
    assert rc == 0, capsys.readouterr().err
    p = pd.read_hdf(out, "dataset/params")
    assert p["log_g"].between(1.0, 5.0).all() and p["T_eff"].between(4000.0, 6000.0).all()


def test_simulate_nan_bound_is_named_as_nan(tmp_path, capsys):
    """A NaN bound is named as NaN (not as "low > high"), before anything is written."""
    out = tmp_path / "sim.h5"
    rc = main(["simulate", "--out", str(out), "--n", "4", "--seed", "0", "--set", "labels.T_eff.low=.nan"])
    err = capsys.readouterr().err
    assert rc == 2 and "labels.T_eff.low" in err and "NaN" in err and "low > high" not in err
    assert not out.exists()


# --------------------------------------------------------------------------- 4. non-finite optimiser settings
@pytest.mark.parametrize("override, field", [
    ("optim.clip_grad_norm=.inf", "optim.clip_grad_norm"),
    ("optim.lr=.nan", "optim.lr"),
    ("optim.lr=.inf", "optim.lr"),
    ("optim.weight_decay=.nan", "optim.weight_decay"),
    ("run.max_steps=-1", "run.max_steps"),
    ("run.max_steps=0", "run.max_steps"),
    ("optim.betas=[0.9,.nan]", "optim.betas"),
    ("loss.huber_delta=-1", "loss.huber_delta"),
    ("schedule.warmup_frac=2", "schedule.warmup_frac"),
    ("run.eval_every_steps=0", "run.eval_every_steps"),
])
def test_bad_optimiser_setting_is_refused_before_training(data, tmp_path, capsys, override, field):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_train_cfg(data, tmp_path / "run")))
    rc = main(["train", "--config", str(cfg), "--set", override])
    err = capsys.readouterr().err
    assert rc == 2 and field in err and f"--set {override}" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # no half-made run folder


# --------------------------------------------------------------------------- 5. weights of another model
def _save(path, label, mean, std):
    from specvit.models import create_model
    from specvit.models.io import save_model

    model = create_model("mlp_small", n_pixels=N_PIX, n_labels=1)
    return save_model(path, model, label_names=[label], label_mean=[mean], label_std=[std], wave_A=WAVE0)


def test_weights_of_another_model_are_refused(data, tmp_path, capsys):
    from specvit.models.io import load_model

    _save(tmp_path / "teff", "T_eff", 4875.0, 650.0)
    _save(tmp_path / "logg", "log_g", 3.0, 1.15)
    shutil.copy(tmp_path / "teff" / "weights.safetensors", tmp_path / "logg" / "weights.safetensors")
    with pytest.raises(InputError, match="fingerprint") as e:
        load_model(tmp_path / "logg")
    msg = str(e.value)
    assert "label_names" in msg and "T_eff" in msg and "log_g" in msg and "label_scaler" in msg
    rc = main(["predict", "--model", str(tmp_path / "logg"), "--input", str(data / "test.h5"),
               "--out", str(tmp_path / "cat.csv")])
    assert rc == 2 and "fingerprint" in capsys.readouterr().err
    assert not (tmp_path / "cat.csv").exists()


def test_weights_without_fingerprint_still_load_with_a_warning(tmp_path):
    from safetensors.torch import load_file, save_file

    from specvit.models.io import load_model

    _save(tmp_path / "old", "log_g", 3.0, 1.15)
    w = tmp_path / "old" / "weights.safetensors"
    save_file(load_file(str(w)), str(w), metadata={"format_version": "1"})  # as written before fingerprints
    with pytest.warns(UserWarning, match="fingerprint"):
        model, meta = load_model(tmp_path / "old")
    assert meta.label_names == ["log_g"]


# --------------------------------------------------------------------------- 6. wavelength grids, negative errors
def test_val_set_on_a_shifted_grid_is_refused_before_training(data, tmp_path):
    from specvit.train import Trainer, load_train_config

    val = _copy(data / "val.h5", tmp_path / "shifted.h5", wave_shift=50.0)
    cfg = load_train_config(data=_train_cfg(data, tmp_path / "run", val=[str(val)]))
    with pytest.raises(InputError, match="wavelength grid differs from the training set") as e:
        Trainer(cfg)
    assert "shifted.h5" in str(e.value) and "50" in str(e.value)
    assert not (tmp_path / "run").exists()


def _ridge_cfg(data, out, **paths):
    from specvit.baselines.ridge import RidgeConfig

    d = {"train": str(data / "train.h5"), "val": str(data / "val.h5"), "test": str(data / "test.h5"),
         "labels": ["log_g"], **paths}
    return load_config(RidgeConfig, data={"data": d, "out_dir": str(out), "alphas": [1.0]})


def test_ridge_refuses_a_test_file_on_another_grid_before_fitting(data, tmp_path):
    from specvit.baselines.ridge import run_ridge

    test = _copy(data / "test.h5", tmp_path / "shifted.h5", wave_shift=50.0)
    with pytest.raises(InputError, match="wavelength grid differs") as e:
        run_ridge(_ridge_cfg(data, tmp_path / "run", test=str(test)), log=lambda *_: None)
    assert "shifted.h5" in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing fitted, no lone ridge_model.npz


def test_lightgbm_refuses_a_val_file_on_another_grid_before_fitting(data, tmp_path):
    pytest.importorskip("lightgbm")
    from specvit.baselines.gbm import LightGBMConfig, run_lightgbm

    val = _copy(data / "val.h5", tmp_path / "shifted.h5", wave_shift=50.0)
    d = {"train": str(data / "train.h5"), "val": str(val), "test": str(data / "test.h5"), "labels": ["log_g"]}
    cfg = load_config(LightGBMConfig, data={"data": d, "out_dir": str(tmp_path / "run")})
    with pytest.raises(InputError, match="wavelength grid differs"):
        run_lightgbm(cfg, log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_predict_and_ridge_refuse_negative_errors(data, tmp_path, capsys):
    from specvit.baselines.ridge import run_ridge

    neg = _copy(data / "test.h5", tmp_path / "neg.h5", error={(6, 3): -0.02})
    _save(tmp_path / "model", "log_g", 3.0, 1.15)
    rc = main(["predict", "--model", str(tmp_path / "model"), "--input", str(neg), "--out", str(tmp_path / "c.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "negative error" in err and "row 6" in err and "neg.h5" in err
    assert not (tmp_path / "c.csv").exists()
    with pytest.raises(InputError, match="row 6"):
        run_ridge(_ridge_cfg(data, tmp_path / "run", test=str(neg)), log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_templatefit_refuses_a_dataset_on_another_grid(tmp_path):
    from specvit.baselines.templatefit import TemplateFitConfig, run_templatefit
    from specvit.data import write_dataset as write_ds
    from specvit.observe.forward import ForwardModel
    from toymodel import ToyModel

    fwd = ForwardModel(ToyModel(wave_min=8400.0, wave_max=8500.0, step=1.0, n_lines=5))
    lab = np.array([[4500.0, 2.0, 0.0, 0.0, 0.0], [5000.0, 3.0, -1.0, 0.1, 0.0]])
    flux = fwd.numpy(lab)
    err = np.full_like(flux, 0.01)
    params = pd.DataFrame(lab, columns=list(fwd.label_names))
    path = write_ds(tmp_path / "d.h5", wave=fwd.model.wave + 50.0, flux=flux, error=err, params=params)
    cfg = load_config(TemplateFitConfig, overrides=[f"input={path}", "use_observer=false"])
    with pytest.raises(InputError, match="wavelength grid differs from the spectral model"):
        run_templatefit(cfg, forward=fwd)


# --------------------------------------------------------------------------- 7. silent NaN spectrum
def test_spectrum_refuses_labels_giving_nonfinite_flux(tmp_path, capsys):
    out = tmp_path / "x.csv"
    with pytest.warns(UserWarning):
        rc = main(["spectrum", "--teff", "-100", "--logg", "3", "--extrapolate", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite flux" in err and "T_eff=-100" in err
    assert not out.exists()


# --------------------------------------------------------------------------- 8. clear errors, not tracebacks
@pytest.mark.parametrize("mags", [["nan"], ["-20"], ["21", "inf"], ["45"]])
def test_fisher_mags_must_be_sane(capsys, mags):
    rc = main(["fisher", "--mags", *mags])
    err = capsys.readouterr().err
    assert rc == 2 and "--mags" in err and "[10, 30]" in err


def test_fisher_help_states_the_magnitude_range(capsys):
    with pytest.raises(SystemExit):
        main(["fisher", "--help"])
    assert "[10, 30]" in capsys.readouterr().out


def test_simulate_bad_yaml_value_is_a_config_error(tmp_path, capsys):
    rc = main(["simulate", "--out", str(tmp_path / "s.h5"), "--n", "4", "--seed", "0",
               "--set", "observing.mag=[20,"])
    err = capsys.readouterr().err
    assert rc == 2 and "observing.mag" in err and "YAML" in err and "--set observing.mag=[20," in err


# --------------------------------------------------------------------------- 9. the rest
def test_nan_label_bound_is_reported_as_nan_not_low_gt_high():
    from specvit.data.simulate import LabelDist, SimulateConfig

    with pytest.raises(ConfigError, match="finite") as e:
        load_config(SimulateConfig, overrides=["labels.log_g.low=.nan"])
    assert "low > high" not in str(e.value) and "labels.log_g.low" in str(e.value)
    with pytest.raises(ConfigError, match="finite"):
        LabelDist(float("nan"), 5.0)


def test_ridge_checks_the_test_file_before_fitting(data, tmp_path):
    """A NaN in the test file: refused before the (slow) fit; no lone ridge_model.npz is left behind."""
    from specvit.baselines.ridge import run_ridge

    bad = _copy(data / "test.h5", tmp_path / "nan.h5", flux={(9, 5): np.nan})
    logged = []
    with pytest.raises(InputError, match="row 9"):
        run_ridge(_ridge_cfg(data, tmp_path / "run", test=str(bad)), log=logged.append)
    assert logged == [] and not (tmp_path / "run").exists()


def test_nan_in_the_val_set_is_found_before_training(data, tmp_path):
    from specvit.train import Trainer, load_train_config

    val = _copy(data / "val.h5", tmp_path / "nanval.h5", flux={(20, 1): np.nan})
    cfg = load_train_config(data=_train_cfg(data, tmp_path / "run", val=[str(val)]))
    with pytest.raises(InputError, match="row 20") as e:
        Trainer(cfg)
    assert "nanval.h5" in str(e.value) and "validation" in str(e.value)


def test_every_problem_of_a_dataset_is_reported_at_once(data, tmp_path):
    """Flux, error and label problems of train and test together, with the first rows and the count."""
    from specvit.baselines.ridge import run_ridge

    train = _copy(data / "train.h5", tmp_path / "train.h5",
                  flux={(r, 0): np.nan for r in range(10, 18)}, error={(3, 2): -1.0},
                  labels={(40, "log_g"): np.nan})
    test = _copy(data / "test.h5", tmp_path / "test.h5", wave_shift=1.0)
    with pytest.raises(InputError) as e:
        run_ridge(_ridge_cfg(data, tmp_path / "run", train=str(train), test=str(test)), log=lambda *_: None)
    msg = str(e.value)
    assert "NaN or inf flux in 8 rows: row 10, row 11, row 12, row 13, row 14 (first 5 of 8 rows)" in msg
    assert "error" in msg and "row 3" in msg
    assert "dataset/params/log_g" in msg and "row 40" in msg
    assert "wavelength grid differs" in msg and "test.h5" in msg


def test_train_refuses_negative_error_before_building_the_model(data, tmp_path):
    from specvit.train import Trainer, load_train_config

    train = _copy(data / "train.h5", tmp_path / "neg.h5", error={(50, 7): -0.5})
    cfg = load_train_config(data=_train_cfg(data, tmp_path / "run", train=[str(train)]))
    with pytest.raises(InputError, match="row 50"):
        Trainer(cfg)


def test_simulate_magnitude_must_be_sane(tmp_path, capsys):
    rc = main(["simulate", "--out", str(tmp_path / "s.h5"), "--n", "4", "--seed", "0", "--set", "observing.mag=-20"])
    err = capsys.readouterr().err
    assert rc == 2 and "observing.mag" in err and "[10, 30]" in err
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("args, field", [(["--prior-taper", "nan"], "--prior-taper"),
                                         (["--fd-steps", "250", "0", "nan", "0.25", "0.25"], "--fd-steps"),
                                         (["--noise-level", "inf"], "--noise-level")])
def test_fisher_other_numbers_checked_before_any_work(capsys, args, field):
    rc = main(["fisher", *args])
    err = capsys.readouterr().err
    assert rc == 2 and field in err


def test_predict_batch_size_must_be_positive(data, tmp_path, capsys):
    _save(tmp_path / "model", "log_g", 3.0, 1.15)
    rc = main(["predict", "--model", str(tmp_path / "model"), "--input", str(data / "test.h5"),
               "--out", str(tmp_path / "c.csv"), "--batch-size", "0"])
    assert rc == 2 and "--batch-size" in capsys.readouterr().err


def test_integer_key_given_infinity_is_a_config_error(data, tmp_path):
    from specvit.train import load_train_config

    base = _train_cfg(data, tmp_path / "run")
    with pytest.raises(ConfigError, match="must be int") as e:
        load_train_config(data=base, overrides=["run.epochs=.inf"])
    assert "run.epochs" in str(e.value)
    assert base["run"]["epochs"] == 1  # an override never edits the caller's dict


@pytest.mark.parametrize("override, field", [("observing.seeing_arcsec=[-1,2]", "observing.seeing_arcsec"),
                                             ("observing.exp_count=0", "observing.exp_count"),
                                             ("labels.log_g.beta_a=-1", "labels.log_g.beta_a")])
def test_simulate_other_ranges_checked_when_read(override, field):
    from specvit.data.simulate import SimulateConfig

    with pytest.raises(ConfigError) as e:
        load_config(SimulateConfig, overrides=[override])
    assert field in str(e.value) and f"--set {override}" in str(e.value)


@pytest.mark.parametrize("override, field", [("data.max_train_rows=-3", "data.max_train_rows"),
                                             ("n_estimators=0", "n_estimators")])
def test_baseline_section_errors_name_the_full_key_and_the_set(override, field):
    from specvit.baselines.gbm import LightGBMConfig

    with pytest.raises(ConfigError) as e:
        load_config(LightGBMConfig, data={"data": {"train": "a", "val": "b", "test": "c"}}, overrides=[override])
    assert f"field='{field}'" in str(e.value) and f"--set {override}" in str(e.value)
