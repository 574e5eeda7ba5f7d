"""Held-out error of emulator weights on exact line-list-2 PySME spectra (docs/emulator.md section 5).

Sets (all exact spectra of ``synthesis/spectra_v2``, design_v1 held-out rows, C/O < 1):
* "39": v3's held-out ids (``meta["held_out_ids"]`` of emulator_v3.npz);
* "18 clean": those of the 39 after v1-00239 (never looked at before v3, section 5);
* "fresh": held-out rows synthesised after v3's freeze (in no v3 list), v4 never trained on them either;
* "all": the 39 + fresh.
Per set: median / rms-mean / max of the per-spectrum rms of the normalised flux, max |ΔF/C|, continuum rms.

    PYTHONPATH=src .venv/bin/python docs/figures/emulator_heldout.py WEIGHTS.npz [...] [--json OUT]
"""
import json
import warnings
import argparse
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
from specvit.spectra.emulator import load_emulator  # noqa: E402
from specvit.spectra.emulator_train import load_spectra, restrict_to_domain  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
_ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
_ap.add_argument("weights", nargs="*", help="emulator .npz files (default: see the module docstring)")
_ap.add_argument("--json", dest="out_json", default=None, help="also write the numbers to this JSON file")
_cli = _ap.parse_args()
args, out_json = _cli.weights, _cli.out_json
v3 = load_emulator(ROOT / "src/specvit/data_files/emulator/emulator_v3.npz")
v3_seen = set(v3.meta["held_out_ids"]) | set(v3.meta["training_ids"]) | set(v3.meta.get("excluded_outside_domain", []))
data = restrict_to_domain(load_spectra(ROOT / "synthesis/spectra_v2", [ROOT / f"synthesis/design_{d}.csv"
                                                                      for d in ("v1", "r1", "r2")]), 1.0, log=None)
val = data["split"] == "val"
ids = data["ids"][val]
sets = {"39": np.isin(ids, v3.meta["held_out_ids"])}
sets["18 clean"] = sets["39"] & np.array([s.startswith("v1-") and int(s[3:]) > 239 for s in ids])
sets["fresh"] = ~np.isin(ids, list(v3_seen))
sets["all (39 + fresh)"] = sets["39"] | sets["fresh"]
print({k: int(m.sum()) for k, m in sets.items()}, "fresh ids:", ids[sets["fresh"]].tolist())
truth_n = data["norm"][val].astype(np.float64)
truth_c = np.exp(data["lncont"][val].astype(np.float64))
labels = data["labels"][val]
result = {"ids": ids.tolist(), "sets": {k: ids[m].tolist() for k, m in sets.items()}, "models": {}}
for w in args:
    emu = load_emulator(w)
    for s in emu.meta.get("training_ids", []):
        if s in set(ids):
            raise SystemExit(f"{w}: held-out id {s} is in its training ids")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dn = emu.normalized_flux(labels) - truth_n
        dc = emu.continuum(labels) / truth_c - 1.0
    rms = np.sqrt((dn ** 2).mean(1))
    mx = np.abs(dn).max(1)
    crms = np.sqrt((dc ** 2).mean(1))
    name = f"{Path(w).name} ({emu.meta.get('version', '?')})"
    result["models"][name] = {"rms_per_spectrum": rms.tolist()}
    for k, m in sets.items():
        if not m.any():
            continue
        r = {"n": int(m.sum()), "median": float(np.median(rms[m])), "rms_mean": float(np.sqrt((rms[m] ** 2).mean())),
             "max": float(rms[m].max()), "max_abs_dF": float(mx[m].max()),
             "continuum_rms": float(np.sqrt((crms[m] ** 2).mean()))}
        result["models"][name][k] = r
        print(f"{name:30s} {k:18s} n {r['n']:2d}  median {r['median']:.4f}  rms-mean {r['rms_mean']:.4f}  "
              f"max {r['max']:.4f}  max|dF/C| {r['max_abs_dF']:.3f}  continuum {100 * r['continuum_rms']:.2f} %")
    if sets["fresh"].any():
        print(f"{name:30s} fresh per id: " + ", ".join(f"{s} {x:.4f}" for s, x in zip(ids[sets['fresh']], rms[sets['fresh']])))
if out_json:
    tmp = Path(out_json).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out_json)
