"""Carry spectra synthesised with one line list over to a newer one, learned from pairs.

Why. Line-list version 2 adds the hydrogen Paschen series (P9-P30, see
:mod:`specvit.spectra.synthesis.hydrogen`) to version 1 (atoms, CN, TiO). PySME
evaluates every hydrogen line at every wavelength, so a version-2 spectrum costs
about four times a version-1 spectrum, and on the project's 2-core machine the
version-2 set grows by a few dozen spectra per session while ~230 version-1
spectra of the same design already exist. For a label set synthesised with both
lists, the change of the normalised flux is

    ln r(labels, lambda) = ln(norm_v2 / norm_v1),

which is smooth in the labels (hydrogen level populations and Stark widths vary
with T_eff and log g; [M/H] and [alpha/M] enter through the electron pressure)
and low-dimensional in wavelength (a handful of principal components reproduce
it to < 1e-4 rms on the project's pairs). The continuum does not change (lines
only), which :func:`fit_transfer` checks.

Model. ``ln r`` is projected on its K leading principal components (K: the
smallest reproducing the training pairs to ``pca_tol`` rms); each component is a
Gaussian process in the scaled labels (zero-mean after standardising, squared-
exponential kernel with one length scale per label, white noise), with the
hyperparameters of each component at the maximum of its marginal likelihood
(Rasmussen & Williams 2006, ch. 2 and 5). Gaussian processes rather than a
network: there are tens of pairs, and a GP's leave-one-out residuals come in
closed form (``alpha_i / [K^-1]_ii``, R&W eq. 5.12), which :func:`fit_transfer`
reports. Deterministic: no random draw (fixed initial hyperparameters, Adam,
float64).

Use. :func:`transfer_dataset` makes the training set of a version-2 emulator
from every exact version-2 spectrum plus, for each label set with only a
version-1 spectrum, ``norm_v1 * exp(ln r)``; ``specvit emulator train
--transfer-from OLD_DIR`` does this. The emulator's error against exact spectra
is then measured on held-out version-2 spectra, never on transferred ones alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from specvit.errors import InputError
from specvit.labels import LABEL_NAMES
from specvit.spectra.synthesis.design import training_box


def _scaled(labels: np.ndarray) -> np.ndarray:
    """Labels scaled to [-0.5, 0.5] over the emulator's training box."""
    box = training_box()
    lo = np.array([box[n][0] for n in LABEL_NAMES])
    hi = np.array([box[n][1] for n in LABEL_NAMES])
    return (np.asarray(labels, dtype=np.float64) - lo) / (hi - lo) - 0.5


@dataclass
class _GP:
    """One standardised output; squared-exponential ARD kernel + white noise."""

    x: np.ndarray  # (n, d) scaled labels
    alpha: np.ndarray  # (n,) K^-1 z
    length: np.ndarray  # (d,)
    signal: float
    noise: float
    y_mean: float
    y_std: float
    loo_residual: np.ndarray  # (n,) in output units

    def kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = (a[:, None, :] - b[None, :, :]) / self.length
        return self.signal ** 2 * np.exp(-0.5 * (d ** 2).sum(-1))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.kernel(x, self.x) @ self.alpha * self.y_std + self.y_mean


def _fit_gp(x: np.ndarray, y: np.ndarray, *, iters: int, lr: float = 0.05) -> _GP:
    """Maximum-marginal-likelihood hyperparameters (Adam on their logs), then the closed-form LOO residuals."""
    y_mean, y_std = float(y.mean()), float(y.std()) or 1.0
    z = torch.as_tensor((y - y_mean) / y_std, dtype=torch.float64)[:, None]
    xt = torch.as_tensor(x, dtype=torch.float64)
    n, d = x.shape
    log_len = torch.zeros(d, dtype=torch.float64, requires_grad=True)  # length 1 = the whole label range
    log_sig = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    log_noise = torch.full((1,), np.log(1e-2), dtype=torch.float64, requires_grad=True)
    eye = torch.eye(n, dtype=torch.float64)

    def gram():
        dd = (xt[:, None, :] - xt[None, :, :]) / log_len.exp()
        return (2 * log_sig).exp() * torch.exp(-0.5 * (dd ** 2).sum(-1)) + ((2 * log_noise).exp() + 1e-10) * eye

    opt = torch.optim.Adam([log_len, log_sig, log_noise], lr=lr)
    for _ in range(iters):
        opt.zero_grad()
        chol = torch.linalg.cholesky(gram())
        nll = 0.5 * (z * torch.cholesky_solve(z, chol)).sum() + torch.log(torch.diagonal(chol)).sum()
        nll.backward()
        opt.step()
    with torch.no_grad():
        kinv = torch.cholesky_inverse(torch.linalg.cholesky(gram())).numpy()
    alpha = kinv @ z.numpy()[:, 0]
    loo = alpha / np.diag(kinv) * y_std  # y_i - mean of the LOO predictive (R&W eq. 5.12)
    return _GP(x=np.asarray(x, dtype=np.float64), alpha=alpha, length=log_len.detach().exp().numpy(),
               signal=float(log_sig.detach().exp()), noise=float(log_noise.detach().exp()), y_mean=y_mean,
               y_std=y_std, loo_residual=loo)


