"""Sources of noiseless spectra: the :class:`SpectralModel` interface and the embedded emulator.

>>> from specvit.spectra import default_model, load_spectral_model
>>> model = default_model()          # doctest: +SKIP
>>> grid = load_spectral_model("grid.h5")   # or "default", an emulator .npz, MODULE:FACTORY  # doctest: +SKIP
>>> flux = model.flux([[4500, 2.0, 0.0, 0.0, 0.0]])   # (1, n_wave), F_lambda, vacuum wave  # doctest: +SKIP
"""
import importlib
import os
from pathlib import Path

from specvit.errors import InputError
from specvit.spectra.base import SpectralModel


def default_model():
    """The embedded default spectral model: the shipped PySME/MARCS neural emulator (cached; no network).

    Returns a :class:`specvit.spectra.emulator.SpectralEmulator` (differentiable; vacuum wavelengths).
    """
    from specvit.spectra.emulator import default_emulator

    return default_emulator()


def load_spectral_model(spec="default", **grid_kwargs):
    """The spectral model named by ``spec`` (a string or path); the one loader for spectral models.

    ``"default"`` → :func:`default_model` (the embedded emulator);
    ``"pkg.module:factory"`` (when no file of that name exists) → ``factory()`` imported from a module;
    a path to an emulator ``.npz`` → :func:`specvit.spectra.emulator.load_emulator`, which also takes a
    shipped version by name (``"v2"``, ``"emulator_v2.npz"``);
    a path to a pfsspec grid (``.h5``/``.hdf5``, or any other existing file) →
    :meth:`specvit.spectra.grid.RegularGrid.load` with ``grid_kwargs`` (``wave_range_A``,
    ``label_bounds``, ``interpolation``, ``pad_nodes``, ...; ignored for the other kinds).

    Every failure (default weights not installed, factory not importable, missing or unreadable
    file, unknown kind) is an :class:`~specvit.errors.InputError` naming ``spec``.
    Trained networks are loaded by :func:`specvit.models.io.load_model` instead.
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise InputError("spectral model spec must be a string or path", field="model", value=spec)
    if spec == "default":
        try:
            return default_model()
        except (ImportError, OSError, ValueError) as e:  # not built / weights not installed or unreadable
            raise InputError(f"the default spectral model could not be loaded ({type(e).__name__}: {e}); pass "
                             "MODULE:FACTORY, an emulator .npz or a grid .h5 file instead", field="model",
                             value=spec) from e
    if ":" in spec and not Path(spec).exists():
        mod, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError, ValueError) as e:
            raise InputError(f"cannot import the model factory ({e})", field="model", value=spec) from None
        return factory()
    path = Path(spec)
    if spec[:1] == "v" and spec[1:].isdigit() and not path.exists():  # a shipped version by name: "v2"
        from specvit.spectra.emulator import load_emulator

        return load_emulator(spec)
    if path.suffix == ".npz":  # an emulator weight file (e.g. a retrained version before it is shipped)
        from specvit.spectra.emulator import load_emulator

        return load_emulator(path)
    if path.suffix in (".h5", ".hdf5") or path.is_file():
        from specvit.spectra.grid import RegularGrid

        return RegularGrid.load(path, **grid_kwargs)
    raise InputError("unknown spectral model: must be 'default', MODULE:FACTORY, an emulator .npz or a grid .h5 "
                     "file", field="model", value=spec)


__all__ = ["SpectralModel", "default_model", "load_spectral_model"]
