"""Figures of the stream learning curves (:mod:`specvit.evaluate.curves`).

``plot_curves``: test R² against samples seen / training wall time / training CPU time, one line per
neural model (bootstrap band 10-90 %), LightGBM and Ridge at their file sizes, the Bayes posterior
mean as a horizontal line (its own, smaller test subset: labelled with its n).
``plot_snr_at_largest``: R² per SNR bin of every model at its largest budget against the van Trees
ceiling (any estimator, for its smoothed version of the training prior) and the CRLB median.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from specvit.evaluate.figures import _label_text, _new_figure
from specvit.snr_bins import SNR_BIN_EDGES, snr_bin_labels

#: colour-blind-safe (Okabe-Ito) colours per model kind / name fragment
_COLORS = {"specvit": "#0072B2", "cnn": "#CC79A7", "mlp": "#56B4E9", "lightgbm": "#E69F00", "ridge": "#009E73",
           "bayes": "#000000", "van_trees": "#D55E00", "crlb_median": "#999999"}

_XLABEL = {"samples_seen": "samples seen (spectra; baselines: training-file rows)",
           "train_wall_s": "training wall time [s] (shared, loaded machine)",
           "train_cpu_s": "training CPU time [s] (process)"}


#: for a second model of the same kind in one figure (e.g. two SpecViT recipes): Tol's muted colours
_EXTRA = ("#332288", "#882255", "#44AA99", "#999933", "#AA4499")


def _color(name: str) -> str:
    for k, c in _COLORS.items():
        if k in name.lower():
            return c
    return "#444444"


def model_colors(models) -> dict[str, str]:
    """One colour per model name in one figure: its kind's colour, or an unused extra when taken."""
    out: dict[str, str] = {}
    extra = iter(_EXTRA)
    for m in dict.fromkeys(models):
        c = _color(m)
        out[m] = c if c not in out.values() else next(extra, "#444444")
    return out


def plot_curves(table: pd.DataFrame, *, x: str = "samples_seen", label: str = "log_g") -> Figure:
    """Test R² vs ``x`` (log axis); ``table`` = rows of ``curves.csv`` for one label."""
    fig = _new_figure((9.2, 4.4))
    ax = fig.add_subplot()
    colors = model_colors(table["model"])
    for model, t in table.groupby("model", sort=False):
        if model == "bayes":
            ax.axhline(float(t["r2"].iloc[0]), color=colors[model], ls=":", lw=1.3,
                       label=f"Bayes posterior mean ({int(t['n_test'].iloc[0])} test spectra)")
            continue
        t = t[np.isfinite(pd.to_numeric(t[x], errors="coerce"))].sort_values(x)
        if t.empty:
            continue
        neural = t["kind"].iloc[0] == "neural"
        xs = t[x].to_numpy(float)
        ax.plot(xs, t["r2"], marker="o" if neural else "s", ms=3.5, lw=1.6 if neural else 1.1,
                ls="-" if neural else "--", color=colors[model], label=model if neural else f"{model} (file)")
        lo, hi = pd.to_numeric(t["r2_lo"], errors="coerce"), pd.to_numeric(t["r2_hi"], errors="coerce")
        if neural and lo.notna().all() and hi.notna().all():
            ax.fill_between(xs, lo, hi, color=colors[model], alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel(_XLABEL.get(x, x))
    ax.set_ylabel(f"test $R^2$ of {_label_text(label)}")
    lo = pd.to_numeric(table["r2"], errors="coerce").min()
    ax.set_ylim(max(-0.1, lo - 0.03) if np.isfinite(lo) else -0.1, 1.0)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_snr_at_largest(bins: pd.DataFrame, *, label: str = "log_g", edges=SNR_BIN_EDGES) -> Figure:
    """R² per SNR bin: each model at its largest samples seen, the Bayes estimator, the ceilings."""
    names = snr_bin_labels(edges)
    centres = np.sqrt(np.asarray(edges[:-1]) * np.asarray(edges[1:]))
    fig = _new_figure((9.6, 4.4))
    ax = fig.add_subplot()
    colors = model_colors(bins["model"])
    for model, t in bins.groupby("model", sort=False):
        kind = t["kind"].iloc[0]
        s = pd.to_numeric(t["samples_seen"], errors="coerce")
        if s.notna().any():
            t = t[s == s.max()]
        r2 = t.set_index("snr_bin")["r2"].reindex(names).to_numpy(float)
        if kind == "ceiling":
            style = dict(ls="-", lw=2.2) if model == "van_trees" else dict(ls="--", lw=1.0)
            text = "van Trees ceiling (any estimator; its smoothed prior)" if model == "van_trees" else \
                "CRLB median (unbiased estimators)"
            ax.plot(centres, r2, color=colors[model], label=text, **style)
            continue
        unit = "samples seen" if kind == "neural" else "training rows"
        top = f" @ {int(s.max()):,} {unit}" if s.notna().any() else ""
        n_binned = int(pd.to_numeric(t["n"], errors="coerce").sum())
        text = f"{model}{top}" if model != "bayes" else f"Bayes posterior mean ({n_binned} binned test spectra)"
        ax.plot(centres, r2, marker="o", ms=3.5, lw=1.2, ls=":" if model == "bayes" else "-",
                color=colors[model], label=text)
    ax.set_xscale("log")
    ax.set_xticks(centres, [n.replace("-", "–") for n in names], rotation=30, fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("SNR bin (median flux / error)")
    ax.set_ylabel(f"test $R^2$ of {_label_text(label)}")
    ax.set_ylim(-0.1, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig
