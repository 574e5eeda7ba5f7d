"""Tests of the classical baselines (Ridge, LightGBM), their shared data path and the CLI."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from specvit.baselines.common import DataConfig, iter_noisy_chunks, noisy_chunk
from specvit.baselines.ridge import RidgeConfig, RidgeModel, RidgeStats, run_ridge, solve_path
import specvit.cli
from specvit.config import load_config
from specvit.observe.noise import fixed_noisy_flux
from specvit.data.pfsspec import open_dataset, write_dataset
from specvit.errors import ConfigError, InputError

N_PIX = 96


def _spectra(n, seed, *, linear=False):
    """Tiny synthetic spectra: absorption lines whose depths depend on log g and T_eff.

    ``linear=True`` makes flux exactly linear in the labels (Ridge must recover it).
    """
    rng = np.random.default_rng(seed)
    wave = np.linspace(7100.0, 8850.0, N_PIX)
    logg = rng.uniform(1.0, 5.0, n)
    teff = rng.uniform(3750.0, 6000.0, n)
    t = (teff - 4875.0) / 1125.0
    g = (logg - 3.0) / 2.0
    centres = np.linspace(7200.0, 8750.0, 8)
    prof = np.exp(-0.5 * ((wave[None, :] - centres[:, None]) / 25.0) ** 2)  # (8, N_PIX)
    lr = np.random.default_rng(99)
    a, b = lr.normal(0, 0.1, 8), lr.normal(0, 0.1, 8)
    if linear:
        depth = 0.3 + a[None] * g[:, None] + b[None] * t[:, None]
    else:
        depth = 0.3 * np.exp(2 * a[None] * g[:, None] + 3 * np.abs(a[None]) * g[:, None] ** 2 + b[None] * t[:, None])
    flux = 0.5 * (1.0 - depth @ prof)
    error = np.full_like(flux, 0.004)
    params = pd.DataFrame({"id": np.arange(n) + 1000 * seed, "T_eff": teff, "log_g": logg, "M_H": 0.0, "a_M": 0.0,
                           "C_M": 0.0, "snr": np.median(flux / error, axis=1)})
    return wave, flux, error, params


def _write(path, n, seed, **kw):
    wave, flux, error, params = _spectra(n, seed, **kw)
    write_dataset(path, wave=wave, flux=flux, error=error, params=params)
    return path


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    d = tmp_path_factory.mktemp("baseline_data")
    out = {}
    for kind, linear in (("lin", True), ("nl", False)):
        out[kind] = {s: str(_write(d / f"{kind}_{s}.h5", n, seed, linear=linear))
                     for s, n, seed in (("train", 600, 1), ("val", 150, 2), ("test", 200, 3))}
    return out


def _data(paths, **kw):
    return {"train": paths["train"], "val": paths["val"], "test": paths["test"], **kw}


# --------------------------------------------------------------------------- ridge algebra
def _problem(rng, n=300, d=12, L=2):
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 5, d) + rng.normal(size=d) * 3
    W = rng.normal(size=(d, L))
    Y = X @ W + rng.normal(scale=0.5, size=(n, L)) + 7.0
    return X, Y


def test_ridge_equals_lstsq_closed_form(rng):
    X, Y = _problem(rng)
    alphas = [1e-3, 1.0, 30.0, 1e4]
    path = solve_path(RidgeStats(X.shape[1], Y.shape[1]).update(X, Y), alphas)
    mu, sd = X.mean(0), X.std(0)
    Z = (X - mu) / sd
    Yc = Y - Y.mean(0)
    for i, a in enumerate(alphas):
        # ridge as ordinary least squares on the augmented system [Z; sqrt(a) I] w = [Yc; 0]
        Za = np.vstack([Z, np.sqrt(a) * np.eye(X.shape[1])])
        Ya = np.vstack([Yc, np.zeros((X.shape[1], Y.shape[1]))])
        w = np.linalg.lstsq(Za, Ya, rcond=None)[0]
        np.testing.assert_allclose(path.coef[i] * sd[:, None], w, rtol=1e-8, atol=1e-10)
        pred = Y.mean(0) + Z @ w
        np.testing.assert_allclose(path.predict(X)[:, i, :], pred, rtol=1e-9, atol=1e-9)
        r2 = 1 - ((Y - pred) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0)
        np.testing.assert_allclose(path.train_r2[i], r2, rtol=1e-8)


def test_ridge_streaming_equals_all_at_once(rng):
    X, Y = _problem(rng, n=257)
    whole = solve_path(RidgeStats(12, 2).update(X, Y), [0.5, 50.0])
    st = RidgeStats(12, 2)
    for a in range(0, len(X), 40):
        st.update(X[a:a + 40].astype(np.float32).astype(np.float64), Y[a:a + 40])
    chunked = solve_path(st, [0.5, 50.0])
    np.testing.assert_allclose(chunked.coef, whole.coef, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(chunked.intercept, whole.intercept, rtol=1e-6)


def test_ridge_constant_pixel_is_left_out(rng):
    X, Y = _problem(rng)
    X[:, 3] = 0.5
    path = solve_path(RidgeStats(12, 2).update(X, Y), [1.0])
    assert path.x_scale[3] == 0 and np.all(path.coef[:, 3, :] == 0)
    assert np.all(np.isfinite(path.coef))


def test_ridge_model_roundtrip(tmp_path, rng):
    X, Y = _problem(rng)
    path = solve_path(RidgeStats(12, 2).update(X, Y), [0.1, 10.0])
    m = RidgeModel.from_path(path, np.array([0, 1]), ["log_g", "T_eff"])
    m2 = RidgeModel.load(m.save(tmp_path / "r.npz"))
    np.testing.assert_allclose(m2.predict(X), m.predict(X))
    assert m2.label_names == ["log_g", "T_eff"] and list(m2.alpha) == [0.1, 10.0]
    with pytest.raises(InputError, match="flux"):
        m.predict(X[:, :5])


# --------------------------------------------------------------------------- shared noise
def test_fixed_noise_independent_of_chunking(splits):
    ds = open_dataset(splits["nl"]["test"])
    a = np.concatenate([x for _, x in iter_noisy_chunks(ds, stop=50, noise_level=1.0, seed=42, chunk_rows=7)])
    b = noisy_chunk(ds, 0, 50, noise_level=1.0, seed=42)
    ref = fixed_noisy_flux(ds.flux[:50], ds.error[:50], 1.0, np.arange(50), 42)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, ref, rtol=1e-6)
    resid = (a - ds.flux[:50]) / ds.error[:50]
    assert abs(resid.std() - 1.0) < 0.05  # noise at the stated level
    assert not np.allclose(a, noisy_chunk(ds, 0, 50, noise_level=1.0, seed=43))
    ds.close()


def test_nan_flux_is_an_error_naming_row(tmp_path):
    wave, flux, error, params = _spectra(20, 5)
    write_dataset(tmp_path / "ok.h5", wave=wave, flux=flux, error=error, params=params)
    import h5py

    with h5py.File(tmp_path / "ok.h5", "r+") as f:
        f["dataset/arrays/flux/value"][7, 3] = np.nan
    ds = open_dataset(tmp_path / "ok.h5")
    with pytest.raises(InputError, match="row 7") as e:
        noisy_chunk(ds, 0, 20, noise_level=1.0, seed=0)
    assert "ok.h5" in str(e.value)
    ds.close()


# --------------------------------------------------------------------------- end to end
def test_run_ridge_recovers_linear_signal(splits, tmp_path):
    cfg = load_config(RidgeConfig, data={"data": _data(splits["lin"], labels=["log_g", "teff"], chunk_rows=128),
                                         "out_dir": str(tmp_path / "ridge")})
    lines = []
    m = run_ridge(cfg, log=lines.append)
    for name in ("log_g", "T_eff"):
        assert m["test"]["labels"][name]["overall"]["r2"] > 0.95
        r2 = m["test"]["labels"][name]["overall"]["r2"]
        assert f"ridge: test {name}: R2 = {r2:.4f}" in lines  # the run logs each label's test R2
    assert set(m["alpha"]) == {"log_g", "T_eff"}
    out = tmp_path / "ridge"
    df = pd.read_csv(out / "predictions.csv")
    assert list(df.columns) == ["id", "row", "snr", "log_g_true", "log_g_pred", "T_eff_true", "T_eff_pred"]
    assert len(df) == 200 and df["id"].iloc[0] == 3000
    assert json.loads((out / "metrics.json").read_text())["model"] == "ridge"
    conf = yaml.safe_load((out / "config.yaml").read_text())
    assert conf["config"]["data"]["eval_noise_seed"] == 42 and "command" in conf["provenance"]
    # the saved model reproduces the test predictions from the shared fixed noise
    model = RidgeModel.load(out / "ridge_model.npz")
    ds = open_dataset(splits["lin"]["test"])
    x = noisy_chunk(ds, 0, 200, noise_level=1.0, seed=42)
    np.testing.assert_allclose(model.predict(x)[:, 0], df["log_g_pred"], rtol=1e-6, atol=1e-6)
    ds.close()


def test_run_ridge_alpha_search_prefers_regularisation_when_noisy(splits, tmp_path):
    # at 10x the noise, tiny alphas overfit 600 rows x 96 pixels; the validation choice must beat them
    cfg = load_config(RidgeConfig, data={"data": _data(splits["lin"], noise_level=10.0),
                                         "out_dir": str(tmp_path / "r"), "alphas": [1e-3, 1e1, 1e3, 1e5]})
    m = run_ridge(cfg, log=lambda *_: None)
    val_r2 = m["alpha_search"]["val_r2"]["log_g"]
    assert m["alpha"]["log_g"] > 1e-3 and max(val_r2) > val_r2[0]


def test_run_lightgbm_learns_logg_and_stream_matches(splits, tmp_path):
    pytest.importorskip("lightgbm")
    from specvit.baselines.gbm import LightGBMConfig, load_boosters, run_lightgbm

    base = {"data": _data(splits["nl"], n_augment=2, chunk_rows=256), "n_estimators": 200, "num_leaves": 15,
            "learning_rate": 0.15, "n_jobs": 1, "log_every": 0, "early_stopping_rounds": 20}
    m = run_lightgbm(load_config(LightGBMConfig, data={**base, "out_dir": str(tmp_path / "a")}), log=lambda *_: None)
    r2 = m["test"]["labels"]["log_g"]["overall"]["r2"]
    assert r2 > 0.5, r2  # much better than the mean predictor (R2 = 0)
    assert m["n_train_samples"] == 1200
    assert 0 < m["boosters"]["log_g"]["best_iteration"] <= 200
    # the saved text model reproduces the predictions
    df = pd.read_csv(tmp_path / "a" / "predictions.csv")
    booster = load_boosters(tmp_path / "a", ["log_g"])["log_g"]
    ds = open_dataset(splits["nl"]["test"])
    x = noisy_chunk(ds, 0, 200, noise_level=1.0, seed=42)
    np.testing.assert_allclose(booster.predict(x), df["log_g_pred"], rtol=1e-6, atol=1e-6)
    ds.close()
    # streaming through lightgbm.Sequence builds the same training set
    m2 = run_lightgbm(load_config(LightGBMConfig, data={**base, "out_dir": str(tmp_path / "b"), "stream": True}),
                      log=lambda *_: None)
    df2 = pd.read_csv(tmp_path / "b" / "predictions.csv")
    np.testing.assert_allclose(df2["log_g_pred"], df["log_g_pred"], rtol=1e-6)
    assert m2["boosters"]["log_g"]["best_iteration"] == m["boosters"]["log_g"]["best_iteration"]


# --------------------------------------------------------------------------- CLI and errors
def main(argv):
    """specvit.cli.main with only this sub-command registered (other helpers' CLIs may not exist yet)."""
    saved = specvit.cli.COMMAND_MODULES
    specvit.cli.COMMAND_MODULES = ["specvit.baselines.cli"]
    try:
        return specvit.cli.main(argv)
    finally:
        specvit.cli.COMMAND_MODULES = saved


def test_baseline_command_is_registered():
    assert "specvit.baselines.cli" in specvit.cli.COMMAND_MODULES


def _config_file(tmp_path, data, **top):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({"data": data, **top}))
    return p


