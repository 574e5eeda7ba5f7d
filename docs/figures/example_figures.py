"""Make docs/figures/example_*.png: the evaluate/ figures on a small ILLUSTRATIVE run.

The spectra come from the analytic test model (tests/toymodel.py: Planck continuum x Gaussian
lines, NOT stellar physics) with its log g sensitivities scaled up x4 so that a few thousand
spectra carry some log g information, observed with the real PFS MR-arm simulator
(specvit.observe). Everything else is the real pipeline: datasets, `specvit scaling`
(training engine and Ridge; LightGBM is left out only to keep this illustration
short on a busy 2-core machine), the Fisher ceiling (specvit.fisher) of the same toy
model, and the figure functions. The numbers in these figures are NOT results about stars.

    python docs/figures/example_figures.py WORKDIR      # ~30 min on 2 busy CPU cores
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from toymodel import ToyModel  # noqa: E402

from specvit.data.pfsspec import write_dataset  # noqa: E402
from specvit.evaluate import figures as F  # noqa: E402
from specvit.labels import DEFAULT_LABEL_BOUNDS, LABEL_NAMES  # noqa: E402
from specvit.observe import ObservingConfig, PFSObserver, draw_conditions  # noqa: E402

WORK = Path(sys.argv[1])
FIGS = ROOT / "docs" / "figures"


class LoudToy(ToyModel):
    """ToyModel with 4x larger log g coefficients (illustration only)."""

    def __init__(self):
        super().__init__()
        self.coef[:, 1] *= 4.0


def make_split(model, observer, name, n, seed):
    path = WORK / "data" / f"{name}.h5"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    lab = np.stack([rng.uniform(*DEFAULT_LABEL_BOUNDS[k], n) for k in LABEL_NAMES], 1)
    cond = draw_conditions(ObservingConfig(), n, rng)
    flux, err, snr = [], [], []
    for i in range(0, n, 250):
        o = observer.observe(model.flux(lab[i:i + 250]), cond.iloc[i:i + 250].reset_index(drop=True))
        flux.append(o.flux.astype(np.float32))
        err.append(o.error.astype(np.float32))
        snr.append(o.snr)
    params = pd.concat([pd.DataFrame(lab, columns=LABEL_NAMES), cond.reset_index(drop=True)], axis=1)
    params.insert(0, "id", np.arange(n))
    params["snr"] = np.concatenate(snr)
    return write_dataset(path, wave=observer.wave, flux=np.concatenate(flux), error=np.concatenate(err), params=params)


def main():
    model = LoudToy()
    observer = PFSObserver.for_model(model)
    (WORK / "data").mkdir(parents=True, exist_ok=True)
    paths = {s: str(make_split(model, observer, s, n, seed))
             for s, n, seed in (("train", 3000, 1), ("val", 400, 2), ("test", 1500, 3))}

    # 1. scaling (also gives every model's test predictions at the largest size)
    from specvit.evaluate.scaling import load_scaling_config, run_scaling

    neural = {"optim": {"lr": 2.0e-3}, "schedule": {"warmup_frac": 0.05}, "run": {"epochs": 4, "batch_size": 64}}
    cfg = load_scaling_config(data={
        "out_dir": str(WORK / "scaling"), "sizes": [500, 1000, 3000], "seed": 42,
        "data": {"train": paths["train"], "val": paths["val"], "test": paths["test"], "labels": ["log_g"]},
        "models": [
            {"name": "specvit_tiny", "options": {"model": {"name": "specvit_tiny"}, **neural}},
            {"name": "mlp_small", "options": {"model": {"name": "mlp_small"}, **neural}},
            {"name": "ridge", "kind": "ridge"},
        ]})
    table = run_scaling(cfg)
    F.plot_scaling(table, lo_col="r2_lo", hi_col="r2_hi").savefig(FIGS / "example_scaling.png", dpi=120)

    # 2. the Fisher ceiling of the same toy model per SNR bin (5D: all labels free)
    ceil_path = WORK / "ceiling.json"
    if not ceil_path.exists():
        from specvit.fisher.ceiling import ceiling_by_snr_bin, compute_information
        from specvit.observe.forward import default_forward
        from specvit.fisher.points import make_points

        fwd, _ = default_forward(model)
        pts = make_points(fwd, "uniform", free=list(LABEL_NAMES), n_points=150, rng=np.random.default_rng(0))
        iset = compute_information(fwd, pts, np.arange(19.0, 23.51, 0.25), chunk_size=32)
        ceil = ceiling_by_snr_bin(iset, nuisance="5d", bound="both", label="log_g")
        ceil_path.write_text(json.dumps(ceil, indent=1, default=float))
    ceil = json.loads(ceil_path.read_text())
    ceilings = F.ceilings_from_fisher(ceil)
    size = max(cfg.sizes)
    per_model = {m.name: json.loads((WORK / "scaling" / "runs" / m.name / f"n{size}" / "result.json").read_text())["test"]
                 for m in cfg.models}
    F.plot_r2_vs_snr(per_model, ceilings=ceilings,
                     title=f"illustration: toy model, {size} training spectra").savefig(
        FIGS / "example_r2_vs_snr.png", dpi=120)

    # 3. parity of the best model, with the CRLB envelope sigma_min(SNR) of the ceiling
    best = table[table["n_train"] == size].sort_values("r2").iloc[-1]["model"]
    pred = pd.read_csv(WORK / "scaling" / "runs" / best / f"n{size}" / "predictions.csv")
    bins = [v for k, v in ceil.items() if k != "empty_bins"]
    env = (np.array([b["snr"] for b in bins]), np.array([b["sigma_min_median"] for b in bins]))
    F.plot_parity(pred["log_g_true"], pred["log_g_pred"], snr=pred["snr"], envelope=env,
                  model_name=best).savefig(FIGS / "example_parity.png", dpi=120)

    # 4. attention of the trained SpecViT over the spectrum
    from specvit.baselines.common import noisy_chunk, open_split
    from specvit.evaluate.attention import attention_rollout, patch_wavelengths
    from specvit.models.io import load_model

    vit, _ = load_model(WORK / "scaling" / "runs" / "specvit_tiny" / f"n{size}" / "model")
    ds = open_split(paths["test"], ["log_g"], split="test")
    x = noisy_chunk(ds, 0, 256, noise_level=1.0, seed=42)
    clean = np.asarray(ds.flux[0:256]).mean(0)
    wave = np.asarray(ds.wave)
    ds.close()
    F.plot_attention(patch_wavelengths(vit, wave), attention_rollout(vit, x), wave=wave, flux=clean,
                     title="illustration: attention rollout of specvit_tiny (toy model)").savefig(
        FIGS / "example_attention.png", dpi=120)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
