"""`specvit quickstart` end to end on a tiny configuration (the real emulator and PFS simulator)."""
import json

import pytest

from specvit.cli import main
from specvit.errors import ConfigError
from specvit.quickstart import load_quickstart_config

TINY = """
n_train: 200
n_val: 40
n_test: 80
templatefit_spectra: 4
templatefit_iterations: 5
bayes_spectra: 6
bayes_samples: 128
fisher_points: 20
fisher_mags: [20.0, 21.5, 22.5]
bootstrap_resamples: 10
models:
  - {name: specvit, kind: neural, options: {model: {name: specvit_tiny}, run: {epochs: 1, batch_size: 64, progress: false}}}
  - {name: mlp, kind: neural, options: {model: {name: mlp_small}, loss: {kind: gaussian_nll}, run: {epochs: 1, batch_size: 64, progress: false}}}
  - {name: lightgbm, kind: lightgbm, options: {n_estimators: 5, num_leaves: 7}}
"""


def test_quickstart_writes_report_and_metrics(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "qs"
    assert main(["quickstart", "--config", str(cfg), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    for name in ("r2_vs_snr", "parity", "noise_vs_wavelength", "attention"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
        assert name in html
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["models"]) == {"specvit", "mlp", "lightgbm", "templatefit", "bayes"}
    for entry in m["models"].values():
        assert -10 < entry["r2"] <= 1 and entry["mae"] > 0
        assert [b["bin"] for b in entry["per_snr_bin"]][0] == "2.5-3.5"
    assert m["models"]["templatefit"]["n_test"] == 4 and m["models"]["mlp"]["n_test"] == 80
    # the Bayes posterior of the first 6 test spectra: R2 and coverage of all five labels
    assert m["models"]["bayes"]["n_test"] == m["coverage"]["bayes"]["n_spectra"] - \
        sum(v for k, v in m["coverage"]["bayes"]["flags"].items() if k not in ("ok", "low_ess"))
    assert m["coverage"]["bayes"]["n_spectra"] == 6 and (out / "bayes" / "catalogue.csv").exists()
    cov = m["coverage"]["bayes"]["per_label"]
    assert set(cov) == {"T_eff", "log_g", "M_H", "a_M", "C_M"}
    assert all(0 <= c["cov68"] <= c["cov95"] <= 1 and c["n"] >= 1 for c in cov.values())
    # the Gaussian-head MLP: raw and calibrated (trainer's calibration.json) coverage of its label
    mc = m["coverage"]["mlp"]["log_g"]
    assert mc["n"] == 80 and 0 <= mc["raw"]["cov68"] <= mc["raw"]["cov95"] <= 1
    assert 0 <= mc["calibrated"]["cov68"] <= mc["calibrated"]["cov95"] <= 1
    assert (out / "runs" / "mlp" / "n200" / "model" / "calibration.json").exists()
    assert "specvit" not in m["coverage"]  # no Gaussian head, no coverage
    assert "interval coverage" in html
    ceil = m["ceiling_by_snr_bin"]
    assert any(isinstance(v, dict) and 0 <= v["r2max_median"] <= 1 and "r2max_bayes" in v for v in ceil.values())
    assert m["timings_s"]["total"] > 0
    # a second run resumes: datasets and finished model runs are reused
    assert main(["quickstart", "--config", str(cfg), "--out", str(out)]) == 0


def test_quickstart_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="n_tran"):
        load_quickstart_config(None, ["n_tran=5"])
    with pytest.raises(ConfigError, match="n_test"):
        load_quickstart_config(None, ["n_test=3"])
    assert main(["quickstart", "--set", "fisher_nuisance=4d", "--out", str(tmp_path)]) == 2
