"""One spectrum with PySME (Wehrhahn et al. 2023; Valenti & Piskunov 1996) from the cached inputs.

Physics choices (see docs/emulator.md):

* atmosphere: MARCS, interpolated by :class:`~specvit.spectra.synthesis.marcs.MarcsGrid`;
  plane-parallel transfer, LTE;
* abundances: Grevesse, Asplund & Sauval (2007) solar pattern (the MARCS one), scaled by
  [M/H]; [alpha/M] is added to O, Ne, Mg, Si, S, Ar, Ca, Ti and [C/M] to C, both RELATIVE
  to the [M/H]-scaled pattern (PySME ``abund.xm``), so [M/H] is applied once;
* microturbulence: APOGEE DR12 relation v_mic = 2.478 - 0.325 log g km/s
  (Holtzman et al. 2015, AJ 150, 148), clipped to >= 0.5 km/s; no macroturbulence
  or rotation (the R = 10,000 Gaussian, 30 km/s FWHM, dominates both);
* lines: Gaia-ESO atoms + CN (+ TiO below ``tio_max_teff_K``) + hydrogen Paschen lines
  (computed, :mod:`.hydrogen`; ``SynthesisSetup.hydrogen``), vacuum wavelengths, molecular
  lines pruned by a strength index (see :class:`SynthesisSetup`). The line-list version
  (:attr:`SynthesisSetup.linelist_version`: 1 without hydrogen, 2 with) is recorded with
  every spectrum;
* output: absolute surface flux F_lambda and its continuum (erg s-1 cm-2 A-1), Gaussian
  broadened to R = ``resolution`` and sampled on :func:`output_wave` (vacuum, log-uniform).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from specvit.errors import InputError
from specvit.spectra.synthesis.marcs import MarcsGrid
from specvit.spectra.synthesis.prepare import HYDROGEN_FILE, hydrogen_lines_match

ALPHA_ELEMENTS = ("O", "Ne", "Mg", "Si", "S", "Ar", "Ca", "Ti")
SOLAR_PATTERN = "grevesse2007"
#: MARCS opacity flags as in PySME's own MARCS reader.
MARCS_OPFLAG = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0]


def synthesis_abundances(mh: float, a_m: float, c_m: float):
    """The PySME ``Abund`` of a label set, as every synthesis sets it: the ``SOLAR_PATTERN`` scaled by
    [M/H], [a/M] added to ``ALPHA_ELEMENTS`` (oxygen included) and [C/M] to carbon, relative to the
    scaled pattern (``abund.xm``). Hence C/O = solar C/O * 10**([C/M] - [a/M]) (:func:`specvit.labels.c_to_o`,
    tested against this function)."""
    from pysme.abund import Abund

    abund = Abund(monh=mh, pattern=SOLAR_PATTERN, type="H=12")
    for el in ALPHA_ELEMENTS:
        abund.xm[el] = a_m
    abund.xm["C"] = c_m
    return abund


def microturbulence_kms(logg):
    """v_mic (km/s) = 2.478 - 0.325 log g (Holtzman et al. 2015, APOGEE DR12), >= 0.5 km/s."""
    return np.maximum(2.478 - 0.325 * np.asarray(logg, dtype=float), 0.5)


def output_wave(wave_min_A: float = 7050.0, wave_max_A: float = 8900.0, dlnlam: float = 2.25e-5) -> np.ndarray:
    """Log-uniform vacuum grid: ``wave_min_A * exp(i * dlnlam)`` up to ``wave_max_A`` (Angstrom)."""
    n = int(np.floor(np.log(wave_max_A / wave_min_A) / dlnlam)) + 1
    return wave_min_A * np.exp(np.arange(n) * dlnlam)


@dataclass
class SynthesisSetup:
    """How every spectrum is synthesised (stored with each spectrum).

    Lines are kept when ``log gf - (5040 / theta_ref_K) * chi_eV`` exceeds ``*_min_strength``
    (a Boltzmann-weighted line strength at ``theta_ref_K``). TiO is always included below
    ``tio_always_below_K``; above it, a probe synthesis over ``tio_probe_window_A`` (the
    strongest TiO gamma-system heads) is made with and without TiO, and TiO is included
    only if it changes the normalised flux there by more than ``tio_probe_threshold``.
    Above ``tio_never_above_K`` TiO is left out. The choices are measured and recorded in
    docs/emulator.md.

    ``hydrogen`` adds the Paschen lines 3 -> 9..30 (line-list version 2); ``False`` gives the
    version-1 line list (atoms + molecules only). In a restricted ``window`` hydrogen lines are
    kept within ``hydrogen_wing_A`` of it (the far wing of P12 150 A from its centre is 7e-5 of
    the continuum at 6000 K, log g 2, measured). Hydrogen lines roughly quadruple the PySME CPU time
    per spectrum (measured in docs/emulator.md, "Hydrogen lines").
    """

    wave_min_A: float = 7050.0
    wave_max_A: float = 8900.0
    dlnlam: float = 2.25e-5
    resolution: float = 10000.0
    line_margin_A: float = 5.0
    tio_always_below_K: float = 4750.0
    tio_never_above_K: float = 1e9
    tio_probe_window_A: tuple[float, float] = (7050.0, 7130.0)
    tio_probe_threshold: float = 1e-4
    tio_min_strength: float = -2.0
    cn_min_strength: float = -99.0
    atom_min_strength: float = -99.0
    theta_ref_K: float = 3500.0
    #: below the lowest MARCS [M/H] node (-2.5) by at most this much (the design margin), the
    #: atmosphere STRUCTURE is the one at the node; the abundances keep the true [M/H].
    mh_atmosphere_clamp_dex: float = 0.1
    hydrogen: bool = True
    hydrogen_wing_A: float = 150.0

    @property
    def linelist_version(self) -> int:
        """1: atoms + CN + TiO; 2: also hydrogen Paschen lines."""
        return 2 if self.hydrogen else 1

    @classmethod
    def from_dict(cls, d: dict, *, source="setup") -> "SynthesisSetup":
        """Rebuild from a stored ``asdict`` record; unknown keys are an error.

        A record without ``hydrogen`` was written before hydrogen lines existed (line-list
        version 1), so it means ``hydrogen=False``; ``linelist_version`` is checked if present.
        """
        d = dict(d)
        version = d.pop("linelist_version", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError("unknown synthesis setup key", file=source, field=unknown[0], value=d[unknown[0]])
        d.setdefault("hydrogen", False)
        for k in ("tio_probe_window_A",):
            if k in d:
                d[k] = tuple(d[k])
        setup = cls(**d)
        if version is not None and int(version) != setup.linelist_version:
            raise InputError("linelist_version contradicts the hydrogen flag", file=source,
                             field="linelist_version", value=version)
        return setup


def _strength(lines: dict, theta_ref_K: float) -> np.ndarray:
    return lines["gflog"] - (5040.0 / theta_ref_K) * lines["excit"]


class PysmeSynthesizer:
    """Synthesise spectra for label sets with PySME from the ``prepare`` cache."""

    def __init__(self, cache_dir, setup: SynthesisSetup | None = None):
        self.cache_dir = Path(cache_dir)
        self.setup = setup or SynthesisSetup()
        self.grid = MarcsGrid(self.cache_dir / "marcs.npz")
        self.wave = output_wave(self.setup.wave_min_A, self.setup.wave_max_A, self.setup.dlnlam)
        self._lines = {}
        for kind, cut in (("atoms", self.setup.atom_min_strength), ("cn", self.setup.cn_min_strength),
                          ("tio", self.setup.tio_min_strength)):
            path = self.cache_dir / f"lines_{kind}.npz"
            if not path.exists():
                raise InputError("line list not found; run `specvit synthesis prepare`", file=path)
            d = dict(np.load(path))
            lo, hi = self.setup.wave_min_A - self.setup.line_margin_A, self.setup.wave_max_A + self.setup.line_margin_A
            keep = (d["wlcent"] >= lo) & (d["wlcent"] <= hi) & (_strength(d, self.setup.theta_ref_K) > cut)
            self._lines[kind] = {k: v[keep] for k, v in d.items()}
        if self.setup.hydrogen:
            d, self.hydrogen_source = self._hydrogen_lines()
            w = self.setup.hydrogen_wing_A
            keep = (d["wlcent"] >= self.setup.wave_min_A - w) & (d["wlcent"] <= self.setup.wave_max_A + w)
            self._lines["hydrogen"] = {k: v[keep] for k, v in d.items()}

    def _hydrogen_lines(self) -> tuple[dict, str]:
        """The cached ``lines_hydrogen.npz`` if present (it must equal the computed list), else the
        computed list itself (no file is written: a cache may be shared by parallel workers)."""
        from specvit.spectra.synthesis.hydrogen import paschen_lines

        lines = paschen_lines()
        path = self.cache_dir / HYDROGEN_FILE
        if not path.exists():
            return lines, "computed"
        if not hydrogen_lines_match(path, lines):
            raise InputError("cached hydrogen line list differs from the computed one; run "
                             "`specvit synthesis prepare` to rewrite it", file=path, field="lines")
        return dict(np.load(path)), str(path)

    @property
    def linelist_version(self) -> int:
        return self.setup.linelist_version

    def default_kinds(self) -> tuple[str, ...]:
        """Line lists always used: atoms, CN and (line-list version 2) hydrogen."""
        return ("atoms", "cn", "hydrogen") if self.setup.hydrogen else ("atoms", "cn")

    def n_lines(self, kinds=("atoms", "cn", "tio")) -> dict:
        return {k: int(len(self._lines[k]["wlcent"])) for k in kinds}

    def choose_kinds(self, teff, logg, mh, a_m, c_m) -> tuple[tuple[str, ...], dict]:
        """Which line lists to use (see :class:`SynthesisSetup`) and the probe record."""
        st = self.setup
        base = self.default_kinds()
        if teff < st.tio_always_below_K:
            return base + ("tio",), {"tio": "always (cool)"}
        if teff >= st.tio_never_above_K:
            return base, {"tio": "never (hot)"}
        lo, hi = st.tio_probe_window_A
        w = self.wave[(self.wave >= lo) & (self.wave <= hi)]
        a = self.synthesize(teff, logg, mh, a_m, c_m, kinds=("atoms",), wave=w, window=(lo, hi))
        b = self.synthesize(teff, logg, mh, a_m, c_m, kinds=("atoms", "tio"), wave=w, window=(lo, hi))
        delta = float(np.max(np.abs(a["flux"] / a["cont"] - b["flux"] / b["cont"])))
        use = delta > st.tio_probe_threshold
        rec = {"tio": "probe", "tio_probe_max_abs_delta": delta, "tio_probe_cpu_seconds":
               a["info"]["cpu_seconds"] + b["info"]["cpu_seconds"]}
        return (base + ("tio",) if use else base), rec

    def linelist(self, kinds, window=None):
        import pandas as pd
        from pysme.linelist.linelist import LineList

        parts = []
        for k in kinds:
            d = pd.DataFrame(self._lines[k])
            if window is not None:
                m = self.setup.hydrogen_wing_A if k == "hydrogen" else self.setup.line_margin_A
                d = d[(d["wlcent"] >= window[0] - m) & (d["wlcent"] <= window[1] + m)]
            parts.append(d)
        df = pd.concat(parts).sort_values("wlcent", kind="stable")
        df = df.reset_index(drop=True)
        df["species"] = df["species"].astype(str)
        df["atom_number"] = 1.0
        df["ionization"] = df["species"].str.split().str[1].astype(float)
        return LineList(df, lineformat="short", medium="vac")

    def sme_structure(self, teff, logg, mh, a_m, c_m, *, kinds, wave=None, window=None):
        """A ready-to-run PySME structure (also the hook for finite differences: reuse ``sme.wint``)."""
        logging.getLogger("pysme").setLevel(logging.ERROR)
        from pysme.atmosphere.atmosphere import Atmosphere
        from pysme.sme import SME_Structure

        mh_floor = float(self.grid.mh_nodes[0])
        mh_atm = mh_floor if mh_floor - self.setup.mh_atmosphere_clamp_dex <= mh < mh_floor else mh
        model = self.grid.interpolate(teff, logg, mh_atm)
        if mh_atm != mh:
            model.info["atmosphere_M_H"] = mh_atm
        vmic = float(microturbulence_kms(logg))
        abund = synthesis_abundances(mh, a_m, c_m)
        atmo = Atmosphere(
            teff=teff, logg=logg, vturb=vmic, lonh=0.0, method="embedded", geom="PP", depth="TAU", interp="TAU",
            tau=model.tau5000, temp=model.temp_K, rho=model.rho_cgs, rhox=model.rhox_cgs, xne=model.xne,
            xna=model.xna, wlstd=5000.0, opflag=MARCS_OPFLAG, monh=mh,
        )
        atmo.abund = abund
        sme = SME_Structure()
        sme.teff, sme.logg, sme.monh = float(teff), float(logg), float(mh)
        sme.vmic, sme.vmac, sme.vsini = vmic, 0.0, 0.0
        sme.abund = abund
        sme.atmo = atmo
        sme.linelist = self.linelist(kinds, window)
        sme.wave = [self.wave if wave is None else wave]
        sme.iptype = "gauss"
        sme.ipres = float(self.setup.resolution)
        sme.normalize_by_continuum = False
        sme.specific_intensities_only = False
        sme.cscale_flag = "none"
        sme.vrad_flag = "none"
        return sme, model

    def _pysme(self, labels, kinds, wave, window):
        from pysme.synthesize import synthesize_spectrum

        sme, model = self.sme_structure(*labels, kinds=kinds, wave=wave, window=window)
        sme = synthesize_spectrum(sme)
        flux = np.asarray(sme.synth[0], dtype=np.float64)
        cont = np.asarray(sme.cont[0], dtype=np.float64)
        if not (np.all(np.isfinite(flux)) and np.all(np.isfinite(cont)) and np.all(cont > 0)):
            raise RuntimeError("PySME returned non-finite or non-positive flux/continuum")
        return flux, cont, int(len(sme.linelist)), model

    def synthesize(self, teff, logg, mh, a_m, c_m, *, kinds=None, wave=None, window=None) -> dict:
        """Return ``{"flux", "cont"}`` (F_lambda, erg s-1 cm-2 A-1, on ``self.wave``) and ``info``.

        ``kinds`` (default: :meth:`choose_kinds`) selects the line lists; ``wave``/``window``
        restrict the output grid and the lines (probes, tests).
        """
        t0, c0 = time.perf_counter(), time.process_time()
        choice = {}
        if kinds is None:
            kinds, choice = self.choose_kinds(teff, logg, mh, a_m, c_m)
        flux, cont, n_lines, model = self._pysme((teff, logg, mh, a_m, c_m), kinds, wave, window)
        info = {
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "line_choice": choice,
            "vmic_kms": float(microturbulence_kms(logg)),
            "n_lines": n_lines,
            "line_kinds": list(kinds),
            "linelist_version": 2 if "hydrogen" in kinds else 1,
            "atmosphere": model.info,
            "setup": asdict(self.setup),
        }
        return {"flux": flux, "cont": cont, "info": info}
