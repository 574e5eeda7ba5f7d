"""The paper's 1D CNN baseline: 4 convolution layers, then a small MLP head.

Each layer: Conv1d(kernel_size, padding 'same') -> BatchNorm -> GELU -> MaxPool(pool).
With the defaults, 4096 px -> 4 x pool 4 -> 16 positions x 128 channels -> Linear(2048, 256)
-> GELU -> dropout -> head.
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
class CNN1DConfig(ModelConfig):
    n_pixels: int = 4096
    channels: tuple[int, ...] = (16, 32, 64, 128)
    kernel_size: int = 9
    pool: int = 4
    fc_dim: int = 256
    dropout: float = 0.1
    n_labels: int = 1
    gaussian: bool = False
    input_norm: bool = True


class CNN1D(nn.Module):
    Config = CNN1DConfig

    def __init__(
        self,
        *,
        n_pixels: int = 4096,
        channels=(16, 32, 64, 128),
        kernel_size: int = 9,
        pool: int = 4,
        fc_dim: int = 256,
        dropout: float = 0.1,
        n_labels: int = 1,
        gaussian: bool = False,
        input_norm: bool = True,
    ):
        super().__init__()
        self.config = CNN1DConfig.from_arguments(locals())
        self.n_pixels = n_pixels
        self.input_norm = InputStandardizer(n_pixels=n_pixels) if input_norm else nn.Identity()
        length, layers, c_in = n_pixels, [], 1
        for c_out in channels:
            layers += [nn.Conv1d(c_in, c_out, kernel_size, padding="same"), nn.BatchNorm1d(c_out), nn.GELU(), nn.MaxPool1d(pool)]
            c_in, length = c_out, length // pool
        if length < 1:
            raise InputError(f"{len(channels)} pooling layers of {pool} leave no pixels of n_pixels={n_pixels}", field="pool", value=pool)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in * length, fc_dim), nn.GELU(), nn.Dropout(dropout))
        self.head = RegressionHead(dim=fc_dim, n_labels=n_labels, gaussian=gaussian)

    def forward(self, flux: torch.Tensor):
        if flux.dim() != 2 or flux.shape[1] != self.n_pixels:
            raise InputError(f"flux must have shape (batch, {self.n_pixels})", field="flux", value=tuple(flux.shape))
        return self.head(self.fc(self.features(self.input_norm(flux).unsqueeze(1))))
