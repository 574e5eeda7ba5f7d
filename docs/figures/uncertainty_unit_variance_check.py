"""Test coverage had the scales been fitted with method=unit_variance instead of coverage68 (docs/uncertainty.md)."""
import numpy as np
import pandas as pd

from specvit.data import open_dataset
from specvit.train.calibration import SigmaCalibration
from specvit.train.predict import calibrate_model_dir

labels = ["T_eff", "log_g", "M_H", "a_M", "C_M"]
with open_dataset("data/unc/test.h5") as ds:
    truth = ds.labels(labels)
rows = []
for m in ("specvit", "cnn", "mlp"):
    trainer_cal = SigmaCalibration.load(f"runs/unc/{m}/model/calibration.json")
    uv = calibrate_model_dir(f"runs/unc/{m}/model", "data/unc/val.h5", noise_level=1.0, noise_seed=42,
                             method="unit_variance", write=False)
    c68 = calibrate_model_dir(f"runs/unc/{m}/model", "data/unc/val.h5", noise_level=1.0, noise_seed=42, write=False)
    cat = pd.read_csv(f"runs/unc/{m}/test_catalogue.csv")
    for j, lab in enumerate(labels):
        t, p, s = truth[:, j], cat[lab].to_numpy(), cat[f"{lab}_err_raw"].to_numpy()
        z = np.abs(p - t) / s
        rows.append({"model": m, "label": lab, "scale_coverage68": c68.scale[j], "scale_trainer": trainer_cal.scale[j],
                     "scale_unit_variance": uv.scale[j],
                     "test_cov68_unit_variance": np.mean(z <= uv.scale[j]), "test_cov95_unit_variance": np.mean(z <= 2 * uv.scale[j])})
print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
