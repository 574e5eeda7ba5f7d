"""How loose is the van Trees ceiling? Per SNR bin, in MSE (unit²) of one label, from a learning-curve run.

    python docs/figures/van_trees_gap.py --curves /work/curves_run/out --out docs/figures/van_trees_gap

Reads the run's ``ceiling.json`` (van Trees bound and the prior-averaged CRLB per SNR bin, at the
test labels), ``bayes/predictions.csv`` (the posterior mean: the minimum-MSE estimator under the
simulator's own prior) and, for each neural model, the prediction table at its largest recorded
budget (``runs/<model>/stream/points/s*.csv``). All estimators are scored on the same test rows with
the same fixed noise. Writes ``<out>.json`` (the table) and ``<out>.png`` (MSE vs SNR, log scale).

Why MSE and not R²: the van Trees R² is taken against the variance of its smoothed (cos²-tapered)
prior, which for log g is 0.52 dex² against 1.31 dex² for the uniform labels of the test set, and the
models' R² per bin against the spread of the labels in the bin; in MSE all of them are on one scale.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from specvit.snr_bins import snr_bin_index


def bin_mse(table: pd.DataFrame, label: str, names: list[str], rng: np.random.Generator, n_boot: int = 200):
    """(MSE, 10th, 90th bootstrap percentile, n) per bin."""
    edges = [float(names[0].split("-")[0])] + [float(n.split("-")[1]) for n in names]  # the bins ceiling.json names
    idx = snr_bin_index(table["snr"].to_numpy(float), edges)
    err2 = (table[f"{label}_pred"].to_numpy(float) - table[f"{label}_true"].to_numpy(float)) ** 2
    out = []
    for b in range(len(names)):
        e = err2[idx == b]
        if len(e) == 0:
            out.append((None, None, None, 0))
            continue
        boots = [e[rng.integers(0, len(e), len(e))].mean() for _ in range(n_boot)]
        out.append((float(e.mean()), float(np.percentile(boots, 10)), float(np.percentile(boots, 90)), int(len(e))))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--curves", required=True, help="output folder of `specvit scaling` in stream mode")
    ap.add_argument("--out", required=True, help="path stem of the .json and .png written")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = ap.parse_args(argv)
    root = Path(args.curves)
    ceil = json.loads((root / "ceiling.json").read_text())
    label = ceil["label"]
    by_bin = {k: v for k, v in ceil["by_snr_bin"].items() if isinstance(v, dict)}
    names = list(by_bin)
    rng = np.random.default_rng(args.seed)
    rows = {"van_trees": [by_bin[n]["mse_bayes"] for n in names],
            "crlb_prior_mean": [by_bin[n]["mse_crlb_prior"] for n in names]}
    est = {"bayes": pd.read_csv(root / "bayes" / "predictions.csv")}
    for run in sorted((root / "runs").glob("*/stream/points")):
        pts = sorted(run.glob("s*.csv"))
        if pts:
            est[f"{run.parent.parent.name} @ {int(pts[-1].stem[1:]):,}"] = pd.read_csv(pts[-1])
    scored = {k: bin_mse(t, label, names, rng) for k, t in est.items()}
    doc = {"label": label, "bins": names, "snr_median": [by_bin[n]["snr"] for n in names],
           "prior_var_van_trees": by_bin[names[0]]["prior_var"],
           "bound_mse": rows, "estimator_mse": {k: [r[0] for r in v] for k, v in scored.items()},
           "estimator_mse_band_10_90": {k: [[r[1], r[2]] for r in v] for k, v in scored.items()},
           "n": {k: [r[3] for r in v] for k, v in scored.items()},
           "source": str(root), "bootstrap_seed": args.seed}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out.with_suffix(".json"))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    x = np.asarray(doc["snr_median"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(x, rows["van_trees"], "k-", lw=2, label="van Trees bound (smoothed prior)")
    ax.plot(x, rows["crlb_prior_mean"], "k--", lw=1.5, label="CRLB averaged over the prior")
    others = iter(c for c in ("C0", "C1", "C2", "C4", "C5", "C6", "C7", "C8", "C9"))  # C3 (red) is the posterior's
    for k, v in scored.items():
        y = np.array([np.nan if r[0] is None else r[0] for r in v])
        lo = np.array([np.nan if r[1] is None else r[1] for r in v])
        hi = np.array([np.nan if r[2] is None else r[2] for r in v])
        style = dict(lw=2.5, color="C3") if k == "bayes" else dict(lw=1.2, color=next(others))
        ax.plot(x, y, "o-", label="posterior mean (MMSE)" if k == "bayes" else k, **style)
        ax.fill_between(x, lo, hi, alpha=0.15, color=style.get("color"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([3, 4, 5, 7, 10, 15, 20, 25])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("SNR (per-bin median)")
    ax.set_ylabel(f"MSE of {label} (unit²)")
    ax.set_title(f"{label}: estimators vs bounds on the same test spectra")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
