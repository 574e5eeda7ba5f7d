"""Posteriors (``specvit baseline bayes``) of a selection of rows of a simulated dataset, as ``run_bayes`` writes
them, for targeted checks (docs/bayes.md, "T_eff 68 % coverage at high SNR").

    PYTHONPATH=src python docs/figures/bayes_rows.py --data test.h5 --rows 0:1000 --snr-min 9 --out hi.csv \
        [--set likelihood=exact] [--set noise_seed=43] [--seed-offset 1]

Rows: ``--rows A:B`` then only those with SNR = median(flux / error) > ``--snr-min``. Fixed test noise
(``noise_seed`` 42 unless ``--set``); one torch thread; the proposal generator of the k-th batch of the selection
is ``default_rng([seed + seed_offset, k * batch_size])``. Prints the CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def select_rows(ds, rows: str, snr_min: float) -> np.ndarray:
    from specvit.errors import InputError

    try:
        a, b = (int(v) for v in rows.split(":"))
    except ValueError:
        raise InputError("--rows must be A:B", field="--rows", value=rows) from None
    if not 0 <= a < b <= len(ds):
        raise InputError(f"--rows outside the dataset's {len(ds)} rows", file=ds.path, field="--rows", value=rows)
    idx = np.arange(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.nanmedian(np.asarray(ds.flux[idx], float) / np.asarray(ds.error[idx], float), axis=1)
    return idx[snr > snr_min]


def main(argv=None):
    import torch

    from bayes_validation import posterior_rows  # this directory's validation script: the one posterior loop
    from specvit.baselines.bayes import BayesConfig
    from specvit.config import load_config
    from specvit.data import open_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", required=True, help="A:B")
    ap.add_argument("--snr-min", type=float, default=0.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a BayesConfig key; repeatable")
    ap.add_argument("--seed-offset", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(BayesConfig, overrides=a.set, data={"noise_seed": 42})
    c0 = time.process_time()
    with open_dataset(a.data) as ds:
        sel = select_rows(ds, a.rows, a.snr_min)
        batches = ((s, sel[s:s + cfg.batch_size]) for s in range(0, len(sel), cfg.batch_size))
        df = posterior_rows(ds, batches, cfg, seed=cfg.seed + a.seed_offset)
    out = Path(a.out)
    tmp = out.with_name(out.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(out)
    print(json.dumps({"n": int(len(sel)), "cpu_seconds": round(time.process_time() - c0, 1), "set": a.set}))


if __name__ == "__main__":
    main()
