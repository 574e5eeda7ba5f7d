"""Chunk normalisation: the paper's planned (never run) input ablation.

The spectrum is cut into chunks of ``chunk_size`` pixels (the last one may be
shorter) and each chunk is normalised on its own:

* ``"zscore"``: ``(x - mean_c) / (std_c + eps)``;
* ``"continuum"``: divide by a pseudo-continuum: the ``quantile`` (default 0.9,
  robust to absorption lines and to noise, unlike a running max) of each chunk,
  linearly interpolated between chunk centres so the divisor is smooth.

Normalising removes absolute information (the slope/level of the continuum
carries T_eff). The layer therefore also returns the per-chunk statistics,
(mean, log std) or (continuum level, log std of x / continuum), shape
(B, n_chunks, 2); SpecViT adds ``Linear(2, D)`` of its chunk's statistics to
every token when ``chunk_stats=True`` so that nothing is lost.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from specvit.errors import InputError
from specvit.models.tokenizers import pad_right

MODES = ("zscore", "continuum")


class ChunkNorm(nn.Module):
    def __init__(self, *, n_pixels: int, chunk_size: int, mode: str = "zscore", quantile: float = 0.9, eps: float = 1e-6):
        super().__init__()
        if mode not in MODES:
            raise InputError(f"unknown chunk_norm (known: {', '.join(MODES)})", field="chunk_norm", value=mode)
        if not 1 < chunk_size <= n_pixels:
            raise InputError(f"chunk_size must be in 2..n_pixels={n_pixels}", field="chunk_size", value=chunk_size)
        self.mode, self.chunk_size, self.quantile, self.eps = mode, chunk_size, quantile, eps
        self.n_pixels = n_pixels
        self.n_chunks = math.ceil(n_pixels / chunk_size)
        self.pad = self.n_chunks * chunk_size - n_pixels
        mask = torch.ones(self.n_chunks * chunk_size)
        if self.pad:
            mask[-self.pad :] = 0
        self.register_buffer("mask", mask.view(self.n_chunks, chunk_size), persistent=False)
        self.register_buffer("count", mask.view(self.n_chunks, chunk_size).sum(-1), persistent=False)

    def chunk_index(self, pixel: torch.Tensor) -> torch.Tensor:
        """Chunk that contains each (fractional) pixel index."""
        return (pixel // self.chunk_size).long().clamp(max=self.n_chunks - 1)

    def _chunks(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, self.pad)).view(x.shape[0], self.n_chunks, self.chunk_size)

    def _masked_moments(self, c: torch.Tensor):
        mean = (c * self.mask).sum(-1) / self.count
        var = (((c - mean[..., None]) * self.mask) ** 2).sum(-1) / self.count
        return mean, var

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, n_pixels) -> (normalised x (B, n_pixels), stats (B, n_chunks, 2))."""
        c = self._chunks(x)
        if self.mode == "zscore":
            mean, var = self._masked_moments(c)
            std = torch.sqrt(var + self.eps**2)
            out = ((c - mean[..., None]) / std[..., None]).flatten(1)[:, : self.n_pixels]
            return out, torch.stack([mean, torch.log(std)], dim=-1)
        # continuum: quantile per chunk (the short last chunk is padded by repeating its last pixel)
        filled = pad_right(x, self.pad).view(x.shape[0], self.n_chunks, self.chunk_size)
        level = torch.quantile(filled, self.quantile, dim=-1)  # (B, n_chunks)
        cont = F.interpolate(level[:, None], size=self.n_chunks * self.chunk_size, mode="linear", align_corners=False)
        cont = cont[:, 0, : self.n_pixels]
        cont = torch.where(cont.abs() < self.eps, torch.full_like(cont, self.eps), cont)
        out = x / cont
        _, var = self._masked_moments(self._chunks(out))
        return out, torch.stack([level, 0.5 * torch.log(var + self.eps**2)], dim=-1)
