"""Ridge regression on standardised noisy flux, from streamed sufficient statistics.

The paper's Ridge baseline (SPEC section 6: standardised inputs, best alpha 1e5 on 1M
spectra, test R²(log g) = 0.50). Here the fit never holds the design matrix: it
accumulates, chunk by chunk,

    n,  Σ(x − c),  Σ(x − c)(x − c)ᵀ,  Σ(y − d),  Σ(x − c)(y − d)ᵀ,  Σ(y − d)²

about a shift (c, d) taken from the first chunk (numerically stable), in float64. For
4096 pixels that is one 4096 × 4096 float64 matrix (134 MB) whatever the number of
spectra, so 1M × 4096 (16 GB as float32) fits easily. Cost: N·D² flops to accumulate.

The objective is the usual one (as scikit-learn's ``Ridge`` on ``StandardScaler``
inputs, population standard deviation)::

    min_w  ‖y_c − Z w‖² + α ‖w‖²,   Z = (X − μ) / σ,   intercept = ȳ

so the solution is w(α) = (ZᵀZ + αI)⁻¹ Zᵀy_c. One eigendecomposition ZᵀZ = V Λ Vᵀ gives
every α on the grid: w(α) = V diag(1 / (λ + α)) Vᵀ Zᵀy_c (Hoerl & Kennard 1970; Hastie,
Tibshirani & Friedman, ESL §3.4.1). α is chosen per label by R² on the validation set.
Note α multiplies a SUM of squares, so the best α grows with the training size.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specvit.baselines.common import (
    DataConfig,
    checked_labels,
    finish_run,
    iter_noisy_chunks,
    iter_training_chunks,
    open_splits,
    prediction_table,
)
from specvit.errors import InputError

#: Default alpha grid: 1e-2 .. 1e8, two points per decade.
DEFAULT_ALPHAS = [float(a) for a in np.logspace(-2, 8, 21)]


@dataclass
class RidgeConfig:
    """``specvit baseline ridge`` config (YAML + ``--set key=value``)."""

    data: DataConfig
    out_dir: str = "runs/ridge"  #: output folder
    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))  #: grid searched on validation
    alpha: float | None = None  #: fixed alpha for every label (skips the validation search)
    eval_seed: int = 0  #: bootstrap seed of the evaluation

    def __post_init__(self):
        alphas = [self.alpha] if self.alpha is not None else self.alphas
        if not alphas or any(not (a > 0) for a in alphas):
            raise InputError("alphas must be a non-empty list of values > 0", field="alphas", value=alphas)


# --------------------------------------------------------------------------- statistics
class RidgeStats:
    """Streaming sufficient statistics for multi-output ridge regression.

    ``update(X, Y)`` with X (n, D), Y (n, L) in any number of chunks gives the same
    statistics (to rounding) as one call on all rows.
    """

    def __init__(self, n_features: int, n_targets: int):
        self.n = 0
        self.D, self.L = int(n_features), int(n_targets)
        self.shift_x = None
        self.shift_y = None
        self.sx = np.zeros(self.D)
        self.sxx = np.zeros((self.D, self.D))
        self.sy = np.zeros(self.L)
        self.sxy = np.zeros((self.D, self.L))
        self.syy = np.zeros(self.L)

    def update(self, X, Y) -> "RidgeStats":
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
        if X.ndim != 2 or X.shape[1] != self.D:
            raise InputError(f"X must be (n, {self.D})", field="X", value=X.shape)
        if Y.shape[1] != self.L:
            raise InputError(f"Y must be (n, {self.L})", field="Y", value=Y.shape)
        if len(X) == 0:
            return self
        if self.shift_x is None:
            self.shift_x = X.mean(axis=0)
            self.shift_y = Y.mean(axis=0)
        Xc = X - self.shift_x
        Yc = Y - self.shift_y
        self.n += len(X)
        self.sx += Xc.sum(axis=0)
        self.sxx += Xc.T @ Xc  # numpy dispatches A.T @ A to a symmetric rank-k update
        self.sy += Yc.sum(axis=0)
        self.sxy += Xc.T @ Yc
        self.syy += np.einsum("ij,ij->j", Yc, Yc)
        return self

    # ---- centred moments
    @property
    def mean_x(self) -> np.ndarray:
        return self.shift_x + self.sx / self.n

    @property
    def mean_y(self) -> np.ndarray:
        return self.shift_y + self.sy / self.n

    def scatter(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scatter matrices about the means: Σ(x−x̄)(x−x̄)ᵀ, Σ(x−x̄)(y−ȳ)ᵀ, Σ(y−ȳ)²."""
        if self.n < 2:
            raise InputError("ridge needs at least 2 training rows", field="n", value=self.n)
        mx, my = self.sx / self.n, self.sy / self.n
        sxx = self.sxx - self.n * np.outer(mx, mx)
        sxy = self.sxy - self.n * np.outer(mx, my)
        syy = self.syy - self.n * my**2
        return sxx, sxy, syy


