"""SpecViT: a 1D Vision Transformer for stellar spectra (SPEC section 5).

    flux (B, 4096) -> [chunk norm] -> tokenizer -> (B, 256, D) patch tokens
      -> [CLS] + position encoding -> dropout -> L x pre-LN block -> LayerNorm
      -> CLS token (or mean of tokens) -> head -> (B, n_labels)
         (or GaussianOutput(mean, log_var) with ``gaussian=True``)

The paper's configuration is registered as ``specvit_p16_h256_l6``
(patch 16, stride 16, D = 256, 6 layers, 8 heads, FFN 1024, dropout 0.1,
learned 257 x 256 positions, CLS pooling; 4.81M parameters).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from specvit.errors import InputError
from specvit.models.blocks import Block
from specvit.models.chunknorm import ChunkNorm
from specvit.models.dropout import Dropout
from specvit.models.heads import RegressionHead
from specvit.models.inputnorm import InputStandardizer
from specvit.models.position import LearnedPosition, RotaryEmbedding, SinusoidalPosition, WavelengthPosition
from specvit.models.registry import ModelConfig
from specvit.models.tokenizers import build_tokenizer, patch_centres

POS_ENCODINGS = ("learned", "sinusoidal", "rope", "wavelength")
POOLS = ("cls", "mean")


@dataclass(frozen=True)
class SpecViTConfig(ModelConfig):
    """Every constructor argument of :class:`SpecViT` (see there for meanings and units)."""

    n_pixels: int = 4096
    patch_size: int = 16
    stride: int | None = None
    hidden: int = 256
    depth: int = 6
    heads: int = 8
    mlp_dim: int = 1024
    dropout: float = 0.1
    attn_dropout: float = 0.0
    tokenizer: str = "c1d"
    pool: str = "cls"
    pos_encoding: str = "learned"
    chunk_norm: str | None = None
    chunk_size: int = 256
    chunk_stats: bool = True
    n_labels: int = 1
    gaussian: bool = False
    wave: tuple[float, ...] | None = None
    input_norm: bool = True


class SpecViT(nn.Module):
    """1D ViT regressor.

    Args (keyword-only):
        n_pixels: input length (pixels).
        patch_size, stride: patch length and step in pixels (stride defaults to
            patch_size; stride < patch_size overlaps patches; a remainder is
            covered by edge padding, see :mod:`specvit.models.tokenizers`).
        hidden, depth, heads, mlp_dim: transformer width D, layers, heads, FFN width.
        dropout: after position encoding, attention projection and FFN.
        attn_dropout: on attention weights (0 keeps the fused SDPA kernel).
        tokenizer: ``"c1d"`` (Conv1d) or ``"sw"`` (unfold + Linear).
        pool: ``"cls"`` (prepend a CLS token, read it out) or ``"mean"`` (average tokens).
        pos_encoding: ``"learned"``, ``"sinusoidal"``, ``"rope"`` or ``"wavelength"``.
        chunk_norm: ``None``, ``"zscore"`` or ``"continuum"`` input normalisation per
            ``chunk_size`` pixels; ``chunk_stats`` adds the chunk statistics back to the tokens.
        n_labels, gaussian: outputs per spectrum; Gaussian heads return ``GaussianOutput``.
        wave: input wavelength grid (Angstrom, length n_pixels); needed by the wavelength encoding.
        input_norm: standardise each pixel with the training split's mean and std first
            (:mod:`specvit.models.inputnorm`; fitted by the trainer, saved with the weights).
    """

    Config = SpecViTConfig

    #: With CLS pooling, compute only the CLS token in the last block (its other
    #: tokens are never read): exact, ~14% less work for the paper's model. Set to
    #: False on an instance to run the full last block (e.g. to compare).
    cls_only_last_block: bool = True

    def __init__(
        self,
        *,
        n_pixels: int = 4096,
        patch_size: int = 16,
        stride: int | None = None,
        hidden: int = 256,
        depth: int = 6,
        heads: int = 8,
        mlp_dim: int = 1024,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        tokenizer: str = "c1d",
        pool: str = "cls",
        pos_encoding: str = "learned",
        chunk_norm: str | None = None,
        chunk_size: int = 256,
        chunk_stats: bool = True,
        n_labels: int = 1,
        gaussian: bool = False,
        wave=None,
        input_norm: bool = True,
    ):
        super().__init__()
        self.config = SpecViTConfig.from_arguments(locals())
        stride = stride or patch_size
        if pool not in POOLS:
            raise InputError(f"unknown pool (known: {', '.join(POOLS)})", field="pool", value=pool)
        if pos_encoding not in POS_ENCODINGS:
            raise InputError(f"unknown pos_encoding (known: {', '.join(POS_ENCODINGS)})", field="pos_encoding", value=pos_encoding)
        if wave is not None and len(wave) != n_pixels:
            raise InputError(f"wave must have n_pixels={n_pixels} values", field="wave", value=len(wave))
        self.n_pixels, self.pool = n_pixels, pool
        self.input_norm = InputStandardizer(n_pixels=n_pixels) if input_norm else None

        self.chunk_norm = None
        if chunk_norm is not None:
            self.chunk_norm = ChunkNorm(n_pixels=n_pixels, chunk_size=chunk_size, mode=chunk_norm)
        self.tokenizer = build_tokenizer(tokenizer, n_pixels=n_pixels, patch_size=patch_size, stride=stride, hidden=hidden)
        n_tokens = self.tokenizer.n_tokens
        self.chunk_stats = None
        if self.chunk_norm is not None and chunk_stats:
            self.chunk_stats = nn.Linear(2, hidden)
            idx = self.chunk_norm.chunk_index(patch_centres(n_pixels, patch_size, stride))
            self.register_buffer("token_chunk", idx, persistent=False)

        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden)) if pool == "cls" else None
        n_pos = n_tokens + (pool == "cls")
        self.rope = None
        if pos_encoding == "learned":
            self.pos = LearnedPosition(n_positions=n_pos, dim=hidden)
        elif pos_encoding == "sinusoidal":
            self.pos = SinusoidalPosition(n_positions=n_pos, dim=hidden)
        elif pos_encoding == "wavelength":
            self.pos = WavelengthPosition(wave_A=wave, dim=hidden, patch_size=patch_size, stride=stride, has_cls=pool == "cls")
        else:
            self.pos = None
            self.rope = RotaryEmbedding(n_positions=n_pos, head_dim=hidden // heads)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(dim=hidden, heads=heads, mlp_dim=mlp_dim, dropout=dropout, attn_dropout=attn_dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden)
        self.head = RegressionHead(dim=hidden, n_labels=n_labels, gaussian=gaussian)
        self._init_weights()

    def _init_weights(self):
        """ViT initialisation: trunc-normal(0.02) Linear weights and CLS token, zero biases.

        The tokenizer keeps PyTorch's default (Kaiming-uniform, fan-in = patch_size) for
        both C1D and SW, so the two start from the same weight distribution.
        """
        tokenizer_modules = set(self.tokenizer.modules())
        for m in self.modules():
            if isinstance(m, nn.Linear) and m not in tokenizer_modules:
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, flux: torch.Tensor, wave=None):
        """``flux`` (B, n_pixels) -> (B, n_labels), or ``GaussianOutput`` if ``gaussian``.

        ``wave`` (Angstrom, (n_pixels,) or (B, n_pixels)) overrides the stored grid
        for the wavelength encoding (ignored by the other encodings).
        """
        if flux.dim() != 2 or flux.shape[1] != self.n_pixels:
            raise InputError(f"flux must have shape (batch, {self.n_pixels})", field="flux", value=tuple(flux.shape))
        stats = None
        if self.input_norm is not None:
            flux = self.input_norm(flux)
        if self.chunk_norm is not None:
            flux, stats = self.chunk_norm(flux)
        x = self.tokenizer(flux)
        if self.chunk_stats is not None:
            x = x + self.chunk_stats(stats[:, self.token_chunk])
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos is not None:
            x = self.pos(x, wave=wave)
        x = self.drop(x)
        prune = self.pool == "cls" and self.cls_only_last_block
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = block(x, self.rope, n_queries=1 if prune and last else None)
        z = self.norm(x[:, 0]) if self.pool == "cls" else self.norm(x).mean(dim=1)
        return self.head(z)
