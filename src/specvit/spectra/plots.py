"""Figures of spectra and of the emulator validation (functions return matplotlib Figures)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from specvit.labels import LABEL_NAMES


def _fmt_labels(labels) -> str:
    t, g, m, a, c = (float(x) for x in labels)
    return f"Teff={t:.0f} K, log g={g:.2f}, [M/H]={m:+.2f}, [a/M]={a:+.2f}, [C/M]={c:+.2f}"


def plot_spectrum(wave, flux, cont, labels):
    """Two panels: F_lambda with its continuum, and the normalised flux (vacuum wavelengths)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 1, figsize=(11, 6), sharex=True, constrained_layout=True)
    ax[0].plot(wave, flux, lw=0.5, color="k", label="F_lambda")
    ax[0].plot(wave, cont, lw=1.0, color="C1", label="continuum")
    ax[0].set_ylabel("F_lambda [erg s-1 cm-2 A-1]")
    ax[0].legend(loc="lower right")
    ax[0].set_title(_fmt_labels(labels))
    ax[1].plot(wave, flux / cont, lw=0.5, color="k")
    ax[1].set_ylabel("F / continuum")
    ax[1].set_xlabel("vacuum wavelength [A]")
    return fig


def plot_validation(wave, residual, labels, rms, *, noise_level: float = 0.006):
    """Residual rms vs labels and the pixel-wise residual spread of held-out spectra."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for j, ax in enumerate(axes.flat[:5]):
        ax.scatter(labels[:, j], rms, s=10, c="k")
        ax.axhline(noise_level, color="C3", ls="--", lw=1, label="mag-18 noise (0.006)")
        ax.axhline(0.002, color="C2", ls=":", lw=1, label="target 0.002")
        ax.set_yscale("log")
        ax.set_xlabel(LABEL_NAMES[j])
        ax.set_ylabel("rms(emulator - PySME), F/C")
    axes.flat[0].legend(fontsize=8)
    ax = axes.flat[5]
    p = np.percentile(np.abs(residual), [50, 95], axis=0)
    ax.plot(wave, p[1], lw=0.4, color="C0", label="95th pct |residual|")
    ax.plot(wave, p[0], lw=0.4, color="k", label="median |residual|")
    ax.axhline(noise_level, color="C3", ls="--", lw=1)
    ax.set_xlabel("vacuum wavelength [A]")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.suptitle(f"emulator vs {len(rms)} held-out PySME spectra")
    return fig


def plot_examples(wave, truth, pred, labels, *, n: int = 3):
    """A few held-out spectra: PySME and emulator, with residuals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(truth))
    fig, axes = plt.subplots(n, 1, figsize=(12, 2.6 * n), sharex=True, constrained_layout=True, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(wave, truth[i], lw=0.5, color="k", label="PySME")
        ax.plot(wave, pred[i], lw=0.5, color="C1", label="emulator")
        ax.plot(wave, truth[i] - pred[i] + 0.15, lw=0.5, color="C3", label="difference + 0.15")
        ax.set_title(_fmt_labels(labels[i]), fontsize=9)
        ax.set_ylabel("F / C")
    axes[0, 0].legend(fontsize=8, loc="lower left", ncol=3)
    axes[-1, 0].set_xlabel("vacuum wavelength [A]")
    return fig


def save_validation_figures(model, data: dict, report: dict, out_dir: Path) -> list[Path]:
    from specvit.atomic import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    L, dn = report["_labels"], report["_residual"]
    figs = {"emulator_validation.png": plot_validation(model.wave, dn, L, np.asarray(report["rms_per_spectrum"]))}
    sel = data["split"] == "val"
    order = np.argsort(L[:, 0])
    pick = order[np.linspace(0, len(order) - 1, min(3, len(order))).astype(int)]
    truth = data["norm"][sel][pick]
    figs["emulator_examples.png"] = plot_examples(model.wave, truth, truth + dn[pick], L[pick])  # dn = pred - truth
    figs["emulator_physics.png"] = plot_physics_checks(model)
    paths = []
    for name, fig in figs.items():
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        paths.append(out_dir / name)
    return paths


def plot_physics_checks(model):
    """The issue-3 physics checks drawn from a spectral model (normalised flux, vacuum wavelengths)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("Ca II triplet vs log g (4500 K, [M/H]=0)", (8480, 8680), [[4500, g, 0, 0, 0] for g in (1, 3, 5)],
         [f"log g={g}" for g in (1, 3, 5)]),
        ("Na I 8185/8197 vs log g (4500 K)", (8175, 8205), [[4500, g, 0, 0, 0] for g in (1, 3, 5)],
         [f"log g={g}" for g in (1, 3, 5)]),
        ("TiO vs T_eff (log g 2, [M/H]=0)", (7050, 7300), [[t, 2, 0, 0, 0] for t in (3800, 4200, 5000)],
         [f"{t} K" for t in (3800, 4200, 5000)]),
        # [a/M] = +0.25 keeps [C/M] = +0.5 inside the domain (C/O = 0.95 < 1)
        ("CN vs [C/M] (4500 K, log g 1.5, [a/M] +0.25)", (7870, 8000), [[4500, 1.5, 0, 0.25, c] for c in (-0.5, 0, 0.5)],
         [f"[C/M]={c:+}" for c in (-0.5, 0, 0.5)]),
        ("metal lines vs [M/H] (5000 K, log g 3)", (8670, 8720), [[5000, 3, m, 0, 0] for m in (0, -1, -2)],
         [f"[M/H]={m}" for m in (0, -1, -2)]),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.4 * len(panels)), constrained_layout=True)
    for ax, (title, (lo, hi), labs, names) in zip(axes, panels):
        n = model.normalized_flux(np.asarray(labs, dtype=float))
        m = (model.wave >= lo) & (model.wave <= hi)
        for i in range(len(labs)):
            ax.plot(model.wave[m], n[i, m], lw=0.7, label=names[i])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("F / C")
        ax.legend(fontsize=8, loc="lower right", ncol=3)
    axes[-1].set_xlabel("vacuum wavelength [A]")
    fig.suptitle(f"{type(model).__name__} {getattr(model, 'version', '')}: physics checks")
    return fig
