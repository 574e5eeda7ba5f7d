"""CLI of the data package: ``specvit simulate``."""
from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  specvit simulate --out train.h5 --n 200000 --seed 1
  specvit simulate --out train/ --n 1000000 --seed 1 --shards 5 --workers 2
  specvit simulate --out 'val_{shard}.h5' --n 2000 --seed 2 --shards 2 --set observing.mag=[21,22]
  specvit simulate --out grid_data.h5 --n 10000 --seed 3 --set model=bosz_grid.h5 --set interpolation=spline
  specvit simulate --out t.h5 --n 1000 --seed 4 --set labels.log_g.dist=beta

config keys (YAML file or --set, dotted): labels.<T_eff|log_g|M_H|a_M|C_M>.{low,high,dist,beta_a,beta_b},
  observing.<mag|seeing_arcsec|exp_count|exp_time_s|target_zenith_angle_deg|...> (number or [low, high]),
  instrument.<...> (instrument.preset: paper | pfs-etc), model (default | path to a pfsspec grid .h5), interpolation (spline|linear|nearest),
  wave_range_A, chunk_size, dtype (float32|float64), max_redraws.
A killed run resumes when the same command is run again (progress is kept in .<name>.partial).
Each output is locked (.<name>.lock) while a process writes it: a second writer is refused, also with
--restart/--overwrite. Free space is checked before writing; after a full disk, free space and rerun.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate a PFS MR dataset (pfsspec dataset.h5 layout)",
        description="Sample labels and observing conditions, make noiseless spectra with the spectral model, "
                    "observe them with the PFS MR arm and write flux/error/params in the pfsspec dataset.h5 "
                    "layout (float32 by default). Same seed -> same data, for any --workers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True,
                   help="output file; with --shards K > 1 a directory (shard_000.h5 ...) or a name with {shard}")
    p.add_argument("--n", type=int, required=True, help="number of spectra (total over all shards)")
    p.add_argument("--seed", type=int, required=True, help="random seed (recorded in the file)")
    p.add_argument("--config", default=None, help="YAML config file (SimulateConfig)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--shards", type=int, default=1, help="number of files to split the rows into (default 1)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (output does not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output made by another job")
    p.add_argument("--restart", action="store_true", help="discard partial files instead of resuming them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print a JSON summary (files, n, seconds) on stdout")
    p.set_defaults(func=run_simulate)


def run_simulate(args) -> int:
    import time

    from specvit.config import load_config
    from specvit.data.simulate import SimulateConfig, simulate

    cfg = load_config(SimulateConfig, args.config, args.set)
    t0 = time.perf_counter()
    paths = simulate(cfg, args.out, n=args.n, seed=args.seed, shards=args.shards, workers=args.workers,
                     progress=not args.no_progress, overwrite=args.overwrite, restart=args.restart)
    dt = time.perf_counter() - t0
    written = getattr(paths, "n_written", args.n)
    summary = {"files": [str(p) for p in paths], "n": args.n, "seed": args.seed, "seconds": round(dt, 3),
               "spectra_per_s": round(written / dt, 1) if dt > 0 else None, "written": written,
               "resumed": getattr(paths, "n_resumed", 0), "already_complete": getattr(paths, "n_complete", 0)}
    files = ", ".join(summary["files"])
    if args.json:
        print(json.dumps(summary))
    elif written == 0 and summary["resumed"] == 0:
        print(f"already complete, nothing written: {args.n} spectra in {files}", file=sys.stderr)
    else:
        note = []
        if summary["resumed"]:
            note.append(f"{summary['resumed']} resumed from the partial file")
        if summary["already_complete"]:
            note.append(f"{summary['already_complete']} in files already complete")
        extra = f" ({'; '.join(note)})" if note else ""
        print(f"wrote {written} spectra to {files} in {dt:.1f} s{extra}", file=sys.stderr)
    return 0