@dataclass
class LineListTransfer:
    """``ln(norm_new / norm_old)`` as a function of the labels (PCA + one Gaussian process per component)."""

    mean: np.ndarray  # (P,)
    basis: np.ndarray  # (K, P), orthonormal rows
    gps: list = field(repr=False)
    n_pairs: int = 0
    report: dict = field(default_factory=dict)

    def ln_ratio(self, labels: np.ndarray) -> np.ndarray:
        """(n, 5) labels -> (n, P) predicted ``ln(norm_new / norm_old)``."""
        x = _scaled(np.atleast_2d(labels))
        coef = np.stack([g.predict(x) for g in self.gps], axis=1)
        return self.mean + coef @ self.basis


def fit_transfer(labels: np.ndarray, norm_old: np.ndarray, norm_new: np.ndarray, *, pca_tol: float = 5e-5,
                 max_components: int = 24, iters: int = 300) -> LineListTransfer:
    """Fit :class:`LineListTransfer` on label sets synthesised with both line lists.

    ``labels`` (n, 5); ``norm_old``, ``norm_new`` (n, P) normalised flux on one wavelength grid.
    The report holds, per pair, the leave-one-out rms error of the predicted NEW normalised flux
    (closed-form GP LOO per component; the basis is kept fixed, so it slightly flatters) and the
    rms of the change itself (the error of using the old spectrum unchanged).
    """
    labels = np.asarray(labels, dtype=np.float64)
    norm_old = np.asarray(norm_old, dtype=np.float64)
    norm_new = np.asarray(norm_new, dtype=np.float64)
    n = len(labels)
    if norm_old.shape != norm_new.shape or norm_old.shape[0] != n:
        raise InputError("old and new spectra must pair up row by row on one grid", field="norm",
                         value=f"{norm_old.shape} vs {norm_new.shape} for {n} label sets")
    if n < 5:
        raise InputError("need at least 5 label sets synthesised with both line lists", field="n_pairs", value=n)
    if (norm_old <= 0).any() or (norm_new <= 0).any() or not (np.isfinite(norm_old).all() and np.isfinite(norm_new).all()):
        raise InputError("normalised flux must be finite and > 0 for a log ratio", field="norm")
    lr = np.log(norm_new / norm_old)
    mean = lr.mean(0)
    _, s, vt = np.linalg.svd(lr - mean, full_matrices=False)
    resid = np.sqrt(np.append(np.cumsum((s ** 2)[::-1])[::-1], 0.0) / lr.size)
    ok = np.flatnonzero(resid <= pca_tol)
    k = int(max(1, min(ok[0] if len(ok) else len(s), max_components, len(s))))
    basis = vt[:k]
    coef = (lr - mean) @ basis.T
    x = _scaled(labels)
    gps = [_fit_gp(x, coef[:, j], iters=iters) for j in range(k)]
    # LOO prediction of ln r for each pair (coefficients by closed-form LOO, basis fixed) -> new flux
    loo_coef = coef - np.stack([g.loo_residual for g in gps], axis=1)
    loo_new = norm_old * np.exp(mean + loo_coef @ basis)
    loo_rms = np.sqrt(((loo_new - norm_new) ** 2).mean(1))
    change_rms = np.sqrt(((norm_new - norm_old) ** 2).mean(1))
    report = {
        "n_pairs": n, "n_components": k, "pca_rms_ln_ratio": float(resid[k]),
        "loo_rms_norm": {"median": float(np.median(loo_rms)), "mean": float(loo_rms.mean()), "max": float(loo_rms.max())},
        "change_rms_norm": {"median": float(np.median(change_rms)), "mean": float(change_rms.mean()),
                            "max": float(change_rms.max())},
        "change_max_abs_norm": float(np.abs(norm_new - norm_old).max()),
        "gp_length_scales": [g.length.round(4).tolist() for g in gps],
        "method": "PCA of ln(norm_new/norm_old) + one ARD squared-exponential GP per component "
                  "(max marginal likelihood); LOO closed form, basis fixed",
    }
    return LineListTransfer(mean=mean, basis=basis, gps=gps, n_pairs=n, report=report)


