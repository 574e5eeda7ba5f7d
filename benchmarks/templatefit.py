"""Benchmark: template fits per second on this machine (goal >= 100 fits/s with the emulator).

Spectra: noiseless spectra of the spectral model observed with the PFS MR arm
under the calibration setup at i = 21 (SNR ~ 10), plus one fixed noise draw.
Timed: the Levenberg-Marquardt fit (5 labels free, Legendre degree-2 flux
correction, first start from a coarse chi^2 grid (630 nodes, cached after the
warm-up), ``--n-starts`` starts, ``--max-iter`` iterations), and as a reference
measured in the same run the paper's grid chi^2 fit (Teff, log g, [M/H] on the
BOSZ spacing, linear flux correction, parabolic refinement) on the same spectra.

Model: ``specvit.spectra.default_model()``; if its weights are not installed, an
emulator of the same architecture with random weights (same cost; the recovered
labels are then meaningless, the timing is not). The output says which.

    python benchmarks/templatefit.py [--n-spectra 256] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-spectra", type=int, default=256)
    ap.add_argument("--n-starts", type=int, default=1)
    ap.add_argument("--max-iter", type=int, default=8)
    ap.add_argument("--mag", type=float, default=21.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch/BLAS threads (0 = torch default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from fisher import get_model  # benchmarks/fisher.py: default model or same-architecture surrogate

    from specvit.baselines.templatefit import fit_grid, fit_lm
    from specvit.fisher.ceiling import default_forward, magnitude_errors, make_points

    model, model_name = get_model()
    fwd, obs = default_forward(model)
    rng = np.random.default_rng(args.seed)
    free = ["T_eff", "log_g", "M_H", "a_M", "C_M"]
    truth = make_points(fwd, "uniform", free=free, n_points=args.n_spectra, rng=rng)
    # keep the grid-fit reference fair: a_M = C_M = 0 are its fixed values
    truth[:, 3:] = 0.0
    mu, err = magnitude_errors(obs, fwd.model_flux(truth), [args.mag])
    err = err[0]
    noisy = mu + err * rng.standard_normal(mu.shape)
    fit_lm(fwd, noisy[:4], err[:4], n_starts=1, max_iter=2, rng=rng, grid_start=True)  # warm-up + start-grid cache

    t = time.perf_counter()
    res = fit_lm(fwd, noisy, err, free=free, degree=2, n_starts=args.n_starts, max_iter=args.max_iter, rng=rng,
                 grid_start=True)
    lm_s = time.perf_counter() - t
    t = time.perf_counter()
    grid = fit_grid(fwd, noisy, err, free=["T_eff", "log_g", "M_H"], degree=1)
    grid_s = time.perf_counter() - t

    n = args.n_spectra
    dlogg_lm = np.abs(res.labels[:, 1] - truth[:, 1])
    dlogg_grid = np.abs(grid.labels[:, 1] - truth[:, 1])
    result = {
        "benchmark": "templatefit", "model": model_name, "n_spectra": n, "mag": args.mag,
        "median_snr": float(np.median(np.median(mu / err, axis=1))), "n_starts": args.n_starts,
        "max_iter": args.max_iter, "seconds": round(lm_s, 3), "fits_per_s": round(n / lm_s, 2),
        "goal_fits_per_s": 100.0, "grid_seconds": round(grid_s, 3), "grid_fits_per_s": round(n / grid_s, 2),
        "ratio_lm_vs_grid": round((n / lm_s) / (n / grid_s), 3),
        "lm_median_abs_dlogg": round(float(np.median(dlogg_lm)), 4),
        "grid_median_abs_dlogg": round(float(np.median(dlogg_grid)), 4),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    print(f"template fit, {n} spectra at i = {args.mag} (median SNR {result['median_snr']:.1f}), model = {model_name}")
    print(f"  LM ({args.n_starts} starts, <= {args.max_iter} it.) : {lm_s:7.2f} s  {n / lm_s:8.2f} fits/s  "
          f"median |d log g| = {result['lm_median_abs_dlogg']:.3f}")
    print(f"  grid chi2 (paper)          : {grid_s:7.2f} s  {n / grid_s:8.2f} fits/s  "
          f"median |d log g| = {result['grid_median_abs_dlogg']:.3f}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
