"""Benchmark of the PFS MR observation (``PFSObserver.observe``) alone: spectra per second.

Model flux: the package default spectral model if importable (its own wavelength grid),
else the Planck-continuum reference model (7000-8950 A at 0.2 A, 9751 samples; stated in
the output). Labels and observing conditions are drawn with the SPEC defaults; the model
flux is computed once, outside the timing. Reported: spectra/s (wall and process CPU)
for float32 and float64 input, and the ratio to a reference measured in the same run:
the same ``observe`` called one spectrum at a time (the unvectorised way).

NOTE: other jobs may share this machine; wall-clock figures are then lower bounds.

    python benchmarks/observe.py [--n 4096] [--repeat 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def spectral_model():
    try:
        from specvit.spectra import load_spectral_model

        return load_spectral_model("default"), "default"
    except Exception as e:  # noqa: BLE001 - any failure: use the stated fallback
        from specvit.observe.reference import PlanckModel

        return PlanckModel(), f"PlanckModel fallback ({type(e).__name__}: {e})"


def timed(fn, repeat):
    fn()  # warm up
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - w0) / repeat, (time.process_time() - c0) / repeat


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n-loop", type=int, default=100, help="spectra for the one-at-a-time reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from specvit.observe import ObservingConfig, PFSObserver, draw_conditions
    from specvit.observe.calibrate import calibration_labels

    rng = np.random.default_rng(args.seed)
    model, model_name = spectral_model()
    t0 = time.perf_counter()
    obs = PFSObserver.for_model(model)
    t_init = time.perf_counter() - t0
    labels = calibration_labels(model, args.n, rng)
    flux64 = np.concatenate([np.asarray(model.flux(labels[i:i + 512]), dtype=np.float64)
                             for i in range(0, args.n, 512)])
    flux32 = flux64.astype(np.float32)
    cond = draw_conditions(ObservingConfig(), args.n, rng)
    out = {"model": model_name, "n": args.n, "n_model_wave": int(obs.n_model), "init_s": round(t_init, 3),
           "nnz_per_pixel": round(obs.resample_matrix.nnz / len(obs.wave), 1)}
    for name, f in (("float32", flux32), ("float64", flux64)):
        wall, cpu = timed(lambda f=f: obs.observe(f, cond), args.repeat)
        out[f"spectra_per_s_{name}"] = round(args.n / wall, 1)
        out[f"spectra_per_cpu_s_{name}"] = round(args.n / cpu, 1)
    k = min(args.n_loop, args.n)

    def loop():
        for i in range(k):
            obs.observe(flux32[i:i + 1], cond.iloc[i:i + 1])

    wall, _ = timed(loop, 1)
    out["reference_one_at_a_time_spectra_per_s"] = round(k / wall, 1)
    out["speedup_vs_one_at_a_time"] = round(out["spectra_per_s_float32"] / out["reference_one_at_a_time_spectra_per_s"], 1)
    out["spectra_per_s"] = out["spectra_per_s_float32"]
    out["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpu, load {os.getloadavg()[0]:.1f}"
    out["date"] = time.strftime("%Y-%m-%d %H:%M")
    if not args.json:
        for key, v in out.items():
            print(f"{key:>40}: {v}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
