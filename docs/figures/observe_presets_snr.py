"""Figure: per-pixel SNR vs wavelength of a flat-AB source at the calibration setup, for the official PFS ETC
(its own output, data_files/observe/pfs_etc_mr/etc_snr_flat_ab.txt, i = 18) and specvit's two presets;
and at i = 22 the two presets with the sky and transmission behind them.

Run: PYTHONPATH=src python docs/figures/observe_presets_snr.py  ->  docs/figures/observe_presets_snr.png
"""
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from specvit.observe import InstrumentConfig, PFSObserver
from specvit.observe.atmosphere import data_path
from specvit.observe.calibrate import etc_reference, flat_ab_snr

out = Path(__file__).with_name("observe_presets_snr.png")
mags = (18.0, 22.0)
res = {p: flat_ab_snr(InstrumentConfig(preset=p), mags) for p in ("paper", "pfs-etc")}
etc = np.loadtxt(data_path("pfs_etc_mr/etc_snr_flat_ab.txt"))
w = etc[:, 0]
ref = etc_reference()
W = np.arange(7000.0, 8950.0, 0.5)
obs = {p: PFSObserver(model_wave=W, instrument=InstrumentConfig(preset=p)) for p in ("paper", "pfs-etc")}

fig = Figure(figsize=(10, 8.2), layout="constrained")
ax0, ax1, ax2, ax3 = fig.subplots(4, 1, sharex=True, gridspec_kw={"height_ratios": [2, 0.9, 1.3, 1]})
ax0.plot(w, res["paper"]["per_pixel"][0], color="C0", lw=0.5, label=f"specvit paper preset (median {res['paper']['18']:.1f})")
ax0.plot(w, res["pfs-etc"]["per_pixel"][0], color="C3", lw=0.5, label=f"specvit pfs-etc preset (median {res['pfs-etc']['18']:.1f})")
ax0.plot(w, etc[:, 1], color="k", lw=0.5, ls=":", label=f"official PFS ETC v2.0 (median {ref['18']['median']:.1f})")
ax0.set_ylabel("SNR per pixel, i = 18")
ax0.set_yscale("log")
ax0.legend(fontsize=8, loc="lower left")
ax0.set_title("flat-AB source, 4 x 900 s, seeing 1.0\" (0.95\" at 800 nm), zenith 22.5 deg, field 0.325 deg, no Moon")
r = res["pfs-etc"]["per_pixel"][0] / etc[:, 1]
ax1.plot(w, r, color="C3", lw=0.5)
ax1.axhspan(0.9, 1.1, color="0.9")
ax1.axvspan(7590, 7700, color="C1", alpha=0.15, label="O$_2$ A band")
ax1.set_ylim(0.85, 1.15)
ax1.set_ylabel("pfs-etc / ETC")
ax1.legend(fontsize=8, loc="upper right")
for p, c in (("paper", "C0"), ("pfs-etc", "C3")):
    ax2.plot(w, res[p]["per_pixel"][1], color=c, lw=0.5, label=f"{p}: i = 22 (median {res[p]['22']:.2f})")
ax2.axhline(ref["22"]["median"], color="k", lw=0.8, ls=":", label=f"ETC median, i = 22 ({ref['22']['median']:.2f})")
ax2.set_yscale("log")
ax2.set_ylabel("SNR per pixel, i = 22")
ax2.legend(fontsize=8, loc="lower left")
for p, c in (("paper", "C0"), ("pfs-etc", "C3")):
    o = obs[p]
    ax3.plot(o.wave, o.sky_rate / np.median(obs["pfs-etc"].sky_rate), color=c, lw=0.5, label=f"sky e-/s/pix ({p}, / pfs-etc median)")
ax3.set_yscale("log")
ax3.set_ylabel("sky")
ax3b = ax3.twinx()
for p, c in (("paper", "C0"), ("pfs-etc", "C3")):
    ax3b.plot(obs[p].wave, obs[p]._trans_table[4], color=c, lw=0.8, ls="--")
ax3b.set_ylabel("transmission X=1.08 (dashed)")
ax3b.set_ylim(0, 1.05)
ax3.legend(fontsize=7, loc="lower left", framealpha=0.9)
ax3.set_xlabel("wavelength [Å] (vacuum)")
ax3.set_xlim(w[0], w[-1])
fig.savefig(out, dpi=120)
print(out)
