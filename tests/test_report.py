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
