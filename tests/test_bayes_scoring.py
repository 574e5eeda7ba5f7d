"""One scoring of a posterior catalogue (``baselines.bayes.score_bayes``), used by every caller: the rows flagged
ok / low_ess are scored, bad_input / poor_fit rows are counted, not scored."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from specvit.errors import InputError
from specvit.labels import LABEL_NAMES

FLAGS = ["ok"] * 30 + ["low_ess"] * 6 + ["poor_fit"] * 3 + ["bad_input"] * 2


def _catalogue(seed=0):
    """A run_bayes-like frame: posterior N(truth + noise, 0.1²) per label; the poor_fit rows are far off."""
    rng = np.random.default_rng(seed)
    n = len(FLAGS)
    df = pd.DataFrame({"row": np.arange(n), "flag": FLAGS, "snr": rng.uniform(3, 30, n)})
    for name in LABEL_NAMES:
        t = rng.uniform(0, 1, n)
        mean = t + 0.1 * rng.standard_normal(n)
        mean[np.array(FLAGS) == "poor_fit"] += 5.0  # wrong by 50 sd: would wreck R² if scored
        mean[np.array(FLAGS) == "bad_input"] = np.nan  # not fitted
        df[f"true_{name}"], df[f"{name}_mean"], df[f"{name}_sd"] = t, mean, 0.1
        for q, k in (("2.5", -1.96), ("16", -1.0), ("50", 0.0), ("84", 1.0), ("97.5", 1.96)):
            df[f"{name}_q{q}"] = mean + k * 0.1
    return df


def test_score_bayes_scores_ok_and_low_ess_and_counts_the_others():
    from specvit.baselines.bayes import score_bayes

    df = _catalogue()
    table, doc = score_bayes(df, ["log_g"], n_resamples=20, coverage_labels=list(LABEL_NAMES))
    assert len(table) == 36 and set(table["row"]) == set(range(36))
    assert doc["n_spectra"] == 41 and doc["n_scored"] == 36 and doc["n_not_scored"] == 5
    assert doc["flags"] == {"ok": 30, "low_ess": 6, "poor_fit": 3, "bad_input": 2}
    assert doc["test"]["n"] == 36 and list(doc["test"]["labels"]) == ["log_g"]
    assert doc["test"]["labels"]["log_g"]["overall"]["r2"] > 0.7  # the poor_fit rows (off by 5) are not in it
    assert set(doc["coverage"]) == set(LABEL_NAMES) and all(c["n"] == 36 for c in doc["coverage"].values())
    with pytest.raises(InputError, match="no posterior mean"):
        score_bayes(df.drop(columns=[f"true_{n}" for n in LABEL_NAMES]))


def test_quickstart_and_curves_score_the_same_rows(tmp_path, monkeypatch):
    """Both wrappers of run_bayes go through score_bayes: the same rows, the same R², the same counts."""
    import specvit.baselines.bayes as bayes
    from specvit.evaluate.curves import run_bayes_reference
    from specvit.quickstart import QuickstartConfig, _bayes

    cat = _catalogue(1)
    monkeypatch.setattr(bayes, "run_bayes", lambda cfg, forward=None: cat.copy())
    qc = QuickstartConfig(label="log_g", bayes_spectra=len(cat), bootstrap_resamples=20)
    table_q, metrics_q, cov_q = _bayes(qc, {"test": tmp_path / "test.h5"}, tmp_path / "qs")
    cc = SimpleNamespace(seed=qc.seed, bootstrap_resamples=20,
                         stream=SimpleNamespace(bayes_spectra=len(cat), bayes={}),
                         data=SimpleNamespace(test=str(tmp_path / "test.h5"), noise_level=1.0, eval_noise_seed=42,
                                              labels=["log_g"]))
    doc_c = run_bayes_reference(cc, tmp_path / "curves", log=lambda *a: None)
    assert doc_c == json.loads((tmp_path / "curves" / "bayes" / "result.json").read_text())
    assert len(table_q) == metrics_q["n"] == doc_c["test"]["n"] == doc_c["n_scored"] == 36
    assert cov_q["n_scored"] == 36 and cov_q["n_not_scored"] == doc_c["n_not_scored"] == 5
    assert cov_q["n_spectra"] == doc_c["n_spectra"] == 41
    r2_q = metrics_q["labels"]["log_g"]["overall"]["r2"]
    assert r2_q == pytest.approx(doc_c["test"]["labels"]["log_g"]["overall"]["r2"]) and r2_q > 0.7
    pred = pd.read_csv(tmp_path / "curves" / "bayes" / "predictions.csv")
    assert list(pred["row"]) == list(range(36))
