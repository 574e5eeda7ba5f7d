"""Patch layout, and the sliding-window (SW) tokenizer of the paper's sweep.

A tokenizer maps a spectrum (B, n_pixels) to patch tokens (B, n_tokens, hidden):
one linear map per patch of ``patch_size`` pixels, moved by ``stride`` pixels
(SPEC section 5). Two ways to compute it, chosen by ``SpecViTConfig.tokenizer``:

* ``"c1d"`` (the paper's): ``Conv1d(1, hidden, kernel_size=patch_size, stride=stride)``,
  :class:`specvit.models.specvit.Conv1dTokenizer`;
* ``"sw"`` (sliding window, here): ``flux.unfold(-1, patch_size, stride)`` then
  ``Linear(patch_size, hidden)``.

With tied weights (``linear.weight == conv.weight[:, 0, :]``) they give
identical outputs; both default-initialise identically too (fan-in
``patch_size``), so any difference in training comes from elsewhere -- see
``docs/models.md`` for why the paper's SW run never trained.

Remainder: when ``(n_pixels - patch_size)`` is not a multiple of ``stride``
the spectrum is right-padded by repeating its last pixel so that the last patch
ends exactly at (or beyond) the last pixel; no pixel is ever dropped.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from specvit.errors import InputError


def patch_layout(n_pixels: int, patch_size: int, stride: int) -> tuple[int, int]:
    """Return ``(n_tokens, pad_right)`` for patches of ``patch_size`` every ``stride`` pixels."""
    if patch_size < 1 or stride < 1:
        raise InputError("patch_size and stride must be >= 1", field="patch_size/stride", value=(patch_size, stride))
    if stride > patch_size:
        raise InputError("stride larger than patch_size would skip pixels", field="stride", value=stride)
    if patch_size > n_pixels:
        raise InputError(f"patch_size exceeds n_pixels={n_pixels}", field="patch_size", value=patch_size)
    n_tokens = math.ceil((n_pixels - patch_size) / stride) + 1
    pad = (n_tokens - 1) * stride + patch_size - n_pixels
    return n_tokens, pad


def pad_right(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Right-pad the last axis by repeating the last value (edge padding)."""
    if pad == 0:
        return x
    return torch.cat([x, x[..., -1:].expand(*x.shape[:-1], pad)], dim=-1)


def patch_windows(flux: torch.Tensor, *, patch_size: int, stride: int, pad: int) -> torch.Tensor:
    """(B, n_pixels) -> (B, n_tokens, patch_size) windows (a view of the edge-padded flux; one spectrum each)."""
    return pad_right(flux, pad).unfold(-1, patch_size, stride)


def patch_centres(n_pixels: int, patch_size: int, stride: int) -> torch.Tensor:
    """Centre of each patch in (fractional) pixel index, clipped to the last pixel."""
    n_tokens, _ = patch_layout(n_pixels, patch_size, stride)
    c = torch.arange(n_tokens, dtype=torch.float64) * stride + (patch_size - 1) / 2
    return c.clamp(max=n_pixels - 1)


class SlidingWindowTokenizer(nn.Module):
    """SW: ``unfold`` the pixel axis into (B, T, patch_size) windows, then ``Linear(patch_size, hidden)``."""

    def __init__(self, *, n_pixels: int, patch_size: int, stride: int, hidden: int):
        super().__init__()
        self.n_tokens, self.pad = patch_layout(n_pixels, patch_size, stride)
        self.patch_size, self.stride = patch_size, stride
        self.linear = nn.Linear(patch_size, hidden)

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        """``flux`` (B, n_pixels) -> tokens (B, n_tokens, hidden)."""
        return self.linear(patch_windows(flux, patch_size=self.patch_size, stride=self.stride, pad=self.pad))

