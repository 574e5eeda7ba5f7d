"""CLS-only last block: with CLS pooling the last block computes the CLS token alone.

With ``pool="cls"`` only the CLS token of the last block's output is ever read,
and a token's block output depends on the other tokens only through the
attention keys and values. So the last block computes LayerNorm, keys and
values for every token, but the query, attention output, projection, residual
and MLP for the CLS token alone (``Block.forward(x, rope, n_queries=1)``).
This is exact, not an approximation: outputs and every parameter gradient equal
the full block's to float rounding (``tests/test_models_fastpath.py``). It
removes about 1/7 of the paper model's GEMM work and 1/6 of its attention.

:class:`specvit.models.specvit.SpecViT` does this whenever ``pool="cls"``;
``model.cls_only_last_block = False`` on an instance runs the full last block.
Attention maps (:mod:`specvit.evaluate.attention`) are unchanged: the attention
module still receives every token's input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def prefix_query_qkv(qkv: nn.Linear, x: torch.Tensor, n_queries: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q of the first ``n_queries`` tokens, k and v of all tokens, from the fused ``qkv = Linear(D, 3D)``.

    ``x`` (B, N, D) -> q (B, n_queries, D), k (B, N, D), v (B, N, D): the first rows of the
    full ``qkv(x).split(D, dim=-1)`` (to float rounding), without computing the other queries.
    """
    dim = x.shape[-1]
    w_q, w_kv = qkv.weight.split([dim, 2 * dim])
    b_q, b_kv = qkv.bias.split([dim, 2 * dim])
    q = F.linear(x[:, :n_queries], w_q, b_q)
    k, v = F.linear(x, w_kv, b_kv).split(dim, dim=-1)
    return q, k, v
