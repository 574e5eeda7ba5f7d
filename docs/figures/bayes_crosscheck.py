"""Cross-check of ``specvit baseline bayes`` against emcee (a maintained MCMC sampler) and of its likelihood route.

    PYTHONPATH=src python docs/figures/bayes_crosscheck.py --data test.h5 --n 12 [--steps 2000] [--json out.json]

For the first ``--n`` spectra of ``--data`` (fixed test noise, seed 42; the simulate prior of the file):

1. the importance-sampling posterior (default config) with ``likelihood="corrected"`` (the default: fast
   observed-grid emulator + its error at the mode) and with ``likelihood="exact"`` (the exact ForwardModel at
   every draw; same random numbers): the effect of the fast likelihood;
2. emcee (affine-invariant ensemble, Goodman & Weare 2010; 32 walkers, ``--steps`` steps, first third discarded)
   on the same posterior (same prior and corrected likelihood), started around the mode;

and prints per label the median and max over spectra of |Δ mean| / sd_emcee, sd_IS / sd_emcee, and of the
2.5 / 97.5 % quantile differences in sd units, and of the posterior CDF at the truth (``--rows``: e.g. the
spectra whose intervals miss the truth); emcee's integrated autocorrelation time is reported.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--rows", default="", help="comma-separated dataset rows instead of the first --n")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--walkers", type=int, default=32)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    import emcee

    from specvit.baselines.bayes import (BayesConfig, PERCENTILES, _Likelihood, bayes_forward, dataset_prior,
                                         posterior, weighted_quantiles)
    from specvit.data import fixed_noisy_flux, open_dataset

    cfg = BayesConfig()
    fwd = bayes_forward(cfg)
    names = list(fwd.label_names)
    with open_dataset(args.data) as ds:
        rows = np.array([int(r) for r in args.rows.split(",")]) if args.rows else np.arange(args.n)
        args.n = len(rows)
        flux = np.asarray(ds.flux[rows], dtype=np.float64)
        err = np.asarray(ds.error[rows], dtype=np.float64)
        truth = ds.labels(names)[rows]
        prior = dataset_prior(ds, fwd, cfg)
        snr = np.median(flux / err, axis=1)
    y = fixed_noisy_flux(flux, err, 1.0, rows, 42)
    t = time.perf_counter()
    res = posterior(fwd, y, err, prior=prior, config=cfg, rng=np.random.default_rng(3), keep_samples=True,
                    truth=truth)
    t_is = time.perf_counter() - t
    ex_cfg = BayesConfig(likelihood="exact")
    t = time.perf_counter()
    res_ex = posterior(fwd, y, err, prior=prior, config=ex_cfg, rng=np.random.default_rng(3))
    t_ex = time.perf_counter() - t
    out = {"n": args.n, "rows": rows.tolist(), "snr": snr.tolist(), "is_seconds": t_is, "is_exact_seconds": t_ex,
           "flags": res.flag.tolist(), "ess": res.ess.tolist(), "labels": {}, "pit_is": res.pit.tolist(), "pit_emcee": []}
    dm, sr, dq_lo, dq_hi, dm_ex, sr_ex, taus = [], [], [], [], [], [], []
    t = time.perf_counter()
    for i in range(args.n):
        like = _Likelihood(fwd, y[i:i + 1], 1.0 / err[i:i + 1] ** 2, res.mode[i:i + 1], "corrected")

        def logp(theta):
            lp = prior.logpdf(theta)
            ok = np.isfinite(lp)
            o = np.full(len(theta), -np.inf)
            if ok.any():
                o[ok] = lp[ok] + like(theta[None][:, ok], np.ones((1, ok.sum()), bool), prior.lower, prior.upper)[0]
            return o

        rng = np.random.default_rng(10 + i)
        p0 = res.mode[i] + 0.5 * res.sd[i] * rng.standard_normal((args.walkers, len(names)))
        p0 = np.clip(p0, prior.lower + 1e-6, prior.upper - 1e-6)
        s = emcee.EnsembleSampler(args.walkers, len(names), logp, vectorize=True)
        s.random_state = np.random.RandomState(20 + i).get_state()
        s.run_mcmc(p0, args.steps, progress=False)
        ch = s.get_chain(discard=args.steps // 3, flat=True)
        taus.append(s.get_autocorr_time(discard=args.steps // 3, quiet=True).tolist())
        m, sd = ch.mean(0), ch.std(0)
        out["pit_emcee"].append((ch < truth[i]).mean(0).tolist())  # posterior CDF at the truth, per label
        q = np.percentile(ch, [2.5, 97.5], axis=0)
        dm.append((res.mean[i] - m) / sd)
        sr.append(res.sd[i] / sd)
        dq_lo.append((res.quantiles[i, :, 0] - q[0]) / sd)
        dq_hi.append((res.quantiles[i, :, -1] - q[1]) / sd)
        dm_ex.append((res.mean[i] - res_ex.mean[i]) / res_ex.sd[i])
        sr_ex.append(res.sd[i] / res_ex.sd[i])
    out["emcee_seconds"] = time.perf_counter() - t
    out["emcee_tau"] = taus
    arrs = {"dmean_over_sd": dm, "sd_ratio": sr, "dq2.5_over_sd": dq_lo, "dq97.5_over_sd": dq_hi,
            "exact_dmean_over_sd": dm_ex, "exact_sd_ratio": sr_ex}
    for j, n in enumerate(names):
        out["labels"][n] = {}
        for k, v in arrs.items():
            a = np.asarray(v)[:, j]
            ref = 1.0 if "ratio" in k else 0.0
            out["labels"][n][k] = {"median_abs": float(np.median(np.abs(a - ref))), "max_abs": float(np.max(np.abs(a - ref)))}
    print(f"{args.n} spectra, SNR {snr.min():.1f}-{snr.max():.1f}; IS {t_is:.1f} s, IS exact {t_ex:.1f} s, "
          f"emcee {out['emcee_seconds']:.1f} s ({args.walkers} walkers x {args.steps} steps); flags {res.flag.tolist()}")
    dpit = np.abs(np.asarray(out["pit_emcee"]) - res.pit)
    print(f"posterior CDF at the truth, |IS - emcee|: median {np.median(dpit):.3f}, max {dpit.max():.3f}")
    print(f"emcee tau median {np.median(taus):.0f}, max {np.max(taus):.0f} steps (chain {args.steps})")
    print(f"{'label':6} {'|dmean|/sd med/max':>20} {'|sd ratio-1| med/max':>22} {'|dq2.5| med/max':>18} "
          f"{'|dq97.5| med/max':>18} | {'exact: |dmean|/sd':>18} {'|sd ratio-1|':>14}")
    for n in names:
        L = out["labels"][n]
        f = lambda k: f"{L[k]['median_abs']:.3f}/{L[k]['max_abs']:.3f}"
        print(f"{n:6} {f('dmean_over_sd'):>20} {f('sd_ratio'):>22} {f('dq2.5_over_sd'):>18} {f('dq97.5_over_sd'):>18} | "
              f"{f('exact_dmean_over_sd'):>18} {f('exact_sd_ratio'):>14}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
