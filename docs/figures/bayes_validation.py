"""Validation of ``specvit baseline bayes`` (docs/bayes.md): coverage, SBC rank histograms, R² next to van Trees.

    PYTHONPATH=src python docs/figures/bayes_validation.py --data test.h5 --n 1000 --out runs/bayes_val
    # or in parts, one process per core, then the full run joins them:
    ... bayes_validation.py --data test.h5 --out runs/bayes_val --part 0:500 &  ... --part 500:1000; then as above

``--data``: a dataset written by ``specvit simulate`` (its labels are prior draws, so every spectrum is one
simulation-based-calibration draw: θ ~ π, y = μ(θ) + σ z with the fixed test noise). Steps (each cached in
``--out``):

1. the posterior of the first ``--n`` spectra (``run_bayes``, default config, noise_seed 42) and the
   template fit of the same spectra (its defaults: 5 labels, Legendre degree-2 flux correction, 1 start);
2. coverage of the central 68 % / 95 % intervals per label, overall and per SNR bin;
3. SBC: the normalised rank of the truth among the weighted posterior draws (the posterior CDF at the
   truth, the L → ∞ limit of the rank statistic of Talts et al. 2018), 20-bin histograms, χ² and KS
   tests against uniform;
4. per SNR bin the R² of the posterior mean and of the template fit (bootstrap 2.5–97.5 % band) next to the
   van Trees ceiling from the Fisher information of the same spectra (their own error arrays, J at the truth),
   all as 1 − MSE / Var_π with Var_π the simulate prior's variance (uniform box: w²/12).

Writes bayes_sbc.png, bayes_r2_vantrees.png (into docs/figures/ with --figures) and validation.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def posterior_rows(ds, batches, cfg, *, seed: int) -> pd.DataFrame:
    """The posteriors of ``batches`` of rows of the open dataset ``ds``, as ``run_bayes`` writes them, plus each
    row's SNR, truth and PIT. ``batches``: (key, rows) pairs; the proposal generator of a batch is
    ``default_rng([seed, key])``. Fixed test noise of ``cfg.noise_seed``."""
    from specvit.baselines.bayes import bayes_forward, dataset_prior, posterior
    from specvit.data import fixed_noisy_flux

    fwd = bayes_forward(cfg)
    names = list(fwd.label_names)
    prior = dataset_prior(ds, fwd, cfg)
    frames = []
    for key, rows in batches:
        flux, err = np.asarray(ds.flux[rows], float), np.asarray(ds.error[rows], float)
        truth = ds.labels(names)[rows]
        noisy = fixed_noisy_flux(flux, err, 1.0, rows, cfg.noise_seed)
        r = posterior(fwd, noisy, err, prior=prior, config=cfg, rng=np.random.default_rng([seed, key]), truth=truth)
        df = r.to_frame()
        df.insert(0, "row", rows)
        df["snr"] = np.nanmedian(flux / err, axis=1)
        for j, n in enumerate(names):
            df[f"true_{n}"], df[f"{n}_pit"] = truth[:, j], r.pit[:, j]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def part_catalogue(path, a: int, b: int, out_csv: Path, overrides=None, noise_seed: int = 42) -> None:
    """The posteriors of rows [a, b) (default config, the fixed test noise of ``noise_seed``; one torch thread, the proposal generator of
    the batch starting at row s is ``default_rng([seed, s])``), as ``run_bayes`` writes them: parts run as
    separate processes (one per core) and are joined by the full run."""
    import time

    import torch

    from specvit.baselines.bayes import BayesConfig
    from specvit.config import load_config
    from specvit.data import open_dataset

    torch.set_num_threads(1)
    cfg = load_config(BayesConfig, overrides=overrides or (), data={"noise_seed": noise_seed})
    c0, t0 = time.process_time(), time.perf_counter()
    with open_dataset(path) as ds:
        batches = ((s, np.arange(s, min(b, s + cfg.batch_size))) for s in range(a, b, cfg.batch_size))
        df = posterior_rows(ds, batches, cfg, seed=cfg.seed)
    df.to_csv(out_csv, index=False)
    out_csv.with_suffix(".json").write_text(json.dumps({"rows": [a, b], "cpu_seconds": time.process_time() - c0,
                                                        "seconds": time.perf_counter() - t0}))


def catalogues(args, out: Path):
    from specvit.baselines.bayes import BayesConfig, run_bayes
    from specvit.baselines.templatefit import TemplateFitConfig, run_templatefit

    cb, ct = out / "bayes.csv", out / "templatefit.csv"
    parts = sorted(out.glob("bayes_part_*.csv"), key=lambda q: int(q.stem.split("_")[2]))
    if not cb.exists() and parts:  # join the parts (--part runs); they must cover rows [0, n)
        df = pd.concat([pd.read_csv(q) for q in parts], ignore_index=True)
        if not np.array_equal(df["row"].to_numpy(), np.arange(args.n)):
            sys.exit(f"the parts in {out} do not cover rows 0..{args.n - 1} in order")
        df.to_csv(cb, index=False)
        info = [json.loads(q.with_suffix(".json").read_text()) for q in parts]
        (out / "bayes_seconds.json").write_text(json.dumps({"parts": info, "n": len(df)}))
    if not cb.exists():
        df = run_bayes(BayesConfig(input=args.data, max_spectra=args.n, noise_seed=args.noise_seed))
        df.to_csv(cb, index=False)
        (out / "bayes_seconds.json").write_text(json.dumps({"seconds": df.attrs["seconds"], "n": len(df)}))
    if not ct.exists() and not args.no_templatefit:
        df = run_templatefit(TemplateFitConfig(input=args.data, max_spectra=args.n, noise_seed=args.noise_seed, n_starts=1))
        df.to_csv(ct, index=False)
    return pd.read_csv(cb), (pd.read_csv(ct) if ct.exists() else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", default="runs/bayes_val")
    ap.add_argument("--figures", default="", help="directory for the PNGs (default: --out)")
    ap.add_argument("--no-templatefit", action="store_true")
    ap.add_argument("--noise-seed", type=int, default=42,
                    help="seed of the fixed test noise (default 42, the quickstart's). The noise depends only on "
                         "(seed, row, pixel): validation sets meant to be independent need different noise seeds")
    ap.add_argument("--catalogues-only", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="with --part: a BayesConfig key for the posteriors (e.g. model=v2, max_rounds=3); repeatable")
    ap.add_argument("--part", default="", help="A:B: only the posteriors of rows [A, B) into OUT/bayes_part_A_B.csv "
                    "(run parts in parallel, one thread each; the full run joins them)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part:
        a, b = (int(v) for v in args.part.split(":"))
        part_catalogue(args.data, a, b, out / f"bayes_part_{a}_{b}.csv", args.set, args.noise_seed)
        return 0
    figdir = Path(args.figures or out)
    bay, tf = catalogues(args, out)
    if args.catalogues_only:
        return 0
    from scipy import stats

    from specvit.baselines.bayes import coverage
    from specvit.labels import LABEL_NAMES
    from specvit.snr_bins import SNR_BIN_EDGES, snr_bin_index, snr_bin_labels

    res = {"n": len(bay), "flags": bay["flag"].value_counts().to_dict()}
    use = bay["flag"].isin(["ok", "low_ess"]).to_numpy()
    res["coverage"] = coverage(bay, LABEL_NAMES)
    b = snr_bin_index(bay["snr"].to_numpy(), SNR_BIN_EDGES)
    res["coverage_by_snr"] = {}
    for k, name in enumerate(snr_bin_labels()):
        sel = (b == k) & use
        if sel.sum() >= 10:
            res["coverage_by_snr"][name] = coverage(bay[sel], LABEL_NAMES)
    # ---- SBC
    nb = 20
    res["sbc"] = {}
    pits = {}
    for n in LABEL_NAMES:
        u = bay[f"{n}_pit"].to_numpy(float)[use]
        pits[n] = u
        counts = np.histogram(u, bins=nb, range=(0, 1))[0]
        res["sbc"][n] = {"chi2_p": float(stats.chisquare(counts).pvalue), "ks_p": float(stats.kstest(u, "uniform").pvalue),
                         "counts": counts.tolist()}
    # ---- R² per SNR bin vs van Trees
    from specvit.baselines.bayes import bayes_forward, BayesConfig
    from specvit.data import open_dataset
    from specvit.fisher.information import SmoothBoxPrior, fisher_from_weights, prior_weights, van_trees_bound

    fwd = bayes_forward(BayesConfig())
    names = list(fwd.label_names)
    with open_dataset(args.data) as ds:
        rows = bay["row"].to_numpy()
        truth = ds.labels(names)[rows]
        err = np.asarray(ds.error[: rows.max() + 1], dtype=np.float64)[rows]
        prior_cfg = ds.attrs["config"]["labels"]
    cache = out / "fisher.npy"
    if cache.exists():
        info = np.load(cache)
    else:
        info = np.empty((len(rows), len(names), len(names)))
        for s in range(0, len(rows), 64):
            oj = fwd.observed_jacobian(truth[s:s + 64])  # drops points with model flux <= 0 (NaN info there)
            blk = np.full((len(oj.valid), len(names), len(names)), np.nan)
            blk[oj.valid] = fisher_from_weights(oj.jac, 1.0 / err[None, s:s + 64][:, oj.valid] ** 2)[0]
            info[s:s + 64] = blk
        np.save(cache, info)
    lo = np.array([prior_cfg[n]["low"] for n in names])
    hi = np.array([prior_cfg[n]["high"] for n in names])
    var_pi = (hi - lo) ** 2 / 12.0
    rng = np.random.default_rng(0)

    def r2_band(t, p, v, nboot=400):
        e2 = (p - t) ** 2
        r2 = 1 - e2.mean() / v
        bs = [1 - e2[rng.integers(0, len(e2), len(e2))].mean() / v for _ in range(nboot)]
        return float(r2), float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5))

    res["r2_by_snr"] = {}
    labels_bins = snr_bin_labels()
    for j, n in enumerate(names):
        rows_out = []
        for k, name in enumerate(labels_bins):
            sel = (b == k) & use & np.isfinite(info).all((1, 2))
            if sel.sum() < 20:
                continue
            row = {"bin": name, "n": int(sel.sum())}
            row["bayes"] = r2_band(truth[sel, j], bay[f"{n}_mean"].to_numpy()[sel], var_pi[j])
            if tf is not None:
                row["templatefit"] = r2_band(truth[sel, j], tf[n].to_numpy()[sel], var_pi[j])
            for taper in (0.5, 0.1):
                priors = {i: SmoothBoxPrior(lo[i], hi[i], taper_fraction=taper) for i in range(len(names))}
                w = prior_weights(truth[sel], priors)
                vt = van_trees_bound(info[sel], target=j, free=list(range(len(names))), priors=priors,
                                     weights=w if w.sum() > 0 else None)
                row[f"vantrees_{taper:g}"] = float(max(0.0, 1 - vt.mse_bound / var_pi[j]))
            rows_out.append(row)
        res["r2_by_snr"][n] = rows_out
    (out / "validation.json").write_text(json.dumps(res, indent=1))
    # ---- figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(16, 3.2), sharey=True)
    m = len(pits[names[0]])
    expect = m / nb
    band = stats.binom.ppf([0.005, 0.995], m, 1 / nb)
    for ax, n in zip(axes, names):
        ax.axhspan(band[0], band[1], color="0.85", label="99% band (uniform)")
        ax.axhline(expect, color="0.4", lw=0.8)
        ax.hist(pits[n], bins=nb, range=(0, 1), histtype="step", color="C0", lw=1.5)
        s = res["sbc"][n]
        ax.set_title(f"{n}\nχ² p={s['chi2_p']:.2f}, KS p={s['ks_p']:.2f}", fontsize=9)
        ax.set_xlabel("normalised rank of the truth")
    axes[0].set_ylabel(f"spectra per bin (N={m})")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(figdir / "bayes_sbc.png", dpi=110)
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6))
    for ax, n in zip(axes, names):
        rr = res["r2_by_snr"][n]
        x = np.arange(len(rr))
        bay_r = np.array([r["bayes"] for r in rr])
        ax.fill_between(x, bay_r[:, 1], bay_r[:, 2], color="C0", alpha=0.3)
        ax.plot(x, bay_r[:, 0], "o-", color="C0", label="posterior mean")
        if tf is not None:
            t_r = np.array([r["templatefit"] for r in rr])
            ax.errorbar(x + 0.1, t_r[:, 0], yerr=[t_r[:, 0] - t_r[:, 1], t_r[:, 2] - t_r[:, 0]], fmt="s", ms=3,
                        color="C1", label="template fit")
        ax.plot(x, [r["vantrees_0.5"] for r in rr], "k--", label="van Trees (cos² prior)")
        ax.plot(x, [r["vantrees_0.1"] for r in rr], "k:", label="van Trees (taper 0.1)")
        ax.set_xticks(x, [r["bin"] for r in rr], rotation=45, fontsize=7)
        ax.set_title(n)
        ax.set_xlabel("SNR bin")
    axes[0].set_ylabel("R² = 1 − MSE / Var_prior")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figdir / "bayes_r2_vantrees.png", dpi=110)
    print(json.dumps({k: res[k] for k in ("n", "flags", "coverage")}, indent=1))
    for n in names:
        print(n, "SBC chi2 p", round(res["sbc"][n]["chi2_p"], 3), "KS p", round(res["sbc"][n]["ks_p"], 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
