"""Tests of specvit.scores (whole-set R², bootstrap bands, calibration, bins)."""
import json

import numpy as np
import pandas as pd
import pytest

from specvit.errors import InputError
from specvit.scores import (
    batch_averaged_r2,
    binned_residuals,
    bootstrap_r2,
    calibration,
    evaluate_predictions,
    per_snr_bin,
    r2_score,
    regression_metrics,
    summary_table,
)
from specvit.snr_bins import SNR_BIN_EDGES


def test_r2_perfect_and_mean_predictor(rng):
    y = rng.normal(3.0, 1.0, 500)
    assert r2_score(y, y) == 1.0
    assert r2_score(y, np.full_like(y, y.mean())) == pytest.approx(0.0, abs=1e-12)
    # worse than the mean is negative
    assert r2_score(y, y.mean() - (y - y.mean())) == pytest.approx(-3.0)


def test_r2_matches_definition_per_column(rng):
    t = rng.normal(size=(200, 3))
    p = t + rng.normal(scale=[0.1, 0.5, 1.0], size=(200, 3))
    r2 = r2_score(t, p)
    for j in range(3):
        ref = 1 - np.sum((t[:, j] - p[:, j]) ** 2) / np.sum((t[:, j] - t[:, j].mean()) ** 2)
        assert r2[j] == pytest.approx(ref)
    assert r2[0] > r2[1] > r2[2]


def test_batch_averaged_r2_is_not_r2():
    # Sorted truth: every batch of 4 holds a narrow label range, so the per-batch
    # denominators are tiny and the batch average collapses, although the
    # prediction is good over the whole set.
    t = np.repeat(np.arange(10.0), 4) + np.tile([0.0, 0.1, 0.2, 0.3], 10)
    p = t + np.tile([0.1, -0.1, 0.1, -0.1], 10)
    whole = r2_score(t, p)
    averaged = batch_averaged_r2(t, p, batch_size=4)
    assert whole > 0.99
    # each batch: SS_res = 4 * 0.1**2 = 0.04, SS_tot = 0.05 -> R2 = 0.2
    assert averaged == pytest.approx(0.2)
    # with one batch holding everything they agree
    assert batch_averaged_r2(t, p, batch_size=len(t)) == pytest.approx(whole)


def test_regression_metrics_units_and_bias():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    p = t + np.array([0.5, 0.5, -0.5, 1.5])
    m = regression_metrics(t, p)
    assert m["mae"] == pytest.approx(0.75)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 * 3 + 2.25) / 4))
    assert m["bias"] == pytest.approx(0.5)
    assert m["n"] == 4


def test_bootstrap_band_contains_point_and_is_seeded(rng):
    t = rng.normal(size=400)
    p = t + rng.normal(scale=0.6, size=400)
    r2 = r2_score(t, p)
    lo, hi = bootstrap_r2(t, p, np.random.default_rng(1), n_resamples=200)
    assert lo < r2 < hi
    assert hi - lo < 0.2
    assert (lo, hi) == bootstrap_r2(t, p, np.random.default_rng(1), n_resamples=200)
    # blocking the resamples to bound memory gives the same draws
    assert (lo, hi) == bootstrap_r2(t, p, np.random.default_rng(1), n_resamples=200, max_elements=1000)


def test_per_snr_bin_empty_bins_and_counts(rng):
    n = 300
    t = rng.normal(size=n)
    p = t + rng.normal(scale=0.3, size=n)
    snr = rng.uniform(3.0, 8.0, n)  # bins above 8.5 stay empty; one value below the first edge
    snr[0] = 1.0
    bins = per_snr_bin(t, p, snr, np.random.default_rng(0), n_resamples=50)
    assert len(bins) == len(SNR_BIN_EDGES) - 1
    assert sum(b["n"] for b in bins) == n - 1
    empty = [b for b in bins if b["snr_lo"] >= 8.5]
    assert empty and all(b["n"] == 0 and b["r2"] is None and b["r2_lo"] is None for b in empty)
    full = [b for b in bins if b["n"] > 20]
    assert all(b["r2_lo"] <= b["r2"] <= b["r2_hi"] for b in full)
    json.dumps(bins)  # JSON-ready, no NaN objects


