"""SpecViT: a 1D Vision Transformer for stellar spectra (SPEC section 5).

The paper's path, all in this file::

    flux (B, n_pixels) -> per-pixel standardisation -> C1D tokenizer -> (B, T, D) patch tokens
      -> prepend CLS token -> + learned position table -> dropout
      -> depth x pre-LN block [x + Attn(LN x), then x + MLP(LN x)] -> LayerNorm
      -> CLS token -> Linear head -> (B, n_labels)

The paper's configuration is registered as ``specvit_p16_h256_l6`` (patch 16,
stride 16, D = 256, 6 layers, 8 heads, FFN 1024, dropout 0.1, learned 257 x 256
positions, CLS pooling; 4.81M parameters). Research options are fields of
:class:`SpecViTConfig`, each implemented in its own module:

* ``tokenizer="sw"``: unfold + Linear (:mod:`.tokenizers`, which also holds the patch layout);
* ``pos_encoding="sinusoidal" | "rope" | "wavelength"`` (:mod:`.position`);
* ``chunk_norm="zscore" | "continuum"``, ``chunk_size``, ``chunk_stats`` (:mod:`.chunknorm`);
* ``conv_stem=(c1, c2, ...)``: stride-2 Conv-BN-GELU layers before the patch tokens (:mod:`.convstem`);
* ``pool="mean"``: the mean of the tokens instead of a CLS token; ``pool="flatten"``: the head reads
  every (normalised) token, concatenated in wavelength order (PatchTST's "flatten head", Nie et al. 2023);
* ``gaussian=True``: a (mean, log-variance) head (:mod:`.heads`);
* ``input_norm``: the per-pixel standardisation, fitted by the trainer (:mod:`.inputnorm`).

Two exact speed-ups need no option: the CLS-only last block (:mod:`.clsonly`;
``model.cls_only_last_block = False`` turns it off) and a dropout mask drawn
with half the generator calls on CPU (:mod:`.dropout`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from specvit.errors import InputError
from specvit.models.chunknorm import ChunkNorm, ChunkStatsEmbedding
from specvit.models.clsonly import prefix_query_qkv
from specvit.models.convstem import ConvStem
from specvit.models.dropout import Dropout
from specvit.models.heads import RegressionHead
from specvit.models.inputnorm import InputStandardizer
from specvit.models.position import build_position
from specvit.models.registry import ModelConfig
from specvit.models.tokenizers import SlidingWindowTokenizer, patch_centres, patch_layout, patch_windows

TOKENIZERS = ("c1d", "sw")
POOLS = ("cls", "mean", "flatten")
POS_ENCODINGS = ("learned", "sinusoidal", "rope", "wavelength")


@dataclass(frozen=True)
class SpecViTConfig(ModelConfig):
    """Everything that defines a SpecViT; the defaults are the paper's model."""

    n_pixels: int = 4096  #: input length (pixels)
    patch_size: int = 16  #: pixels per patch token
    stride: int | None = None  #: pixels between patch starts; None = patch_size, smaller overlaps patches
    hidden: int = 256  #: token width D
    depth: int = 6  #: transformer blocks
    heads: int = 8  #: attention heads (each of width D / heads)
    mlp_dim: int = 1024  #: hidden width of each block's MLP
    dropout: float = 0.1  #: after the position encoding, the attention projection and the MLP
    attn_dropout: float = 0.0  #: on attention weights (0 keeps the fused attention kernel)
    tokenizer: str = "c1d"  #: "c1d" (Conv1d, the paper) or "sw" (unfold + Linear)
    #: "cls" (read out a prepended CLS token), "mean" (average the tokens) or "flatten" (concatenate them)
    pool: str = "cls"
    pos_encoding: str = "learned"  #: "learned" (the paper), "sinusoidal", "rope" or "wavelength"
    chunk_norm: str | None = None  #: None, or normalise each chunk of the input: "zscore" or "continuum"
    chunk_size: int = 256  #: pixels per chunk of chunk_norm
    chunk_stats: bool = True  #: add Linear(statistics of the token's chunk) to each token
    n_labels: int = 1  #: outputs per spectrum
    gaussian: bool = False  #: predict (mean, log variance) per label
    wave: tuple[float, ...] | None = None  #: input wavelengths (Angstrom, n_pixels values); for "wavelength"
    input_norm: bool = True  #: standardise each pixel with the training flux's mean and std first
    #: channels of stride-2 Conv1d-BatchNorm-GELU layers that replace the tokenizer (:mod:`.convstem`); () = none
    conv_stem: tuple[int, ...] = ()
    conv_stem_kernel: int = 3  #: kernel (pixels, odd) of each conv_stem layer

    def __post_init__(self):
        for name, known in (("tokenizer", TOKENIZERS), ("pool", POOLS), ("pos_encoding", POS_ENCODINGS)):
            if getattr(self, name) not in known:
                raise InputError(f"unknown {name} (known: {', '.join(known)})", field=name, value=getattr(self, name))
        if self.conv_stem and self.tokenizer != "c1d":
            raise InputError("conv_stem replaces the tokenizer: leave tokenizer at 'c1d'", field="tokenizer",
                             value=self.tokenizer)
        if self.wave is not None and len(self.wave) != self.n_pixels:
            raise InputError(f"wave must have n_pixels={self.n_pixels} values", field="wave", value=len(self.wave))


