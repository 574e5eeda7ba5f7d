"""The issue-#15 constraints on emulator weights: raw normalised flux (before the clip at zero) never negative and
never above 1.02 of the continuum inside the physical domain, on four samples of the domain:

* the dense sample of ``tests/test_label_domain.py`` (scrambled Sobol 2^14 of the box ∩ domain + its 40 corners);
* 50,000 uniform domain draws (``uniform_in_domain``, seed 20261207);
* 20,000 edge-weighted draws (``domain_penalty_pool``, seed 7: the sample v3 was checked on);
* 20,000 edge-weighted draws, seed 8 (fresh: used by no training run and no earlier check).

Training pools use the training seed (42), so none of these samples is a training draw.

    PYTHONPATH=src .venv/bin/python docs/figures/emulator_constraints.py [WEIGHTS.npz ...] [--json OUT]

Without weights: the shipped v2, v3 and the manifest's default. One thread.
"""
import json
import sys
import argparse
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from test_label_domain import _dense_domain_sample, _raw_norm  # noqa: E402  the tests' own sample and raw flux

from specvit.labels import LABEL_NAMES, uniform_in_domain  # noqa: E402
from specvit.spectra.emulator import load_emulator  # noqa: E402
from specvit.spectra.emulator_train import domain_penalty_pool  # noqa: E402

_ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
_ap.add_argument("weights", nargs="*", help="emulator .npz files (default: see the module docstring)")
_ap.add_argument("--json", dest="out_json", default=None, help="also write the numbers to this JSON file")
_cli = _ap.parse_args()
args, out_json = _cli.weights, _cli.out_json
emu_dir = ROOT / "src/specvit/data_files/emulator"
weights = args or [str(emu_dir / "emulator_v2.npz"), str(emu_dir / "emulator_v3.npz"),
                   str(emu_dir / json.loads((emu_dir / "manifest.json").read_text())["default"])]
samples = {
    "sobol_2^14_domain+40_corners (tests)": _dense_domain_sample()[0],
    "50,000 uniform in domain (seed 20261207)": uniform_in_domain(np.random.default_rng(20261207), 50_000),
    "20,000 edge-weighted (domain_penalty_pool seed 7)": domain_penalty_pool(np.random.default_rng(7), 20_000),
    "20,000 edge-weighted (domain_penalty_pool seed 8, fresh)": domain_penalty_pool(np.random.default_rng(8), 20_000),
}
result = {}
for w in dict.fromkeys(weights):
    emu = load_emulator(w)
    name = f"{Path(w).name} ({emu.meta.get('version', '?')})"
    result[name] = {}
    for sname, lab in samples.items():
        mins, maxs, argmax = [], [], []
        for i in range(0, len(lab), 4096):  # chunks: 4,096 x 10,357 float32 at a time
            raw = _raw_norm(emu, lab[i:i + 4096])
            mins.append(raw.min(1))
            maxs.append(raw.max(1))
            argmax.append(raw.argmax(1))
        mn, mx, am = np.concatenate(mins), np.concatenate(maxs), np.concatenate(argmax)
        worst = np.argsort(mx)[::-1][:3]
        r = {"n": int(len(lab)), "n_negative": int((mn < 0).sum()), "min": float(mn.min()),
             "frac_above_1.01": float((mx > 1.01).mean()), "n_above_1.02": int((mx > 1.02).sum()),
             "max": float(mx.max()),
             "worst": [{"labels": dict(zip(LABEL_NAMES, np.round(lab[j], 3).tolist())), "max": float(mx[j]),
                        "wave_A": float(emu.wave[am[j]])} for j in worst]}
        r["admissible"] = r["n_negative"] == 0 and r["n_above_1.02"] == 0
        result[name][sname] = r
        print(f"{name:34s} {sname:58s} neg {r['n_negative']:4d} min {r['min']:+.3f} "
              f">1.01 {100 * r['frac_above_1.01']:5.2f}% >1.02 {r['n_above_1.02']:4d} max {r['max']:.4f}", flush=True)
    ok = all(r["admissible"] for r in result[name].values())
    print(f"{name}: admissible (no negative, max <= 1.02 on every sample): {ok}", flush=True)
if out_json:
    tmp = Path(out_json).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out_json)
