"""Figure and table of docs/emulator.md, "Independent checks: PHOENIX BT-Settl".

    PYTHONPATH=src python docs/figures/emulator_phoenix.py      # writes docs/figures/emulator_phoenix.png
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from specvit.spectra import default_model  # noqa: E402
from specvit.spectra import phoenix_check as pc  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "phoenix_btsettl_pfs.npz"

model = default_model()
res = pc.compare(model, DATA)
windows = [(7070, 8880, "SED: F$_\\lambda$ / F(8700-8720)"), (8480, 8690, "Ca II triplet (norm.)"),
           (8172, 8210, "Na I 8183/8195 (norm.)"), (7650, 7720, "K I 7665/7699 (norm.)"),
           (8795, 8825, "Mg I 8807 (norm.)")]
fig, axes = plt.subplots(len(res), len(windows), figsize=(22, 3.2 * len(res)))
for i, (name, r) in enumerate(res.items()):
    wave, ft, fe = r["flux"]
    w, nt, ne = r["curves"]
    t, g, z = r["labels"][:3]
    for j, (lo, hi, title) in enumerate(windows):
        ax = axes[i, j]
        if j == 0:
            ref = (wave >= 8700) & (wave <= 8720)
            s = (wave >= lo) & (wave <= hi)
            ax.plot(wave[s], ft[s] / ft[ref].mean(), "k", lw=0.6, label="PHOENIX BT-Settl")
            ax.plot(wave[s], fe[s] / fe[ref].mean(), "r", lw=0.6, label="specvit emulator")
        else:
            s = (w >= lo) & (w <= hi)
            ax.plot(w[s], nt[s], "k", lw=0.9)
            ax.plot(w[s], ne[s], "r", lw=0.9)
            for a, b in pc.EW_WINDOWS.values():
                if a < hi and b > lo:
                    ax.axvspan(a, b, color="0.9", zorder=-1)
        ax.set_xlim(lo, hi)
        ax.set_title(f"{name} ({t:.0f} K, log g {g:.1f}, [M/H] {z:+.1f}) — {title}" if j == 0 else title,
                     fontsize=9)
        if i == len(res) - 1:
            ax.set_xlabel("vacuum wavelength [Å]")
axes[0, 0].legend(fontsize=8)
fig.suptitle("Emulator vs PHOENIX BT-Settl templates (Subaru-PFS/spt_etc_webapp), both at R = 3000 Gaussian; "
             "normalised by the same upper envelope; grey: EW windows", fontsize=11)
fig.tight_layout()
fig.savefig(ROOT / "docs" / "figures" / "emulator_phoenix.png", dpi=70)

print("| template (T_eff, log g, [M/H]) | measure | PHOENIX | emulator | Δ | template sampling σ | tolerance | "
      "T_eff-equiv. of Δ | verdict |")
print("|---|---|---|---|---|---|---|---|---|")
for name, q, p, e, d, tol, teq, v, smp in pc.table(model, DATA):
    lab = res[name]["labels"]
    teq_s = f"{teq:+.0f} K" if abs(teq) < 1e4 else "≫ 1e4 K"
    vv = "agree" if v == "agree" else "**disagree**"
    print(f"| {name} ({lab[0]:.0f}, {lab[1]:.1f}, {lab[2]:+.1f}) | {q} | {p:.3f} | {e:.3f} | {d:+.3f} | {smp:.3f} | {tol:.3f} | {teq_s} | {vv} |")
