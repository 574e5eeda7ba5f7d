"""Command ``specvit calibrate-snr``: the simulator's median SNR at the paper's six magnitudes."""
from __future__ import annotations

import json
import sys

from specvit.config import load_config
from specvit.observe.config import InstrumentConfig


def load_model(name: str):
    """'default' -> specvit.spectra.default_model() (falls back to the Planck model with a message
    if it cannot be imported); 'planck' -> the Planck-continuum reference model."""
    from specvit.observe.reference import PlanckModel

    if name == "planck":
        return PlanckModel(), "planck"
    try:
        from specvit.spectra import default_model
    except ImportError as e:
        print(f"specvit calibrate-snr: the default spectral model is not available ({e}); "
              "falling back to the Planck-continuum model (--model planck)", file=sys.stderr)
        return PlanckModel(), "planck (fallback)"
    return default_model(), "default"


def cmd_calibrate_snr(args) -> int:
    from specvit.observe.calibrate import PAPER_SNR, calibrate_snr

    instrument = load_config(InstrumentConfig, args.config, args.set or ())
    model, model_name = load_model(args.model)
    res = calibrate_snr(model, n=args.n, seed=args.seed, instrument=instrument)
    if args.json:
        print(json.dumps(res["snr"]))
        return 0
    print(f"median SNR, calibration setup (4 x 900 s, seeing 1.0\", zenith 22.5 deg, field 0.325 deg, new moon); "
          f"model={model_name}, n={res['n']}, seed={res['seed']}")
    print(f"{'mag':>5} {'SNR':>8} {'paper':>7} {'ratio':>6} {'median error':>13}")
    for k, v in res["snr"].items():
        ref = PAPER_SNR.get(k, float("nan"))
        print(f"{k:>5} {v:8.2f} {ref:7.1f} {v / ref:6.3f} {res['median_error'][k]:13.4f}")
    return 0


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
    p.add_argument("--config", help="YAML file with InstrumentConfig keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an InstrumentConfig key (repeatable)")
    p.set_defaults(func=cmd_calibrate_snr)
