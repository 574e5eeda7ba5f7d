"""Where a SpecViT looks: attention maps recovered with forward hooks.

SpecViT's attention runs inside ``torch.nn.functional.scaled_dot_product_attention``
(fused, so the weights are never materialised). A forward hook on each
``Block.attn`` captures its input, recomputes q and k with the block's own
``qkv`` projection (and rotary embedding, if used) and forms
``softmax(q kᵀ / sqrt(d))`` -- the same weights SDPA used, exactly.

From the per-layer maps (heads averaged) we report

* ``cls``: the attention of the CLS query on every patch token, per layer
  (with mean pooling: the attention each token receives, averaged over queries);
* ``rollout``: attention rollout (Abnar & Zuidema 2020, ACL, "Quantifying
  Attention Flow in Transformers"): ``R = Π_l (0.5 A_l + 0.5 I)`` (rows
  renormalised), read out at the CLS row (or averaged over rows), which also
  follows information through the residual stream.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from specvit.errors import InputError


def _attention_modules(model):
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks):
        raise InputError("model has no SpecViT-style blocks with attn.qkv (only SpecViT is supported)",
                         field="model", value=type(model).__name__)
    return [b.attn for b in blocks]


@torch.no_grad()
def attention_maps(model, flux) -> np.ndarray:
    """Head-averaged attention weights of every layer, shape (n_layers, B, n_seq, n_seq).

    ``flux`` (B, n_pixels) numpy or torch. The model is run in eval mode (no dropout) and
    its training flag is restored afterwards.
    """
    mods = _attention_modules(model)
    x = torch.as_tensor(np.asarray(flux) if not isinstance(flux, torch.Tensor) else flux, dtype=torch.float32)
    if x.dim() == 1:
        x = x[None]
    captured: list[torch.Tensor] = []

    def hook(mod, args, _out):
        h, rope = args[0], (args[1] if len(args) > 1 else None)
        b, n, d = h.shape
        qkv = mod.qkv(h).reshape(b, n, 3, mod.heads, d // mod.heads).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        if rope is not None:
            q, k = rope(q), rope(k)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, H, N, N)
        captured.append(w.mean(dim=1).float())

    handles = [m.register_forward_hook(hook) for m in mods]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return torch.stack(captured).cpu().numpy()


def _has_cls(model) -> bool:
    return getattr(model, "cls_token", None) is not None


def cls_attention(model, flux) -> np.ndarray:
    """Attention on each patch token per layer, averaged over the batch: (n_layers, n_tokens).

    CLS models: the CLS query's row (CLS column dropped) renormalised to sum 1. Mean-pooled
    models: the attention each token receives, averaged over queries.
    """
    a = attention_maps(model, flux).mean(axis=1)  # (L, N, N)
    if _has_cls(model):
        row = a[:, 0, 1:]
    else:
        row = a.mean(axis=1)
    return row / row.sum(axis=1, keepdims=True)


def attention_rollout(model, flux, *, residual_weight: float = 0.5) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) on each patch token, averaged over the batch: (n_tokens,)."""
    if not 0.0 <= residual_weight < 1.0:
        raise InputError("residual_weight must be in [0, 1)", field="residual_weight", value=residual_weight)
    a = attention_maps(model, flux)  # (L, B, N, N)
    n = a.shape[-1]
    eye = np.eye(n)
    roll = np.broadcast_to(eye, a.shape[1:]).copy()
    for layer in a:
        m = (1 - residual_weight) * layer + residual_weight * eye
        m = m / m.sum(axis=-1, keepdims=True)
        roll = m @ roll
    roll = roll.mean(axis=0)
    row = roll[0, 1:] if _has_cls(model) else roll.mean(axis=0)
    return row / row.sum()


def patch_wavelengths(model, wave) -> np.ndarray:
    """Central wavelength of each patch token (Angstrom) for a SpecViT on the grid ``wave``."""
    from specvit.models.tokenizers import patch_centres

    cfg = model.config
    w = np.asarray(wave, dtype=float)
    if w.shape != (cfg.n_pixels,):
        raise InputError(f"wave must have the model's n_pixels={cfg.n_pixels} values", field="wave", value=w.shape)
    centres = patch_centres(cfg.n_pixels, cfg.patch_size, cfg.stride or cfg.patch_size).numpy()
    return np.interp(centres, np.arange(cfg.n_pixels), w)