def test_cli_ridge_end_to_end(splits, tmp_path, capsys):
    cfg = _config_file(tmp_path, _data(splits["lin"]), out_dir=str(tmp_path / "run"))
    rc = main(["baseline", "ridge", "--config", str(cfg), "--set", "data.max_train_rows=300",
               "--set", "alphas=[0.01,1,100]"])
    assert rc == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_train_rows"] == 300 and m["alpha_search"]["alphas"] == [0.01, 1.0, 100.0]
    assert m["test"]["labels"]["log_g"]["overall"]["r2"] > 0.9
    assert len(m["test"]["labels"]["log_g"]["snr_bins"]) == 8
    assert "test log_g" in capsys.readouterr().out


def test_cli_unknown_key_is_an_error(splits, tmp_path, capsys):
    cfg = _config_file(tmp_path, _data(splits["lin"]), out_dir=str(tmp_path / "run"), num_leafs=31)
    assert main(["baseline", "lightgbm", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "num_leafs" in err and "cfg.yaml" in err
    with pytest.raises(ConfigError, match="data.nois_level"):
        load_config(RidgeConfig, data={"data": _data(splits["lin"])}, overrides=["data.nois_level=2"])


def test_cli_missing_label_column_names_it(splits, tmp_path, capsys):
    cfg = _config_file(tmp_path, _data(splits["lin"], labels=["log_g", "M_H"]), out_dir=str(tmp_path / "run"))
    # M_H exists in the files; drop it from a copy of the training file
    wave, flux, error, params = _spectra(50, 8)
    write_dataset(tmp_path / "nolabel.h5", wave=wave, flux=flux, error=error, params=params.drop(columns=["M_H"]))
    rc = main(["baseline", "ridge", "--config", str(cfg), "--set", f"data.train={tmp_path / 'nolabel.h5'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'M_H'" in err and "nolabel.h5" in err


def test_bad_config_values(splits):
    with pytest.raises(InputError, match="n_augment"):
        DataConfig(**_data(splits["lin"]), n_augment=0)
    with pytest.raises(InputError, match="label"):
        DataConfig(**_data(splits["lin"]), labels=["gravity"])
    with pytest.raises(InputError, match="alphas"):
        RidgeConfig(data=DataConfig(**_data(splits["lin"])), alphas=[1.0, -1.0])


def test_cli_help_lists_models(capsys):
    with pytest.raises(SystemExit):
        main(["baseline", "--help"])
    out = capsys.readouterr().out
    assert all(k in out for k in ("lightgbm", "ridge", "templatefit", "--set", "eval_noise_seed"))


def test_templatefit_table_conversion_and_cli_dispatch(tmp_path, capsys):
    from specvit.baselines.templatefit import templatefit_table

    rng = np.random.default_rng(0)
    n = 40
    t = rng.uniform(1, 5, n)
    raw = pd.DataFrame({"row": np.arange(n), "T_eff": 5000.0, "log_g": t + 0.1 * rng.normal(size=n),
                        "log_g_err": np.full(n, 0.1), "T_eff_err": np.nan, "chi2": 1.0, "snr": 10.0,
                        "true_log_g": t, "true_T_eff": 5000.0})
    table, names = templatefit_table(raw)
    assert names == ["T_eff", "log_g"]
    assert {"log_g_true", "log_g_pred", "log_g_sigma", "T_eff_pred", "chi2", "snr"} <= set(table.columns)
    assert "T_eff_sigma" not in table.columns  # NaN uncertainties are not used for calibration
    np.testing.assert_array_equal(table["log_g_pred"], raw["log_g"])
    # the CLI reaches the template fit and reports its config errors
    pytest.importorskip("specvit.baselines.templatefit")
    cfg = tmp_path / "tf.yaml"
    cfg.write_text("mode: lm\n")
    assert main(["baseline", "templatefit", "--config", str(cfg)]) == 2
    assert "input" in capsys.readouterr().err


def test_nan_label_is_an_error_naming_row_and_field(splits, tmp_path):
    wave, flux, error, params = _spectra(30, 9)
    params.loc[11, "log_g"] = np.nan
    write_dataset(tmp_path / "nanlabel.h5", wave=wave, flux=flux, error=error, params=params)
    cfg = load_config(RidgeConfig, data={"data": _data(splits["lin"], train=str(tmp_path / "nanlabel.h5")),
                                         "out_dir": str(tmp_path / "r")})
    with pytest.raises(InputError, match="row 11") as e:
        run_ridge(cfg, log=lambda *_: None)
    assert "log_g" in str(e.value) and "nanlabel.h5" in str(e.value)


def test_training_copies_have_independent_fixed_noise(splits):
    from specvit.baselines.common import iter_training_chunks

    ds = open_dataset(splits["nl"]["train"])
    cfg = DataConfig(**_data(splits["nl"], n_augment=2, chunk_rows=64, train_noise_seed=5))
    chunks = list(iter_training_chunks(ds, cfg, 100))
    x = np.concatenate([c[0] for c in chunks])
    y = np.concatenate([c[1] for c in chunks])
    assert x.shape == (200, N_PIX) and np.array_equal(y[:100], y[100:])
    np.testing.assert_array_equal(x[:100], noisy_chunk(ds, 0, 100, noise_level=1.0, seed=5))
    np.testing.assert_array_equal(x[100:], noisy_chunk(ds, 0, 100, noise_level=1.0, seed=6))
    z0, z1 = (x[:100] - ds.flux[:100]) / ds.error[:100], (x[100:] - ds.flux[:100]) / ds.error[:100]
    assert abs(np.corrcoef(z0.ravel(), z1.ravel())[0, 1]) < 0.05
    ds.close()
