"""Sources of noiseless spectra: the :class:`SpectralModel` interface and the embedded emulator.

>>> from specvit.spectra import default_model
>>> model = default_model()          # doctest: +SKIP
>>> flux = model.flux([[4500, 2.0, 0.0, 0.0, 0.0]])   # (1, n_wave), F_lambda, vacuum wave  # doctest: +SKIP
"""
from specvit.spectra.base import SpectralModel


def default_model():
    """The embedded default spectral model: the shipped PySME/MARCS neural emulator (cached; no network).

    Returns a :class:`specvit.spectra.emulator.SpectralEmulator` (differentiable; vacuum wavelengths).
    """
    from specvit.spectra.emulator import default_emulator

    return default_emulator()


__all__ = ["SpectralModel", "default_model"]