def test_calibration_coverage_gaussian():
    rng = np.random.default_rng(7)
    n = 20000
    t = rng.uniform(1, 5, n)
    sigma = rng.uniform(0.1, 0.8, n)
    p = t + sigma * rng.normal(size=n)
    c = calibration(t, p, sigma)
    assert c["coverage_68"] == pytest.approx(0.6827, abs=0.01)
    assert c["coverage_95"] == pytest.approx(0.95, abs=0.006)
    assert c["z_std"] == pytest.approx(1.0, abs=0.02)
    # uncertainties twice too small: over-confident, coverage drops
    c2 = calibration(t, p, sigma / 2)
    assert c2["coverage_68"] < 0.45 and c2["z_std"] == pytest.approx(2.0, abs=0.05)


def test_calibration_rejects_bad_sigma():
    with pytest.raises(InputError, match="sigma"):
        calibration([1.0, 2.0], [1.0, 2.0], [0.1, 0.0])


def test_binned_residuals_finds_trend(rng):
    x = rng.uniform(0, 10, 2000)
    r = 0.1 * x + rng.normal(scale=0.01, size=2000)
    b = binned_residuals(x, r, n_bins=5)
    assert len(b["n"]) == 5 and sum(b["n"]) == 2000
    assert np.all(np.diff(b["p50"]) > 0)
    # grid-node labels: one bin per distinct value
    g = binned_residuals(np.repeat([1.0, 2.0, 3.0], 10), np.zeros(30), n_bins=10)
    assert g["n"] == [10, 10, 10] and g["x_lo"] == [1.0, 2.0, 3.0]


def _table(rng, n=500, sigma=True):
    df = pd.DataFrame({"id": np.arange(n), "snr": rng.uniform(2.5, 28, n)})
    for name, scale in (("log_g", 0.3), ("T_eff", 100.0)):
        t = rng.uniform(1, 5, n) if name == "log_g" else rng.uniform(3750, 6000, n)
        s = np.full(n, scale)
        df[f"{name}_true"] = t
        df[f"{name}_pred"] = t + s * rng.normal(size=n)
        if sigma:
            df[f"{name}_sigma"] = s
    return df


def test_evaluate_predictions_structure_and_determinism(rng):
    df = _table(rng)
    m = evaluate_predictions(df, ["log_g", "T_eff"], rng=3, n_resamples=50)
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m
    lg = m["labels"]["log_g"]
    assert lg["overall"]["r2"] == pytest.approx(r2_score(df.log_g_true, df.log_g_pred))
    assert lg["overall"]["r2_lo"] < lg["overall"]["r2"] < lg["overall"]["r2_hi"]
    assert set(lg["residuals"]) == {"log_g", "T_eff", "snr"}
    assert lg["calibration"]["coverage_68"] == pytest.approx(0.68, abs=0.06)
    assert len(lg["calibration_snr_bins"]) == len(SNR_BIN_EDGES) - 1
    assert m["bootstrap"]["seed"] == 3
    assert evaluate_predictions(df, ["log_g", "T_eff"], rng=3, n_resamples=50) == m
    tab = summary_table(m)
    assert set(tab["bin"]) >= {"all", "2.5-3.5"}


def test_evaluate_predictions_without_sigma_or_snr(rng):
    df = _table(rng, sigma=False)
    m = evaluate_predictions(df, ["log_g"], snr_col=None, rng=np.random.default_rng(0), n_resamples=20)
    assert m["labels"]["log_g"]["calibration"] is None
    assert m["labels"]["log_g"]["snr_bins"] is None


def test_evaluate_predictions_missing_column_names_it(rng):
    df = _table(rng).drop(columns=["log_g_pred"])
    with pytest.raises(InputError, match="log_g_pred"):
        evaluate_predictions(df, ["log_g"], rng=0)
    with pytest.raises(InputError, match="snr"):
        evaluate_predictions(_table(rng).drop(columns=["snr"]), ["log_g"], rng=0)


