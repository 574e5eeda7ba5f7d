"""Post-hoc sigma calibration (specvit.train.calibration): the fit recovers a known scale, the file round-trips,
bad input is refused with the file/field named."""
from __future__ import annotations

import json

import numpy as np
import pytest

from specvit.errors import InputError
from specvit.train.calibration import CALIBRATION_FILE, SigmaCalibration, fit_scales, load_model_calibration

NAMES = ["T_eff", "log_g", "M_H"]


def _synthetic(rng, n, true_scale, tails=False):
    """Truth, predictions and raw sigmas whose residuals are true_scale * raw sigma * N(0,1) (or a t_3 draw)."""
    truth = rng.uniform(0, 1, (n, len(true_scale)))
    sigma = rng.uniform(0.05, 0.5, (n, len(true_scale)))  # heteroscedastic: the per-row sigma varies x10
    z = rng.standard_t(3, (n, len(true_scale))) if tails else rng.standard_normal((n, len(true_scale)))
    return truth, truth + np.asarray(true_scale) * sigma * z, sigma


@pytest.mark.parametrize("method", ["coverage68", "unit_variance"])
def test_fit_recovers_a_known_scale(method):
    rng = np.random.default_rng(1)
    true_scale = np.array([0.5, 1.0, 3.0])
    t, p, s = _synthetic(rng, 40_000, true_scale)
    scale = fit_scales(t, p, s, label_names=NAMES, method=method)
    assert np.allclose(scale, true_scale, rtol=0.02), scale
    cal = SigmaCalibration.fit(t, p, s, label_names=NAMES, method=method)
    assert np.allclose(cal.calibrated["cov68"], 0.6827, atol=0.01)
    assert np.allclose(cal.calibrated["cov95"], 0.95, atol=0.01)  # |z| <= 1.96 (scores.COVERAGE_Z)
    # the raw sigmas were wrong by the scale: 68 % coverage far off for 0.5 and 3
    assert cal.raw["cov68"][0] > 0.9 and cal.raw["cov68"][2] < 0.3


def test_coverage68_is_exact_under_heavy_tails_where_unit_variance_overcovers():
    rng = np.random.default_rng(2)
    t, p, s = _synthetic(rng, 40_000, [1.0, 1.0, 1.0], tails=True)  # Student t_3: variance 3
    c68 = SigmaCalibration.fit(t, p, s, label_names=NAMES, method="coverage68")
    var = SigmaCalibration.fit(t, p, s, label_names=NAMES, method="unit_variance")
    assert np.allclose(c68.calibrated["cov68"], 0.6827, atol=0.005)
    assert min(var.calibrated["cov68"]) > 0.75  # the tails set the scale: over-coverage at 68 %


def test_round_trip_and_apply(tmp_path):
    rng = np.random.default_rng(3)
    t, p, s = _synthetic(rng, 500, [2.0, 1.0, 0.7])
    cal = SigmaCalibration.fit(t, p, s, label_names=NAMES, source={"val": "v.h5", "noise_seed": 42})
    cal.weights_sha256 = "ab" * 32
    path = cal.save(tmp_path / CALIBRATION_FILE)
    doc = json.loads(path.read_text())
    assert doc["format"] == "specvit-sigma-calibration" and doc["version"] == 1 and doc["labels"] == NAMES
    back = SigmaCalibration.load(path)
    assert back == cal
    # apply in another column order: each label gets its own scale
    order = ["M_H", "T_eff", "log_g"]
    out = back.apply(np.ones((4, 3)), order)
    assert np.allclose(out, [cal.scale[2], cal.scale[0], cal.scale[1]])
    assert not list(tmp_path.glob("*.tmp*"))  # atomic write leaves no temporary


def test_bad_input_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    t, p, s = _synthetic(rng, 50, [1.0, 1.0, 1.0])
    p_nan = p.copy()
    p_nan[7, 1] = np.nan
    with pytest.raises(InputError, match=r"row 7.*y_pred/log_g"):
        fit_scales(t, p_nan, s, label_names=NAMES)
    s0 = s.copy()
    s0[3, 2] = 0.0
    with pytest.raises(InputError, match=r"sigma/M_H"):
        fit_scales(t, p, s0, label_names=NAMES)
    with pytest.raises(InputError, match="method"):
        fit_scales(t, p, s, label_names=NAMES, method="median")
    with pytest.raises(InputError, match="label_names"):
        fit_scales(t, p, s, label_names=NAMES[:2])
    cal = SigmaCalibration.fit(t, p, s, label_names=NAMES)
    with pytest.raises(InputError, match=r"calibration is for labels.*file='x.json'"):
        cal.apply(s, ["T_eff", "log_g", "C_M"], file="x.json")
    # files: another label set, non-finite scale, wrong version, not JSON
    path = tmp_path / CALIBRATION_FILE
    cal.save(path)
    with pytest.raises(InputError, match=r"calibration is for labels"):
        load_model_calibration(tmp_path, label_names=["log_g"])
    doc = json.loads(path.read_text())
    for patch, match in (({"scale": [1.0, None, 2.0]}, r"scale/log_g"), ({"scale": [1.0, -1.0, 2.0]}, r"scale/log_g"),
                         ({"version": 99}, r"version"), ({"labels": ["T_eff", "log_g"]}, r"labels")):
        path.write_text(json.dumps({**doc, **patch}))
        with pytest.raises(InputError, match=match) as e:
            SigmaCalibration.load(path)
        assert str(path) in str(e.value)
    path.write_text(json.dumps({**doc, "scale": [1.0, float("inf"), 2.0]}))  # json writes Infinity
    with pytest.raises(InputError, match=r"scale/log_g"):
        SigmaCalibration.load(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        SigmaCalibration.load(path)
    assert load_model_calibration(tmp_path / "nothing_here") is None