def transfer_dataset(new: dict, old: dict, *, pca_tol: float = 5e-5, iters: int = 300, log=print):
    """Training data for an emulator of the NEW line list from exact NEW spectra plus transferred OLD ones.

    ``new`` and ``old`` are dicts from :func:`specvit.spectra.emulator_train.load_spectra` of the same
    design(s).
    The transfer is fitted on pairs outside the validation split only. Returns ``(data, held_out,
    transfer)``: ``data`` = every exact new spectrum (its split as in the design) plus every training-
    split old-only label set transferred (``data["source"]`` says which); ``held_out`` = the
    validation-split old-only label sets transferred (a second, transfer-dependent validation set, or
    None); ``transfer`` = the fitted :class:`LineListTransfer` (its ``report`` has the LOO errors).
    """
    if len(new["wave"]) != len(old["wave"]) or not np.allclose(new["wave"], old["wave"]):
        raise InputError("old and new spectra are on different wavelength grids", field="wave")
    pos_old = {s: i for i, s in enumerate(old["ids"])}
    pairs = [(i, pos_old[s]) for i, s in enumerate(new["ids"]) if s in pos_old]
    for i, j in pairs:
        if not np.allclose(new["labels"][i], old["labels"][j], rtol=0, atol=1e-6):
            raise InputError("the same id has different labels in the two directories", field="labels",
                             value=f"{new['ids'][i]}: {new['labels'][i].tolist()} vs {old['labels'][j].tolist()}")
        dc = float(np.abs(new["lncont"][i] - old["lncont"][j]).max())
        if dc > 1e-3:
            raise InputError("continua differ between the two line lists; the transfer assumes only lines changed",
                             field="lncont", value=f"{new['ids'][i]}: max |d ln C| = {dc:.3g}")
    fit_pairs = [(i, j) for i, j in pairs if new["split"][i] != "val"]
    if len(fit_pairs) < 5:
        raise InputError("need at least 5 training-split label sets synthesised with both line lists",
                         field="n_pairs", value=len(fit_pairs))
    ii, jj = map(np.array, zip(*fit_pairs))
    tr = fit_transfer(new["labels"][ii], old["norm"][jj], new["norm"][ii], pca_tol=pca_tol, iters=iters)
    if log:
        r = tr.report
        log(f"line-list transfer: {r['n_pairs']} pairs, {r['n_components']} components; LOO rms of the new "
            f"normalised flux median {r['loo_rms_norm']['median']:.2e} mean {r['loo_rms_norm']['mean']:.2e} max "
            f"{r['loo_rms_norm']['max']:.2e} (unchanged old spectrum: mean {r['change_rms_norm']['mean']:.2e}, "
            f"max {r['change_rms_norm']['max']:.2e})")
    only_old = np.flatnonzero(~np.isin(old["ids"], new["ids"]))
    transferred = old["norm"][only_old].astype(np.float64) * np.exp(tr.ln_ratio(old["labels"][only_old])) \
        if len(only_old) else np.zeros((0, len(old["wave"])))

    def rows(sel):
        return {"ids": old["ids"][only_old][sel], "labels": old["labels"][only_old][sel],
                "norm": transferred[sel].astype(np.float32), "lncont": old["lncont"][only_old][sel],
                "split": old["split"][only_old][sel]}

    is_val = old["split"][only_old] == "val"
    t_rows = rows(~is_val)
    data = {k: np.concatenate([new[k], t_rows[k]]) for k in ("ids", "labels", "norm", "lncont", "split")}
    data["source"] = np.array(["synthesised"] * len(new["ids"]) + ["transferred"] * len(t_rows["ids"]))
    data["wave"], data["resolution"] = new["wave"], new.get("resolution", 10000.0)
    held_out = None
    if is_val.any():
        held_out = rows(is_val)
        held_out.update(wave=new["wave"], resolution=data["resolution"])
    return data, held_out, tr
