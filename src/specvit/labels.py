"""The stellar labels, in one place: names (pfsspec column names), units, defaults."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specvit.errors import InputError


@dataclass(frozen=True)
class Label:
    name: str  #: pfsspec column name
    unit: str
    latex: str
    description: str


LABELS: dict[str, Label] = {
    "T_eff": Label("T_eff", "K", r"$T_\mathrm{eff}$", "effective temperature"),
    "log_g": Label("log_g", "dex (cgs)", r"$\log g$", "surface gravity"),
    "M_H": Label("M_H", "dex", r"[M/H]", "metallicity"),
    "a_M": Label("a_M", "dex", r"[$\alpha$/M]", "alpha-element enhancement relative to [M/H]"),
    "C_M": Label("C_M", "dex", r"[C/M]", "carbon enhancement relative to [M/H]"),
}

#: Order used for every (N, 5) label array in specvit.
LABEL_NAMES: tuple[str, ...] = tuple(LABELS)

#: Default label box of the embedded spectral model and of `specvit simulate` (SPEC section 2/ issue 3).
DEFAULT_LABEL_BOUNDS: dict[str, tuple[float, float]] = {
    "T_eff": (3750.0, 6000.0),
    "log_g": (1.0, 5.0),
    "M_H": (-2.5, 0.75),
    "a_M": (-0.25, 0.5),
    "C_M": (-0.75, 0.5),
}

#: Aliases users type on the command line.
LABEL_ALIASES = {
    "teff": "T_eff", "t_eff": "T_eff", "logg": "log_g", "log_g": "log_g", "mh": "M_H", "m_h": "M_H",
    "feh": "M_H", "alpha": "a_M", "a_m": "a_M", "am": "a_M", "carbon": "C_M", "c_m": "C_M", "cm": "C_M",
}


def canonical_label(name: str) -> str:
    """Return the canonical label name for ``name`` (accepts aliases like ``logg``)."""
    if name in LABELS:
        return name
    key = name.lower()
    if key in LABEL_ALIASES:
        return LABEL_ALIASES[key]
    raise InputError(f"unknown label name; known: {', '.join(LABEL_NAMES)}", field="label", value=name)


def as_label_array(labels, label_names=LABEL_NAMES, *, source=None) -> np.ndarray:
    """Turn labels (array (N, L) / (L,), dict of columns, or DataFrame) into a float64 (N, L) array.

    Columns follow ``label_names``. NaN labels are an error naming the field.
    """
    if hasattr(labels, "columns") or isinstance(labels, dict):
        cols = []
        for n in label_names:
            if n not in labels:
                raise InputError("missing label column", file=source, field=n)
            cols.append(np.asarray(labels[n], dtype=np.float64).reshape(-1))
        arr = np.stack(cols, axis=1)
    else:
        arr = np.asarray(labels, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != len(label_names):
            raise InputError(
                f"labels must have shape (N, {len(label_names)}) in order {list(label_names)}",
                file=source, field="labels", value=tuple(arr.shape),
            )
    bad = ~np.isfinite(arr)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(f"non-finite label in row {i}", file=source, field=label_names[j], value=float(arr[i, j]))
    return arr
