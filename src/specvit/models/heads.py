"""Regression heads: point estimates, or a Gaussian (mean, log-variance) per label."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class GaussianOutput(NamedTuple):
    """Output of a Gaussian head: a tuple ``(mean, log_var)``, each (B, n_labels).

    ``log_var`` is the natural log of the predicted variance of the (scaled) label,
    clamped to ``[LOG_VAR_MIN, LOG_VAR_MAX]`` for numerical stability of the NLL.
    """

    mean: torch.Tensor
    log_var: torch.Tensor


LOG_VAR_MIN, LOG_VAR_MAX = -10.0, 10.0


class RegressionHead(nn.Module):
    """``Linear(dim, n_labels)``; Gaussian: ``Linear(dim, 2 * n_labels)`` -> (mean, clamped log_var)."""

    def __init__(self, *, dim: int, n_labels: int = 1, gaussian: bool = False):
        super().__init__()
        self.n_labels, self.gaussian = n_labels, gaussian
        self.linear = nn.Linear(dim, n_labels * (2 if gaussian else 1))

    def forward(self, z: torch.Tensor):
        out = self.linear(z)
        if not self.gaussian:
            return out
        mean, log_var = out.split(self.n_labels, dim=-1)
        return GaussianOutput(mean, log_var.clamp(LOG_VAR_MIN, LOG_VAR_MAX))
