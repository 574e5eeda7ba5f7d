"""Peak memory of `specvit train` streaming a dataset file, against the file size and an in-memory load.

For each size (GB of float32 flux + error in one pfsspec-layout file), the script writes a
dataset of random spectra (4096 pixels, five labels; written in blocks, so writing it needs
little memory), then in a FRESH subprocess per measurement:

* ``train``: one epoch of ``specvit train`` (the CLI path: model ``mlp_small`` by default,
  batch 256, noise on, validation off, no TensorBoard), reading the file through the
  streaming loader with ``data.buffer_rows`` spectra in the shuffle buffer;
* ``load`` (the same-run reference): what a loader that reads the whole file needs --
  ``h5py`` ``flux[:]`` and ``error[:]`` into memory, as the paper's code did.

Each subprocess reports its own peak RSS (``ru_maxrss``). Streaming is bounded if the
training peak stays flat as the file grows and below the file size; the reference grows
with the file. With ``--limit-mb M`` the training subprocesses also run under
``RLIMIT_DATA`` = M MB (heap + anonymous mappings: an in-memory load of a larger file
fails there; the limit does not count file-backed or shared pages).

    python benchmarks/train_memory.py [--gb 0.25 1.0] [--model mlp_small] [--buffer-rows 1024]
        [--limit-mb 1500] [--keep DIR] [--json]

Note: a background spectral-synthesis job may run at nice 19 on this machine; it does not
change memory figures (each is the peak RSS of its own process), only the wall times.
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

N_PIXELS = 4096


def write_random_dataset(path: Path, gb: float, *, seed: int = 0, block: int = 2048) -> int:
    """float32 flux + error of ``gb`` GB in total (4096 pixels), labels uniform in the default box."""
    import pandas as pd

    from specvit.data.pfsspec import DatasetWriter
    from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES

    n = max(block, int(gb * 2**30 / (2 * 4 * N_PIXELS)) // block * block)
    rng = np.random.default_rng(seed)
    wave = 7100.0 + (np.arange(N_PIXELS) + 0.5) * 0.42724609375
    with DatasetWriter(path, wave=wave, n_rows=n, chunk_rows=256) as w:
        for start in range(0, n, block):
            lab = {k: rng.uniform(*DEFAULT_LABEL_BOUNDS[k], block) for k in LABEL_NAMES}
            flux = (1.0 + 0.01 * rng.standard_normal((block, N_PIXELS))).astype(np.float32)
            err = np.full((block, N_PIXELS), 0.02, dtype=np.float32)
            params = pd.DataFrame({"id": np.arange(start, start + block), **lab, "snr": np.full(block, 50.0)})
            w.write_rows(start, flux=flux, error=err, params=params)
    return n


def child(kind: str, path: str, model: str, buffer_rows: int, limit_mb: int | None, out_dir: str) -> dict:
    if limit_mb:
        lim = limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (lim, lim))
    t0 = time.perf_counter()
    status = "ok"
    try:
        if kind == "load":
            import h5py

            with h5py.File(path, "r") as f:
                flux = f["dataset/arrays/flux/value"][:]
                err = f["dataset/arrays/error/value"][:]
            _ = float(flux[-1, -1] + err[-1, -1])
        else:
            from specvit.cli import main
            from specvit.malloc import apply_default_policy

            apply_default_policy()  # what the `specvit` command does at start-up (SPECVIT_MALLOC=system: off)

            cfg = Path(out_dir).with_suffix(".yaml")
            cfg.parent.mkdir(parents=True, exist_ok=True)
            cfg.write_text(json.dumps({  # JSON is YAML
                "data": {"train": [path], "labels": ["log_g"], "buffer_rows": buffer_rows},
                "model": {"name": model},
                "run": {"epochs": 1, "batch_size": 256, "progress": False, "tensorboard": False,
                        "out_dir": out_dir, "resume": "never", "num_threads": 2}}))
            rc = main(["train", "--config", str(cfg)])
            status = "ok" if rc == 0 else f"exit {rc}"
    except MemoryError as e:
        status = f"MemoryError: {e}"
    return {"kind": kind, "status": status, "seconds": time.perf_counter() - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(kind, path, args, out_dir, limit_mb=None) -> dict:
    cmd = [sys.executable, __file__, "--_child", kind, str(path), args.model, str(args.buffer_rows),
           str(limit_mb or 0), str(out_dir)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        return {"kind": kind, "status": f"crashed (exit {res.returncode}): {res.stderr.strip()[-300:]}",
                "peak_rss_mb": None, "seconds": None}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, nargs="+", default=[0.25, 1.0], help="file sizes, GB of flux + error")
    ap.add_argument("--model", default="mlp_small", help="registered model (default mlp_small: memory, not speed)")
    ap.add_argument("--buffer-rows", type=int, default=1024, help="data.buffer_rows of the training run")
    ap.add_argument("--limit-mb", type=int, default=None,
                    help="also run training and the in-memory load under RLIMIT_DATA of this many MB")
    ap.add_argument("--keep", type=Path, default=None, help="write the datasets here and keep them")
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("--_child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        kind, path, model, buf, lim, out = args._child
        print(json.dumps(child(kind, path, model, int(buf), int(lim) or None, out)))
        return 0

    print(f"model {args.model}, buffer_rows {args.buffer_rows}, {N_PIXELS} pixels, float32; "
          f"cpu_count {os.cpu_count()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        for gb in sorted(args.gb):
            path = base / f"train_{gb:g}gb.h5"
            t = time.perf_counter()
            n = write_random_dataset(path, gb) if not path.exists() else None
            size_mb = path.stat().st_size / 2**20
            if n is None:
                import h5py

                with h5py.File(path, "r") as f:
                    n = f["dataset/arrays/flux/value"].shape[0]
            print(f"dataset {path.name}: {n} spectra, {size_mb:.0f} MB (written in {time.perf_counter() - t:.0f} s)")
            r = {"gb": gb, "n_spectra": n, "file_mb": size_mb}
            r["train"] = run_child("train", path, args, Path(tmp) / f"run_{gb:g}")
            r["load"] = run_child("load", path, args, Path(tmp) / "unused")
            if args.limit_mb:
                r["train_limited"] = run_child("train", path, args, Path(tmp) / f"runl_{gb:g}", args.limit_mb)
                r["load_limited"] = run_child("load", path, args, Path(tmp) / "unused", args.limit_mb)
            for k in ("train", "load", "train_limited", "load_limited"):
                if k in r:
                    v = r[k]
                    rss = "n/a" if v["peak_rss_mb"] is None else f"{v['peak_rss_mb']:.0f} MB"
                    print(f"  {k:14s} peak RSS {rss:>8s}  {v['status']}"
                          + (f"  ({v['seconds']:.0f} s)" if v.get("seconds") else ""))
            rows.append(r)
    tr = [r["train"]["peak_rss_mb"] for r in rows if r["train"]["peak_rss_mb"]]
    ld = [r["load"]["peak_rss_mb"] for r in rows if r["load"]["peak_rss_mb"]]
    summary = {"model": args.model, "buffer_rows": args.buffer_rows, "limit_mb": args.limit_mb, "runs": rows,
               "train_rss_ratio_largest_over_smallest": tr[-1] / tr[0] if len(tr) > 1 else None,
               "load_rss_ratio_largest_over_smallest": ld[-1] / ld[0] if len(ld) > 1 else None,
               "train_rss_over_file_largest": tr[-1] / rows[-1]["file_mb"] if tr else None}
    if len(tr) > 1:
        print(f"file x{rows[-1]['file_mb'] / rows[0]['file_mb']:.1f}: training peak RSS x"
              f"{summary['train_rss_ratio_largest_over_smallest']:.2f} (bounded = 1), in-memory load x"
              f"{summary['load_rss_ratio_largest_over_smallest']:.2f}; training peak / largest file = "
              f"{summary['train_rss_over_file_largest']:.2f}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