@dataclass
class RidgePath:
    """Ridge solutions for a grid of alphas, in raw (unstandardised) pixel units."""

    alphas: np.ndarray  #: (A,)
    coef: np.ndarray  #: (A, D, L) raw-flux coefficients
    intercept: np.ndarray  #: (A, L)
    train_r2: np.ndarray  #: (A, L) in-sample R²
    x_mean: np.ndarray  #: (D,)
    x_scale: np.ndarray  #: (D,) population std; 0 for constant pixels (left out of the fit)

    def predict(self, X) -> np.ndarray:
        """Predictions of every alpha: (n, A, L)."""
        X = np.asarray(X, dtype=np.float64)
        A, D, L = self.coef.shape
        out = X @ self.coef.transpose(1, 0, 2).reshape(D, A * L)
        return out.reshape(len(X), A, L) + self.intercept[None]


def solve_path(stats: RidgeStats, alphas, *, rel_var_floor: float = 1e-12) -> RidgePath:
    """Solve standardised ridge for every alpha with one eigendecomposition."""
    alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
    sxx, sxy, syy = stats.scatter()
    var = np.diag(sxx) / stats.n
    keep = var > rel_var_floor * max(float(var.max()), np.finfo(float).tiny)
    scale = np.where(keep, np.sqrt(np.where(keep, var, 1.0)), 0.0)
    s = scale[keep]
    C = sxx[np.ix_(keep, keep)] / np.outer(s, s)  # ZᵀZ
    b = sxy[keep] / s[:, None]  # Zᵀy_c   (K, L)
    lam, V = np.linalg.eigh(C)
    lam = np.clip(lam, 0.0, None)
    Vb = V.T @ b  # (K, L)
    D, L, A = stats.D, stats.L, len(alphas)
    coef = np.zeros((A, D, L))
    train_r2 = np.empty((A, L))
    for i, a in enumerate(alphas):  # A small (grid); each step is one (K, K) @ (K, L) product
        g = Vb / (lam + a)[:, None]  # Vᵀw
        w = V @ g  # standardised coefficients (K, L)
        coef[i, keep] = w / s[:, None]
        # in-sample residual sum of squares: yᵀy − 2 wᵀb + wᵀ C w
        ss_res = syy - 2.0 * np.einsum("kl,kl->l", w, b) + np.einsum("k,kl->l", lam, g**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            train_r2[i] = np.where(syy > 0, 1.0 - ss_res / syy, np.nan)
    x_mean = stats.mean_x
    intercept = stats.mean_y[None, :] - np.einsum("d,adl->al", x_mean, coef)
    return RidgePath(alphas=alphas, coef=coef, intercept=intercept, train_r2=train_r2, x_mean=x_mean, x_scale=scale)


# --------------------------------------------------------------------------- fitted model
@dataclass
class RidgeModel:
    """A fitted ridge model: ``predict(flux) = flux @ coef + intercept`` (raw flux units)."""

    label_names: list[str]
    coef: np.ndarray  #: (D, L)
    intercept: np.ndarray  #: (L,)
    alpha: np.ndarray  #: (L,) chosen alpha per label
    x_mean: np.ndarray  #: (D,) standardisation mean
    x_scale: np.ndarray  #: (D,) standardisation std (0 = pixel left out)
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_path(cls, path: RidgePath, best: np.ndarray, label_names, meta=None) -> "RidgeModel":
        L = len(label_names)
        coef = np.stack([path.coef[best[j], :, j] for j in range(L)], axis=1)
        intercept = np.array([path.intercept[best[j], j] for j in range(L)])
        return cls(list(label_names), coef, intercept, path.alphas[best], path.x_mean, path.x_scale, dict(meta or {}))

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.coef.shape[0]:
            raise InputError(f"flux must be (n, {self.coef.shape[0]})", field="flux", value=X.shape)
        return X @ self.coef + self.intercept

    def save(self, path) -> Path:
        """Save as ``.npz`` (format_version 1) atomically."""
        import json

        from specvit.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, format_version=np.array(1), label_names=np.array(self.label_names), coef=self.coef,
                         intercept=self.intercept, alpha=self.alpha, x_mean=self.x_mean, x_scale=self.x_scale,
                         meta=np.array(json.dumps(self.meta, default=str)))
        return path

    @classmethod
    def load(cls, path) -> "RidgeModel":
        import json

        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read ridge model: {e}", file=path) from None
        with z:
            if "format_version" not in z or int(z["format_version"]) != 1:
                raise InputError("not a specvit ridge model (format_version 1)", file=path, field="format_version")
            return cls([str(s) for s in z["label_names"]], z["coef"], z["intercept"], z["alpha"], z["x_mean"],
                       z["x_scale"], json.loads(str(z["meta"])))


