"""Observation with the Subaru PFS medium-resolution arm: LSF, magnitudes, sky, detector, noise.

>>> from specvit.observe import PFSObserver, InstrumentConfig, ObservingConfig, draw_conditions
"""
from specvit.observe.conditions import (
    CALIBRATION_MAGS,
    CALIBRATION_SETUP,
    calibration_conditions,
    check_conditions,
    draw_conditions,
)
from specvit.observe.config import CONDITION_COLUMNS, InstrumentConfig, ObservingConfig
from specvit.observe.observer import NORMALISED_MEDIAN, Observation, PFSObserver
from specvit.observe.pfs import pfs_mr_wave, pfs_mr_wave_edges

__all__ = [
    "PFSObserver", "Observation", "InstrumentConfig", "ObservingConfig", "draw_conditions",
    "calibration_conditions", "check_conditions", "CONDITION_COLUMNS", "CALIBRATION_MAGS", "CALIBRATION_SETUP",
    "NORMALISED_MEDIAN", "pfs_mr_wave", "pfs_mr_wave_edges",
]
