"""Post-hoc calibration of the 1-sigma uncertainties of a Gaussian-head network (issue #14).

A network trained with ``loss.kind: gaussian_nll`` predicts a mean and a sigma per label. Its sigmas
are fitted on the training spectra and are usually too small or too large by a per-label factor
(the network over- or under-fits, the noise level of the test differs, ...). Here one scale s_j per
label is fitted on the VALIDATION split after training, and the calibrated sigma is
``s_j * sigma_raw``.

Methods (``method``), with z = (prediction - truth) / sigma_raw on the validation rows:

* ``coverage68`` (default): s_j = the 68.27 % quantile of |z_j|, so that exactly 68.27 % of the
  validation truths lie inside ``prediction ± s_j sigma_raw``. Chosen as the default because the
  target is coverage, and the residuals of these networks have heavy tails (a few spectra at low SNR
  are off by many sigma): a variance match lets those few rows set the scale of all the others.
* ``unit_variance``: s_j = sqrt(mean(z_j²)), the standardized residuals get unit variance (the
  maximum-likelihood scale of a Gaussian with the network's relative sigmas). Over-covers at 68 %
  when the tails are heavy.

The result is a small versioned JSON, ``calibration.json`` in the model directory (written by the
trainer at the end of training when the model is Gaussian and there is a validation split, or by
``specvit calibrate``), and :func:`specvit.train.predict.predict_dataset` applies it by default.
The file records the labels, the scales, the method, the validation rows it was fitted on and the
SHA-256 of the weights it belongs to, so a calibration of another model or another label set is
refused with an error naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specvit.atomic import write_text_atomic
from specvit.errors import InputError

#: file name of the calibration inside a model directory
CALIBRATION_FILE = "calibration.json"
FORMAT = "specvit-sigma-calibration"
FORMAT_VERSION = 1
METHODS = ("coverage68", "unit_variance")
#: two-sided Gaussian probability inside ±1 sigma (the coverage68 target)
P68 = math.erf(1 / math.sqrt(2))


def _check_arrays(y_true, y_pred, sigma, label_names):
    arrs = []
    for name, a in (("y_true", y_true), ("y_pred", y_pred), ("sigma", sigma)):
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2:
            raise InputError("must be (rows, labels)", field=name, value=a.shape)
        arrs.append(a)
    t, p, s = arrs
    if not (t.shape == p.shape == s.shape):
        raise InputError("y_true, y_pred and sigma must have the same shape", field="shape",
                         value=(t.shape, p.shape, s.shape))
    if len(label_names) != t.shape[1]:
        raise InputError(f"{len(label_names)} label names for {t.shape[1]} columns", field="label_names",
                         value=list(label_names))
    if t.shape[0] < 2:
        raise InputError("needs at least 2 rows to fit a scale", field="rows", value=t.shape[0])
    for name, a in (("y_true", t), ("y_pred", p), ("sigma", s)):
        bad = ~np.isfinite(a)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise InputError(f"non-finite value in row {r} ({int(bad.sum())} values)", field=f"{name}/{label_names[c]}",
                             value=float(a[r, c]))
    if (s <= 0).any():
        r, c = np.argwhere(s <= 0)[0]
        raise InputError(f"sigma must be > 0 (row {r})", field=f"sigma/{label_names[c]}", value=float(s[r, c]))
    return t, p, s


def coverage(y_true, y_pred, sigma) -> dict:
    """Fractions of |pred - true| <= k sigma per column (arrays (N, L)), k = 1 ("cov68") and 1.96 ("cov95"):
    :func:`specvit.scores.coverage_fraction`, the one definition), and the RMS of z."""
    from specvit.scores import coverage_fraction

    z = np.abs((np.asarray(y_pred, float) - np.asarray(y_true, float)) / np.asarray(sigma, float))
    z = z[:, None] if z.ndim == 1 else z
    return {"cov68": coverage_fraction(z, "68", axis=0).tolist(), "cov95": coverage_fraction(z, "95", axis=0).tolist(),
            "z_rms": np.sqrt((z ** 2).mean(axis=0)).tolist()}


def fit_scales(y_true, y_pred, sigma, *, label_names, method: str = "coverage68") -> np.ndarray:
    """Per-label factors s_j (see the module doc); arrays (N, L) in label units, ``sigma`` the raw 1-sigma."""
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}", field="method", value=method)
    t, p, s = _check_arrays(y_true, y_pred, sigma, list(label_names))
    z = np.abs(p - t) / s
    if method == "coverage68":
        scale = np.quantile(z, P68, axis=0)
    else:
        scale = np.sqrt(np.mean(z ** 2, axis=0))
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        j = int(np.flatnonzero(~(np.isfinite(scale) & (scale > 0)))[0])
        raise InputError("fitted scale is not finite and > 0 (all residuals zero?)",
                         field=f"scale/{label_names[j]}", value=float(scale[j]))
    return scale


def weights_digest(model_dir) -> str | None:
    """SHA-256 of the weights file of a saved model directory (None if there is none)."""
    from specvit.models.io import WEIGHTS_FILE

    p = Path(model_dir) / WEIGHTS_FILE
    if not p.exists():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class SigmaCalibration:
    """Per-label sigma scales: ``calibrated sigma = scale[j] * raw sigma`` for label ``labels[j]``."""

    labels: list[str]
    scale: list[float]
    method: str = "coverage68"
    n_rows: int = 0  #: validation rows the scales were fitted on
    weights_sha256: str | None = None  #: the weights this calibration belongs to
    source: dict = field(default_factory=dict)  #: validation file(s), noise level and seed
    raw: dict = field(default_factory=dict)  #: validation coverage of the raw sigmas (cov68, cov95, z_rms)
    calibrated: dict = field(default_factory=dict)  #: the same after scaling

    def __post_init__(self):
        self.labels = [str(x) for x in self.labels]
        self.scale = [float(x) for x in self.scale]
        if len(self.labels) != len(self.scale) or not self.labels:
            raise InputError(f"{len(self.labels)} labels for {len(self.scale)} scales", field="labels/scale",
                             value=(self.labels, self.scale))
        if len(set(self.labels)) != len(self.labels):
            raise InputError("duplicate label names", field="labels", value=self.labels)
        for name, s in zip(self.labels, self.scale):
            if not (math.isfinite(s) and s > 0):
                raise InputError("scale must be finite and > 0", field=f"scale/{name}", value=s)
        if self.method not in METHODS:
            raise InputError(f"method must be one of {METHODS}", field="method", value=self.method)

    @classmethod
    def fit(cls, y_true, y_pred, sigma, *, label_names, method: str = "coverage68", **info) -> "SigmaCalibration":
        """Fit the scales and record the validation coverage before and after."""
        t, p, s = _check_arrays(y_true, y_pred, sigma, list(label_names))
        scale = fit_scales(t, p, s, label_names=label_names, method=method)
        return cls(labels=list(label_names), scale=scale.tolist(), method=method, n_rows=len(t),
                   raw=coverage(t, p, s), calibrated=coverage(t, p, s * scale), **info)

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "method": self.method, "labels": self.labels,
                "scale": self.scale, "n_rows": self.n_rows, "weights_sha256": self.weights_sha256,
                "source": self.source, "validation_raw": self.raw, "validation_calibrated": self.calibrated}

    @classmethod
    def from_dict(cls, d: dict, *, file=None) -> "SigmaCalibration":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InputError(f"not a sigma calibration (format must be {FORMAT!r})", file=file, field="format",
                             value=d.get("format") if isinstance(d, dict) else type(d).__name__)
        if d.get("version") != FORMAT_VERSION:
            raise InputError(f"unsupported calibration version (this specvit reads {FORMAT_VERSION})", file=file,
                             field="version", value=d.get("version"))
        for k in ("labels", "scale"):
            if not isinstance(d.get(k), list):
                raise InputError("missing or not a list", file=file, field=k, value=d.get(k))
        try:
            return cls(labels=d["labels"], scale=[float("nan") if v is None else v for v in d["scale"]],
                       method=d.get("method", "coverage68"), n_rows=int(d.get("n_rows", 0)),
                       weights_sha256=d.get("weights_sha256"), source=d.get("source", {}),
                       raw=d.get("validation_raw", {}), calibrated=d.get("validation_calibrated", {}))
        except InputError as e:
            raise InputError(f"bad calibration file: {e}", file=file) from None
        except (TypeError, ValueError) as e:
            raise InputError(f"bad calibration file: {e}", file=file, field="scale", value=d.get("scale")) from None

    def save(self, path) -> Path:
        """Write the JSON atomically (temporary name + rename)."""
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, path) -> "SigmaCalibration":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError("calibration file not found", file=str(path)) from None
        except json.JSONDecodeError as e:
            raise InputError(f"calibration file is not valid JSON: {e}", file=str(path)) from None
        return cls.from_dict(d, file=str(path))

    # ------------------------------------------------------------------ use
    def scales_for(self, label_names, *, file=None) -> np.ndarray:
        """The scales in the order of ``label_names``; the label SETS must be equal."""
        names = [str(x) for x in label_names]
        if sorted(names) != sorted(self.labels):
            raise InputError(f"calibration is for labels {self.labels}, the model predicts {names}", file=file,
                             field="labels", value=self.labels)
        return np.asarray([self.scale[self.labels.index(n)] for n in names], dtype=float)

    def apply(self, sigma, label_names, *, file=None) -> np.ndarray:
        """Calibrated sigmas: ``sigma`` (N, L) in the column order ``label_names`` times the scales."""
        s = np.asarray(sigma, dtype=float)
        scale = self.scales_for(label_names, file=file)
        if s.shape[-1] != len(scale):
            raise InputError(f"sigma has {s.shape[-1]} columns for {len(scale)} labels", file=file, field="sigma",
                             value=s.shape)
        return s * scale


def load_model_calibration(model_dir, *, label_names=None, check_weights: bool = True) -> SigmaCalibration | None:
    """The calibration of a saved model directory, or None if it has none.

    Raises :class:`InputError` if the file is bad, is for another label set (``label_names``), or was fitted
    on other weights (SHA-256 of the weights file differs).
    """
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    cal = SigmaCalibration.load(path)
    if label_names is not None:
        cal.scales_for(label_names, file=str(path))
    if check_weights and cal.weights_sha256 is not None:
        digest = weights_digest(model_dir)
        if digest is not None and digest != cal.weights_sha256:
            raise InputError("calibration was fitted on other weights than this model's (weights SHA-256 differs); "
                             "re-run `specvit calibrate`", file=str(path), field="weights_sha256",
                             value=cal.weights_sha256[:12])
    return cal