# --------------------------------------------------------------------------- the run
def _r2_cols(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """R² over the whole set along axis 0, for p of shape (n, ...) against t broadcastable."""
    ss_res = np.sum((p - t) ** 2, axis=0)
    ss_tot = np.sum((t - t.mean(axis=0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)


def run_ridge(cfg: RidgeConfig, *, log=print) -> dict:
    """Fit on the training split (streamed), choose alpha on validation, predict the test split.

    Writes ``ridge_model.npz``, ``predictions.csv``, ``metrics.json``, ``config.yaml`` in
    ``cfg.out_dir`` and returns the metrics dict.
    """
    d = cfg.data
    t0 = time.perf_counter()
    (train, val, test), (n_train, n_val, n_test) = open_splits(d)
    try:
        stats = RidgeStats(train.n_wave, len(d.labels))
        for x, y in iter_training_chunks(train, d, n_train):
            stats.update(x, y)
        t_stats = time.perf_counter() - t0
        alphas = [cfg.alpha] if cfg.alpha is not None else cfg.alphas
        path = solve_path(stats, alphas)
        t_solve = time.perf_counter() - t0 - t_stats
        log(f"ridge: statistics of {stats.n} rows x {stats.D} px in {t_stats:.1f} s; "
            f"{len(alphas)} alphas solved in {t_solve:.1f} s")

        yv = checked_labels(val, d.labels, n_val)
        pv = np.concatenate([path.predict(x) for _, x in iter_noisy_chunks(
            val, stop=n_val, noise_level=d.noise_level, seed=d.eval_noise_seed, chunk_rows=d.chunk_rows)])
        val_r2 = _r2_cols(yv[:, None, :], pv)  # (A, L)
        best = np.array([int(np.nanargmax(val_r2[:, j])) if np.isfinite(val_r2[:, j]).any() else 0
                         for j in range(len(d.labels))])
        for j, name in enumerate(d.labels):
            log(f"ridge: {name}: alpha = {path.alphas[best[j]]:g} (val R2 = {val_r2[best[j], j]:.4f})")
        model = RidgeModel.from_path(path, best, d.labels, meta={"n_train": stats.n, "noise_level": d.noise_level})
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / "ridge_model.npz")

        pt = np.concatenate([model.predict(x) for _, x in iter_noisy_chunks(
            test, stop=n_test, noise_level=d.noise_level, seed=d.eval_noise_seed, chunk_rows=d.chunk_rows)])
        df = prediction_table(test, n_test, d.labels, pt)
        seconds = time.perf_counter() - t0
        extra = {
            "n_train_rows": int(n_train), "n_train_samples": int(stats.n), "n_val": int(n_val), "n_test": int(n_test),
            "alpha": {n: float(model.alpha[j]) for j, n in enumerate(d.labels)},
            "alpha_search": {
                "alphas": [float(a) for a in path.alphas],
                "val_r2": {n: [None if not np.isfinite(v) else float(v) for v in val_r2[:, j]]
                           for j, n in enumerate(d.labels)},
                "train_r2": {n: [None if not np.isfinite(v) else float(v) for v in path.train_r2[:, j]]
                             for j, n in enumerate(d.labels)},
            },
            "timings_s": {"statistics": t_stats, "solve": t_solve, "total": seconds},
        }
        return finish_run(out, cfg, "ridge", df, eval_seed=cfg.eval_seed, extra_metrics=extra, log=log)
    finally:
        for ds in (train, val, test):
            ds.close()
