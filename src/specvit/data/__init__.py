"""Datasets in the pfsspec ``dataset.h5`` layout: reading, writing, noise, simulation.

>>> from specvit.data import open_dataset          # doctest: +SKIP
>>> with open_dataset("train/") as ds:              # a file, a list, a directory or a glob
...     x = ds.flux[:256]; y = ds.labels(["log_g"])
"""
from __future__ import annotations

from specvit.observe.noise import fixed_normal, fixed_noisy_flux, noisy_flux  # the noise lives in observe/
from specvit.data.pfsspec import (
    MASK_DEFAULT,
    MASK_EXTRAPOLATED,
    PFSSPEC_PARAM_COLUMNS,
    DatasetWriter,
    LazyArray,
    SpectrumDataset,
    open_dataset,
    write_dataset,
)

__all__ = [
    "open_dataset", "SpectrumDataset", "LazyArray", "DatasetWriter", "write_dataset",
    "noisy_flux", "fixed_noisy_flux", "fixed_normal",
    "PFSSPEC_PARAM_COLUMNS", "MASK_DEFAULT", "MASK_EXTRAPOLATED",
]
