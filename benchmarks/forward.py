"""Benchmark of the torch forward model: labels + conditions → noisy observed spectra, spectra per second.

Times ``ForwardModel.observe_torch`` (emulator → Doppler/reddening → HSC i magnitude → LSF +
resampling → electrons, error, SNR → median normalisation) plus one noise draw
(``ForwardModel.sample``), in float32 on this machine's CPU threads, and, as the reference
measured in the same run, the numpy route ``ForwardModel.observe`` (the emulator's fused float32
path + ``PFSObserver.observe``, what ``specvit simulate`` runs per worker) plus a numpy noise draw.
Labels uniform in the model's box; conditions drawn with the SPEC defaults (``ObservingConfig()``).
Conditions and labels are drawn outside the timing.

NOTE: other jobs may share this machine; wall-clock figures are then lower bounds.

    python benchmarks/forward.py [--n 2048] [--repeat 3] [--threads 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import numpy as np

from observe import timed  # benchmarks/observe.py: warm-up, then mean wall and process-CPU seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048, help="spectra per batch")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from specvit.observe import ObservingConfig, draw_conditions
    from specvit.observe.forward import ForwardModel
    from specvit.spectra import load_spectral_model

    torch.set_num_threads(args.threads)
    fwd = ForwardModel.for_model(load_spectral_model("default"))
    rng = np.random.default_rng(args.seed)
    from specvit.labels import uniform_in_domain

    # uniform in the box and the physical domain (C/O < 1; docs/emulator.md)
    lab = uniform_in_domain(rng, args.n, fwd.bounds, fwd.label_names, max_c_to_o=fwd.model.max_c_to_o)
    cond = draw_conditions(ObservingConfig(), args.n, rng)
    x32 = torch.as_tensor(lab, dtype=torch.float32)
    gen = torch.Generator().manual_seed(args.seed)

    def torch_route():
        obs = fwd.observe_torch(x32, cond)
        return fwd.sample(obs, 1.0, gen)

    def numpy_route():
        obs = fwd.observe(lab, cond, dtype=np.float32)
        return fwd.sample(obs, 1.0, rng)

    res = {"n": args.n, "threads": args.threads, "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "processor": platform.processor()}
    for name, fn in (("torch_float32", torch_route), ("numpy_float32", numpy_route)):
        wall, cpu = timed(fn, args.repeat)
        res[name] = {"spectra_per_s_wall": args.n / wall, "spectra_per_s_cpu": args.n / cpu, "s_per_batch": wall}
    res["ratio_torch_over_numpy"] = res["torch_float32"]["spectra_per_s_wall"] / res["numpy_float32"]["spectra_per_s_wall"]
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for name in ("torch_float32", "numpy_float32"):
            r = res[name]
            print(f"{name}: {r['spectra_per_s_wall']:,.0f} spectra/s wall ({r['spectra_per_s_cpu']:,.0f}/s per CPU-s), "
                  f"batch {args.n}")
        print(f"ratio torch / numpy: {res['ratio_torch_over_numpy']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