class Conv1dTokenizer(nn.Module):
    """C1D: ``Conv1d(1, hidden, kernel_size=patch_size, stride=stride)``; (B, n_pixels) -> (B, n_tokens, hidden).

    A one-channel convolution is a matrix product over the patch windows, so the
    forward is one GEMM of the conv weight with the windows: the same numbers as
    ``conv(flux[:, None]).transpose(1, 2)``, written straight into the token layout.
    Patch count and edge padding: :func:`.tokenizers.patch_layout`. The windows come from
    ``unfold``, not an einops rearrange: with ``stride < patch_size`` they overlap.
    """

    def __init__(self, *, n_pixels: int, patch_size: int, stride: int, hidden: int):
        super().__init__()
        self.n_tokens, self.pad = patch_layout(n_pixels, patch_size, stride)
        self.patch_size, self.stride = patch_size, stride
        self.conv = nn.Conv1d(1, hidden, kernel_size=patch_size, stride=stride)

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        windows = patch_windows(flux, patch_size=self.patch_size, stride=self.stride, pad=self.pad)  # (B, T, P)
        return F.linear(windows, self.conv.weight.flatten(1), self.conv.bias)


class LearnedPosition(nn.Module):
    """A trainable (1, n_positions, D) table added to the tokens (the paper: 257 x 256), trunc-normal(0.02)."""

    def __init__(self, *, n_positions: int, dim: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(1, n_positions, dim))
        nn.init.trunc_normal_(self.table, std=0.02)

    def forward(self, x: torch.Tensor, **_) -> torch.Tensor:
        return x + self.table


class Attention(nn.Module):
    """Multi-head self-attention: q, k, v from one fused Linear, ``F.scaled_dot_product_attention``."""

    def __init__(self, *, dim: int, heads: int, attn_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, rope=None, *, n_queries: int | None = None) -> torch.Tensor:
        """``x`` (B, N, D) -> (B, N, D); ``rope`` rotates q and k (:class:`.position.RotaryEmbedding`).

        ``n_queries``: queries of the first ``n_queries`` tokens only, (B, n_queries, D) out (:mod:`.clsonly`).
        """
        if n_queries is None:
            q, k, v = self.qkv(x).split(x.shape[-1], dim=-1)
        else:
            q, k, v = prefix_query_qkv(self.qkv, x, n_queries)
        # views, no copy: the backward assembles the qkv gradient with one concatenation
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        if rope is not None:
            q, k = rope(q), rope(k)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


class FeedForward(nn.Sequential):
    """The ViT MLP: Linear -> GELU -> Linear -> dropout."""

    def __init__(self, *, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), Dropout(dropout))


