"""Evaluation: metrics over the whole set, per-SNR-bin R² with bootstrap bands, calibration.

The metric functions live in :mod:`specvit.scores` and the SNR bins in :mod:`specvit.snr_bins` (below
``evaluate``, so that the baselines and the Fisher ceiling can use them); re-exported here.
"""
from specvit.scores import (
    bootstrap_r2,
    calibration,
    evaluate_predictions,
    per_snr_bin,
    r2_score,
    regression_metrics,
)
from specvit.snr_bins import SNR_BIN_EDGES

__all__ = [
    "SNR_BIN_EDGES", "bootstrap_r2", "calibration", "evaluate_predictions", "per_snr_bin", "r2_score",
    "regression_metrics",
]
