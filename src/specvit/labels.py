"""The stellar labels, in one place: names (pfsspec column names), units, defaults."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specvit.errors import InputError, LabelRangeError


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

# --------------------------------------------------------------------------- the physical domain
#: Solar log epsilon (H = 12) of carbon and oxygen in the abundance pattern of the synthesis: Grevesse,
#: Asplund & Sauval (2007), PySME's ``grevesse2007`` (``specvit.spectra.synthesis.backend.SOLAR_PATTERN``,
#: also the MARCS grid's). ``tests/test_label_domain.py`` checks these against PySME's own table.
SOLAR_LOG_EPS_C: float = 8.39
SOLAR_LOG_EPS_O: float = 8.66
#: Solar C/O by number of that pattern, 10**(8.39 - 8.66) = 0.537.
SOLAR_C_TO_O: float = 10.0 ** (SOLAR_LOG_EPS_C - SOLAR_LOG_EPS_O)
#: Upper limit of C/O of the embedded model's domain (exclusive): C/O >= 1 is carbon-star chemistry,
#: which the synthesis puts on oxygen-rich MARCS structures (not self-consistent), see docs/emulator.md
#: "Physical domain". With the synthesis' abundances (oxygen is an alpha element, so it gets [a/M];
#: carbon gets [C/M]; [M/H] cancels), C/O = SOLAR_C_TO_O * 10**([C/M] - [a/M]).
MAX_C_TO_O: float = 1.0


def _column(arr: np.ndarray, label_names, name: str) -> np.ndarray:
    """Column ``name`` of ``arr`` (N, L); a label the model does not have is 0 (solar-scaled)."""
    return arr[:, list(label_names).index(name)] if name in label_names else np.zeros(len(arr))


def log_c_to_o(labels, label_names=LABEL_NAMES) -> np.ndarray:
    """log10(C/O) by number, (N,), of label sets (N, L) in ``label_names`` order, as the synthesis sets it:
    log eps(C) = 8.39 + [M/H] + [C/M], log eps(O) = 8.66 + [M/H] + [a/M]."""
    arr = np.asarray(labels, dtype=np.float64)
    arr = arr[None, :] if arr.ndim == 1 else arr
    return (SOLAR_LOG_EPS_C - SOLAR_LOG_EPS_O) + _column(arr, label_names, "C_M") - _column(arr, label_names, "a_M")


def c_to_o(labels, label_names=LABEL_NAMES) -> np.ndarray:
    """C/O by number, (N,) (see :func:`log_c_to_o`)."""
    return 10.0 ** log_c_to_o(labels, label_names)


def outside_domain(labels, label_names=LABEL_NAMES, *, max_c_to_o: float | None = MAX_C_TO_O) -> np.ndarray:
    """Bool (N,): label sets outside the physical domain, i.e. C/O >= ``max_c_to_o`` (None: no limit).

    The label box is checked separately (it is per label); this is the joint constraint.
    """
    arr = np.asarray(labels, dtype=np.float64)
    arr = arr[None, :] if arr.ndim == 1 else arr
    if max_c_to_o is None or not ({"a_M", "C_M"} & set(label_names)):
        return np.zeros(len(arr), dtype=bool)
    return log_c_to_o(arr, label_names) >= np.log10(max_c_to_o) - 1e-12


def check_domain(labels, label_names=LABEL_NAMES, *, max_c_to_o: float | None = MAX_C_TO_O,
                 extrapolate: bool = False, what: str = "the spectral model", source=None) -> None:
    """Raise :class:`LabelRangeError` naming the labels and the C/O of the first label set outside the
    domain (:func:`outside_domain`); with ``extrapolate=True`` warn instead."""
    bad = outside_domain(labels, label_names, max_c_to_o=max_c_to_o)
    if not bad.any():
        return
    arr = np.asarray(labels, dtype=np.float64)
    arr = arr[None, :] if arr.ndim == 1 else arr
    i = int(np.flatnonzero(bad)[0])
    ratio = float(c_to_o(arr[i:i + 1], label_names)[0])
    vals = ", ".join(f"{n}={arr[i, j]:g}" for j, n in enumerate(label_names) if n in ("a_M", "C_M"))
    msg = (f"{int(bad.sum())} label set(s) with C/O >= {max_c_to_o:g}, outside the physical domain of {what} "
           f"(carbon-star chemistry on oxygen-rich model atmospheres; C/O = {SOLAR_C_TO_O:.3f} * "
           f"10**([C/M] - [a/M])); first: row {i}, {vals}, C/O = {ratio:.3f}")
    if extrapolate:
        import warnings

        warnings.warn(f"extrapolating: {msg}", stacklevel=3)
        return
    raise LabelRangeError(msg + " (extrapolate=True, or --extrapolate on the command line, to evaluate anyway)",
                          file=source, field="C/O", value=round(ratio, 4))


def uniform_in_domain(rng: np.random.Generator, n: int, bounds=None, label_names=LABEL_NAMES, *,
                      margin: float = 0.0, max_c_to_o: float | None = MAX_C_TO_O) -> np.ndarray:
    """(n, L) label sets uniform in the box ``bounds`` (default :data:`DEFAULT_LABEL_BOUNDS`, each side
    moved inward by ``margin``) restricted to C/O < ``max_c_to_o``: per-label ``rng.uniform`` columns,
    rows outside the domain redrawn in rounds (deterministic for ``rng``)."""
    b = DEFAULT_LABEL_BOUNDS if bounds is None else bounds
    out, filled = np.empty((n, len(label_names))), 0
    for _ in range(1000):
        m = n - filled
        if m == 0:
            return out
        lab = np.column_stack([rng.uniform(b[k][0] + margin, b[k][1] - margin, m) for k in label_names])
        lab = lab[~outside_domain(lab, label_names, max_c_to_o=max_c_to_o)]
        out[filled:filled + len(lab)] = lab
        filled += len(lab)
    raise InputError("the label box lies (almost) entirely at C/O >= max_c_to_o", field="max_c_to_o",
                     value=max_c_to_o)


def domain_fraction(bounds=None, *, max_c_to_o: float | None = MAX_C_TO_O) -> float:
    """Fraction of the ([a/M], [C/M]) rectangle of ``bounds`` (default :data:`DEFAULT_LABEL_BOUNDS`) inside
    the domain (exact: area of the rectangle below the line [C/M] - [a/M] = log10(max C/O / solar C/O))."""
    b = DEFAULT_LABEL_BOUNDS if bounds is None else bounds
    if max_c_to_o is None:
        return 1.0
    (a0, a1), (c0, c1) = b["a_M"], b["C_M"]
    d = np.log10(max_c_to_o) - (SOLAR_LOG_EPS_C - SOLAR_LOG_EPS_O)
    a = np.linspace(a0, a1, 200001)
    inside = np.clip(a + d, c0, c1) - c0  # allowed [C/M] length at each [a/M]
    return float(np.mean(inside) / (c1 - c0))


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
