"""Emulators v1 (no hydrogen) and v2 (Paschen lines) against line-list-2 physics on the held-out label sets.

Truth per held-out label set of ``synthesis/design_v1.csv``: the exact line-list-2 PySME spectrum
where it exists (``synthesis/spectra_v2``), otherwise the line-list-1 spectrum carried over by the
line-list transfer fitted on the training-split pairs (as in ``specvit emulator train
--transfer-from``). Prints the rms of the normalised flux per spectrum, summarised.

    .venv/bin/python docs/figures/emulator_v1_v2_comparison.py [MORE_WEIGHTS.npz ...]

Extra weight files given on the command line are compared the same way.
"""
import sys
import warnings
from pathlib import Path

import numpy as np

from specvit.spectra.emulator import load_emulator
from specvit.spectra.emulator_train import load_spectra
from specvit.spectra.linelist_transfer import transfer_dataset

warnings.filterwarnings("ignore", category=UserWarning)  # margin rows are evaluated on purpose
DESIGN = "synthesis/design_v1.csv"
v1 = load_spectra("synthesis/spectra", DESIGN)
v2 = load_spectra("synthesis/spectra_v2", DESIGN)
_, held_out, _ = transfer_dataset(v2, v1, log=None)  # None once every held-out row has an exact spectrum
exact = v2["split"] == "val"
parts = [(v2["ids"][exact], v2["norm"][exact], v2["labels"][exact])]
if held_out is not None:
    parts.append((held_out["ids"], held_out["norm"], held_out["labels"]))
ids = np.concatenate([p[0] for p in parts])
truth = np.concatenate([p[1] for p in parts]).astype(np.float64)
labels = np.concatenate([p[2] for p in parts])
n_carried = len(ids) - int(exact.sum())
in_v1 = np.isin(ids, v1["ids"])  # v1 against its own physics where a line-list-1 spectrum exists
own = v1["norm"][[int(np.flatnonzero(v1["ids"] == s)[0]) for s in ids[in_v1]]].astype(np.float64)
e1 = load_emulator("src/specvit/data_files/emulator/emulator_v1.npz")
e2 = load_emulator("src/specvit/data_files/emulator/emulator_v2.npz")
p1, p2 = e1.normalized_flux(labels, extrapolate=True), e2.normalized_flux(labels, extrapolate=True)
extra = {Path(w).stem: load_emulator(w).normalized_flux(labels, extrapolate=True) for w in sys.argv[1:]}


def rms(a, b):
    return np.sqrt(((a - b) ** 2).mean(1))


print(f"{len(ids)} held-out label sets: {int(exact.sum())} with an exact line-list-2 spectrum, "
      f"{n_carried} carried over")
rows = [(f"v1 vs line-list-1 PySME (own physics, {int(in_v1.sum())})", rms(p1[in_v1], own)),
        ("v1 vs line-list-2 truth", rms(p1, truth)), ("v2 vs line-list-2 truth", rms(p2, truth))]
rows += [(f"{k} vs line-list-2 truth", rms(p, truth)) for k, p in extra.items()]
for name, r in rows:
    print(f"{name:42s} median {np.median(r):.4f}  rms-mean {np.sqrt((r ** 2).mean()):.4f}  max {r.max():.4f}")
hot = labels[:, 0] >= 5000
cool = labels[:, 0] < 4250
for name, p in (("v1", p1), ("v2", p2), *extra.items()):
    print(f"{name}, T_eff >= 5000 K: " + ", ".join(f"{x:.4f}" for x in rms(p, truth)[hot]))
    print(f"{name}, T_eff < 4250 K: " + ", ".join(f"{x:.4f}" for x in rms(p, truth)[cool]))
