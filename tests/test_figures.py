"""Figure functions: they draw what they are given, save as PNG, and reject bad shapes."""
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from specvit.errors import InputError
from specvit.evaluate import figures as F
from specvit.snr_bins import SNR_BIN_EDGES

NB = len(SNR_BIN_EDGES) - 1


def _png_ok(fig, tmp_path, name):
    p = tmp_path / f"{name}.png"
    fig.savefig(p, dpi=60)
    data = p.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 2000
    return p


def test_model_colours_are_consistent_and_distinct():
    assert F.model_color("SpecViT p16") == F.model_color("specvit_tiny")
    names = ["specvit", "lightgbm", "ridge", "templatefit", "cnn", "mlp"]
    assert len({F.model_color(n) for n in names}) == len(names)
    # two models with one colour get different line styles
    st = F._styles(["specvit_a", "specvit_b"])
    assert st["specvit_a"]["color"] == st["specvit_b"]["color"]
    assert st["specvit_a"]["linestyle"] != st["specvit_b"]["linestyle"]


def test_r2_vs_snr_draws_models_and_ceilings(tmp_path, rng):
    r2 = np.linspace(0.1, 0.95, NB)
    models = {"SpecViT": {"r2": r2, "lo": r2 - 0.05, "hi": r2 + 0.05}, "Ridge": {"r2": r2 - 0.3}}
    ceil = {"CRLB (unbiased)": {"median": r2 + 0.04, "p10": r2, "p90": r2 + 0.05},
            "Bayesian (van Trees)": {"median": r2 + 0.08, "p10": r2 + 0.06, "p90": r2 + 0.1}}
    fig = F.plot_r2_vs_snr(models, ceilings=ceil)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = [l.get_label() for l in ax.lines]
    assert "SpecViT" in labels and "Ridge" in labels
    spec = next(l for l in ax.lines if l.get_label() == "SpecViT")
    np.testing.assert_allclose(spec.get_ydata(), r2)
    np.testing.assert_allclose(spec.get_xdata(), F.snr_bin_centres())
    # one band per model with lo/hi and per ceiling with p10/p90
    assert len(ax.collections) == 3
    assert ax.get_xscale() == "log"
    _png_ok(fig, tmp_path, "r2snr")


def test_r2_vs_snr_accepts_evaluate_predictions_output(rng):
    metrics = pytest.importorskip("specvit.scores")
    n = 3000
    snr = np.exp(rng.uniform(np.log(2.6), np.log(27), n))
    t = rng.uniform(1, 5, n)
    df = pd.DataFrame({"snr": snr, "log_g_true": t, "log_g_pred": t + rng.normal(0, 3 / snr)})
    m = metrics.evaluate_predictions(df, ["log_g"], rng=np.random.default_rng(0), n_resamples=20)
    fig = F.plot_r2_vs_snr({"SpecViT": m})
    line = fig.axes[0].lines[0]
    expect = [b["r2"] for b in m["labels"]["log_g"]["snr_bins"]]
    np.testing.assert_allclose(line.get_ydata(), expect)
    # R² rises with SNR for errors that shrink with SNR
    assert line.get_ydata()[-1] > line.get_ydata()[0]


def test_r2_vs_snr_bad_shapes():
    with pytest.raises(InputError, match="r2"):
        F.plot_r2_vs_snr({"a": {"r2": np.zeros(NB + 1)}})
    with pytest.raises(InputError, match="p10"):
        F.plot_r2_vs_snr({}, ceilings={"CRLB": {"median": np.zeros(NB), "p10": np.zeros(2), "p90": np.zeros(NB)}})
    with pytest.raises(InputError, match="r2"):
        F.plot_r2_vs_snr({"a": {"median": np.zeros(NB)}})


def test_parity_with_fisher_envelope(tmp_path, rng):
    n = 500
    t = rng.uniform(1, 5, n)
    snr = rng.uniform(3, 25, n)
    sig = 2.0 / snr
    p = t + rng.normal(0, 1, n) * sig
    fig = F.plot_parity(t, p, snr=snr, sigma_min=sig, model_name="SpecViT")
    ax1, ax2, ax3 = fig.axes[:3]
    assert "R^2" in ax1.get_title()
    labels = [l.get_label() for l in ax2.lines]
    assert any("sigma" in s for s in labels)
    env = next(l for l in ax2.lines if "sigma" in l.get_label())
    assert np.all(np.diff(env.get_ydata()[np.isfinite(env.get_ydata())]) < 0)  # envelope shrinks with SNR
    # the CRLB-mixture density integrates to ~1 over the histogram range
    dens = next(l for l in ax3.lines if "CRLB" in l.get_label())
    x, y = dens.get_xdata(), dens.get_ydata()
    assert 0.9 < np.sum(y) * (x[1] - x[0]) < 1.05
    _png_ok(fig, tmp_path, "parity")
    # without SNR the residual panel is against the true label
    fig2 = F.plot_parity(t, p)
    assert "true" in fig2.axes[1].get_xlabel()


