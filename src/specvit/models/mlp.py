"""The paper's MLP baseline: 4096 -> 1024 -> 512 -> 256 -> head (GELU, dropout).

``input_norm`` standardises each pixel first (statistics fitted on the training split).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from specvit.errors import InputError
from specvit.models.heads import RegressionHead
from specvit.models.inputnorm import InputStandardizer
from specvit.models.registry import ModelConfig


@dataclass(frozen=True)
class MLPConfig(ModelConfig):
    n_pixels: int = 4096
    hidden: tuple[int, ...] = (1024, 512, 256)
    dropout: float = 0.1
    n_labels: int = 1
    gaussian: bool = False
    input_norm: bool = True


class MLP(nn.Module):
    Config = MLPConfig

    def __init__(self, *, n_pixels: int = 4096, hidden=(1024, 512, 256), dropout: float = 0.1, n_labels: int = 1, gaussian: bool = False,
                 input_norm: bool = True):
        super().__init__()
        self.config = MLPConfig.from_arguments(locals())
        self.n_pixels = n_pixels
        self.input_norm = InputStandardizer(n_pixels=n_pixels) if input_norm else nn.Identity()
        layers, d = [], n_pixels
        for h in hidden:
            layers += [nn.Linear(d, h), nn.GELU(), nn.Dropout(dropout)]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = RegressionHead(dim=d, n_labels=n_labels, gaussian=gaussian)

    def forward(self, flux: torch.Tensor):
        if flux.dim() != 2 or flux.shape[1] != self.n_pixels:
            raise InputError(f"flux must have shape (batch, {self.n_pixels})", field="flux", value=tuple(flux.shape))
        return self.head(self.body(self.input_norm(flux)))
