"""How much it matters that the posterior conditions on the stored error array (docs/bayes.md, "What is not done").

``specvit simulate`` computes the error e from the TRUE spectrum and the observing conditions; the posterior
treats e as known and independent of θ. The exact likelihood given the conditions would use σ(θ) (the same
noise model at each θ). For spectra ``--rows A:B`` of a ``specvit simulate`` file: (1) the error recomputed
from the stored labels and conditions equals the stored one; (2) for 300 draws of each posterior (default
config, resampled by weight) σ(θ) from ``ForwardModel.observe`` under the spectrum's conditions, its change
against e, and the log-likelihood correction log N(y | μ(θ), σ(θ)²) − log N(y | μ(θ), e²) over the draws
(its sd, and the ESS of reweighting the draws by it: 300 = no change).

    PYTHONPATH=src python docs/figures/bayes_sigma_theta.py --data test.h5 --rows 0:12
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", default="0:12")
    args = ap.parse_args(argv)
    from specvit.baselines.bayes import BayesConfig, bayes_forward, dataset_prior, posterior
    from specvit.data import fixed_noisy_flux, open_dataset
    from specvit.observe.config import CONDITION_COLUMNS

    torch.set_num_threads(1)
    cfg = BayesConfig(noise_seed=42)
    fwd = bayes_forward(cfg)
    names = list(fwd.label_names)
    rows = np.arange(*(int(v) for v in args.rows.split(":")))
    with open_dataset(args.data) as ds:
        prior = dataset_prior(ds, fwd, cfg)
        flux, err = np.asarray(ds.flux[rows], float), np.asarray(ds.error[rows], float)
        truth = ds.labels(names)[rows]
        cond = ds.params.iloc[rows].reset_index(drop=True)[list(CONDITION_COLUMNS)]
    obs = fwd.observe(truth, cond, dtype=np.float64)
    print(f"error recomputed from the stored labels and conditions / stored: max |ratio - 1| = "
          f"{np.max(np.abs(obs.error / err - 1)):.1e}")
    noisy = fixed_noisy_flux(flux, err, 1.0, rows, cfg.noise_seed)
    res = posterior(fwd, noisy, err, prior=prior, config=cfg, rng=np.random.default_rng(1), truth=truth,
                    keep_samples=True)
    pick = np.random.default_rng(0)
    for i, row in enumerate(rows):
        th, w = res.samples[i]
        th = th[pick.choice(len(th), size=300, p=w)]
        o = fwd.observe(th, cond.iloc[[i] * len(th)].reset_index(drop=True), dtype=np.float64)
        s, mu, y = o.error, o.flux, noisy[i]
        corr = -0.5 * np.sum((y - mu) ** 2 / s ** 2 + np.log(s ** 2 / err[i] ** 2) - (y - mu) ** 2 / err[i] ** 2, 1)
        rel = np.median(np.abs(s / err[i] - 1), axis=1)
        wr = np.exp(corr - corr.max())
        wr /= wr.sum()
        print(f"row {row}: SNR {np.median(flux[i] / err[i]):5.1f}  median |σ(θ)/e − 1| over the draws "
              f"{np.median(rel):.4f} (90 %: {np.quantile(rel, 0.9):.4f})  log-likelihood correction sd "
              f"{corr.std():.2f}  ESS of reweighting {1 / np.sum(wr ** 2):.0f}/300")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