def test_nan_prediction_is_an_error(rng):
    df = _table(rng)
    df.loc[5, "log_g_pred"] = np.nan
    with pytest.raises(InputError, match="row 5"):
        evaluate_predictions(df, ["log_g"], rng=0)


def test_one_definition_of_95_percent_coverage():
    """scores.calibration, the sigma calibration's coverage and the uncertainty report count "95 %" alike:
    |pred − true| <= 1.96 sigma (scores.COVERAGE_Z), not 2 sigma."""
    import pandas as pd

    from specvit.evaluate.report import uncertainty_tables
    from specvit.scores import COVERAGE_Z, coverage_fraction
    from specvit.train.calibration import coverage

    assert COVERAGE_Z["95"] == pytest.approx(1.959964, abs=1e-6)
    z = np.array([0.5, -0.99, 1.5, -1.97, 1.99, 2.5, 0.999, -1.9])  # two between 1.96 and 2
    t = np.linspace(1.0, 4.5, len(z))
    s = np.full(len(z), 0.5)
    p = t + z * s
    expect68, expect95 = 3 / 8, 5 / 8
    assert coverage_fraction(z, "68") == expect68 and coverage_fraction(z, "95") == expect95
    c = calibration(t, p, s)
    assert c["coverage_68"] == expect68 and c["coverage_95"] == expect95
    cc = coverage(t, p, s)
    assert cc["cov68"] == [expect68] and cc["cov95"] == [expect95]
    cat = pd.DataFrame({"row": np.arange(len(z)), "log_g": p, "log_g_err": s})
    table, _ = uncertainty_tables({"net": cat}, pd.DataFrame({"log_g": t}), label_names=["log_g"])
    assert table.loc[0, "cov68_cal"] == expect68 and table.loc[0, "cov95_cal"] == expect95
    with pytest.raises(InputError, match="level"):
        coverage_fraction(z, "90")


def test_paired_bootstrap_band_matches_the_spread_over_fresh_test_sets():
    """Two estimators sharing most of their error: the paired band of R2(a) - R2(b) is the spread of that
    difference over independent test sets (Monte Carlo), and far narrower than either R2 band."""
    from specvit.scores import bootstrap_r2_difference

    def draw(rng, n=1500):
        t = rng.normal(0.0, 1.0, n)
        common = rng.normal(0.0, 0.5, n)
        return t, t + common, t + common + rng.normal(0.0, 0.15, n)  # b = a + extra independent error

    gen = np.random.default_rng(7)
    mc = np.array([r2_score(t, a) - r2_score(t, b) for t, a, b in (draw(gen) for _ in range(400))])
    mc_lo, mc_hi = np.percentile(mc, [10, 90])
    t, a, b = draw(np.random.default_rng(8))
    d = bootstrap_r2_difference(t, a, b, np.random.default_rng(0), n_resamples=2000)
    assert d["diff"] == pytest.approx(r2_score(t, a) - r2_score(t, b))
    assert d["lo"] < d["diff"] < d["hi"] and d["frac_not_above_0"] == 0.0  # a is better in every resample
    assert 0.7 < (d["hi"] - d["lo"]) / (mc_hi - mc_lo) < 1.4
    lo_a, hi_a = bootstrap_r2(t, a, np.random.default_rng(0), n_resamples=2000)
    assert (d["hi"] - d["lo"]) < 0.5 * (hi_a - lo_a)
    # seeded: the same generator seed gives the same band; swapping the estimators flips the sign
    assert d == bootstrap_r2_difference(t, a, b, np.random.default_rng(0), n_resamples=2000)
    s = bootstrap_r2_difference(t, b, a, np.random.default_rng(0), n_resamples=2000)
    assert s["diff"] == pytest.approx(-d["diff"]) and s["frac_not_above_0"] == 1.0
    with pytest.raises(InputError):
        bootstrap_r2_difference(t, a, b[:-1], np.random.default_rng(0))
