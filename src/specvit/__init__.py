"""specvit: stellar parameters from spectra with a 1D Vision Transformer,
measured against the Fisher-information / Cramer-Rao ceiling of the data.

Data flow (one concept per subpackage)::

    spectra/  -> observe/ -> data/ -> models/ -> train/ -> baselines/ -> fisher/ -> evaluate/ -> cli
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(path, **kwargs):
    """Load a trained model directory (see :func:`specvit.models.io.load_model`)."""
    from specvit.models.io import load_model as _load

    return _load(path, **kwargs)
