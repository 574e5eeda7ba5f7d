"""Benchmark of `specvit simulate`: spectra per second end to end, peak memory, memory vs N.

End to end = sample labels and conditions -> spectral model -> PFS observation -> write the
pfsspec HDF5 file (float32), exactly the code path of `specvit simulate`.

Model: the package default (`specvit.spectra.default_model()`) when it exists; otherwise a
stated fallback: a RegularGrid made from the analytic test ToyModel on the BOSZ R=5000
wavelength grid (6900-9100 A), interpolated in the paper's `spline` mode.

Each size N runs in a fresh subprocess so that its peak RSS (ru_maxrss of the process, and
of its largest worker) is its own. Reference: pfsspec made the paper's 1M spectra in 304 h on
64 threads, i.e. 0.9 spectra/s (SPEC section 9).

NOTE: a background spectral-synthesis job may be running at nice 19 on this machine;
figures measured while it runs are lower bounds.

    python benchmarks/simulate.py [--n 4096 16384] [--workers 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PFSSPEC_SPECTRA_PER_S = 1_000_000 / (304 * 3600)  # = 0.91 (paper: 1M spectra in 304 h, 64 threads)
HERE = Path(__file__).resolve().parent


class _OtherModel(Exception):
    """--model names something other than the default."""


def fallback_grid(path: Path) -> str:
    """RegularGrid from the analytic ToyModel on the BOSZ R=5000 wavelength grid (stated fallback)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from toymodel import ToyModel

    from specvit.spectra.bosz import bosz_wave_grid
    from specvit.spectra.grid import RegularGrid

    nodes = {"T_eff": np.arange(3750.0, 6001.0, 250.0), "log_g": np.arange(1.0, 5.01, 0.5),
             "M_H": np.arange(-2.5, 0.76, 0.25), "a_M": np.arange(-0.25, 0.51, 0.25),
             "C_M": np.arange(-0.75, 0.51, 0.25)}
    w = bosz_wave_grid(5000)
    toy = ToyModel(n_lines=60)
    toy.wave = np.asarray(w[(w >= 6900) & (w <= 9100)])
    toy.resolution = 5000.0
    # the flux cube is separable enough for a benchmark: evaluate on a coarse sub-grid and fill by nearest
    sub = {k: v[:: max(1, len(v) // 3)] for k, v in nodes.items()}
    mesh = np.stack(np.meshgrid(*sub.values(), indexing="ij"), -1).reshape(-1, 5)
    sub_flux = np.concatenate([toy.flux(mesh[i:i + 64]) for i in range(0, len(mesh), 64)]).astype(np.float32)
    sub_flux = sub_flux.reshape(tuple(len(v) for v in sub.values()) + (len(toy.wave),))
    idx = [np.abs(v[:, None] - sub[k][None, :]).argmin(1) for k, v in nodes.items()]
    flux = sub_flux[np.ix_(*idx)]
    RegularGrid(axes=nodes, wave=toy.wave, flux=flux, resolution=5000.0).save(path)
    return str(path)


def child(n: int, workers: int, model: str, out: str, chunk: int) -> dict:
    from specvit.data.simulate import SimulateConfig, simulate

    cfg = SimulateConfig(model=model, chunk_size=chunk)
    t0 = time.perf_counter()
    simulate(cfg, out, n=n, seed=1, workers=workers, progress=False, overwrite=True, restart=True)
    dt = time.perf_counter() - t0
    return {"n": n, "seconds": dt, "spectra_per_s": n / dt,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "file_mb": os.path.getsize(out) / 2**20}


def stages(model: str, n: int = 1024) -> dict:
    """Single-process time per stage for one chunk of n (after set-up)."""
    from specvit.data.pfsspec import DatasetWriter
    from specvit.data.simulate import ChunkSimulator, SimulateConfig
    from specvit.observe import draw_conditions

    t = time.perf_counter()
    sim = ChunkSimulator(SimulateConfig(model=model))
    setup = time.perf_counter() - t
    rng = np.random.default_rng(0)
    sim.model_flux(rng, 64)
    cond = draw_conditions(sim.cfg.observing, n, rng)
    t = time.perf_counter()
    lab, flux, ip = sim.model_flux(rng, n)
    t_model = time.perf_counter() - t
    t = time.perf_counter()
    obs = sim.observer.observe(flux.astype(np.float32), cond)  # as ChunkSimulator.run does for float32 output
    t_obs = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        import pandas as pd

        t = time.perf_counter()
        with DatasetWriter(Path(d) / "w.h5", wave=obs.wave, n_rows=n) as w:
            w.write_rows(0, flux=obs.flux.astype(np.float32), error=obs.error.astype(np.float32),
                         params=pd.DataFrame({"id": np.arange(n), "snr": obs.snr}))
        t_write = time.perf_counter() - t
    return {"setup_s": setup, "model_per_1k_s": t_model * 1000 / n, "observe_per_1k_s": t_obs * 1000 / n,
            "write_per_1k_s": t_write * 1000 / n, "model_n_wave": int(len(sim.model.wave))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[4096, 16384], help="sizes to run (memory flat in N?)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--model", default=None, help="grid file or 'default' (default: the default model if available)")
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("--_child", nargs=4, metavar=("N", "WORKERS", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        n, w, model, out = args._child
        print(json.dumps(child(int(n), int(w), model, out, args.chunk)))
        return 0

    try:
        if args.model not in (None, "default"):
            raise _OtherModel(args.model)
        from specvit.spectra import default_model

        dm = default_model()
        model, model_name = "default", f"specvit.spectra.default_model() = {type(dm).__name__}"
        del dm
    except Exception as e:  # not available yet in this checkout, or another model asked for
        if not isinstance(e, _OtherModel):
            print(f"default model unavailable: {type(e).__name__}: {e}")
        model = None
    with tempfile.TemporaryDirectory() as d:
        if model is None and args.model not in (None, "default"):
            model, model_name = args.model, f"grid file {args.model}"
        elif model is None:
            model = fallback_grid(Path(d) / "toygrid.h5")
            model_name = ("FALLBACK (default model not available): RegularGrid from the analytic test ToyModel "
                          "on the BOSZ R=5000 wave grid 6900-9100 A, 5-D BOSZ nodes, spline interpolation")
        print(f"model: {model_name}")
        print("note: a background synthesis job (nice 19) may be running; these figures are then lower bounds")
        st = stages(model)
        print(f"stages (1 process, per 1000 spectra): model {st['model_per_1k_s']:.3f} s, observe "
              f"{st['observe_per_1k_s']:.3f} s, write {st['write_per_1k_s']:.3f} s; set-up {st['setup_s']:.1f} s; "
              f"model samples per spectrum {st['model_n_wave']}")
        runs = []
        for n in args.n:
            out = str(Path(d) / f"bench_{n}.h5")
            cmd = [sys.executable, __file__, "--chunk", str(args.chunk), "--_child", str(n), str(args.workers),
                   model, out]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                return 1
            r = json.loads(res.stdout.strip().splitlines()[-1])
            runs.append(r)
            print(f"N={n:>7} workers={args.workers}: {r['spectra_per_s']:8.1f} spectra/s "
                  f"({r['seconds']:.1f} s incl. set-up), peak RSS main {r['peak_rss_mb']:.0f} MB, "
                  f"largest worker {r['peak_rss_worker_mb']:.0f} MB, file {r['file_mb']:.0f} MB")
    best = runs[-1]
    steady = None
    if len(runs) > 1 and runs[-1]["seconds"] > runs[0]["seconds"]:
        steady = (runs[-1]["n"] - runs[0]["n"]) / (runs[-1]["seconds"] - runs[0]["seconds"])
        print(f"steady state (set-up excluded: extra spectra / extra seconds between the two N): {steady:.1f} spectra/s")
    ratio = best["spectra_per_s"] / PFSSPEC_SPECTRA_PER_S
    mem_ratio = runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"] if len(runs) > 1 else 1.0
    print(f"speed-up vs pfsspec (0.91 spectra/s on 64 threads): x{ratio:,.0f}; goal 5000 spectra/s on 2 cores: "
          f"{'met' if best['spectra_per_s'] >= 5000 else 'NOT met'}")
    print(f"memory: peak RSS at N={runs[-1]['n']} / N={runs[0]['n']} = {mem_ratio:.2f} (flat = 1)")
    summary = {"spectra_per_s": best["spectra_per_s"], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
               "peak_rss_worker_mb": max(r["peak_rss_worker_mb"] for r in runs), "model": model_name,
               "workers": args.workers, "runs": runs, "stages": st, "ratio_to_pfsspec": ratio,
               "rss_ratio_largest_over_smallest_n": mem_ratio, "steady_spectra_per_s": steady, "cpu_count": os.cpu_count(),
               "background_job_note": "nice-19 synthesis job may have been running"}
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
