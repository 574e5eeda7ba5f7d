"""3-fold cross-validation of two penalty settings on v4's training rows (a check made after v4 was chosen,
docs/emulator.md section 5; it chose nothing). Same data preparation as `specvit emulator train` with
`--transfer-from synthesis/spectra --max-c-to-o 1` on design_v1 + r1 + r2; folds of `fold_models` (seed 42);
scored on the left-out rows inside the label box (`--cv-rows inside`). One thread.

    PYTHONPATH=src python docs/figures/emulator_cv_check.py [--json OUT]
"""
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

torch.set_num_threads(1)
from specvit.spectra.emulator_train import (EmulatorTrainConfig, cross_validate, load_training_set,  # noqa: E402
                                            restrict_to_domain)

ROOT = Path(__file__).resolve().parents[2]
designs = [ROOT / f"synthesis/design_{d}.csv" for d in ("v1", "r1", "r2")]
data, _, _ = load_training_set(ROOT / "synthesis/spectra_v2", designs, transfer_from=ROOT / "synthesis/spectra",
                               log=None)
data = restrict_to_domain(data, 1.0, log=None)
configs = {"v3 recipe (W 100, ceiling 1.015)": EmulatorTrainConfig(seed=42, epochs=8000, domain_penalty=100.0),
           "v4 = C1 (W 100, ceiling 1.010)": EmulatorTrainConfig(seed=42, epochs=8000, domain_penalty=100.0,
                                                                 norm_ceiling=1.01)}
out = {}
for name, cfg in configs.items():
    t0 = time.process_time()
    rms = cross_validate(data, cfg, folds=3, seed=42, rows="inside")
    out[name] = {"cv_rms_inside": rms, "cpu_s": time.process_time() - t0, "config": asdict(cfg)}
    print(f"{name}: 3-fold CV rms (inside rows) {rms:.5f}  ({out[name]['cpu_s']:.0f} CPU-s)", flush=True)
if "--json" in sys.argv:
    p = Path(sys.argv[sys.argv.index("--json") + 1])
    p.with_suffix(".tmp").write_text(json.dumps(out, indent=1))
    p.with_suffix(".tmp").replace(p)
