"""Command ``specvit fisher``: the Cramér–Rao and van Trees ceilings per magnitude (or per SNR bin)."""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from specvit.data.checks import MAG_RANGE  # the HSC i AB magnitudes --mags accepts
from specvit.errors import InputError
from specvit.observe.conditions import CALIBRATION_MAGS


def _label_var(text: str):
    if text in ("points", "box"):
        return text
    try:
        return float(text)
    except ValueError:
        raise InputError("--label-var must be 'points', 'box' or a number", field="--label-var", value=text) from None


def _json_safe(obj):
    """Non-finite floats (an unconstrained label: sigma = inf) become null in the JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj




def check_mags(mags) -> list[float]:
    """``--mags``: every value finite and inside :data:`MAG_RANGE` (else one InputError naming them)."""
    lo, hi = MAG_RANGE
    bad = [m for m in mags if not (np.isfinite(m) and lo <= m <= hi)]
    if bad or not len(mags):
        raise InputError(f"magnitudes must be finite HSC i AB magnitudes in [{lo:g}, {hi:g}]", field="--mags",
                         value=bad or list(mags))
    return [float(m) for m in mags]


def cmd_fisher(args) -> int:
    from specvit.fisher.ceiling import ceiling_by_magnitude, ceiling_by_snr_bin, compute_information
    from specvit.observe.forward import default_forward
    from specvit.fisher.information import resolve_free
    from specvit.fisher.points import make_points

    t0 = time.perf_counter()
    args.mags = check_mags(args.mags)  # before the (slow) model is built
    if not (np.isfinite(args.noise_level) and args.noise_level > 0):
        raise InputError("must be a finite number > 0", field="--noise-level", value=args.noise_level)
    if not 0 < args.prior_taper <= 0.5:
        raise InputError("must be in (0, 0.5]", field="--prior-taper", value=args.prior_taper)
    if args.fd_steps and not all(np.isfinite(s) and s > 0 for s in args.fd_steps):
        raise InputError("finite-difference steps must be finite numbers > 0", field="--fd-steps", value=args.fd_steps)
    instrument = None
    if args.preset:
        from specvit.observe.config import InstrumentConfig

        instrument = InstrumentConfig(preset=args.preset)
    forward, _ = default_forward(model_spec=args.model, instrument=instrument)
    names = list(forward.label_names)
    tgt, free_idx = resolve_free(names, args.label, args.nuisance)  # checks the label early
    free = [names[i] for i in free_idx]
    rng = np.random.default_rng(args.seed)
    kind = args.points
    n_points = args.n_points
    if kind == "uniform" and n_points <= 0:
        n_points = 1000
    points = make_points(forward, kind, free=free, n_points=n_points, rng=rng)
    steps = None
    if args.fd_steps:
        if len(args.fd_steps) != len(names):
            raise InputError(f"--fd-steps needs {len(names)} values ({names})", field="--fd-steps",
                             value=args.fd_steps)
        steps = args.fd_steps
    iset = compute_information(forward, points, args.mags, method=args.method, steps=steps,
                               noise_level=args.noise_level)
    kw = dict(label=args.label, nuisance=args.nuisance, label_var=_label_var(args.label_var), bound=args.bound,
              prior_taper=args.prior_taper)
    if args.by == "snr":
        table = ceiling_by_snr_bin(iset, require_all=args.require_all_bins, **kw)
    else:
        table = ceiling_by_magnitude(iset, **kw)
    for v in table.values():
        if isinstance(v, dict):
            v["seed"] = args.seed
            v["points"] = kind
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps(_json_safe(table), allow_nan=False))
        return 0
    print(f"specvit fisher: model={type(forward.model).__name__}, label={args.label}, nuisance={args.nuisance}, "
          f"points={kind} (N={len(points)}), seed={args.seed}, {seconds:.1f} s")
    key = "mag" if args.by == "mag" else "SNR bin"
    head = f"{key:>9} {'SNR':>7} {'R2max med':>9} {'p10':>6} {'p90':>6} {'sigma_min':>9} {'Schur':>6}"
    if args.bound in ("bayes", "both"):
        head += f" {'R2 Bayes':>8} {'sigma_B':>8}"
    print(head)
    for k, v in table.items():
        if not isinstance(v, dict):
            print(f"(empty SNR bins: {', '.join(v)})")
            continue
        line = f"{k:>9} {v['snr']:7.2f}"
        if "r2max_median" in v:
            line += (f" {v['r2max_median']:9.4f} {v['r2max_p10']:6.3f} {v['r2max_p90']:6.3f}"
                     f" {v['sigma_min_median']:9.4f} {v['schur_decay_median']:6.3f}")
        if "r2max_bayes" in v:
            line += f" {v['r2max_bayes']:8.4f} {v['sigma_bayes']:8.4f}"
        print(line)
    return 0


def cmd_montecarlo(args) -> int:
    """``specvit fisher montecarlo``: the documented MC-validation figure and table.

    Noise: either the PFS observer's error at each magnitude (``--mags``; the model is
    observed under the calibration setup), or, with ``--snr``, a constant-SNR error
    e = μ / SNR on the model's own grid (no instrument).
    """
    import pandas as pd

    from specvit.atomic import atomic_path
    from specvit.observe.forward import default_forward
    from specvit.observe.noise import magnitude_errors
    from specvit.fisher.montecarlo import crlb_scan, plot_validation, validate_crlb
    from specvit.spectra import load_spectral_model

    if bool(args.mags) == bool(args.snr):
        raise InputError("give either --mags (observer) or --snr (constant SNR)", field="--mags/--snr")
    model = load_spectral_model(args.model)
    fwd, obs = default_forward(model, use_observer=bool(args.mags))
    rng = np.random.default_rng(args.seed)
    frames, scan, scan_title = [], None, ""
    for p in args.points:
        theta = np.array([float(v) for v in p.split(",")])
        if args.mags:
            _, err = magnitude_errors(obs, fwd.model_flux(theta[None]), args.mags)
            errors = {f"i={m:g}": err[k, 0] for k, m in enumerate(args.mags)}
        else:
            mu = fwd.numpy(theta[None])[0]
            errors = {f"SNR={s:g}": mu / s for s in args.snr}
        if scan is None and args.scan > 0:
            key0 = next(iter(errors))
            scan = crlb_scan(fwd, theta, errors[key0], label=args.label, nuisance=args.nuisance,
                             half_width=args.scan)
            scan_title = f"pointwise bound, {p}, {key0}\n(grey: the median pixel changes)"
        df = validate_crlb(fwd, theta, errors, label=args.label, nuisance=args.nuisance, n_real=args.n_real, rng=rng,
                           n_starts=args.n_starts, max_iter=args.max_iter, local_average=args.local_average,
                           local_width=args.local_width, fitter=args.fitter or ("ml" if args.mags else "templatefit"))
        df["point"] = p
        frames.append(df)
        print(df.to_string(index=False), flush=True)
    out = pd.concat(frames, ignore_index=True)
    name = type(model).__name__
    version = getattr(model, "version", "")
    fig = plot_validation(out, title=f"ML fits vs CRLB: {name} {version}, {args.label}, nuisance {args.nuisance}, "
                                     f"{args.n_real} realisations, seed {args.seed}", scan=scan, scan_title=scan_title)
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    record = {"args": {k: getattr(args, k) for k in args.montecarlo_args}, "model": name, "model_version": version,
              "rows": out.to_dict(orient="records")}
    if scan is not None:
        record["scan"] = scan.to_dict(orient="list")
    with atomic_path(str(args.out).rsplit(".", 1)[0] + ".json") as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


def _register_montecarlo(fisher_parser) -> None:
    sub = fisher_parser.add_subparsers(dest="fisher_command", metavar="{montecarlo}",
                                       help="optional: 'montecarlo' validates the CRLB with ML fits "
                                            "(specvit fisher montecarlo --help)")
    mc = sub.add_parser(
        "montecarlo", help="Monte-Carlo validation of the CRLB with maximum-likelihood fits (figure + JSON)",
        description="The documented MC-validation figure and table: ML fits of noisy spectra at true label "
                    "vectors vs sqrt(CRLB), with the PFS observer's error per magnitude (--mags) or a constant SNR "
                    "(--snr). Writes --out (PNG) and a JSON of every number beside it.",
    )
    mc.add_argument("--model", default="default", help="'default', MODULE:FACTORY, an emulator .npz or a grid .h5")
    mc.add_argument("--mags", type=float, nargs="*", default=[], help="magnitudes (PFS observer errors)")
    mc.add_argument("--snr", type=float, nargs="*", default=[], help="constant SNRs instead (no observer)")
    mc.add_argument("--points", type=str, nargs="+", default=["4500,2.5,-0.5,0,0", "5500,4.0,-1.5,0,0"],
                    help="true label vectors 'Teff,logg,MH,aM,CM'")
    mc.add_argument("--label", default="log_g")
    mc.add_argument("--nuisance", default="3d")
    mc.add_argument("--n-real", type=int, default=200)
    mc.add_argument("--n-starts", type=int, default=1)
    mc.add_argument("--max-iter", type=int, default=25)
    mc.add_argument("--seed", type=int, default=0)
    mc.add_argument("--fitter", choices=["ml", "templatefit"], default=None,
                    help="ML fitter: 'ml' (fast exact-Jacobian LM; default with --mags) or 'templatefit' (fit_lm)")
    mc.add_argument("--local-average", type=int, default=64,
                    help="points of the local-average information around each truth (0 = off)")
    mc.add_argument("--local-width", type=float, default=2.0, help="neighbourhood half-width in units of sqrt(CRLB)")
    mc.add_argument("--scan", type=float, default=0.05,
                    help="half-width of the pointwise-CRLB scan along the label through the first point at the "
                         "first magnitude / SNR (0 = no scan panel)")
    mc.add_argument("--out", default="docs/figures/fisher_mc.png")
    mc.set_defaults(func=cmd_montecarlo,  # the JSON record keeps exactly these arguments
                    montecarlo_args=tuple(a.dest for a in mc._actions if a.dest != "help"))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fisher",
        help="Fisher/Cramer-Rao and van Trees ceilings on a label per magnitude or SNR bin",
        description=(
            "Exact Jacobians of the observed normalised spectrum (autograd through the spectral model and the PFS "
            "observer, or central finite differences for grids), the observer's error under the calibration setup "
            "(4 x 900 s, seeing 1.0\", zenith 22.5 deg, new moon) at each magnitude, Fisher matrices, Schur "
            "complement over the nuisance labels, CRLB, sigma_min, R2_max = clip(1 - CRLB/Var, 0, 1), Schur decay; "
            "and the Bayesian (van Trees) bound with a smoothed-box prior, valid for biased estimators."
        ),
    )
    p.add_argument("--mags", type=float, nargs="+", default=list(CALIBRATION_MAGS),
                   help="HSC i AB magnitudes, each finite and in [10, 30] (default: 18 20 21.5 22 22.5 23)")
    p.add_argument("--nuisance", default="3d", choices=["3d", "5d"],
                   help="free labels: 3d = T_eff, log_g, M_H (a_M, C_M fixed at 0); 5d = all five")
    p.add_argument("--points", default="grid",
                   help="'grid' (BOSZ-spaced nodes over the box), 'uniform' (uniform design) or a dataset .h5 / "
                        "CSV whose label columns give the points")
    p.add_argument("--n-points", type=int, default=1000,
                   help="subsample this many points (grid / file; 0 = all) or the uniform design size (default 1000)")
    p.add_argument("--label", default="log_g", help="label to bound (default log_g; aliases like teff, feh work)")
    p.add_argument("--bound", default="both", choices=["crlb", "bayes", "both"],
                   help="Cramer-Rao (unbiased estimators), van Trees (any estimator) or both (default)")
    p.add_argument("--by", default="mag", choices=["mag", "snr"],
                   help="summaries per magnitude (default) or per SNR bin of specvit.snr_bins")
    p.add_argument("--require-all-bins", action="store_true",
                   help="with --by snr: an empty SNR bin is an error instead of being listed as empty")
    p.add_argument("--label-var", default="points",
                   help="Var(label) for R2_max: 'points' (variance over the points; default; 1.667 for log g on the "
                        "grid, as the paper), 'box' ((b-a)^2/12) or a number")
    p.add_argument("--prior-taper", type=float, default=0.5,
                   help="van Trees prior: cos^2 taper width as a fraction of each label's box (0 < f <= 0.5; "
                        "0.5 = cos^2 prior, default)")
    p.add_argument("--method", default="auto", choices=["auto", "autograd", "fd"],
                   help="Jacobian: autograd (differentiable models), fd (central differences) or auto")
    p.add_argument("--fd-steps", type=float, nargs="+",
                   help="finite-difference steps, one per model label (default: BOSZ spacing 250 K, 0.5, 0.25...)")
    p.add_argument("--noise-level", type=float, default=1.0, help="noise multiplier (default 1)")
    p.add_argument("--model", default="default",
                   help="spectral model: 'default' (the embedded emulator), MODULE:FACTORY, an emulator .npz, or a "
                        "grid .h5")
    p.add_argument("--seed", type=int, default=0, help="seed of the point subsample / design (default 0)")
    p.add_argument("--preset", metavar="NAME",
                   help="instrument preset of the observer: 'paper' (default) or 'pfs-etc' (the official PFS ETC)")
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by magnitude (or SNR bin)")
    p.set_defaults(func=cmd_fisher)
    _register_montecarlo(p)


if __name__ == "__main__":  # pragma: no cover
    from specvit.cli import main

    sys.exit(main(["fisher", *sys.argv[1:]]))
