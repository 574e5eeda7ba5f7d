"""Benchmark: the 5D Fisher ceiling for 10,000 points at 6 magnitudes (target < 60 s on this machine).

Times the whole ceiling (exact Jacobians through the spectral model and the PFS
observer, the observer's errors at 6 magnitudes, Fisher matrices, Schur complement,
CRLB and van Trees summaries) on the default fast route, and, measured in the same run
on a subset of the same points: (1) the session-1 route (``reference=True``: forward-mode
autograd through the emulator, float64 sparse product, errors from ``PFSObserver.observe``,
numpy medians) with the largest relative CRLB difference between the two; (2) the
paper's route, central finite differences (2 extra spectra per label), through the
fast Fisher code.

Model: ``specvit.spectra.default_model()`` (the shipped emulator). If its weights are
not installed, an emulator of the SAME architecture and size with random weights is
used instead (the cost does not depend on the weight values); the output says which.

    python benchmarks/fisher.py [--n-points 10000] [--json]

With ``--json`` the last line is one JSON object with ``points_per_s`` and ``seconds``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch

MAGS = [18.0, 20.0, 21.5, 22.0, 22.5, 23.0]


def random_emulator(seed: int = 0, n_components: int = 192, n_cont: int = 12):
    """An emulator with the shipped architecture (MLP 3 x 256 -> PCA, PySME output grid) and random weights."""
    from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES
    from specvit.spectra.emulator import EmulatorNet, SpectralEmulator
    from specvit.spectra.synthesis.backend import output_wave

    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    wave = output_wave()
    net = EmulatorNet(n_labels=5, n_out=n_components + n_cont)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g) / np.sqrt(max(p.shape[-1], 1)))
    lo = np.array([DEFAULT_LABEL_BOUNDS[n][0] for n in LABEL_NAMES])
    hi = np.array([DEFAULT_LABEL_BOUNDS[n][1] for n in LABEL_NAMES])
    basis = rng.normal(0, 0.002, (n_components, len(wave)))
    lnc_mean = np.log(1e20 / (wave**5 * np.expm1(1.438777e8 / (wave * 5000.0))))
    return SpectralEmulator(wave=wave, resolution=10000.0, label_names=LABEL_NAMES,
                            bounds={n: (float(a), float(b)) for n, a, b in zip(LABEL_NAMES, lo, hi)},
                            train_lo=lo, train_hi=hi, net=net, norm_mean=np.full(len(wave), 0.8), norm_basis=basis,
                            lncont_mean=lnc_mean, lncont_basis=rng.normal(0, 0.01, (n_cont, len(wave))),
                            meta={"version": "random-weights benchmark surrogate"})


def get_model():
    try:
        from specvit.spectra import default_model

        return default_model(), "default_model()"
    except Exception as e:  # weights not installed yet
        print(f"default_model() unavailable ({type(e).__name__}: {e}); using a random-weight emulator of the "
              "same architecture", file=sys.stderr)
        return random_emulator(), "random-weight emulator (same architecture as the shipped one)"


def _crlb(iset, nuisance="5d"):
    from specvit.fisher.information import crlb_bound, resolve_free

    t, free = resolve_free(iset.label_names, "log_g", nuisance)
    return crlb_bound(iset.info.reshape(-1, *iset.info.shape[2:]), target=t, free=free, label_var=1.0).crlb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-points", type=int, default=10_000)
    ap.add_argument("--n-ref", type=int, default=500,
                    help="points for the two references (session-1 route and central differences)")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch/BLAS threads (0 = torch default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*points dropped.*")  # counted in the output instead

    from specvit.fisher.ceiling import ceiling_by_magnitude, compute_information
    from specvit.observe.forward import default_forward
    from specvit.fisher.points import make_points

    model, model_name = get_model()
    t = time.perf_counter()
    fwd, _ = default_forward(model)
    setup_s = time.perf_counter() - t
    free = ["T_eff", "log_g", "M_H", "a_M", "C_M"]
    pts = make_points(fwd, "uniform", free=free, n_points=args.n_points, rng=np.random.default_rng(args.seed))
    compute_information(fwd, pts[:8], MAGS)  # warm-up (imports, cached sparse matrices, emulator check)
    compute_information(fwd, pts[:8], MAGS, reference=True)

    t, c = time.perf_counter(), time.process_time()
    iset = compute_information(fwd, pts, MAGS, chunk_size=args.chunk_size)
    table = ceiling_by_magnitude(iset, label="log_g", nuisance="5d", bound="both")
    seconds, cpu_s = time.perf_counter() - t, time.process_time() - c

    n_ref = min(args.n_ref, args.n_points)
    t, c = time.perf_counter(), time.process_time()
    ref = compute_information(fwd, pts[:n_ref], MAGS, chunk_size=256, reference=True)
    ceiling_by_magnitude(ref, label="log_g", nuisance="5d", bound="both")
    ref_s, ref_cpu = time.perf_counter() - t, time.process_time() - c
    fast_sub = compute_information(fwd, pts[:n_ref], MAGS, chunk_size=args.chunk_size)
    diff = {nu: float(np.max(np.abs(_crlb(fast_sub, nu) / _crlb(ref, nu) - 1))) for nu in ("3d", "5d")}

    t = time.perf_counter()
    fd = compute_information(fwd, pts[:n_ref], MAGS, method="fd", steps=[25.0, 0.05, 0.025, 0.025, 0.025],
                             chunk_size=args.chunk_size)
    ceiling_by_magnitude(fd, label="log_g", nuisance="5d", bound="both")
    fd_s = time.perf_counter() - t

    pps, ref_pps, fd_pps = args.n_points / seconds, n_ref / ref_s, n_ref / fd_s
    result = {
        "benchmark": "fisher_5d_ceiling", "model": model_name, "n_points": args.n_points, "n_mags": len(MAGS),
        "n_dropped_invalid": iset.n_dropped,
        "seconds": round(seconds, 3), "cpu_seconds": round(cpu_s, 3), "points_per_s": round(pps, 1),
        "target_seconds": 60.0, "meets_target": bool(seconds < 60.0 * args.n_points / 10_000),
        "reference_points_per_s": round(ref_pps, 1), "reference_n_points": n_ref,
        "speedup_vs_reference": round(pps / ref_pps, 2),
        "speedup_vs_reference_cpu": round((ref_cpu / n_ref) / (cpu_s / args.n_points), 2),
        "max_rel_crlb_diff_vs_reference": diff,
        "fd_reference_points_per_s": round(fd_pps, 1), "fd_reference_n_points": n_ref,
        "speedup_vs_fd": round(pps / fd_pps, 2), "observer_setup_s": round(setup_s, 2),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.platform(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "r2max_median_5d": {k: round(v["r2max_median"], 4) for k, v in table.items()},
    }
    print(f"5D ceiling, {args.n_points} points x {len(MAGS)} magnitudes, model = {model_name}, "
          f"{torch.get_num_threads()} torch thread(s), load average {os.getloadavg()[0]:.1f}")
    print(f"  fast route (default)        : {seconds:8.2f} s  {pps:9.1f} points/s  (CPU {cpu_s:.1f} s; "
          f"target < 60 s for 10,000)")
    print(f"  session-1 route (reference) : {ref_s:8.2f} s  {ref_pps:9.1f} points/s  on {n_ref} points  "
          f"-> speed-up {pps / ref_pps:.2f}x (CPU time {result['speedup_vs_reference_cpu']:.2f}x)")
    print(f"    max |CRLB_fast / CRLB_ref - 1| (log g, all points x mags): 3D {diff['3d']:.1e}, 5D {diff['5d']:.1e}")
    print(f"  central differences (fast)  : {fd_s:8.2f} s  {fd_pps:9.1f} points/s  on {n_ref} points")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
