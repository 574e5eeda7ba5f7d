"""Pre-LayerNorm transformer encoder blocks on PyTorch's fused attention.

``x -> x + Attn(LN(x)) -> x + MLP(LN(x))`` (Xiong et al. 2020, "On Layer
Normalization in the Transformer Architecture"); attention is
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
kernels where available), with q, k, v from one fused Linear.

Queries for a prefix only (``n_queries``): when only the first tokens of a
block's output are read -- the CLS token of the last block of a CLS-pooled
model -- keys and values still come from every token but queries, attention
output, projection and MLP are computed for those tokens alone. This is exact
(every other token's output of the last block is discarded anyway), not an
approximation; see :meth:`Block.forward`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from specvit.models.dropout import Dropout


class Attention(nn.Module):
    """Multi-head self-attention; optional rotary embedding applied to q and k."""

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
        """``x`` (B, N, D) -> (B, N, D); with ``n_queries`` only the first ``n_queries`` rows (B, n_queries, D).

        Keys and values always come from all N tokens, so the returned rows equal the
        first rows of the full output.
        """
        dim = x.shape[-1]
        if n_queries is None:
            q, k, v = self.qkv(x).split(dim, dim=-1)
        else:
            w_q, w_kv = self.qkv.weight.split([dim, 2 * dim])
            b_q, b_kv = self.qkv.bias.split([dim, 2 * dim])
            q = F.linear(x[:, :n_queries], w_q, b_q)
            k, v = F.linear(x, w_kv, b_kv).split(dim, dim=-1)
        # (B, n, D) -> (B, H, n, d) as views: the backward then assembles the qkv gradient
        # with one concatenation (SplitBackward) and no stack + permute copy.
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        if rope is not None:
            q, k = rope(q), rope(k)
        p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


class FeedForward(nn.Sequential):
    """Linear -> GELU -> Linear with dropout (the ViT MLP)."""

    def __init__(self, *, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), Dropout(dropout))


class Block(nn.Module):
    """One pre-LN encoder layer."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, heads=heads, attn_dropout=attn_dropout, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim=dim, hidden=mlp_dim, dropout=dropout)

    def forward(self, x: torch.Tensor, rope=None, *, n_queries: int | None = None) -> torch.Tensor:
        """``x`` (B, N, D) -> (B, N, D), or only its first ``n_queries`` tokens (B, n_queries, D).

        The output of token i depends on every token only through attention keys and
        values, so computing the first ``n_queries`` rows alone gives exactly those rows
        of the full output (up to float rounding) at a fraction of the cost.
        """
        if n_queries is None:
            x = x + self.attn(self.norm1(x), rope)
        else:
            x = x[:, :n_queries] + self.attn(self.norm1(x), rope, n_queries=n_queries)
        return x + self.mlp(self.norm2(x))
