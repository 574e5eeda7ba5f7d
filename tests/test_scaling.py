"""specvit scaling: prefixes of one training set, every model on the same noisy test rows, resumable."""

import numpy as np
import pandas as pd
import pytest
import yaml

from specvit.cli import main
from specvit.data.pfsspec import write_dataset
from specvit.errors import ConfigError, InputError
from specvit.evaluate.scaling import load_scaling_config, predict_model_dir, run_scaling

N_PIX = 128


def make_spectra(n, seed):
    """Tiny spectra whose line depths depend on log g (and T_eff); per-spectrum SNR 3-25."""
    rng = np.random.default_rng(seed)
    wave = np.linspace(7100.0, 8850.0, N_PIX)
    logg = rng.uniform(1.0, 5.0, n)
    teff = rng.uniform(3750.0, 6000.0, n)
    g, t = (logg - 3.0) / 2.0, (teff - 4875.0) / 1125.0
    centres = np.linspace(7200.0, 8750.0, 10)
    prof = np.exp(-0.5 * ((wave[None, :] - centres[:, None]) / 30.0) ** 2)
    lr = np.random.default_rng(99)
    a, b = lr.normal(0, 0.4, 10), lr.normal(0, 0.1, 10)
    depth = 0.3 * np.exp(a[None] * g[:, None] + b[None] * t[:, None])
    flux = 0.5 * (1.0 - 0.8 * np.tanh(depth @ prof))
    snr = np.exp(rng.uniform(np.log(3.0), np.log(25.0), n))
    error = flux / snr[:, None]
    params = pd.DataFrame({"id": np.arange(n) + 10_000 * seed, "T_eff": teff, "log_g": logg, "M_H": 0.0, "a_M": 0.0,
                           "C_M": 0.0, "snr": np.median(flux / error, axis=1)})
    return wave, flux, error, params


def write_splits(d, n_train=300, n_val=100, n_test=150):
    paths = {}
    for name, n, seed in (("train", n_train, 1), ("val", n_val, 2), ("test", n_test, 3)):
        w, f, e, p = make_spectra(n, seed)
        paths[name] = str(write_dataset(d / f"{name}.h5", wave=w, flux=f, error=e, params=p))
    return paths


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("scaling_data"))


def _cfg(splits, out, **kw):
    doc = {
        "out_dir": str(out), "sizes": [100, 300], "seed": 3, "bootstrap_resamples": 30,
        "data": {"train": splits["train"], "val": splits["val"], "test": splits["test"], "labels": ["logg"]},
        "models": [
            {"name": "vit", "options": {"model": {"name": "specvit_tiny"}, "run": {"epochs": 1, "batch_size": 50}}},
            {"name": "ridge", "kind": "ridge"},
            {"name": "lgbm", "kind": "lightgbm",
             "options": {"n_estimators": 30, "num_leaves": 7, "min_data_in_leaf": 5, "n_jobs": 1}},
        ],
    }
    doc.update(kw)
    return doc


def test_scaling_runs_resumes_and_tests_everyone_on_the_same_rows(splits, tmp_path):
    out = tmp_path / "scaling"
    path = tmp_path / "scaling.yaml"
    path.write_text(yaml.safe_dump(_cfg(splits, out)))
    assert main(["scaling", "--config", str(path)]) == 0
    table = pd.read_csv(out / "scaling.csv")
    assert len(table) == 6 and set(table["model"]) == {"vit", "ridge", "lgbm"}
    assert sorted(set(table["n_train"])) == [100, 300]
    assert (out / "scaling_log_g.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "r2_vs_snr_n300_log_g.png").exists()
    # every run predicted the same 150 test rows; the table's R² is the R² of its predictions
    ids = None
    for _, row in table.iterrows():
        pred = pd.read_csv(out / "runs" / row["model"] / f"n{row['n_train']}" / "predictions.csv")
        ids = pred["id"].to_numpy() if ids is None else ids
        np.testing.assert_array_equal(pred["id"].to_numpy(), ids)
        t, p = pred["log_g_true"], pred["log_g_pred"]
        assert np.isclose(row["r2"], 1 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2))
        assert row["r2_lo"] <= row["r2"] + 1e-9 <= row["r2_hi"] + 2e-9
    # the linear baseline learns log g from these spectra (the pipeline passes real signal through)
    ridge = table[table["model"] == "ridge"].set_index("n_train")["r2"]
    assert ridge[300] > 0.5
    # training size is a prefix: the resolved neural config says so
    vit_cfg = yaml.safe_load((out / "runs" / "vit" / "n100" / "config.yaml").read_text())
    assert vit_cfg["config"]["data"]["max_train_rows"] == 100

    # resume: only the run without result.json trains again; the others are read back
    (out / "runs" / "ridge" / "n300" / "result.json").unlink()
    logs = []
    table2 = run_scaling(load_scaling_config(path), log=logs.append)
    assert sum("training" in s for s in logs) == 1 and any("ridge n=300: training" in s for s in logs)
    assert sum("skipped" in s for s in logs) == 5
    pd.testing.assert_frame_equal(table.drop(columns="seconds"), table2.drop(columns="seconds"), check_dtype=False)

    # the neural predictions are the model applied to the shared fixed-noise test flux
    from specvit.baselines.common import noisy_chunk, open_split
    from specvit.models.io import load_model
    import torch

    model, meta = load_model(out / "runs" / "vit" / "n300" / "model")
    ds = open_split(splits["test"], ["log_g"], split="test")
    x = noisy_chunk(ds, 0, len(ds), noise_level=1.0, seed=42)
    ds.close()
    with torch.no_grad():
        direct = meta.unscale(model(torch.from_numpy(x)).double()).numpy()[:, 0]
    pred = pd.read_csv(out / "runs" / "vit" / "n300" / "predictions.csv")
    np.testing.assert_allclose(pred["log_g_pred"], direct, rtol=1e-5, atol=1e-5)
    other = predict_model_dir(out / "runs" / "vit" / "n300" / "model", splits["test"], labels=["log_g"],
                              noise_level=1.0, noise_seed=7)
    assert not np.allclose(other["log_g_pred"], direct)