def test_parity_bad_input():
    with pytest.raises(InputError, match="pred"):
        F.plot_parity(np.arange(5.0), np.arange(4.0))
    with pytest.raises(InputError, match="finite"):
        F.plot_parity(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(InputError, match="sigma_min"):
        F.plot_parity(np.arange(5.0), np.arange(5.0), sigma_min=np.ones(3))


def test_scaling_and_ablation(tmp_path):
    df = pd.DataFrame({"model": ["vit"] * 3 + ["ridge"] * 3, "n_train": [100, 200, 400] * 2,
                       "r2": [0.1, 0.3, 0.5, 0.2, 0.25, 0.3]})
    fig = F.plot_scaling(df)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [100, 200, 400])
    _png_ok(fig, tmp_path, "scaling")
    with pytest.raises(InputError, match="n_train"):
        F.plot_scaling(df.drop(columns="n_train"))

    ab = pd.DataFrame({"param": ["patch_size"] * 3 + ["tokenizer"] * 2, "value": [32, 8, 16, "c1d", "sw"],
                       "r2": [0.5, 0.6, 0.7, 0.7, 0.65], "err": [0.01] * 5, "n": [2] * 5})
    fig = F.plot_ablation(ab, err_col="err", count_col="n")
    assert len(fig.axes) == 2
    # numeric settings are sorted, and bar heights follow
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["8", "16", "32"]
    np.testing.assert_allclose([b.get_height() for b in fig.axes[0].patches], [0.6, 0.7, 0.5])
    _png_ok(fig, tmp_path, "ablation")
    fig = F.plot_importance({"lr": 0.7, "depth": 0.3})
    assert len(fig.axes[0].patches) == 2
    with pytest.raises(InputError):
        F.plot_importance({})


def test_noise_vs_wavelength(tmp_path, rng):
    w = np.linspace(7100, 8850, 300)
    errs = {20.0: rng.uniform(0.01, 0.02, (4, 300)), 22.0: rng.uniform(0.1, 0.2, 300)}
    fig = F.plot_noise_vs_wavelength(w, errs, flux=0.5 + 0 * w, snr={20.0: 24.0, 22.0: 4.6})
    ax = fig.axes[1]
    assert ax.get_yscale() == "log" and len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_ydata(), np.median(errs[20.0], axis=0))
    assert "SNR 24.0" in ax.lines[0].get_label()
    _png_ok(fig, tmp_path, "noise")
    with pytest.raises(InputError, match="errors"):
        F.plot_noise_vs_wavelength(w, {20.0: np.ones(10)})


def test_attention_marks_lines_in_range(tmp_path, rng):
    pw = np.linspace(7100, 8850, 64)
    att = rng.random(64)
    fig = F.plot_attention(pw, att, wave=np.linspace(7100, 8850, 500), flux=np.ones(500))
    ax = fig.axes[-1]
    # drawn relative to uniform attention: the mean over patches is 1
    drawn = next(l for l in ax.lines if l.get_linestyle() == "-")
    assert np.isclose(np.mean(drawn.get_ydata()), 1.0)
    np.testing.assert_allclose(drawn.get_ydata(), 64 * att / att.sum())
    marked = [l.get_xdata()[0] for l in ax.lines if l.get_linestyle() == "--"]
    for wl in F.STRONG_LINES_VACUUM_A["Ca II"]:
        assert wl in marked
    _png_ok(fig, tmp_path, "attention")
    # lines outside the range are not marked
    fig = F.plot_attention(np.linspace(7100, 7300, 10), np.ones(10))
    assert not [l for l in fig.axes[0].lines if l.get_linestyle() == "--"]
    with pytest.raises(InputError, match="attention"):
        F.plot_attention(pw, np.ones(10))


def test_ceilings_from_fisher_output():
    from specvit.snr_bins import snr_bin_labels

    names = snr_bin_labels()
    fisher = {n: {"r2max_median": 0.1 * i, "r2max_p10": 0.1 * i - 0.05, "r2max_p90": 0.1 * i + 0.05,
                  "r2max_bayes": 0.1 * i + 0.1} for i, n in enumerate(names) if i != 2}
    fisher["empty_bins"] = [names[2]]
    c = F.ceilings_from_fisher(fisher)
    assert set(c) == {"CRLB (unbiased)", "Bayesian (van Trees)"}
    assert np.isnan(c["CRLB (unbiased)"]["median"][2])
    assert c["Bayesian (van Trees)"]["median"][3] == pytest.approx(0.4)
    fig = F.plot_r2_vs_snr({}, ceilings=c)
    assert len(fig.axes[0].collections) == 1  # one band (CRLB); van Trees is one value per bin: a line
    with pytest.raises(InputError, match="bin"):
        F.ceilings_from_fisher({"1-2": {}})


def test_r2_vs_snr_draws_the_bayes_optimal_curve(tmp_path):
    r2 = np.linspace(0.1, 0.9, NB)
    fig = F.plot_r2_vs_snr({"mlp": {"r2": r2}}, optimal={"Bayes posterior mean": {"r2": r2 + 0.05}})
    opt = next(l for l in fig.axes[0].lines if l.get_label() == "Bayes posterior mean")
    np.testing.assert_allclose(opt.get_ydata(), r2 + 0.05)
    assert opt.get_color() == "black" and opt.get_linewidth() > 2
    with pytest.raises(InputError):
        F.plot_r2_vs_snr({"mlp": {"r2": r2}}, optimal={"bayes": {"r2": r2[:-1]}})
    _png_ok(fig, tmp_path, "r2snr_opt")
