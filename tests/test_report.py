"""report.html holds every figure and table; metrics.json round-trips."""
import base64
import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from specvit.errors import InputError
from specvit.evaluate.report import to_jsonable, write_report


def _fig():
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, 1])
    return fig


def test_write_report_contains_everything(tmp_path):
    png = tmp_path / "given.png"
    _fig().savefig(png)
    metrics = {"SpecViT": {"r2": np.float64(0.71), "per_bin": np.array([0.1, np.nan]), "n": np.int64(10)}}
    tables = {"overall": pd.DataFrame({"model": ["SpecViT", "Ridge"], "r2": [0.71, 0.5]}),
              "bins <&>": pd.DataFrame({"bin": ["2.5-3.5"], "r2": [0.2]})}
    out = write_report(tmp_path / "rep", title="Quickstart <test>", metrics=metrics,
                       figures={"R2 vs SNR": _fig(), "given file": png}, tables=tables,
                       config={"seed": 42, "path": tmp_path}, provenance={"command": "specvit x", "versions": {"numpy": "2"}},
                       timings={"train": 12.5}, captions={"R2 vs SNR": "the main figure"})
    html = out.read_text()
    assert out.name == "report.html"
    assert html.count("data:image/png;base64,") == 2
    assert "the main figure" in html and "Quickstart &lt;test&gt;" in html
    assert "bins &lt;&amp;&gt;" in html and "SpecViT" in html and "0.71" in html
    assert "12.5 s" in html and "numpy" in html
    # embedded PNG decodes to the file written beside the report
    b64 = html.split("data:image/png;base64,")[2].split('"')[0]
    assert base64.b64decode(b64) == png.read_bytes()
    assert (tmp_path / "rep" / "figures" / "R2_vs_SNR.png").read_bytes().startswith(b"\x89PNG")
    back = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert back == {"SpecViT": {"r2": 0.71, "per_bin": [0.1, None], "n": 10}}
    assert not list((tmp_path / "rep").glob(".*partial"))


def test_report_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="figures"):
        write_report(tmp_path, title="t", figures={"x": tmp_path / "missing.png"})
    bad = tmp_path / "notpng.png"
    bad.write_text("hello")
    with pytest.raises(InputError, match="PNG"):
        write_report(tmp_path, title="t", figures={"x": bad})
    with pytest.raises(InputError, match="figure"):
        write_report(tmp_path, title="t", figures={"x": 3})
    with pytest.raises(InputError, match="title"):
        write_report(tmp_path, title="")


def test_to_jsonable_handles_frames_and_nonfinite():
    df = pd.DataFrame({"a": [1.0, np.inf]})
    assert to_jsonable({"t": df, 3: (np.bool_(True),)}) == {"t": [{"a": 1.0}, {"a": None}], "3": [True]}


def test_report_cli_from_prediction_tables(tmp_path):
    from specvit.cli import main

    rng = np.random.default_rng(0)
    n = 400
    snr = np.exp(rng.uniform(np.log(2.6), np.log(27), n))
    t = rng.uniform(1, 5, n)
    paths = []
    for name, scale in (("good", 1.0), ("bad", 3.0)):
        df = pd.DataFrame({"id": np.arange(n), "snr": snr, "log_g_true": t,
                           "log_g_pred": t + rng.normal(0, scale * 2 / snr)})
        p = tmp_path / f"{name}.csv"
        df.to_csv(p, index=False)
        paths += ["--pred", f"{name}={p}"]
    assert main(["report", *paths, "--out", str(tmp_path / "rep"), "--seed", "3"]) == 0
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    r2 = {k: v["labels"]["log_g"]["overall"]["r2"] for k, v in m["models"].items()}
    assert r2["good"] > r2["bad"] and m["bootstrap_seed"] == 3
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # R² vs SNR + two parity figures
    assert main(["report", "--pred", "nocsv", "--out", str(tmp_path / "x")]) == 2
    assert main(["report", "--pred", f"x={tmp_path / 'missing.csv'}", "--out", str(tmp_path / "x")]) == 2