def test_scaling_config_errors(splits, tmp_path):
    bad = _cfg(splits, tmp_path / "a")
    bad["models"][2]["options"]["num_leavs"] = 3
    with pytest.raises(ConfigError, match="num_leavs"):
        run_scaling(load_scaling_config(data=bad))
    bad = _cfg(splits, tmp_path / "b")
    bad["models"][0]["options"]["data"] = {"train": ["x.h5"]}
    with pytest.raises(ConfigError, match="data.train"):
        run_scaling(load_scaling_config(data=bad))
    with pytest.raises(InputError, match="sizes"):
        run_scaling(load_scaling_config(data=_cfg(splits, tmp_path / "c", sizes=[100, 5000])))
    with pytest.raises(ConfigError, match="unique"):
        load_scaling_config(data=_cfg(splits, tmp_path / "d", models=[{"name": "r", "kind": "ridge"}] * 2))
    with pytest.raises(ConfigError, match="sizez"):
        load_scaling_config(data={**_cfg(splits, tmp_path / "e"), "sizez": [1]})
    with pytest.raises(ConfigError, match="kind"):
        load_scaling_config(data=_cfg(splits, tmp_path / "f", models=[{"name": "x", "kind": "svm"}]))
    assert not (tmp_path / "a").exists()  # nothing trained or written before the configs were checked
    # CLI: a user error exits with code 2
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(_cfg(splits, tmp_path / "g", sizes=[100, 5000])))
    assert main(["scaling", "--config", str(p)]) == 2


def test_shipped_small_config_builds_every_run(tmp_path):
    """configs/scaling_small.yaml parses and each model's options make a valid run config."""
    from pathlib import Path

    from specvit.evaluate.scaling import _baseline_config, _neural_config

    path = Path(__file__).resolve().parents[1] / "configs" / "scaling_small.yaml"
    cfg = load_scaling_config(path, [f"out_dir={tmp_path}"])
    assert cfg.sizes == sorted(cfg.sizes) and {m.kind for m in cfg.models} == {"neural", "lightgbm", "ridge"}
    for m in cfg.models:
        build = _neural_config if m.kind == "neural" else _baseline_config
        rc = build(cfg, m, cfg.sizes[0], tmp_path / m.name)
        if m.kind == "neural":
            assert rc.data.max_train_rows == cfg.sizes[0] and rc.data.noise_seed == cfg.data.eval_noise_seed
        else:
            assert rc.data.max_train_rows == cfg.sizes[0] and rc.data.eval_noise_seed == cfg.data.eval_noise_seed


def test_predict_model_dir_gaussian_head_and_label_selection(splits, tmp_path):
    """Two-label Gaussian model: means unscaled, sigma = exp(log_var / 2) * label std, labels picked by name."""
    import torch

    from specvit.baselines.common import noisy_chunk, open_split
    from specvit.models import create_model
    from specvit.models.io import save_model
    from specvit.train.losses import split_output

    torch.manual_seed(0)
    m = create_model("mlp_small", n_pixels=N_PIX, n_labels=2, gaussian=True).eval()
    save_model(tmp_path / "m", m, label_names=["T_eff", "log_g"], label_mean=[4800.0, 3.0], label_std=[600.0, 1.2])
    df = predict_model_dir(tmp_path / "m", splits["test"], labels=["log_g"], noise_level=1.0, noise_seed=42,
                           max_rows=40, batch_size=16)
    assert list(df.columns) == ["id", "row", "snr", "log_g_true", "log_g_pred", "log_g_sigma",
                                "log_g_sigma_raw"] and len(df) == 40
    assert np.array_equal(df["log_g_sigma"], df["log_g_sigma_raw"])  # no calibration.json: raw
    ds = open_split(splits["test"], ["log_g"], split="test")
    x = noisy_chunk(ds, 0, 40, noise_level=1.0, seed=42)
    ds.close()
    with torch.no_grad():
        mean, log_var = split_output(m(torch.from_numpy(x)))
    np.testing.assert_allclose(df["log_g_pred"], 3.0 + 1.2 * mean[:, 1].double().numpy(), rtol=1e-5)
    np.testing.assert_allclose(df["log_g_sigma"], 1.2 * np.exp(0.5 * log_var[:, 1].double().numpy()), rtol=1e-5)
    with pytest.raises(InputError, match="M_H"):
        predict_model_dir(tmp_path / "m", splits["test"], labels=["M_H"], noise_level=1.0, noise_seed=42)
    # with the model's sigma calibration: log_g's own scale (3.0), not T_eff's
    from specvit.train.calibration import CALIBRATION_FILE, SigmaCalibration, weights_digest

    SigmaCalibration(labels=["log_g", "T_eff"], scale=[3.0, 2.0],
                     weights_sha256=weights_digest(tmp_path / "m")).save(tmp_path / "m" / CALIBRATION_FILE)
    cal = predict_model_dir(tmp_path / "m", splits["test"], labels=["log_g"], noise_level=1.0, noise_seed=42,
                            max_rows=40, batch_size=16)
    np.testing.assert_allclose(cal["log_g_sigma"], 3.0 * df["log_g_sigma_raw"])
    np.testing.assert_allclose(cal["log_g_sigma_raw"], df["log_g_sigma_raw"])
