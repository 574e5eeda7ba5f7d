"""Benchmark: full five-label posteriors per second (``specvit baseline bayes``; goal >= 10 spectra/s on 2 cores).

Spectra: ``--n-spectra`` draws of the ``specvit simulate`` default prior and observing conditions (i = 20.5-22.5,
the quickstart's test set), simulated in memory, with the fixed test noise (seed 42). Timed: ``posterior`` with
the default :class:`~specvit.baselines.bayes.BayesConfig` (mode search, adaptive importance sampling, summaries),
after a warm-up (model load, start-grid cache). Measured in the same run, on the same spectra, as the reference
for this (shared, loaded) machine: the template fit's default (``fit_lm``, 1 start, degree-2 flux correction,
observed-grid search + exact polish), whose ``benchmarks/templatefit.py`` number is known.

    PYTHONPATH=src python benchmarks/bayes.py [--n-spectra 128] [--repeat 2] [--threads 2] [--json]
        [--compare-src OTHER/src]

``--compare-src``: the same benchmark (same spectra, same settings) is first run in a subprocess with another
checkout's ``src`` on PYTHONPATH (e.g. the code before a change), and both CPU-time rates are printed: the
comparison that is meaningful on a loaded machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-spectra", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2, help="timed repetitions (alternating; best kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compare-src", default="", help="another checkout's src directory: run the same benchmark "
                    "with it first (subprocess) and print both CPU-time rates")
    args = ap.parse_args(argv)
    other = None
    if args.compare_src:
        import subprocess
        from pathlib import Path

        if not (Path(args.compare_src) / "specvit").is_dir():
            print(f"--compare-src {args.compare_src}: no specvit package there", file=sys.stderr)
            return 2
        cmd = [sys.executable, __file__, "--n-spectra", str(args.n_spectra), "--repeat", str(args.repeat),
               "--threads", str(args.threads), "--seed", str(args.seed), "--json"]
        env = {**os.environ, "PYTHONPATH": str(Path(args.compare_src).resolve())}
        other = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
        other["src"] = str(Path(args.compare_src).resolve())
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from specvit.baselines.bayes import BayesConfig, Prior, bayes_forward, posterior
    from specvit.baselines.templatefit import fit_lm
    from specvit.data.simulate import SimulateConfig
    from specvit.observe import draw_conditions
    from specvit.observe.noise import fixed_noisy_flux

    load_start = os.getloadavg()[0]
    cfg = BayesConfig()
    fwd = bayes_forward(cfg)
    sim = SimulateConfig()
    rng = np.random.default_rng(args.seed)
    prior = Prior.from_simulate_config({k: vars(getattr(sim.labels, k)) for k in fwd.label_names}, fwd.label_names)
    n = args.n_spectra
    truth = prior.sample(rng, n)
    obs = fwd.observe(truth, draw_conditions(sim.observing, n, rng), dtype=np.float64)
    noisy = fixed_noisy_flux(obs.flux, obs.error, 1.0, np.arange(n), 42)
    err = obs.error
    posterior(fwd, noisy[:4], err[:4], prior=prior, config=cfg)  # warm-up
    fit_lm(fwd, noisy[:4], err[:4], n_starts=1, grid_start=True, rng=rng)
    t_b, t_t = [], []
    for _ in range(args.repeat):
        c0 = time.process_time()
        t = time.perf_counter()
        res = posterior(fwd, noisy, err, prior=prior, config=cfg, rng=np.random.default_rng(1), truth=truth)
        t_b.append((time.perf_counter() - t, time.process_time() - c0))
        c0 = time.process_time()
        t = time.perf_counter()
        fit_lm(fwd, noisy, err, n_starts=1, grid_start=True, rng=np.random.default_rng(1))
        t_t.append((time.perf_counter() - t, time.process_time() - c0))
    b = min(t_b)
    tf = min(t_t)
    z = np.abs(res.mean - truth) / res.sd
    out = {"benchmark": "bayes", "n_spectra": n, "median_snr": float(np.median(obs.snr)),
           "seconds": round(b[0], 3), "cpu_seconds": round(b[1], 3), "spectra_per_s": round(n / b[0], 2),
           # CPU-time rate: what the run would reach with its threads' CPUs to itself (wall is distorted by load)
           "spectra_per_cpu_s": round(n / b[1], 2),
           "goal_spectra_per_s": 10.0, "median_ess": float(np.median(res.ess)),
           "mean_draws": float(res.n_draws.mean()), "flags": {str(k): int(v) for k, v in
                                                               zip(*np.unique(res.flag.astype(str), return_counts=True))},
           "median_abs_z": float(np.median(z)),
           "reference": "template fit default (fit_lm, 1 start, degree 2)", "ref_seconds": round(tf[0], 3),
           "ref_fits_per_s": round(n / tf[0], 2), "bayes_over_templatefit_time": round(b[0] / tf[0], 2),
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "load_average_1min": round(os.getloadavg()[0], 2),
           "load_average_1min_start": round(load_start, 2), "machine": platform.platform(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if other is not None:
        out["compare"] = other
        out["cpu_speedup_vs_compare"] = round(other["cpu_seconds"] / b[1], 3)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"bayes posterior, {n} spectra (median SNR {out['median_snr']:.1f}), torch threads {out['torch_threads']}, "
          f"load average {out['load_average_1min_start']} -> {out['load_average_1min']} on {out['cpu_count']} CPUs")
    print(f"  posterior: {b[0]:7.2f} s wall ({b[1]:.2f} s CPU)  {n / b[0]:6.2f} spectra/s "
          f"({out['spectra_per_cpu_s']:.2f} per CPU-s)  median ESS "
          f"{out['median_ess']:.0f}, mean draws {out['mean_draws']:.0f}, flags {out['flags']}")
    print(f"  reference, template fit: {tf[0]:7.2f} s wall ({tf[1]:.2f} s CPU)  {n / tf[0]:6.2f} fits/s  "
          f"-> the posterior costs {out['bayes_over_templatefit_time']:.1f}x the template fit")
    if other is not None:
        print(f"  compared with {other['src']} (same spectra, run first): {other['cpu_seconds']:.2f} s CPU = "
              f"{other['spectra_per_cpu_s']:.2f} spectra per CPU-s, mean draws {other['mean_draws']:.0f}, median ESS "
              f"{other['median_ess']:.0f}, flags {other['flags']} -> {out['cpu_speedup_vs_compare']:.2f}x less CPU now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
