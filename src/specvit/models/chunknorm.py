"""Chunk normalisation: the paper's planned (never run) input ablation.

The spectrum is cut into chunks of ``chunk_size`` pixels (the last one may be
shorter) and each chunk is normalised on its own:

* ``"zscore"``: ``(x - mean_c) / (std_c + eps)``;
* ``"continuum"``: divide by a pseudo-continuum: the sigma-clipped mean of each
  chunk (iteratively dropping pixels below ``mean - clip_low * std``, i.e.
  absorption-line cores, and above ``mean + clip_high * std``; unlike a running
  max it is not biased upward by noise, and unlike a quantile not by a sloped
  continuum), linearly interpolated between chunk centres (and extrapolated to
  the edges) so the divisor is smooth.

Normalising removes absolute information (the slope/level of the continuum
carries T_eff). The layer therefore also returns the per-chunk statistics,
(mean, log std) or (continuum level, log std of x / continuum), shape
(B, n_chunks, 2); with ``chunk_stats=True`` SpecViT adds ``Linear(2, D)`` of
its chunk's statistics to every token (:class:`ChunkStatsEmbedding`) so that
nothing is lost.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from specvit.errors import InputError

MODES = ("zscore", "continuum")


class ChunkNorm(nn.Module):
    def __init__(
        self, *, n_pixels: int, chunk_size: int, mode: str = "zscore",
        clip_low: float = 2.0, clip_high: float = 3.0, n_iter: int = 3, eps: float = 1e-6,
    ):
        super().__init__()
        if mode not in MODES:
            raise InputError(f"unknown chunk_norm (known: {', '.join(MODES)})", field="chunk_norm", value=mode)
        if not 1 < chunk_size <= n_pixels:
            raise InputError(f"chunk_size must be in 2..n_pixels={n_pixels}", field="chunk_size", value=chunk_size)
        self.mode, self.chunk_size, self.eps = mode, chunk_size, eps
        self.clip_low, self.clip_high, self.n_iter = clip_low, clip_high, n_iter
        self.n_pixels = n_pixels
        self.n_chunks = math.ceil(n_pixels / chunk_size)
        self.pad = self.n_chunks * chunk_size - n_pixels
        mask = torch.ones(self.n_chunks * chunk_size)
        if self.pad:
            mask[-self.pad :] = 0
        self.register_buffer("mask", mask.view(self.n_chunks, chunk_size), persistent=False)
        self.register_buffer("count", mask.view(self.n_chunks, chunk_size).sum(-1), persistent=False)
        # linear interpolation weights from chunk centres to pixels (extrapolating at both ends)
        starts = torch.arange(self.n_chunks) * chunk_size
        centres = (starts + (torch.clamp(n_pixels - starts, max=chunk_size) - 1) / 2).double()
        pix = torch.arange(n_pixels, dtype=torch.float64)
        if self.n_chunks == 1:
            idx, w = torch.zeros(n_pixels, dtype=torch.long), torch.zeros(n_pixels)
        else:
            idx = torch.clamp(torch.searchsorted(centres, pix, right=True) - 1, 0, self.n_chunks - 2)
            w = ((pix - centres[idx]) / (centres[idx + 1] - centres[idx])).float()
        self.register_buffer("interp_idx", idx, persistent=False)
        self.register_buffer("interp_w", w, persistent=False)

    def chunk_index(self, pixel: torch.Tensor) -> torch.Tensor:
        """Chunk that contains each (fractional) pixel index."""
        return (pixel // self.chunk_size).long().clamp(max=self.n_chunks - 1)

    def _chunks(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, self.pad)).view(x.shape[0], self.n_chunks, self.chunk_size)

    def _masked_moments(self, c: torch.Tensor):
        mean = (c * self.mask).sum(-1) / self.count
        var = (((c - mean[..., None]) * self.mask) ** 2).sum(-1) / self.count
        return mean, var

    def _clipped_mean(self, c: torch.Tensor) -> torch.Tensor:
        keep = self.mask.bool().expand_as(c)
        for _ in range(self.n_iter):
            n = keep.sum(-1).clamp_min(1)
            mean = (c * keep).sum(-1) / n
            std = torch.sqrt((((c - mean[..., None]) * keep) ** 2).sum(-1) / n)
            new = self.mask.bool() & (c > (mean - self.clip_low * std)[..., None]) & (c < (mean + self.clip_high * std)[..., None])
            keep = torch.where(new.sum(-1, keepdim=True) > 0, new, keep)  # never drop a whole chunk
        n = keep.sum(-1).clamp_min(1)
        return (c * keep).sum(-1) / n

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, n_pixels) -> (normalised x (B, n_pixels), stats (B, n_chunks, 2))."""
        c = self._chunks(x)
        if self.mode == "zscore":
            mean, var = self._masked_moments(c)
            std = torch.sqrt(var + self.eps**2)
            out = ((c - mean[..., None]) / std[..., None]).flatten(1)[:, : self.n_pixels]
            return out, torch.stack([mean, torch.log(std)], dim=-1)
        level = self._clipped_mean(c)  # (B, n_chunks)
        if self.n_chunks == 1:
            cont = level.expand(-1, self.n_pixels)
        else:
            w = self.interp_w.to(x.dtype)
            cont = level[:, self.interp_idx] * (1 - w) + level[:, self.interp_idx + 1] * w
        cont = torch.where(cont.abs() < self.eps, torch.full_like(cont, self.eps), cont)
        out = x / cont
        _, var = self._masked_moments(self._chunks(out))
        return out, torch.stack([level, 0.5 * torch.log(var + self.eps**2)], dim=-1)


class ChunkStatsEmbedding(nn.Linear):
    """``Linear(2, D)`` of the statistics of each token's chunk, added to the token (``chunk_stats=True``).

    A token's chunk is the chunk holding its patch centre (``token_centres``, fractional pixel index).
    """

    def __init__(self, *, chunk_norm: ChunkNorm, token_centres: torch.Tensor, dim: int):
        super().__init__(2, dim)
        self.register_buffer("token_chunk", chunk_norm.chunk_index(token_centres), persistent=False)

    def forward(self, tokens: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """``tokens`` (B, T, D), ``stats`` (B, n_chunks, 2) from :class:`ChunkNorm` -> (B, T, D)."""
        return tokens + super().forward(stats[:, self.token_chunk])