def _unc_inputs(rng, n=4000):
    """A network whose calibrated sigma is right (z ~ N(0,1)) and whose raw sigma is half of it; a posterior."""
    truth = pd.DataFrame({"log_g": rng.uniform(1, 5, n), "M_H": rng.uniform(-2, 0.5, n)})
    sig = rng.uniform(0.1, 0.4, (n, 2))
    pred = truth.to_numpy() + sig * rng.standard_normal((n, 2))
    cat = pd.DataFrame({"row": np.arange(n)})
    for j, lab in enumerate(["log_g", "M_H"]):
        cat[lab], cat[f"{lab}_err"], cat[f"{lab}_err_raw"] = pred[:, j], sig[:, j], 0.5 * sig[:, j]
    m = n // 4  # the posterior of the first quarter: a Gaussian of sd 0.2 around a draw
    b = pd.DataFrame({"row": np.arange(m), "flag": ["ok"] * (m - 1) + ["bad_input"]})
    for lab in ["log_g", "M_H"]:
        t = truth[lab].to_numpy()[:m]
        mean = t + 0.2 * rng.standard_normal(m)
        b[f"true_{lab}"], b[f"{lab}_mean"], b[f"{lab}_sd"] = t, mean, 0.2
        for q, k in (("2.5", -1.96), ("16", -1.0), ("84", 1.0), ("97.5", 1.96)):
            b[f"{lab}_q{q}"] = mean + k * 0.2
    return cat, truth, b


def test_uncertainty_tables_coverage_and_r2():
    from specvit.evaluate.report import markdown_table, uncertainty_tables

    rng = np.random.default_rng(5)
    cat, truth, b = _unc_inputs(rng)
    table, sub = uncertainty_tables({"net": cat}, truth, label_names=["log_g", "M_H"], bayes=b)
    assert len(sub) == len(b) - 1  # the bad_input row is not scored
    net = table[table.model == "net"].set_index("label")
    assert np.allclose(net["cov68_cal"], 0.6827, atol=0.02) and np.allclose(net["cov95_cal"], 0.95, atol=0.01)
    assert np.allclose(net["cov68_raw"], 0.3829, atol=0.02)  # |z| <= 0.5 for a unit normal
    t, p = truth["log_g"].to_numpy(), cat["log_g"].to_numpy()
    assert net.loc["log_g", "r2"] == pytest.approx(1 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2))
    post = table[table.model == "bayes posterior"].set_index("label")
    assert (post["n"] == len(sub)).all()
    assert np.allclose(post["cov68_cal"], 0.6827, atol=0.04) and np.allclose(post["cov95_cal"], 0.95, atol=0.025)
    md = markdown_table(table)
    assert md.startswith("| model | label |") and "bayes posterior" in md
    with pytest.raises(InputError, match="net/M_H_err"):
        uncertainty_tables({"net": cat.drop(columns=["M_H_err"])}, truth, label_names=["log_g", "M_H"])


def test_uncertainty_cli_and_sigma_figure(tmp_path):
    """`specvit uncertainty` on catalogues + a dataset's truth writes the tables and the sigma figure."""
    from specvit.cli import main
    from specvit.evaluate.figures import plot_sigma_vs_posterior
    from test_train_data import write_dataset

    rng = np.random.default_rng(6)
    write_dataset(tmp_path / "test.h5", n_rows=400, n_pixels=16, seed=0)
    truth = pd.read_hdf(tmp_path / "test.h5", "dataset/params")
    cat, _, b = _unc_inputs(rng, n=400)
    for j, lab in enumerate(["log_g", "M_H"]):  # re-centre on the file's truth
        if lab in truth.columns:
            cat[lab] = truth[lab].to_numpy() + cat[f"{lab}_err"] * rng.standard_normal(400)
            b[f"true_{lab}"] = truth[lab].to_numpy()[:100]
    labs = [x for x in ["log_g", "M_H"] if x in truth.columns]
    cat.to_csv(tmp_path / "cat.csv", index=False)
    b.to_csv(tmp_path / "bayes.csv", index=False)
    rc = main(["uncertainty", "--pred", f"net={tmp_path / 'cat.csv'}", "--truth", str(tmp_path / "test.h5"),
               "--bayes", str(tmp_path / "bayes.csv"), "--labels", *labs, "--out", str(tmp_path / "u")])
    assert rc == 0
    assert (tmp_path / "u" / "figures" / "sigma_vs_posterior.png").stat().st_size > 10_000
    table = pd.read_csv(tmp_path / "u" / "uncertainty.csv")
    assert set(table["model"]) == {"net", "bayes posterior"} and set(table["label"]) == set(labs)
    assert "| net |" in (tmp_path / "u" / "uncertainty.md").read_text()
    with pytest.raises(InputError, match="same shape"):
        plot_sigma_vs_posterior({"net": np.ones((5, 2))}, np.ones((4, 2)), label_names=["a", "b"])
