"""Command ``specvit calibrate-snr``: the simulator's median SNR at the paper's six magnitudes."""
from __future__ import annotations

import json
import sys

from specvit.config import load_config
from specvit.observe.config import InstrumentConfig


def calibration_model(name: str):
    """(model, name) for ``--model``: 'planck' -> the Planck-continuum reference model (owned by observe/);
    anything else -> :func:`specvit.spectra.load_spectral_model` ('default': the embedded emulator, which
    falls back to the Planck model with a message if it is not built / not installed)."""
    from specvit.errors import InputError
    from specvit.observe.reference import PlanckModel
    from specvit.spectra import load_spectral_model

    if name == "planck":
        return PlanckModel(), "planck"
    try:
        return load_spectral_model(name), name
    except InputError as e:
        cause = e.__cause__
        if name != "default" or not isinstance(cause, (ImportError, FileNotFoundError)):  # not built / not shipped
            raise
        print(f"specvit calibrate-snr: the default spectral model is not available ({type(cause).__name__}: "
              f"{cause}); falling back to the Planck-continuum model (--model planck)", file=sys.stderr)
        return PlanckModel(), "planck (fallback)"


#: The star of the noise-vs-wavelength figure: a metal-poor K giant.
FIGURE_LABELS = {"T_eff": 4500.0, "log_g": 2.5, "M_H": -1.0, "a_M": 0.0, "C_M": 0.0}


def write_noise_figure(model, instrument, path) -> None:
    """Noise vs wavelength at the six calibration magnitudes for one star, saved to ``path`` (PNG/PDF)."""
    import numpy as np

    from specvit.atomic import atomic_path
    from specvit.observe.calibrate import noise_vs_wavelength, plot_noise_vs_wavelength
    from specvit.observe.observer import PFSObserver

    labels = np.array([[FIGURE_LABELS.get(n, 0.0) for n in model.label_names]])
    res = noise_vs_wavelength(PFSObserver.for_model(model, instrument), model.flux(labels))
    fig = plot_noise_vs_wavelength(res["wave"], dict(zip(res["mags"], res["error"])), flux=res["flux"],
                                   snr=dict(zip(res["mags"], res["snr"])))
    fig.suptitle(f"{type(model).__name__}: Teff 4500 K, log g 2.5, [M/H] -1; 4 x 900 s, seeing 1.0\", "
                 "zenith 22.5 deg, new moon", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format=str(path).rsplit(".", 1)[-1])


def cmd_calibrate_snr(args) -> int:
    from specvit.observe.calibrate import PAPER_SNR, calibrate_snr

    overrides = list(args.set or ())
    if args.preset:
        overrides.append(f"preset={args.preset}")
    instrument = load_config(InstrumentConfig, args.config, overrides)
    model, model_name = calibration_model(args.model)
    res = calibrate_snr(model, n=args.n, seed=args.seed, instrument=instrument)
    if args.figure:
        write_noise_figure(model, instrument, args.figure)
    if args.snr_figure:
        from specvit.atomic import atomic_path
        from specvit.observe.calibrate import plot_snr_calibration

        fig = plot_snr_calibration(res)
        fig.axes[0].set_title(f"model: {model_name}", fontsize=8)
        with atomic_path(args.snr_figure) as tmp:
            fig.savefig(tmp, dpi=130, format=str(args.snr_figure).rsplit(".", 1)[-1])
    if args.json:
        print(json.dumps(res["snr"]))
        return 0
    print(f"median SNR, calibration setup (4 x 900 s, seeing 1.0\", zenith 22.5 deg, field 0.325 deg, new moon); "
          f"model={model_name}, n={res['n']}, seed={res['seed']}")
    if instrument.preset != "paper":
        print_etc_table(res, instrument)
        return 0
    print(f"{'mag':>5} {'SNR':>8} {'paper':>7} {'ratio':>6} {'median error':>13}")
    for k, v in res["snr"].items():
        ref = PAPER_SNR.get(k, float("nan"))
        print(f"{k:>5} {v:8.2f} {ref:7.1f} {v / ref:6.3f} {res['median_error'][k]:13.4f}")
    return 0


def print_etc_table(res, instrument) -> None:
    """The comparison with the official PFS ETC (median per-pixel SNR; see docs/observe.md)."""
    from specvit.observe.calibrate import etc_comparison

    def f(x, fmt):
        return format(x, fmt) if x is not None else "-"

    print(f"preset {instrument.preset}: median per-pixel SNR vs the official PFS ETC (v2.0, MR red arm)")
    print(f"{'mag':>5} {'SNR':>8} {'ETC#16':>7} {'ratio':>6} | {'flat-AB':>8} {'ETC flat-AB':>11} {'ratio':>6}"
          f" {'median error':>13}")
    for r in etc_comparison(res, instrument):
        print(f"{r['mag']:>5} {r['snr']:8.2f} {f(r['etc_issue16'], '7.2f'):>7} {f(r['ratio_issue16'], '6.3f'):>6} | "
              f"{r['flat_ab']:8.3f} {f(r['etc_flat_ab'], '11.3f'):>11} {f(r['ratio_flat_ab'], '6.3f'):>6}"
              f" {res['median_error'][r['mag']]:13.4f}")
    print("SNR: this sample (stars); ETC#16: the ETC's numbers quoted in issue #16; flat-AB: a constant-F_nu source, "
          "against the ETC run locally on the same source (scripts/derive_pfs_etc_data.py)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate-snr",
        help="median SNR of the PFS MR simulator at i = 18, 20, 21.5, 22, 22.5, 23 (calibration setup)",
        description=(
            "Observe spectra spanning Teff 3750-6000 K, log g 1-5, [M/H] -2.5..0.5 under the calibration setup "
            "(4 x 900 s, seeing 1.0\", zenith 22.5 deg, field angle 0.325 deg, new moon) and print the median "
            "SNR per magnitude next to the paper's 87.4, 24.0, 7.1, 4.6, 3.0, 1.9."
        ),
    )
    p.add_argument("--json", action="store_true", help='print one JSON object {"18": snr, ..., "23": snr}')
    p.add_argument("--model", choices=["default", "planck"], default="default",
                   help="spectral model: the package default (falls back to planck if unavailable) or a Planck continuum")
    p.add_argument("--n", type=int, default=200, help="number of spectra (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the label draw (default 0)")
    p.add_argument("--figure", metavar="PATH", help="also save a noise-vs-wavelength figure (PNG) for a K giant")
    p.add_argument("--snr-figure", metavar="PATH", help="also save the SNR-vs-magnitude figure (ours vs the paper)")
    p.add_argument("--config", help="YAML file with InstrumentConfig keys")
    p.add_argument("--preset", metavar="NAME",
                   help="instrument preset: 'paper' (default; the paper's calibration) or 'pfs-etc' (the official "
                        "PFS ETC's MR red arm; prints the comparison with the ETC's SNR)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an InstrumentConfig key (repeatable)")
    p.set_defaults(func=cmd_calibrate_snr)
