"""Figure and numbers of docs/emulator.md, "Hydrogen lines": PySME spectra with and without the
Paschen lines at (6000 K, log g 4.5), (4500 K, log g 4.5) and the giant (5000 K, log g 2.0),
[M/H] = [a/M] = [C/M] = 0, 8450-8800 A.

    .venv/bin/python docs/figures/synthesis_paschen.py [--cache-dir DIR] [--json OUT.json]

Needs the prepared synthesis cache (`specvit synthesis prepare`); about 1-2 CPU-min. Prints one
JSON object (last line): per temperature the depth of P12-P17 on their own (hydrogen-only
synthesis with a fine adaptive grid, ``accwi = 1e-4``), the with/without difference of the full
spectrum at each line centre, and the Ca II 8544.44 A core with and without hydrogen.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from specvit.spectra.synthesis import hydrogen as hyd  # noqa: E402
from specvit.spectra.synthesis.backend import PysmeSynthesizer, SynthesisSetup  # noqa: E402
from specvit.spectra.synthesis.prepare import default_cache_dir  # noqa: E402

WINDOW_A = (8450.0, 8800.0)
CA_CORE_A = 8544.44  # Ca II 8542.09 A (air) in vacuum
LABELS = {"6000K_logg4.5": (6000.0, 4.5, 0.0, 0.0, 0.0), "4500K_logg4.5": (4500.0, 4.5, 0.0, 0.0, 0.0),
          "5000K_logg2.0": (5000.0, 2.0, 0.0, 0.0, 0.0)}


def hydrogen_only(synth: PysmeSynthesizer, labels, accwi: float = 1e-4) -> np.ndarray:
    """F/C of a hydrogen-only synthesis on ``synth.wave`` with a fine adaptive grid."""
    from pysme.synthesize import synthesize_spectrum

    sme, _ = synth.sme_structure(*labels, kinds=("hydrogen",))
    sme.accwi = accwi
    sme = synthesize_spectrum(sme)
    return np.asarray(sme.synth[0]) / np.asarray(sme.cont[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("synthesis_paschen.png"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    synth = PysmeSynthesizer(args.cache_dir or default_cache_dir(),
                             SynthesisSetup(wave_min_A=WINDOW_A[0], wave_max_A=WINDOW_A[1]))
    w = synth.wave
    members = [(m, hyd.vacuum_wavelength_A(3, m)) for m in range(12, 18)]
    report, spectra = {}, {}
    for key, lab in LABELS.items():
        teff = lab[0]
        # atoms + CN + hydrogen, TiO below tio_always_below_K (the TiO probe window is outside this range)
        kinds = synth.default_kinds() + (("tio",) if teff < synth.setup.tio_always_below_K else ())
        with_h = synth.synthesize(*lab, kinds=kinds)
        without = synth.synthesize(*lab, kinds=tuple(k for k in kinds if k != "hydrogen"))
        n1, n0 = with_h["flux"] / with_h["cont"], without["flux"] / without["cont"]
        h_only = hydrogen_only(synth, lab)
        spectra[key] = (n0, n1)
        core = np.abs(w - CA_CORE_A) < 0.15
        report[key] = {
            "labels": lab,
            "line_kinds": with_h["info"]["line_kinds"],
            "paschen_depth_alone_percent": {f"P{m}": round(100 * float(1 - np.interp(c, w, h_only)), 3)
                                           for m, c in members},
            "with_minus_without_at_centre_percent": {f"P{m}": round(100 * float(np.interp(c, w, n0 - n1)), 3)
                                                     for m, c in members},
            "ca8544_core_flux": {"without_H": round(float(n0[core].min()), 4), "with_H": round(float(n1[core].min()), 4)},
            "max_abs_change_percent": round(100 * float(np.max(np.abs(n1 - n0))), 3),
        }
    fig, axes = plt.subplots(2 * len(LABELS), 1, figsize=(11, 4.3 * len(LABELS)), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1] * len(LABELS)})
    for i, (key, lab) in enumerate(LABELS.items()):
        n0, n1 = spectra[key]
        ax, axd = axes[2 * i], axes[2 * i + 1]
        ax.plot(w, n0, lw=0.6, color="0.5", label="without hydrogen (line list v1)")
        ax.plot(w, n1, lw=0.6, color="C3", label="with Paschen lines (v2)")
        for m, c in members:
            ax.axvline(c, color="C0", lw=0.5, ls=":")
            ax.text(c, 1.005, f"P{m}", ha="center", va="bottom", fontsize=7, color="C0")
        ax.set_ylim(min(0.3, float(n1.min()) - 0.05), 1.03)
        ax.set_ylabel("F / C")
        ax.set_title(f"PySME, T_eff = {lab[0]:.0f} K, log g = {lab[1]}, [M/H] = 0, R = 10,000 (vacuum)", fontsize=9)
        axd.plot(w, 100 * (n0 - n1), lw=0.6, color="C3")
        axd.set_ylabel("without − with (%)", fontsize=8)
        axd.axhline(0, color="k", lw=0.4)
    axes[0].legend(loc="lower left", fontsize=8)
    axes[-1].set_xlabel("vacuum wavelength (Å)")
    axes[-1].set_xlim(*WINDOW_A)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    out = {"figure": str(args.out), "window_A": WINDOW_A, "results": report}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
