"""The interface every source of noiseless spectra implements.

A :class:`SpectralModel` maps labels (T_eff, log_g, M_H, a_M, C_M, ...) to a
noiseless flux density F_lambda on its own wavelength grid. The flux keeps its
absolute shape (the SED), so that ``observe/`` can compute synthetic magnitudes
and photon counts; an overall constant does not matter (the observation
scales every spectrum to a magnitude).
"""
from __future__ import annotations

import abc
import warnings
from typing import Literal

import numpy as np

from specvit.errors import LabelRangeError
from specvit.labels import as_label_array, check_domain, outside_domain


class SpectralModel(abc.ABC):
    """Abstract spectral model.

    Attributes
    ----------
    wave : ndarray (n_wave,)
        Wavelength of each flux sample, in Angstrom, in ``medium``.
    medium : {"vacuum", "air"}
        Medium of ``wave``.
    resolution : float
        The model's own resolving power R = lambda / FWHM (``inf`` if it is
        not band limited); the instrument removes it in quadrature.
    label_names : tuple of str
        Label order of every (N, L) label array.
    bounds : dict label -> (low, high)
        The box where the model is valid.
    differentiable : bool
        If True, :meth:`flux` also accepts a torch tensor and keeps autograd.
    max_c_to_o : float or None
        The joint constraint of the physical domain: label sets with C/O >= ``max_c_to_o``
        (:func:`specvit.labels.c_to_o`) are outside it; None = no constraint (the box only).
    """

    wave: np.ndarray
    medium: Literal["vacuum", "air"] = "vacuum"
    resolution: float = float("inf")
    label_names: tuple[str, ...]
    bounds: dict[str, tuple[float, float]]
    differentiable: bool = False
    max_c_to_o: float | None = None
    flux_unit: str = "erg s-1 cm-2 A-1 (surface flux, arbitrary overall scale)"

    @property
    def n_wave(self) -> int:
        return int(len(self.wave))

    @abc.abstractmethod
    def flux(self, labels, *, extrapolate: bool = False):
        """Noiseless F_lambda, shape (N, n_wave), for labels of shape (N, L)."""

    def continuum(self, labels, *, extrapolate: bool = False):  # pragma: no cover - optional
        raise NotImplementedError(f"{type(self).__name__} has no separate continuum")

    # ---- helpers shared by implementations ----
    def labels_array(self, labels, *, source=None) -> np.ndarray:
        return as_label_array(labels, self.label_names, source=source)

    def outside_domain(self, labels) -> np.ndarray:
        """Bool (N,): label sets (N, L) outside the box :attr:`bounds` or the joint domain (:attr:`max_c_to_o`)."""
        arr = np.asarray(labels, dtype=float)
        arr = arr[None] if arr.ndim == 1 else arr
        lo = np.array([self.bounds[n][0] for n in self.label_names])
        hi = np.array([self.bounds[n][1] for n in self.label_names])
        out = ((arr < lo - 1e-9) | (arr > hi + 1e-9)).any(axis=1)
        return out | outside_domain(arr, self.label_names, max_c_to_o=self.max_c_to_o)

    def check_labels(self, labels: np.ndarray, *, extrapolate: bool = False, source=None) -> None:
        """Raise :class:`LabelRangeError` naming the label and value if outside :attr:`bounds`, or naming
        the labels and C/O if outside the joint domain (:attr:`max_c_to_o`, :func:`specvit.labels.check_domain`).

        With ``extrapolate=True`` it warns instead.
        """
        arr = np.asarray(labels, dtype=float)
        if arr.ndim == 1:
            arr = arr[None]
        for j, name in enumerate(self.label_names):
            lo, hi = self.bounds[name]
            col = arr[:, j]
            bad = (col < lo - 1e-9) | (col > hi + 1e-9)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                msg = (
                    f"{int(bad.sum())} label set(s) outside the {type(self).__name__} range "
                    f"[{lo}, {hi}] (first: row {i})"
                )
                if extrapolate:
                    warnings.warn(f"extrapolating: {msg}; field={name!r}; value={float(col[i])}", stacklevel=3)
                else:
                    raise LabelRangeError(msg, file=source, field=name, value=float(col[i]))
        check_domain(arr, self.label_names, max_c_to_o=self.max_c_to_o, extrapolate=extrapolate,
                     what=type(self).__name__, source=source)

    def describe(self) -> dict:
        return {
            "model": type(self).__name__,
            "medium": self.medium,
            "resolution": self.resolution,
            "wave_min_A": float(self.wave[0]),
            "wave_max_A": float(self.wave[-1]),
            "n_wave": self.n_wave,
            "label_names": list(self.label_names),
            "bounds": {k: list(v) for k, v in self.bounds.items()},
            **({"max_c_to_o": self.max_c_to_o} if self.max_c_to_o is not None else {}),
        }
