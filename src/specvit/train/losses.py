"""Losses on z-scored labels, and metrics accumulated over a whole evaluation set.

A model returns either the means ``(B, L)`` or, with a Gaussian head, means and
log-variances (a tuple ``(mean, log_var)`` or an object with ``.mean`` and
``.log_var``); :func:`split_output` accepts all three.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from specvit.errors import ConfigError

LOSSES = ("mse", "l1", "huber", "gaussian_nll")


def split_output(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(mean, log_var or None)`` from any model output form."""
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return out[0], out[1]
    if hasattr(out, "mean") and hasattr(out, "log_var"):
        return out.mean, out.log_var
    raise TypeError(f"unsupported model output type {type(out).__name__}")


def gaussian_nll(mean, log_var, target) -> torch.Tensor:
    """Per-element Gaussian negative log-likelihood (without the constant log(2 pi)/2)."""
    return 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var))


def make_loss(kind: str, *, huber_delta: float = 1.0, label_weights=None) -> Callable:
    """``loss(output, target) -> scalar``, averaged over the batch and (weighted) labels."""
    if kind not in LOSSES:
        raise ConfigError(f"unknown loss (known: {', '.join(LOSSES)})", field="loss.kind", value=kind)
    w = None if label_weights is None else torch.as_tensor(label_weights, dtype=torch.float32)

    def reduce(per_elem: torch.Tensor) -> torch.Tensor:
        if w is None:
            return per_elem.mean()
        ww = w.to(per_elem.device, per_elem.dtype)
        return (per_elem.mean(dim=0) * ww).sum() / ww.sum()

    def loss(output, target):
        mean, log_var = split_output(output)
        mean, target = mean.float(), target.float()
        if kind == "gaussian_nll":
            if log_var is None:
                raise ConfigError("loss gaussian_nll needs a model with a Gaussian head", field="loss.kind", value=kind)
            return reduce(gaussian_nll(mean, log_var.float(), target))
        if kind == "mse":
            return reduce(F.mse_loss(mean, target, reduction="none"))
        if kind == "l1":
            return reduce(F.l1_loss(mean, target, reduction="none"))
        return reduce(F.huber_loss(mean, target, reduction="none", delta=huber_delta))

    return loss


class RegressionMetrics:
    """Sums over a whole evaluation set: R^2 = 1 - SS_res / SS_tot per label, MAE, RMSE, bias.

    The sums (not per-batch R^2 values) are accumulated, so R^2 is over the set;
    under DDP :meth:`all_reduce` adds the sums of every process first.
    """

    def __init__(self, n_labels: int):
        # rows: n, sum y, sum y^2, sum (y-p)^2, sum |y-p|, sum (p-y), sum loss
        self.sums = torch.zeros(6, n_labels, dtype=torch.float64)
        self.loss_sum = torch.zeros(2, dtype=torch.float64)  # sum of batch-loss * batch-size, count

    def update(self, pred: torch.Tensor, true: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        p, y = pred.detach().double().cpu(), true.detach().double().cpu()
        d = p - y
        self.sums += torch.stack([torch.full_like(y[0], len(y)), y.sum(0), (y * y).sum(0), (d * d).sum(0),
                                  d.abs().sum(0), d.sum(0)])
        if loss is not None:
            self.loss_sum += torch.tensor([float(loss) * len(y), len(y)], dtype=torch.float64)

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            backend_dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
            for name in ("sums", "loss_sum"):
                t = getattr(self, name).to(backend_dev)
                dist.all_reduce(t)
                setattr(self, name, t.cpu())

    def compute(self) -> dict:
        n, sy, syy, sres, sabs, sd = self.sums.numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            ss_tot = syy - sy * sy / n
            r2 = 1.0 - sres / ss_tot
            out = {"n": int(n[0]) if len(n) else 0, "r2": r2, "mae": sabs / n, "rmse": np.sqrt(sres / n), "bias": sd / n}
        if self.loss_sum[1] > 0:
            out["loss"] = float(self.loss_sum[0] / self.loss_sum[1])
        return out
