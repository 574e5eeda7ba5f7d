"""Emulator throughput: spectra per second in batch, and exact Jacobians per second.

    python benchmarks/emulator.py [--weights FILE | --components K] [--batch 10000] [--threads 2]
                                  [--chunk-rows R] [--chunks 8 16 32 64 256] [--pause-pgid PGID] [--json]

Figures printed (all measured in this run, on this machine; each timing is the best of
``--repeat`` rounds, and the fast and reference paths alternate within a round so that both
see the same background load):

* ``flux_spectra_per_s``: ``model.flux(labels)`` -- numpy in, float64 numpy out, the public
  default (the fused float32 fast path, :meth:`SpectralEmulator.evaluate`);
* ``flux_f32_spectra_per_s``: the same with ``dtype=np.float32`` (what ``specvit simulate`` uses);
* ``flux_out_spectra_per_s`` / ``flux_f32_out_spectra_per_s``: ``model.evaluate(labels, out=buf)``
  into a preallocated array (no page faults for a fresh N x n_wave output);
* ``reference_path_spectra_per_s``: ``model.flux(labels, method="reference")`` -- the previous
  implementation (torch graph, float32 inside, float64 out), same weights and labels;
  ``speedup_vs_reference_path`` is the ratio; ``max_rel_diff_fast_vs_reference`` (relative to
  each spectrum's maximum) checks that both computed the same thing;
* ``reference_matmul_spectra_per_s``: the bare (N, K) x (K, n_wave) product + exp of the same
  shapes (torch, one call each, float32) -- the old "irreducible cost" yardstick;
* ``*_cpu_us_per_spectrum``: process CPU time per spectrum (user + system over all threads),
  less sensitive than wall time to other jobs on a shared machine;
* ``jacobian_spectra_per_s``: full d flux / d labels (n_wave x 5) with torch.func (vmap + jacfwd);
* ``--chunks``: fast-path throughput for several block sizes (``chunk_rows``);
* ``pysme_cpu_s_per_spectrum`` (if ``--spectra DIR`` is given): median CPU seconds of the
  finished PySME syntheses recorded in their files, and the speed-up of the emulator over it.

``--components K`` times a SYNTHETIC emulator with K normalised-flux components (random,
seeded weights; the shipped wavelength grid, 12 continuum components, 3 x 256 MLP), to size
future weight files; its spectra are meaningless. ``--pause-pgid`` stops a running background
job (e.g. the synthesis run) with SIGSTOP for the duration and resumes it with SIGCONT.
``--json``: the LAST line is one JSON object.
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


def _timer(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _best_of(fns: dict, repeat: int) -> dict:
    """{name: (best wall s, best cpu s)}; one warm-up each, then rounds that alternate the functions."""
    for fn in fns.values():
        fn()
    best = {k: [float("inf"), float("inf")] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            w, c = _timer(fn)
            best[k] = [min(best[k][0], w), min(best[k][1], c)]
    return {k: tuple(v) for k, v in best.items()}


def synthetic_emulator(base, k: int, seed: int = 0):
    """An emulator with ``base``'s grid and continuum but K random normalised-flux components (timing only)."""
    from specvit.spectra.emulator import EmulatorNet, SpectralEmulator

    g = torch.Generator().manual_seed(seed)
    kc = int(base._lnc_basis.shape[0])
    net = EmulatorNet(n_labels=len(base.label_names), n_out=k + kc, width=256, depth=3)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    basis = torch.randn((k, base.n_wave), generator=g) * (0.05 / np.sqrt(k))
    return SpectralEmulator(wave=base.wave, resolution=base.resolution, label_names=base.label_names,
                            bounds=base.bounds, train_lo=base._lo.numpy(), train_hi=base._hi.numpy(), net=net,
                            norm_mean=base._norm_mean.numpy(), norm_basis=basis.numpy(),
                            lncont_mean=base._lnc_mean.numpy(), lncont_basis=base._lnc_basis.numpy(),
                            lncont_baseline=base.lncont_baseline, meta={"version": f"synthetic-K{k}"})