class Block(nn.Module):
    """Pre-LN encoder layer (Xiong et al. 2020): ``x + Attn(LN x)``, then ``x + MLP(LN x)``."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, heads=heads, attn_dropout=attn_dropout, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim=dim, hidden=mlp_dim, dropout=dropout)

    def forward(self, x: torch.Tensor, rope=None, *, n_queries: int | None = None) -> torch.Tensor:
        """``x`` (B, N, D) -> (B, N, D), or its first ``n_queries`` tokens only (B, n_queries, D) (:mod:`.clsonly`)."""
        residual = x if n_queries is None else x[:, :n_queries]
        x = residual + self.attn(self.norm1(x), rope, n_queries=n_queries)
        return x + self.mlp(self.norm2(x))


class SpecViT(nn.Module):
    """1D ViT regressor: ``SpecViT(**options)`` or ``SpecViT(config=SpecViTConfig(...))``.

    ``options`` are the fields of :class:`SpecViTConfig` (keyword-only); ``self.config`` holds them all.
    """

    Config = SpecViTConfig

    #: With CLS pooling, compute only the CLS token in the last block (exact; :mod:`.clsonly`).
    cls_only_last_block: bool = True

    def __init__(self, *, config: SpecViTConfig | None = None, **options):
        super().__init__()
        if config is not None and options:
            raise TypeError("give SpecViT either config= or keyword options, not both")
        self.config = c = config if config is not None else SpecViTConfig.from_options(**options)
        stride = c.stride or c.patch_size
        # The order below is the order of random initialisation: changing it changes the weights a seed gives.
        self.input_norm = InputStandardizer(n_pixels=c.n_pixels) if c.input_norm else None
        self.chunk_norm = None
        if c.chunk_norm is not None:
            self.chunk_norm = ChunkNorm(n_pixels=c.n_pixels, chunk_size=c.chunk_size, mode=c.chunk_norm)
        if c.conv_stem:
            self.tokenizer = ConvStem(n_pixels=c.n_pixels, patch_size=c.patch_size, stride=stride, hidden=c.hidden,
                                      channels=c.conv_stem, kernel_size=c.conv_stem_kernel)
        else:
            tokenizer = Conv1dTokenizer if c.tokenizer == "c1d" else SlidingWindowTokenizer
            self.tokenizer = tokenizer(n_pixels=c.n_pixels, patch_size=c.patch_size, stride=stride, hidden=c.hidden)
        self.chunk_stats = None
        if self.chunk_norm is not None and c.chunk_stats:
            centres = patch_centres(c.n_pixels, c.patch_size, stride)
            self.chunk_stats = ChunkStatsEmbedding(chunk_norm=self.chunk_norm, token_centres=centres, dim=c.hidden)

        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.hidden)) if c.pool == "cls" else None
        n_positions = self.tokenizer.n_tokens + (c.pool == "cls")
        if c.pos_encoding == "learned":
            self.pos, self.rope = LearnedPosition(n_positions=n_positions, dim=c.hidden), None
        else:  # one of them is None
            self.pos, self.rope = build_position(
                c.pos_encoding, n_positions=n_positions, dim=c.hidden, heads=c.heads, wave_A=c.wave,
                patch_size=c.patch_size, stride=stride, has_cls=c.pool == "cls",
            )
        self.drop = Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(dim=c.hidden, heads=c.heads, mlp_dim=c.mlp_dim, dropout=c.dropout, attn_dropout=c.attn_dropout)
            for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.hidden)
        head_dim = c.hidden * (self.tokenizer.n_tokens if c.pool == "flatten" else 1)
        self.head = RegressionHead(dim=head_dim, n_labels=c.n_labels, gaussian=c.gaussian)
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
        if self.config.pool == "flatten":  # the same output scale at init as a head on one token
            nn.init.trunc_normal_(self.head.linear.weight, std=0.02 / self.tokenizer.n_tokens ** 0.5)

    def no_weight_decay(self) -> set[str]:
        """Parameters the optimizer must not decay (beside biases and norm scales): the CLS token and
        the learned position vectors (the trainer's ``param_groups``; timm's convention)."""
        return {n for n, _ in self.named_parameters() if n in ("cls_token", "pos.table", "pos.cls")}

    def forward(self, flux: torch.Tensor, wave=None):
        """``flux`` (B, n_pixels) -> (B, n_labels), or ``GaussianOutput(mean, log_var)`` if ``gaussian``.

        ``wave`` (Angstrom, (n_pixels,) or (B, n_pixels)) overrides the stored grid
        of the wavelength encoding (the other encodings ignore it).
        """
        c = self.config
        if flux.dim() != 2 or flux.shape[1] != c.n_pixels:
            raise InputError(f"flux must have shape (batch, {c.n_pixels})", field="flux", value=tuple(flux.shape))
        if self.input_norm is not None:
            flux = self.input_norm(flux)
        if self.chunk_norm is not None:
            flux, chunk_stats = self.chunk_norm(flux)
        x = self.tokenizer(flux)  # (B, T, D)
        if self.chunk_stats is not None:
            x = self.chunk_stats(x, chunk_stats)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + T, D)
        if self.pos is not None:
            x = self.pos(x, wave=wave)
        x = self.drop(x)
        cls_only = c.pool == "cls" and self.cls_only_last_block
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = block(x, self.rope, n_queries=1 if cls_only and last else None)
        if c.pool == "cls":
            z = self.norm(x[:, 0])
        elif c.pool == "mean":
            z = self.norm(x).mean(dim=1)
        else:  # flatten: (B, T * D)
            z = self.norm(x).flatten(1)
        return self.head(z)
