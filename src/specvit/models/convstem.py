"""Convolutional stem: a few stride-2 convolutions before the patch tokens (``SpecViTConfig.conv_stem``).

"Early convolutions help transformers see better" (Xiao et al. 2021, NeurIPS) replaced the ViT's
one-layer patchify by a stack of stride-2 3x3 convolutions + BatchNorm + ReLU and a final 1x1
projection, at the same token count; the transformer then trained faster, more stably and better
with little data. This is the 1D version for spectra::

    flux (B, n_pixels) -> edge-pad to the patch layout
      -> for c in channels: Conv1d(k, stride 2, padding k // 2) -> BatchNorm1d -> GELU     (length / 2 each)
      -> Conv1d(last channels, hidden, kernel = patch_size / 2^L, stride = stride / 2^L)   -> (B, T, hidden)

with ``L = len(channels)``. The token count ``T`` and each token's centre are those of the plain
tokenizer (:func:`.tokenizers.patch_layout`), so position encodings (including ``"wavelength"``)
and chunk statistics see the same tokens; each token's receptive field is a little wider than its
patch (the stem's kernels reach into the neighbours). ``patch_size`` and ``stride`` must be
multiples of ``2^L``.
"""
from __future__ import annotations

import torch
from torch import nn

from specvit.errors import InputError
from specvit.models.tokenizers import pad_right, patch_layout


class ConvStem(nn.Module):
    """(B, n_pixels) -> (B, n_tokens, hidden) through ``len(channels)`` stride-2 Conv-BN-GELU layers."""

    def __init__(self, *, n_pixels: int, patch_size: int, stride: int, hidden: int, channels: tuple[int, ...],
                 kernel_size: int = 3):
        super().__init__()
        if not channels or any(int(c) < 1 for c in channels):
            raise InputError("conv_stem must list >= 1 positive channel counts", field="conv_stem", value=channels)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise InputError("must be an odd number >= 1", field="conv_stem_kernel", value=kernel_size)
        factor = 2 ** len(channels)
        if patch_size % factor or stride % factor:
            raise InputError(f"patch_size and stride must be multiples of 2^{len(channels)} = {factor} "
                             f"(one halving per conv_stem layer)", field="patch_size/stride", value=(patch_size, stride))
        self.n_tokens, self.pad = patch_layout(n_pixels, patch_size, stride)
        self.patch_size, self.stride = patch_size, stride
        layers, c_in = [], 1
        for c in channels:
            layers += [nn.Conv1d(c_in, int(c), kernel_size, stride=2, padding=kernel_size // 2, bias=False),
                       nn.BatchNorm1d(int(c)), nn.GELU()]
            c_in = int(c)
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv1d(c_in, hidden, kernel_size=patch_size // factor, stride=stride // factor)

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        x = self.stem(pad_right(flux, self.pad)[:, None])  # (B, C, (n_pixels + pad) / 2^L)
        return self.proj(x).transpose(1, 2)  # (B, T, hidden)
