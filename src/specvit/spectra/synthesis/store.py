"""One finished spectrum per file, small and exact enough.

File ``<id>.npz`` (written atomically) holds

* ``norm_u16``: continuum-normalised flux F/C quantised as ``round(F/C * 32768)``
  (uint16, step 3.1e-5, max 2.0): ``norm = norm_u16 / 32768``;
* ``lncont_d``: the natural log of the continuum C, quantised in steps of 1e-7 and
  delta-encoded (int32): ``ln C = lncont0 + cumsum(r_[0, lncont_d]) * 1e-7``;
* ``lncont0`` (float64), ``labels`` (float64, order ``label_names``), ``label_names``,
  ``wave_A`` parameters (``wave_min_A``, ``dlnlam``, ``n_wave``; vacuum), ``meta_json``
  (timing, line counts, atmosphere nodes, setup, design id and seed, package versions).

The quantisation error (< 1.6e-5 in F/C, < 1e-7 relative in C) is far below the
emulator target (2e-3). About 20 kB per spectrum.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from specvit.atomic import atomic_path
from specvit.errors import InputError

NORM_SCALE = 32768.0
LNCONT_STEP = 1e-7
FORMAT_VERSION = 1


def write_spectrum(path, *, flux, cont, labels, label_names, wave_min_A, dlnlam, meta: dict) -> None:
    flux = np.asarray(flux, dtype=np.float64)
    cont = np.asarray(cont, dtype=np.float64)
    norm = flux / cont
    if np.any(norm < 0) or np.any(norm >= 65535 / NORM_SCALE):
        raise InputError("normalised flux outside [0, 2) cannot be stored", file=path, field="norm",
                         value=(float(norm.min()), float(norm.max())))
    lnc = np.log(cont)
    q = np.round((lnc - lnc[0]) / LNCONT_STEP).astype(np.int64)
    arrays = {
        "format_version": np.int32(FORMAT_VERSION),
        "norm_u16": np.round(norm * NORM_SCALE).astype(np.uint16),
        "lncont0": np.float64(lnc[0]),
        "lncont_d": np.diff(q).astype(np.int32),
        "labels": np.asarray(labels, dtype=np.float64),
        "label_names": np.asarray(label_names, dtype="U8"),
        "wave_min_A": np.float64(wave_min_A),
        "dlnlam": np.float64(dlnlam),
        "n_wave": np.int64(len(flux)),
        "meta_json": np.asarray(json.dumps(meta, default=float)),
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def read_spectrum(path) -> dict:
    """Return ``wave`` (vacuum A), ``norm``, ``cont``, ``flux`` (float64), ``labels``, ``label_names``, ``meta``."""
    path = Path(path)
    try:
        d = np.load(path)
        norm = d["norm_u16"].astype(np.float64) / NORM_SCALE
        lnc = float(d["lncont0"]) + np.concatenate([[0], np.cumsum(d["lncont_d"].astype(np.int64))]) * LNCONT_STEP
        n = int(d["n_wave"])
        wave = float(d["wave_min_A"]) * np.exp(np.arange(n) * float(d["dlnlam"]))
        out = {
            "wave": wave, "norm": norm, "cont": np.exp(lnc), "labels": d["labels"].copy(),
            "label_names": tuple(str(s) for s in d["label_names"]), "meta": json.loads(str(d["meta_json"])),
        }
    except (OSError, KeyError, ValueError) as e:
        raise InputError(f"cannot read synthesised spectrum: {e}", file=path) from None
    out["flux"] = out["norm"] * out["cont"]
    return out
