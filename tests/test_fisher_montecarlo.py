"""Monte-Carlo validation: the scatter of maximum-likelihood fits reaches the CRLB at high SNR."""
import numpy as np
import pandas as pd
import pytest

from specvit.observe.forward import ForwardModel
from specvit.fisher.montecarlo import plot_validation, validate_crlb


def small_model():
    """The small ToyModel of these tests (also the model of docs/figures/fisher_mc_toy.png)."""
    from toymodel import ToyModel

    return ToyModel(wave_min=8400.0, wave_max=8700.0, step=0.5, n_lines=10)


@pytest.fixture(scope="module")
def fwd():
    return ForwardModel(small_model())


def test_ml_scatter_reaches_crlb_at_high_snr_and_departs_at_low_snr(fwd, tmp_path):
    theta = np.array([4800.0, 3.0, -1.0, 0.0, 0.0])
    mu = fwd.numpy(theta[None])[0]
    kw = dict(label="log_g", nuisance="3d", n_starts=1, max_iter=20)  # starts: box centre + the truth
    hi_df = validate_crlb(fwd, theta, {"snr200": mu / 200.0}, n_real=240, rng=np.random.default_rng(11), **kw)
    lo_df = validate_crlb(fwd, theta, {"snr3": mu / 3.0}, n_real=60, rng=np.random.default_rng(12), **kw)
    df = pd.concat([hi_df, lo_df], ignore_index=True)
    hi = df.set_index("key").loc["snr200"]
    lo = df.set_index("key").loc["snr3"]
    assert abs(hi["ratio"] - 1) < 0.10, hi.to_dict()
    assert abs(hi["bias"]) < 3 * hi["sigma_mc_se"] * np.sqrt(2) + 0.1 * hi["sigma_crlb"]
    assert hi["frac_at_bound"] == 0
    # at SNR 3 the CRLB (several dex) exceeds the log g box: fits pile up on the edges,
    # the scatter is truncated below sqrt(CRLB)
    assert lo["sigma_crlb"] > 1.0 and lo["frac_at_bound"] > 0.2 and lo["ratio"] < 0.9
    fig = plot_validation(df.assign(point="toy"))
    fig.savefig(tmp_path / "mc.png")
    assert (tmp_path / "mc.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def obs_fwd():
    from test_fisher_ceiling import small_model as arm_model

    from specvit.observe.forward import default_forward

    return default_forward(arm_model())[0]


def test_ml_fit_recovers_noiseless_labels(obs_fwd):
    from specvit.fisher.montecarlo import ml_fit

    theta = np.array([[4800.0, 3.0, -1.0, 0.0, 0.0], [5400.0, 4.2, -0.3, 0.0, 0.0]])
    y = obs_fwd.numpy(theta)
    e = np.full_like(y, 0.01)
    start = theta + np.array([150.0, -0.3, 0.2, 0.0, 0.0])
    x, chi2, at_bound = ml_fit(obs_fwd, y, e, free_idx=[0, 1, 2], starts=[start], max_iter=40)
    np.testing.assert_allclose(x, theta, rtol=1e-5, atol=1e-5)
    assert np.all(chi2 < 1e-6) and not at_bound.any()


def test_ml_fitter_scatter_reaches_crlb_at_high_snr(obs_fwd):
    theta = np.array([4800.0, 3.0, -1.0, 0.0, 0.0])
    mu = obs_fwd.numpy(theta[None])[0]
    df = validate_crlb(obs_fwd, theta, {"snr200": mu / 200.0}, label="log_g", nuisance="3d", n_real=100,
                       rng=np.random.default_rng(21), max_iter=10, fitter="ml", local_average=8,
                       centre_start=False)  # at SNR 200 the start at the truth is the global minimum's basin
    row = df.iloc[0]
    assert abs(row["ratio"] - 1) < 0.15, row.to_dict()  # 100 realisations: MC s.e. 7 %
    assert row["chi2_gain"] == pytest.approx(3.0, abs=1.0)  # converged ML: E[χ²(θ) − χ²(θ̂)] = 3 free labels
    assert row["sigma_crlb_p10"] <= row["sigma_crlb"] * 1.5 and row["sigma_local"] > 0


def test_crlb_scan_jumps_only_where_the_median_pixel_changes(obs_fwd):
    from specvit.fisher.montecarlo import crlb_scan

    theta = np.array([4800.0, 3.0, -1.0, 0.0, 0.0])
    mu = obs_fwd.numpy(theta[None])[0]
    scan = crlb_scan(obs_fwd, theta, mu / 100.0, half_width=0.05, n=41)
    assert len(scan) == 41 and np.all(scan["sigma_crlb"] > 0)
    pair = scan[["median_pixel_lo", "median_pixel_hi"]].to_numpy()
    same = np.all(pair[1:] == pair[:-1], axis=1)
    rel = np.abs(np.diff(scan["sigma_crlb"].to_numpy())) / scan["sigma_crlb"].to_numpy()[:-1]
    assert np.all(rel[same] < 0.01)  # smooth between switches of the median pixel (0.0025 dex steps)


def test_ml_fit_equals_the_template_fit_on_the_same_spectra(obs_fwd):
    """ml_fit (fast exact-Jacobian LM) and fit_lm (the template fit, exact model) find the same optimum."""
    import inspect

    from specvit.baselines.templatefit import fit_lm
    from specvit.fisher.montecarlo import ml_fit

    theta = np.array([4800.0, 3.0, -1.0, 0.0, 0.0])
    mu = obs_fwd.numpy(theta[None])[0]
    rng = np.random.default_rng(5)
    y = mu[None] + (mu / 200.0)[None] * rng.standard_normal((6, mu.size))
    e = np.broadcast_to(mu / 200.0, y.shape)
    start = np.repeat(theta[None], 6, 0)
    x, chi2, _ = ml_fit(obs_fwd, y, e, free_idx=[0, 1, 2], starts=[start], max_iter=30)
    kw = {"method": "exact"} if "method" in inspect.signature(fit_lm).parameters else {}
    res = fit_lm(obs_fwd, y, e, free=["T_eff", "log_g", "M_H"], fixed_values={"a_M": 0.0, "C_M": 0.0}, degree=-1,
                 n_starts=1, max_iter=40, rng=rng, init=start, **kw)
    np.testing.assert_allclose(x[:, 1], res.labels[:, 1], atol=1e-4)
    np.testing.assert_allclose(chi2, res.chi2, rtol=1e-6)


def test_cli_subcommand_writes_figure_and_json(tmp_path, capsys):
    """``specvit fisher montecarlo`` (the one entry point of the MC validation) and its argument check."""
    import json

    from specvit.cli import main

    out = tmp_path / "mc.png"
    rc = main(["fisher", "montecarlo", "--model", "test_fisher_montecarlo:small_model", "--snr", "100",
               "--n-real", "4", "--points", "4500,2.5,-0.5,0,0", "--local-average", "0", "--scan", "0",
               "--out", str(out)])
    assert rc == 0 and out.read_bytes()[:4] == b"\x89PNG"
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["model"] == "ToyModel" and record["args"]["snr"] == [100.0] and "func" not in record["args"]
    assert list(record["args"])[:3] == ["model", "mags", "snr"] and len(record["rows"]) == 1
    assert main(["fisher", "montecarlo", "--model", "test_fisher_montecarlo:small_model"]) == 2
    assert "--mags" in capsys.readouterr().err
