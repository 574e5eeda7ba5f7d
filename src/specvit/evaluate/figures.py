"""The paper's figures, as functions of plain arrays and dicts.

Every function returns a :class:`matplotlib.figure.Figure` built without
``pyplot`` (no global state, Agg canvas); the caller decides where it is
saved (``fig.savefig(path, dpi=150)``). Colours come from the Okabe & Ito
(2008) colour-blind-safe palette, and a model keeps the same colour in every
figure (:func:`model_color`).

Figures
-------
1. :func:`plot_r2_vs_snr` -- R² per SNR bin for every model, with bootstrap
   bands, and the Fisher ceilings (CRLB for unbiased estimators; Bayesian /
   van Trees for any estimator) as shaded p10-p90 bands (paper Figure 1).
2. :func:`plot_parity` -- predicted vs true, residual vs SNR with the
   ±σ_min Cramér-Rao envelope, residual histogram.
3. :func:`plot_scaling` -- R² vs training-set size (log x) for every model.
4. :func:`plot_ablation` / :func:`plot_importance` -- architecture and
   tokenisation ablation bars (with error bars) and sweep importances.
5. :func:`plot_noise_vs_wavelength` -- the 1σ error spectrum per magnitude
   with the median spectrum for reference.
6. :func:`plot_attention` -- SpecViT attention over the spectrum with the
   strongest lines marked (see :mod:`specvit.evaluate.attention` for how to
   extract it from a model).
7. :func:`plot_sigma_vs_posterior` -- each network's (calibrated) 1σ against the
   posterior standard deviation of the same noisy spectrum, per label (issue #14).
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from specvit.errors import InputError
from specvit.labels import LABELS
from specvit.observe.calibrate import plot_noise_vs_wavelength  # figure 5 (re-exported)
from specvit.snr_bins import SNR_BIN_EDGES

#: Okabe & Ito (2008) colour-blind-safe palette.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}

#: Model-name keyword -> colour (first match wins), so every figure colours a model the same way.
_MODEL_KEYWORDS = (
    ("specvit", OKABE_ITO["blue"]),
    ("vit", OKABE_ITO["blue"]),
    ("lightgbm", OKABE_ITO["orange"]),
    ("gbm", OKABE_ITO["orange"]),
    ("ridge", OKABE_ITO["green"]),
    ("template", OKABE_ITO["vermillion"]),
    ("cnn", OKABE_ITO["purple"]),
    ("mlp", OKABE_ITO["sky_blue"]),
)
_MODEL_MARKERS = (("vit", "D"), ("gbm", "s"), ("ridge", "^"), ("template", "v"), ("cnn", "P"), ("mlp", "X"))
_FALLBACK = (OKABE_ITO["black"], "#999999", OKABE_ITO["yellow"], "#882255", "#44AA99")

#: Ceiling band styles: CRLB (unbiased) in grey, Bayesian (van Trees) in yellow.
CEILING_STYLES = {
    "crlb": {"color": "0.45", "alpha": 0.25, "hatch": None},
    "bayes": {"color": OKABE_ITO["yellow"], "alpha": 0.35, "hatch": "//"},
}

#: Strong lines in the PFS MR arm, VACUUM wavelengths in Angstrom (NIST air values converted with the
#: IAU standard air-to-vacuum formula of Morton 2000). Used to mark attention maps.
STRONG_LINES_VACUUM_A: dict[str, tuple[float, ...]] = {
    "Ca II": (8500.35, 8544.44, 8664.52),
    "Na I": (8185.51, 8197.08),
    "K I": (7667.01, 7701.08),
    "Mg I": (8809.18,),
    "O I": (7774.08, 7776.31, 7777.53),
    "Fe I": (8691.01,),
    "Ti I": (8437.28,),
}

FONT_SIZES = {"font.size": 10, "axes.labelsize": 11, "axes.titlesize": 11, "legend.fontsize": 9}


def model_color(name: str) -> str:
    """Colour of a model, the same in every figure (keyword match, then a stable hash)."""
    low = name.lower()
    for key, colour in _MODEL_KEYWORDS:
        if key in low:
            return colour
    return _FALLBACK[int(hashlib.md5(low.encode()).hexdigest(), 16) % len(_FALLBACK)]


def model_marker(name: str) -> str:
    low = name.lower()
    for key, marker in _MODEL_MARKERS:
        if key in low:
            return marker
    return "o"


def _styles(names) -> dict[str, dict]:
    """Colour, marker and a line style that separates models sharing a colour (e.g. two SpecViTs)."""
    seen: dict[str, int] = {}
    dashes = ("-", "--", ":", "-.")
    out = {}
    for n in names:
        c = model_color(n)
        k = seen.get(c, 0)
        seen[c] = k + 1
        out[n] = {"color": c, "marker": model_marker(n), "linestyle": dashes[k % len(dashes)]}
    return out


def _new_figure(figsize, **kw) -> Figure:
    import matplotlib

    with matplotlib.rc_context(FONT_SIZES):
        fig = Figure(figsize=figsize, layout="constrained", **kw)
    return fig


def _label_text(label: str) -> str:
    if label in LABELS:
        lab = LABELS[label]
        return f"{lab.latex} [{lab.unit}]"
    return label


def _arr(x, name, *, ndim=1, length=None, finite=False) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != ndim:
        raise InputError(f"must be a {ndim}-D array", field=name, value=tuple(a.shape))
    if length is not None and a.shape[0] != length:
        raise InputError(f"must have length {length}", field=name, value=tuple(a.shape))
    if finite and not np.all(np.isfinite(a)):
        raise InputError("must be finite", field=name, value=float(a[~np.isfinite(a)][0]))
    return a


def _log_snr_axis(ax, lo, hi):
    """Log x axis with a few plain-number ticks (2, 3, 5, 10, 20, ...)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 500) if lo <= t <= hi] or [lo, hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def snr_bin_centres(edges=SNR_BIN_EDGES) -> np.ndarray:
    """Geometric centre of each SNR bin (the x position used in R²-vs-SNR plots)."""
    e = np.asarray(edges, dtype=float)
    return np.sqrt(e[:-1] * e[1:])


# --------------------------------------------------------------------------------------------
# 1. R² vs SNR with the ceiling bands
# --------------------------------------------------------------------------------------------
def r2_bins_from_metrics(metrics: Mapping, label: str = "log_g") -> dict[str, np.ndarray]:
    """Per-bin arrays ``{"r2", "lo", "hi", "n", "edges"}`` from :func:`specvit.scores.evaluate_predictions`.

    Empty bins (``None`` in the metrics) become NaN, so the plot shows a gap.
    """
    try:
        bins = metrics["labels"][label]["snr_bins"]
    except (KeyError, TypeError):
        raise InputError("metrics have no per-SNR-bin entry for this label", field=f"labels.{label}.snr_bins") from None
    if not bins:
        raise InputError("metrics were computed without SNR bins", field=f"labels.{label}.snr_bins")

    def col(k):
        return np.array([np.nan if b.get(k) is None else float(b[k]) for b in bins])

    edges = np.array([bins[0]["snr_lo"]] + [b["snr_hi"] for b in bins], dtype=float)
    return {"r2": col("r2"), "lo": col("r2_lo"), "hi": col("r2_hi"), "n": col("n"), "edges": edges}


def ceilings_from_fisher(by_snr_bin: Mapping, edges=SNR_BIN_EDGES) -> dict[str, dict]:
    """Ceiling bands for :func:`plot_r2_vs_snr` from :func:`specvit.fisher.ceiling.ceiling_by_snr_bin`.

    CRLB: per-bin median and p10-p90 of R²_max over the points; Bayesian (van Trees): the
    per-bin value ``r2max_bayes`` (one number per bin, drawn as a line). Empty bins -> NaN.
    """
    from specvit.snr_bins import snr_bin_labels

    names = snr_bin_labels(edges)
    known = [n for n in names if n in by_snr_bin]
    if not known:
        raise InputError("no SNR bin of the ceiling matches the bin edges", field="by_snr_bin",
                         value=sorted(k for k in by_snr_bin if k != "empty_bins"))

    def col(key):
        return np.array([float(by_snr_bin[n][key]) if n in by_snr_bin and by_snr_bin[n].get(key) is not None
                         else np.nan for n in names])

    out = {}
    first = by_snr_bin[known[0]]
    if "r2max_median" in first:
        out["CRLB (unbiased)"] = {"median": col("r2max_median"), "p10": col("r2max_p10"), "p90": col("r2max_p90"),
                                  "kind": "crlb"}
    if "r2max_bayes" in first:
        out["Bayesian (van Trees)"] = {"median": col("r2max_bayes"), "kind": "bayes"}
    return out


def plot_r2_vs_snr(
    models: Mapping[str, Mapping[str, object]],
    *,
    ceilings: Mapping[str, Mapping[str, object]] | None = None,
    bin_edges=SNR_BIN_EDGES,
    label: str = "log_g",
    title: str | None = None,
    ylim=(-0.1, 1.02),
    optimal: Mapping[str, Mapping[str, object]] | None = None,
) -> Figure:
    """Per-SNR-bin R² of each model against the Fisher ceilings (the paper's Figure 1).

    Parameters
    ----------
    models : {name: {"r2": (n_bins,), "lo": (n_bins,), "hi": (n_bins,)}} or {name: metrics}
        R² per bin (NaN for an empty bin), optional bootstrap band ``lo``-``hi``
        (e.g. 10th-90th percentile of 200 resamples); or directly the dict returned by
        :func:`specvit.scores.evaluate_predictions` (see :func:`r2_bins_from_metrics`).
    ceilings : {name: {"median": (n_bins,), "p10": (n_bins,), "p90": (n_bins,), "kind": "crlb"|"bayes"}}
        Ceiling R² per bin: median over the points in the bin and its p10-p90
        range. ``kind`` picks the style; if absent it is guessed from the name
        ("bayes"/"van trees" -> Bayesian, else CRLB).
    bin_edges : sequence of float
        SNR bin edges (per-spectrum SNR = median flux / error).
    optimal : {name: metrics}, optional
        Reference estimators drawn in black with a thick line (same forms as ``models``): the Bayes
        posterior mean under the simulator's own prior and likelihood, the "Bayes-optimal" curve.
    """
    edges = _arr(bin_edges, "bin_edges")
    nb = len(edges) - 1
    if nb < 1:
        raise InputError("need at least two bin edges", field="bin_edges", value=list(edges))
    x = snr_bin_centres(edges)
    fig = _new_figure((8.4, 4.4))
    ax = fig.add_subplot()
    for cname, c in (ceilings or {}).items():
        kind = c.get("kind") or ("bayes" if ("bayes" in cname.lower() or "trees" in cname.lower()) else "crlb")
        style = CEILING_STYLES.get(kind, CEILING_STYLES["crlb"])
        med = _arr(c["median"], f"ceilings[{cname!r}].median", length=nb)
        ax.plot(x, med, color=style["color"], lw=1.5, ls="--", zorder=1)
        if "p10" in c and "p90" in c:
            p10 = _arr(c["p10"], f"ceilings[{cname!r}].p10", length=nb)
            p90 = _arr(c["p90"], f"ceilings[{cname!r}].p90", length=nb)
            ax.fill_between(x, p10, p90, color=style["color"], alpha=style["alpha"], hatch=style["hatch"],
                            lw=0, zorder=0, label=f"{cname} (median, p10-p90)")
        else:
            ax.lines[-1].set_label(cname)
    styles = _styles(list(models))
    for name in optimal or {}:
        styles[name] = {"color": "black", "marker": "D", "linestyle": "-", "optimal": True}
    for name, m in {**dict(models), **dict(optimal or {})}.items():
        if "labels" in m:  # the full output of evaluate_predictions
            m = r2_bins_from_metrics(m, label)
            if len(m["edges"]) != len(edges) or not np.allclose(m["edges"], edges):
                raise InputError("model metrics use other SNR bin edges", field=f"models[{name!r}]",
                                 value=m["edges"].tolist())
        if "r2" not in m:
            raise InputError("each model needs an 'r2' array per bin", field=f"models[{name!r}]", value=sorted(m))
        r2 = _arr(m["r2"], f"models[{name!r}].r2", length=nb)
        s = styles[name]
        opt = s.get("optimal", False)
        ax.plot(x, r2, color=s["color"], marker=s["marker"], ls=s["linestyle"], lw=2.6 if opt else 1.6,
                ms=5 if opt else 6, label=name, zorder=4 if opt else 3)
        if m.get("lo") is not None and m.get("hi") is not None:
            lo = _arr(m["lo"], f"models[{name!r}].lo", length=nb)
            hi = _arr(m["hi"], f"models[{name!r}].hi", length=nb)
            ax.fill_between(x, lo, hi, color=s["color"], alpha=0.12 if opt else 0.2, lw=0, zorder=2)
    for e in edges:
        ax.axvline(e, color="0.9", lw=0.6, zorder=-1)
    ax.set_xscale("log")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xticks(edges)
    ax.set_xticklabels([f"{e:g}" for e in edges])
    ax.minorticks_off()
    ax.set_ylim(*ylim)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("per-spectrum SNR (median flux / error), bin edges")
    ax.set_ylabel(f"$R^2$ of {_label_text(label).split(' [')[0]}")
    ax.set_title(title or f"$R^2$ vs SNR with the Fisher ceiling ({_label_text(label).split(' [')[0]})")
    ax.grid(axis="y", color="0.9")
    fig.legend(loc="outside right upper", frameon=False)
    return fig


# --------------------------------------------------------------------------------------------
# 2. Parity + residuals + histogram with the Fisher envelope
# --------------------------------------------------------------------------------------------
def _binned_median(x, y, edges):
    idx = np.searchsorted(edges, x, side="right") - 1
    out = np.full(len(edges) - 1, np.nan)
    for b in range(len(edges) - 1):  # loop over a handful of bins, not spectra
        sel = idx == b
        if sel.any():
            out[b] = np.median(y[sel])
    return out


def plot_parity(
    true,
    pred,
    *,
    snr=None,
    sigma_min=None,
    envelope=None,
    label: str = "log_g",
    model_name: str = "model",
    n_hist_bins: int = 60,
) -> Figure:
    """Predicted vs true, residual vs SNR with the ±σ_min envelope, and the residual histogram.

    Parameters
    ----------
    true, pred : (N,) label values, in label units.
    snr : (N,) per-spectrum SNR (needed for the residual-vs-SNR panel).
    sigma_min : (N,) Cramér-Rao σ_min of each test spectrum (label units), optional. The residual
        panel shows ±σ_min binned in SNR, and the histogram overlays the residual density an
        efficient unbiased estimator would have (a mixture of N(0, σ_min,i²)).
    envelope : (snr_grid, sigma_grid) alternative to ``sigma_min``: a curve σ_min(SNR).
    """
    t = _arr(true, "true", finite=True)
    p = _arr(pred, "pred", length=len(t), finite=True)
    if len(t) < 2:
        raise InputError("need at least 2 points", field="true", value=len(t))
    res = p - t
    s = None if snr is None else _arr(snr, "snr", length=len(t))
    sig = None if sigma_min is None else _arr(sigma_min, "sigma_min", length=len(t))
    colour = model_color(model_name)
    fig = _new_figure((12.0, 3.9))
    ax1, ax2, ax3 = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.0, 1.25, 0.9]})
    # parity
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    if s is not None:
        sc = ax1.scatter(t, p, c=np.log10(np.clip(s, 1e-3, None)), s=6, cmap="viridis", alpha=0.7, lw=0)
        fig.colorbar(sc, ax=ax1, label=r"$\log_{10}$ SNR", pad=0.01)
    else:
        ax1.scatter(t, p, s=6, color=colour, alpha=0.6, lw=0)
    ax1.plot([lo, hi], [lo, hi], color="k", lw=1)
    ax1.set_xlim(lo, hi)
    ax1.set_ylim(lo, hi)
    ax1.set_aspect("equal")
    lt = _label_text(label)
    ax1.set_xlabel(f"true {lt}")
    ax1.set_ylabel(f"predicted {lt}")
    ss_res = float(np.sum(res**2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    ax1.set_title(f"{model_name}: $R^2$={r2:.3f}, MAE={np.mean(np.abs(res)):.3f}")
    # residual vs SNR (or vs true label when no SNR)
    xs = s if s is not None else t
    ax2.scatter(xs, res, s=5, color=colour, alpha=0.35, lw=0, label="residual")
    ax2.axhline(0, color="k", lw=0.8)
    if s is not None:
        pos = s[np.isfinite(s) & (s > 0)]
        edges = np.geomspace(pos.min(), pos.max() * 1.0001, 13) if len(pos) > 1 else np.array([1.0, 2.0])
        centres = np.sqrt(edges[:-1] * edges[1:])
        ax2.plot(centres, _binned_median(s, res, edges), color="k", lw=1.5, label="binned median")
        if sig is not None:
            env = _binned_median(s, sig, edges)
            ax2.plot(centres, env, color="0.3", lw=1.5, ls="--", label=r"$\pm\sigma_\mathrm{min}$ (CRLB)")
            ax2.plot(centres, -env, color="0.3", lw=1.5, ls="--")
        _log_snr_axis(ax2, edges[0], edges[-1])
        ax2.set_xlabel("per-spectrum SNR")
    else:
        ax2.set_xlabel(f"true {lt}")
    if envelope is not None:
        ex = _arr(envelope[0], "envelope[0]")
        ey = _arr(envelope[1], "envelope[1]", length=len(ex))
        ax2.plot(ex, ey, color="0.3", lw=1.5, ls=":", label=r"$\pm\sigma_\mathrm{min}$(SNR)")
        ax2.plot(ex, -ey, color="0.3", lw=1.5, ls=":")
    lim = float(np.nanpercentile(np.abs(res), 99.5)) * 1.15 or 1.0
    ax2.set_ylim(-lim, lim)
    ax2.set_ylabel(f"predicted - true {lt}")
    ax2.legend(loc="upper right", markerscale=3)
    ax2.set_title("residual vs SNR with the Cramér-Rao envelope")
    # histogram
    bins = np.linspace(-lim, lim, n_hist_bins + 1)
    ax3.hist(res, bins=bins, density=True, color=colour, alpha=0.6, label="residuals")
    if sig is not None:
        grid = 0.5 * (bins[:-1] + bins[1:])
        sg = np.clip(sig[np.isfinite(sig)], 1e-12, None)
        dens = np.mean(np.exp(-0.5 * (grid[:, None] / sg[None, :]) ** 2) / (np.sqrt(2 * np.pi) * sg[None, :]), axis=1)
        ax3.plot(grid, dens, color="0.2", lw=1.5, ls="--", label="efficient unbiased\n(CRLB mixture)")
    ax3.axvline(0, color="k", lw=0.8)
    ax3.set_xlabel(f"predicted - true {lt}")
    ax3.set_ylabel("density")
    ax3.set_title(f"bias {np.mean(res):+.3f}, RMSE {np.sqrt(np.mean(res**2)):.3f}")
    ax3.legend(loc="upper left")
    return fig


# --------------------------------------------------------------------------------------------
# 3. Scaling curve
# --------------------------------------------------------------------------------------------
def _count_text(v: float) -> str:
    """200 -> '200', 50000 -> '50k', 1000000 -> '1M'."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def plot_scaling(table, *, model_col="model", size_col="n_train", metric_col="r2", lo_col=None, hi_col=None,
                 label: str = "log_g", reference=None) -> Figure:
    """Test R² vs training-set size (log x), one line per model.

    ``table`` is a DataFrame (or dict of columns) with one row per (model, size). Optional
    ``lo_col``/``hi_col`` give an uncertainty band. ``reference`` is an optional second table with
    the same columns drawn as open markers (e.g. the paper's values, labelled as such by the caller).
    """
    import pandas as pd

    df = pd.DataFrame(table)
    for col in (model_col, size_col, metric_col):
        if col not in df.columns:
            raise InputError("missing column in the scaling table", field=col, value=list(df.columns))
    if df.empty:
        raise InputError("the scaling table is empty", field="table")
    fig = _new_figure((6.0, 4.2))
    ax = fig.add_subplot()
    names = list(dict.fromkeys(df[model_col]))
    styles = _styles(names)
    for name in names:
        d = df[df[model_col] == name].sort_values(size_col)
        st = styles[name]
        ax.plot(d[size_col], d[metric_col], color=st["color"], marker=st["marker"], ls=st["linestyle"],
                lw=1.6, ms=6, label=name)
        if lo_col and hi_col and lo_col in d and hi_col in d:
            ax.fill_between(d[size_col], d[lo_col], d[hi_col], color=st["color"], alpha=0.2, lw=0)
    if reference is not None:
        ref = pd.DataFrame(reference)
        for name in dict.fromkeys(ref[model_col]):
            d = ref[ref[model_col] == name].sort_values(size_col)
            c = model_color(name)
            ax.plot(d[size_col], d[metric_col], color=c, marker=model_marker(name), mfc="none", ls=":", lw=1,
                    label=f"{name}")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    sizes = np.unique(np.asarray(df[size_col], dtype=float))
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _count_text(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("training-set size (spectra)")
    ax.set_ylabel(f"test $R^2$ of {_label_text(label).split(' [')[0]}")
    ax.set_title("scaling with training-set size")
    ax.grid(True, which="both", color="0.92")
    ax.legend(loc="best")
    return fig


# --------------------------------------------------------------------------------------------
# 4. Ablation bars and sweep importances
# --------------------------------------------------------------------------------------------
def plot_ablation(table, *, param_col="param", value_col="value", metric_col="r2", err_col=None,
                  count_col=None, metric_label="validation $R^2$", title="architecture / tokenisation ablation") -> Figure:
    """Bars of a metric per setting, one panel per ablated parameter, with error bars.

    ``table``: rows (param, value, metric[, err][, n]), e.g. from :func:`specvit.evaluate.sweep.ablation_table`
    or a hand-made ablation (param="tokenizer", value="c1d"/"sw"). The best bar of each panel is outlined.
    """
    import pandas as pd

    df = pd.DataFrame(table)
    for col in (param_col, value_col, metric_col):
        if col not in df.columns:
            raise InputError("missing column in the ablation table", field=col, value=list(df.columns))
    if df.empty:
        raise InputError("the ablation table is empty", field="table")
    params = list(dict.fromkeys(df[param_col]))
    fig = _new_figure((max(3.0, 2.6 * len(params)), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(params), sharey=True))
    colours = list(OKABE_ITO.values())[1:]
    for k, (ax, prm) in enumerate(zip(axes, params)):
        d = df[df[param_col] == prm]
        try:
            d = d.assign(_key=pd.to_numeric(d[value_col])).sort_values("_key")
        except (ValueError, TypeError):
            pass
        xs = np.arange(len(d))
        y = d[metric_col].to_numpy(float)
        err = d[err_col].to_numpy(float) if err_col and err_col in d else None
        bars = ax.bar(xs, y, yerr=err, color=colours[k % len(colours)], alpha=0.85, capsize=3,
                      edgecolor="k", linewidth=0.5)
        if np.isfinite(y).any():
            bars[int(np.nanargmax(y))].set_linewidth(2.0)
        ax.set_xticks(xs)
        texts = [str(v) for v in d[value_col]]
        long = len(d) > 4 or max(len(t) for t in texts) * len(d) > 24
        ax.set_xticklabels(texts, rotation=30 if long else 0, ha="right" if long else "center")
        ax.set_xlabel(str(prm))
        if count_col and count_col in d:
            for xi, ni in zip(xs, d[count_col]):
                ax.annotate(f"n={int(ni)}", (xi, 0), textcoords="offset points", xytext=(0, 4),
                            ha="center", fontsize=8, color="k")
        ax.grid(axis="y", color="0.92")
    axes[0].set_ylabel(metric_label)
    fig.suptitle(title)
    return fig


def plot_importance(importances: Mapping[str, float], *, title="hyper-parameter importance (PED-ANOVA)") -> Figure:
    """Horizontal bars of hyper-parameter importances (e.g. ``optuna.importance.get_param_importances``)."""
    if not importances:
        raise InputError("no importances to plot", field="importances")
    names = list(importances)
    vals = np.array([float(importances[n]) for n in names])
    order = np.argsort(vals)
    fig = _new_figure((5.0, 0.45 * len(names) + 1.2))
    ax = fig.add_subplot()
    ax.barh(np.arange(len(names)), vals[order], color=OKABE_ITO["blue"])
    ax.set_yticks(np.arange(len(names)))
    ax.set_yticklabels([names[i] for i in order])
    ax.set_xlabel("importance (normalised to sum 1)")
    ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------------
# 5. Noise vs wavelength per magnitude: plot_noise_vs_wavelength, defined next to the observer's
#    noise_vs_wavelength in specvit.observe.calibrate (the calibrate-snr command draws it too)
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# 6. Attention over the spectrum
# --------------------------------------------------------------------------------------------
def plot_attention(patch_wave, attention, *, wave=None, flux=None, lines=None, layer_labels=None,
                   title="SpecViT attention over the spectrum") -> Figure:
    """Attention per patch (CLS attention or rollout) over the spectrum, strongest lines marked.

    Parameters
    ----------
    patch_wave : (n_tokens,) central wavelength of each patch, Angstrom.
    attention : (n_tokens,) or (n_maps, n_tokens): e.g. rollout, or CLS attention of each layer.
    wave, flux : optional spectrum (n_wave,) drawn in the top panel.
    lines : {name: (wavelengths...)} to mark, default :data:`STRONG_LINES_VACUUM_A`.
    """
    pw = _arr(patch_wave, "patch_wave", finite=True)
    a = np.asarray(attention, dtype=float)
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[1] != len(pw):
        raise InputError(f"attention must be (n_tokens,) or (n_maps, {len(pw)})", field="attention",
                         value=tuple(np.shape(attention)))
    lines = STRONG_LINES_VACUUM_A if lines is None else lines
    fig = _new_figure((9.0, 5.0 if flux is not None else 3.4))
    if flux is not None:
        if wave is None:
            raise InputError("flux needs its wave", field="wave")
        w = _arr(wave, "wave")
        f = _arr(flux, "flux", length=len(w))
        ax0, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
        ax0.plot(w, f, color="k", lw=0.6)
        ax0.set_ylabel("normalised flux")
        axes = (ax0, ax)
    else:
        ax = fig.add_subplot()
        axes = (ax,)
    cmap = __import__("matplotlib").colormaps["viridis"]
    width = np.median(np.diff(pw)) if len(pw) > 1 else 1.0
    for i, row in enumerate(a):
        rel = len(pw) * row / np.nansum(row) if np.nansum(row) > 0 else row  # 1 = uniform attention
        lab = layer_labels[i] if layer_labels is not None else (None if len(a) == 1 else f"map {i}")
        if len(a) == 1:
            ax.fill_between(pw, 1.0, rel, step="mid", color="0.35", lw=0)
            ax.step(pw, rel, where="mid", color="0.2", lw=0.8)
        else:
            ax.step(pw, rel, where="mid", color=cmap(i / max(1, len(a) - 1) * 0.9), lw=1, label=lab)
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":", label="uniform")
    colours = [c for k, c in OKABE_ITO.items() if k != "yellow"][1:] + [OKABE_ITO["black"]]
    lo, hi = float(pw.min() - width), float(pw.max() + width)
    for k, (name, wls) in enumerate(lines.items()):
        c = colours[k % len(colours)]
        for j, wl in enumerate(wls):
            if lo <= wl <= hi:
                for axx in axes:
                    axx.axvline(wl, color=c, lw=0.9, ls="--", alpha=0.9, label=name if (axx is ax and j == 0) else None)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("wavelength [Å] (vacuum)")
    ax.set_ylabel("attention per patch / uniform")
    ax.legend(loc="upper left", ncol=4, fontsize=8)
    axes[0].set_title(title)
    return fig


def plot_sigma_vs_posterior(network_sigma: Mapping[str, np.ndarray], posterior_sigma: np.ndarray, *,
                            label_names, prior_sd=None, title: str | None = None) -> Figure:
    """Per-spectrum 1σ of each network against the posterior sd of the same spectrum, one panel per label.

    Parameters
    ----------
    network_sigma : {name: (N, L) array} 1σ in label units (e.g. the calibrated ``<label>_err`` of
        ``specvit predict``), rows aligned with ``posterior_sigma``.
    posterior_sigma : (N, L) posterior standard deviations (``<label>_sd`` of ``specvit baseline bayes``).
    label_names : the L labels (column order).
    prior_sd : optional (L,) sd of the prior, drawn as a dotted line (a network that has learned nothing
        predicts about this).
    One row per network, one column per label; log-log axes, the 1:1 line dashed; each panel gives the
    network's median ratio σ_net / σ_post.
    """
    names = list(label_names)
    post = _arr(posterior_sigma, "posterior_sigma", ndim=2)
    if post.shape[1] != len(names):
        raise InputError(f"posterior_sigma has {post.shape[1]} columns for {len(names)} labels",
                         field="posterior_sigma", value=post.shape)
    nets = {}
    for name, sig in network_sigma.items():
        a = _arr(sig, f"network_sigma[{name!r}]", ndim=2)
        if a.shape != post.shape:
            raise InputError("network and posterior sigmas must have the same shape (rows aligned)",
                             field=f"network_sigma[{name!r}]", value=(a.shape, post.shape))
        nets[name] = a
    from matplotlib.ticker import NullFormatter

    styles = _styles(list(nets))
    nrow, ncol = max(1, len(nets)), len(names)
    fig = _new_figure((2.9 * ncol, 2.7 * nrow + 0.4))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for j, lab in enumerate(names):
        y0 = post[:, j]
        vals = [y0] + [a[:, j] for a in nets.values()]
        good = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in vals])
        lo, hi = (np.quantile(good, 0.001) / 1.3, np.quantile(good, 0.999) * 1.3) if good.size else (0.1, 1.0)
        for i, (name, a) in enumerate(nets.items()):
            ax = axes[i, j]
            ok = np.isfinite(a[:, j]) & np.isfinite(y0) & (a[:, j] > 0) & (y0 > 0)
            ratio = np.median(a[ok, j] / y0[ok]) if ok.any() else np.nan
            st = styles[name]
            ax.scatter(y0[ok], a[ok, j], s=5, alpha=0.35, color=st["color"], marker="o", lw=0)
            ax.plot([lo, hi], [lo, hi], color="0.3", ls="--", lw=1)
            if prior_sd is not None:
                ps = float(np.asarray(prior_sd, dtype=float)[j])
                ax.axhline(ps, color="0.5", ls=":", lw=1)
                ax.axvline(ps, color="0.5", ls=":", lw=1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            for axis in (ax.xaxis, ax.yaxis):  # a narrow range would label every minor tick, overlapping
                axis.set_minor_formatter(NullFormatter())
            ax.text(0.97, 0.04, f"{name}\nmedian σ/sd = {ratio:.2f}", transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=8, color=st["color"])
            text = _label_text(lab)
            if i == nrow - 1:
                ax.set_xlabel(f"posterior sd, {text}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{name} σ", fontsize=9)
            if i == 0:
                ax.set_title(text, fontsize=10)
    fig.suptitle(title or "network σ vs the posterior sd of the same noisy spectrum (dashed: 1:1; dotted: prior sd)")
    return fig
