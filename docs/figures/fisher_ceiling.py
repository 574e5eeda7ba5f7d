"""Figure of docs/fisher.md, "Our ceiling next to the paper's": R²max(log g) per magnitude from the two JSON
tables that `specvit fisher ... --json` printed (3D all nodes, 5D 2,000 nodes), next to the paper's values.

    PYTHONPATH=src python docs/figures/fisher_ceiling.py [--title "emulator v3 ..."]   # writes fisher_ceiling.png
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from specvit.fisher.ceiling import PAPER_CEILING  # noqa: E402

HERE = Path(__file__).resolve().parent
ap = argparse.ArgumentParser()
ap.add_argument("--title", default="log g ceiling, default emulator, PFS MR")
args = ap.parse_args()
fig, ax = plt.subplots(figsize=(7.8, 5.2))
for nuis, colour in (("3d", "C0"), ("5d", "C1")):
    d = json.loads((HERE / f"fisher_ceiling_{nuis}.json").read_text())
    mags = sorted(d, key=float)
    x = [float(m) for m in mags]
    ax.plot(x, [d[m]["r2max_median"] for m in mags], "o-", color=colour, label=f"CRLB {nuis} (median, p10-p90)")
    ax.fill_between(x, [d[m]["r2max_p10"] for m in mags], [d[m]["r2max_p90"] for m in mags], color=colour, alpha=0.25)
    ax.plot(x, [d[m]["r2max_bayes"] for m in mags], "--", color=colour, label=f"van Trees {nuis} (cos$^2$ prior)")
px = sorted(PAPER_CEILING)
ax.plot(px, [PAPER_CEILING[m][1] for m in px], "kx", ms=8, label="paper 3D (BOSZ, FD)")
ax.plot(px, [PAPER_CEILING[m][2] for m in px], "k+", ms=8, label="paper 5D")
ax.set_xlabel("HSC i magnitude (calibration setup, 4 x 900 s)")
ax.set_ylabel(r"$R^2_{\max}$  (log g)")
ax.set_title(args.title)
ax.legend(loc="lower left", fontsize=8)
fig.tight_layout()
fig.savefig(HERE / "fisher_ceiling.png", dpi=100)
print("wrote", HERE / "fisher_ceiling.png")