def run(args) -> dict:
    from specvit.spectra.emulator import FAST_CHUNK_ROWS, load_emulator

    torch.set_num_threads(args.threads)
    model = load_emulator(args.weights)
    if args.components:
        model = synthetic_emulator(model, args.components, args.seed)
    rng = np.random.default_rng(args.seed)
    from specvit.labels import uniform_in_domain

    # uniform in the box and the physical domain (C/O < 1; docs/emulator.md)
    labels = uniform_in_domain(rng, args.batch, model.bounds, model.label_names, max_c_to_o=model.max_c_to_o)
    chunk = args.chunk_rows or FAST_CHUNK_ROWS
    n = args.batch

    k, kc = model.n_components, int(model._lnc_basis.shape[0])
    a = torch.randn(n, k, generator=torch.Generator().manual_seed(args.seed))
    b = torch.randn(n, kc, generator=torch.Generator().manual_seed(args.seed + 1)) * 1e-3
    B, D = model._norm_basis, model._lnc_basis

    def matmul_ref():
        with torch.no_grad():
            ((a @ B) * torch.exp(b @ D)).numpy()

    out64 = np.empty((n, model.n_wave))
    out32 = np.empty((n, model.n_wave), dtype=np.float32)
    t = _best_of({
        "flux": lambda: model.flux(labels),  # the public call, allocating its float64 output
        "flux_f32": lambda: model.flux(labels, dtype=np.float32),
        "flux_out": lambda: model.evaluate(labels, out=out64, chunk_rows=chunk),
        "flux_f32_out": lambda: model.evaluate(labels, dtype=np.float32, out=out32, chunk_rows=chunk),
        "reference_path": lambda: model.flux(labels, method="reference"),
        "reference_matmul": matmul_ref,
    }, args.repeat)
    m = min(n, 500)
    ref = model.flux(labels[:m], method="reference")
    rel = float(np.max(np.abs(model.flux(labels[:m]) - ref) / np.abs(ref).max(axis=1, keepdims=True)))

    nj = min(n, args.jac_batch)
    xj = torch.as_tensor(labels[:nj], dtype=torch.float32)

    def jac():
        f = lambda x: model.flux_torch(x[None])[0]  # noqa: E731
        return torch.func.vmap(torch.func.jacfwd(f))(xj)

    t_jac = _best_of({"j": jac}, max(1, args.repeat // 2))["j"][0]
    out = {
        "weights": str(args.weights or "shipped default") + (f" -> synthetic K={k}" if args.components else ""),
        "version": model.version, "n_wave": model.n_wave, "n_components": k, "n_cont_components": kc,
        "batch": n, "threads": args.threads, "chunk_rows": chunk,
        "flux_seconds": t["flux"][0], "flux_spectra_per_s": n / t["flux"][0],
        "flux_f32_spectra_per_s": n / t["flux_f32"][0],
        "flux_out_spectra_per_s": n / t["flux_out"][0], "flux_f32_out_spectra_per_s": n / t["flux_f32_out"][0],
        "reference_path_spectra_per_s": n / t["reference_path"][0],
        "speedup_vs_reference_path": t["reference_path"][0] / t["flux"][0],
        "speedup_f32_vs_reference_path": t["reference_path"][0] / t["flux_f32"][0],
        "max_rel_diff_fast_vs_reference": rel,
        "reference_matmul_seconds": t["reference_matmul"][0],
        "reference_matmul_spectra_per_s": n / t["reference_matmul"][0],
        "ratio_to_reference": t["flux"][0] / t["reference_matmul"][0],
        "flux_cpu_us_per_spectrum": t["flux"][1] / n * 1e6,
        "flux_f32_cpu_us_per_spectrum": t["flux_f32"][1] / n * 1e6,
        "reference_path_cpu_us_per_spectrum": t["reference_path"][1] / n * 1e6,
        "jacobian_batch": nj, "jacobian_seconds": t_jac, "jacobian_spectra_per_s": nj / t_jac,
        "target_spectra_per_s": 10000, "meets_target": bool(n / t["flux"][0] >= 10000),
        "meets_target_f32": bool(n / t["flux_f32"][0] >= 10000),
        "load_average_1min": os.getloadavg()[0],
    }
    if args.chunks:
        tc = _best_of({c: (lambda c=c: model.evaluate(labels, dtype=np.float32, out=out32, chunk_rows=c))
                       for c in args.chunks}, args.repeat)
        out["chunk_sweep_f32_spectra_per_s"] = {str(c): n / v[0] for c, v in tc.items()}
    if args.spectra:
        from specvit.spectra.synthesis.store import read_spectrum

        cpu = [read_spectrum(p)["meta"].get("cpu_seconds") for p in sorted(Path(args.spectra).glob("*.npz"))]
        cpu = [c for c in cpu if c]
        if cpu:
            med = statistics.median(cpu)
            out.update(pysme_n=len(cpu), pysme_cpu_s_per_spectrum=med,
                       speedup_vs_pysme_per_core=med * (n / t["flux"][0]) / args.threads)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, default=None, help="emulator .npz (default: shipped)")
    p.add_argument("--components", type=int, default=None,
                   help="time a synthetic emulator with K normalised-flux components instead (sizing only)")
    p.add_argument("--batch", type=int, default=10000, help="N spectra per call")
    p.add_argument("--jac-batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--chunk-rows", type=int, default=None, help="fast-path block size (default: FAST_CHUNK_ROWS)")
    p.add_argument("--chunks", type=int, nargs="*", default=None, help="also sweep these block sizes (float32 out)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spectra", type=Path, default=None, help="synthesised spectra dir (PySME cost reference)")
    p.add_argument("--pause-pgid", type=int, default=None, help="SIGSTOP this process group during the benchmark")
    p.add_argument("--json", action="store_true")
    p.add_argument("--malloc", default="system", choices=["system", "keep"],
                   help="process memory policy (default system: what library code gets; keep: what the specvit "
                        "command applies, specvit.malloc -- freed result arrays are reused, not faulted in again)")
    args = p.parse_args(argv)
    if args.malloc == "keep":
        from specvit.malloc import keep_freed_memory

        keep_freed_memory()
    if args.pause_pgid:
        os.killpg(args.pause_pgid, signal.SIGSTOP)
    try:
        out = run(args)
    finally:
        if args.pause_pgid:
            os.killpg(args.pause_pgid, signal.SIGCONT)
    out["paused_pgid"] = args.pause_pgid
    out["malloc"] = args.malloc
    for k, v in out.items():
        print(f"{k:34s} {v:.4g}" if isinstance(v, float) else f"{k:34s} {v}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
