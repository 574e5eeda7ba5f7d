"""Classical baselines on the same split and fixed test noise as SpecViT.

* :mod:`specvit.baselines.gbm` — LightGBM on raw noisy flux (:class:`LightGBMConfig`, :func:`run_lightgbm`);
* :mod:`specvit.baselines.ridge` — Ridge from streamed sufficient statistics (:class:`RidgeConfig`, :func:`run_ridge`);
* :mod:`specvit.baselines.templatefit` — maximum-likelihood template fit;
* :mod:`specvit.baselines.common` — data config, fixed-noise chunks, prediction table, outputs.

Sub-modules are imported on use (LightGBM and torch stay out of ``import specvit``).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "DataConfig": "specvit.baselines.common",
    "LightGBMConfig": "specvit.baselines.gbm",
    "run_lightgbm": "specvit.baselines.gbm",
    "RidgeConfig": "specvit.baselines.ridge",
    "RidgeModel": "specvit.baselines.ridge",
    "RidgeStats": "specvit.baselines.ridge",
    "run_ridge": "specvit.baselines.ridge",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'specvit.baselines' has no attribute {name!r}")
