"""Pre-LayerNorm transformer encoder blocks on PyTorch's fused attention.

``x -> x + Attn(LN(x)) -> x + MLP(LN(x))`` (Xiong et al. 2020, "On Layer
Normalization in the Transformer Architecture"); attention is
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
kernels where available), with q, k, v from one fused Linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


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
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        if rope is not None:
            q, k = rope(q), rope(k)
        p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


class FeedForward(nn.Sequential):
    """Linear -> GELU -> Linear with dropout (the ViT MLP)."""

    def __init__(self, *, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))


class Block(nn.Module):
    """One pre-LN encoder layer."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, heads=heads, attn_dropout=attn_dropout, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim=dim, hidden=mlp_dim, dropout=dropout)

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))
