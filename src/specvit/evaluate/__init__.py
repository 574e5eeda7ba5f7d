"""Evaluation: metrics over the whole set, per-SNR-bin R² with bootstrap bands, calibration."""
from specvit.evaluate.metrics import (
    bootstrap_r2,
    calibration,
    evaluate_predictions,
    per_snr_bin,
    r2_score,
    regression_metrics,
)
from specvit.evaluate.snr_bins import SNR_BIN_EDGES

__all__ = [
    "SNR_BIN_EDGES", "bootstrap_r2", "calibration", "evaluate_predictions", "per_snr_bin", "r2_score",
    "regression_metrics",
]
