"""Tokenizers: a spectrum (B, n_pixels) -> patch tokens (B, n_tokens, hidden).

Two ways to compute the same thing -- one linear map per patch of ``patch_size``
pixels, moved by ``stride`` pixels (SPEC section 5):

* ``"c1d"``: ``Conv1d(1, hidden, kernel_size=patch_size, stride=stride)``;
* ``"sw"`` (sliding window): ``flux.unfold(-1, patch_size, stride)`` then
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
import torch.nn.functional as F
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


def patch_centres(n_pixels: int, patch_size: int, stride: int) -> torch.Tensor:
    """Centre of each patch in (fractional) pixel index, clipped to the last pixel."""
    n_tokens, _ = patch_layout(n_pixels, patch_size, stride)
    c = torch.arange(n_tokens, dtype=torch.float64) * stride + (patch_size - 1) / 2
    return c.clamp(max=n_pixels - 1)


class Conv1dTokenizer(nn.Module):
    """C1D: ``Conv1d(1, hidden, kernel=patch_size, stride=stride)`` on the padded spectrum.

    A one-channel convolution is a matrix product over the patch windows; the forward
    computes it as ``unfold`` + one GEMM with the conv weight, which gives the same
    numbers as ``self.conv(x)`` and writes the (B, T, D) token layout directly
    (no channels-first output and transpose copy).
    """

    def __init__(self, *, n_pixels: int, patch_size: int, stride: int, hidden: int):
        super().__init__()
        self.n_tokens, self.pad = patch_layout(n_pixels, patch_size, stride)
        self.patch_size, self.stride = patch_size, stride
        self.conv = nn.Conv1d(1, hidden, kernel_size=patch_size, stride=stride)

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        windows = pad_right(flux, self.pad).unfold(-1, self.patch_size, self.stride)  # (B, T, P)
        return F.linear(windows, self.conv.weight.flatten(1), self.conv.bias)  # == conv(x[:, None]).transpose(1, 2)


class SlidingWindowTokenizer(nn.Module):
    """SW: ``unfold`` the pixel axis into (B, T, patch_size) windows, then ``Linear(patch_size, hidden)``."""

    def __init__(self, *, n_pixels: int, patch_size: int, stride: int, hidden: int):
        super().__init__()
        self.n_tokens, self.pad = patch_layout(n_pixels, patch_size, stride)
        self.patch_size, self.stride = patch_size, stride
        self.linear = nn.Linear(patch_size, hidden)

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        windows = pad_right(flux, self.pad).unfold(-1, self.patch_size, self.stride)  # (B, T, P): one spectrum each
        return self.linear(windows)


TOKENIZERS = {"c1d": Conv1dTokenizer, "sw": SlidingWindowTokenizer}


def build_tokenizer(kind: str, **kwargs) -> nn.Module:
    try:
        cls = TOKENIZERS[kind]
    except KeyError:
        raise InputError(f"unknown tokenizer (known: {', '.join(TOKENIZERS)})", field="tokenizer", value=kind) from None
    return cls(**kwargs)
