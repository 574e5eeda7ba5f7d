"""Emulator throughput: spectra per second in batch, and exact Jacobians per second.

    python benchmarks/emulator.py [--weights FILE] [--batch 10000] [--threads 2] [--pause-pgid PGID] [--json]

Figures printed (all measured in this run, on this machine):

* ``flux_spectra_per_s``: ``model.flux(labels)`` (numpy in/out, float32 inside) for one batch;
* ``reference_matmul_spectra_per_s``: the bare (N, K) x (K, n_wave) product + exp of the same
  shapes -- the irreducible cost of the output layer; ``ratio_to_reference`` says how close
  the whole emulator is to it;
* ``jacobian_spectra_per_s``: full d flux / d labels (n_wave x 5) with torch.func (vmap + jacfwd);
* ``pysme_cpu_s_per_spectrum`` (if ``--spectra DIR`` is given): median CPU seconds of the
  finished PySME syntheses recorded in their files (measured when they were made), and the
  speed-up of the emulator over it.

``--pause-pgid`` stops a running background job (e.g. the synthesis run) with SIGSTOP for the
duration and resumes it with SIGCONT. ``--json``: the LAST line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(args) -> dict:
    from specvit.spectra.emulator import load_emulator

    torch.set_num_threads(args.threads)
    model = load_emulator(args.weights)
    rng = np.random.default_rng(args.seed)
    lo = np.array([model.bounds[n][0] for n in model.label_names])
    hi = np.array([model.bounds[n][1] for n in model.label_names])
    labels = lo + rng.random((args.batch, len(lo))) * (hi - lo)
    t_flux = _time(lambda: model.flux(labels), args.repeat)

    k, kc = model.n_components, int(model._lnc_basis.shape[0])
    a = torch.randn(args.batch, k)
    b = torch.randn(args.batch, kc) * 1e-3
    B, D = model._norm_basis, model._lnc_basis

    def ref():
        with torch.no_grad():
            ((a @ B) * torch.exp(b @ D)).numpy()

    t_ref = _time(ref, args.repeat)

    nj = min(args.batch, args.jac_batch)
    xj = torch.as_tensor(labels[:nj], dtype=torch.float32)

    def jac():
        f = lambda x: model.flux_torch(x[None])[0]  # noqa: E731
        return torch.func.vmap(torch.func.jacfwd(f))(xj)

    t_jac = _time(jac, max(1, args.repeat // 2))
    out = {
        "weights": str(args.weights or "shipped default"), "version": model.version, "n_wave": model.n_wave,
        "n_components": k, "batch": args.batch, "threads": args.threads,
        "flux_seconds": t_flux, "flux_spectra_per_s": args.batch / t_flux,
        "reference_matmul_seconds": t_ref, "reference_matmul_spectra_per_s": args.batch / t_ref,
        "ratio_to_reference": t_flux / t_ref,
        "jacobian_batch": nj, "jacobian_seconds": t_jac, "jacobian_spectra_per_s": nj / t_jac,
        "target_spectra_per_s": 10000, "meets_target": bool(args.batch / t_flux >= 10000),
    }
    if args.spectra:
        from specvit.spectra.synthesis.store import read_spectrum

        cpu = [read_spectrum(p)["meta"].get("cpu_seconds") for p in sorted(Path(args.spectra).glob("*.npz"))]
        cpu = [c for c in cpu if c]
        if cpu:
            med = statistics.median(cpu)
            out.update(pysme_n=len(cpu), pysme_cpu_s_per_spectrum=med,
                       speedup_vs_pysme_per_core=med * (args.batch / t_flux) / args.threads)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, default=None, help="emulator .npz (default: shipped)")
    p.add_argument("--batch", type=int, default=10000)
    p.add_argument("--jac-batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spectra", type=Path, default=None, help="synthesised spectra dir (PySME cost reference)")
    p.add_argument("--pause-pgid", type=int, default=None, help="SIGSTOP this process group during the benchmark")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.pause_pgid:
        os.killpg(args.pause_pgid, signal.SIGSTOP)
    try:
        out = run(args)
    finally:
        if args.pause_pgid:
            os.killpg(args.pause_pgid, signal.SIGCONT)
    out["paused_pgid"] = args.pause_pgid
    for k, v in out.items():
        print(f"{k:34s} {v:.4g}" if isinstance(v, float) else f"{k:34s} {v}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
