"""SpecViT fast paths equal the exact (full) computation they replace.

* CLS-only last block (``SpecViT.cls_only_last_block``): outputs and every
  parameter gradient must match the full last block.
* ``Attention(n_queries=k)`` / ``Block(n_queries=k)``: the first k rows of the full output.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from specvit.models import GaussianOutput, create_model
from specvit.models.specvit import Block

N_PIX = 200
WAVE = np.geomspace(7100.0, 8850.0, N_PIX)


def _pair(**kw):
    """Two identical tiny SpecViTs: one with the CLS-only last block, one running it in full."""
    kw = dict(n_pixels=N_PIX, stride=12, dropout=0.0, **kw)
    if kw.get("pos_encoding") == "wavelength":
        kw["wave"] = WAVE
    torch.manual_seed(0)
    fast = create_model("specvit_tiny", **kw)
    full = create_model("specvit_tiny", **kw)
    full.load_state_dict(fast.state_dict())
    full.cls_only_last_block = False
    assert fast.cls_only_last_block
    return fast, full


def _flux(b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 1.0 + 0.1 * torch.randn(b, N_PIX, generator=g)


@pytest.mark.parametrize("pos", ["learned", "rope", "wavelength"])
@pytest.mark.parametrize("gaussian", [False, True])
def test_cls_only_last_block_matches_full_outputs_and_gradients(pos, gaussian):
    fast, full = _pair(pos_encoding=pos, gaussian=gaussian, n_labels=2, chunk_norm="zscore", chunk_size=50)
    x = _flux()
    outs = []
    for m in (fast, full):
        m.train()
        y = m(x)
        if gaussian:
            assert isinstance(y, GaussianOutput)
            y = torch.cat([y.mean, y.log_var], dim=-1)
        (y * torch.arange(1, y.shape[1] + 1)).square().sum().backward()
        outs.append(y.detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    grads_full = dict(full.named_parameters())
    for name, p in fast.named_parameters():
        g_full = grads_full[name].grad
        assert p.grad is not None and g_full is not None, name
        assert torch.any(p.grad != 0), name  # the q rows of the last qkv, the last MLP ...: all still trained
        torch.testing.assert_close(p.grad, g_full, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_cls_only_last_block_in_eval_mode_and_mean_pool_untouched():
    fast, full = _pair()
    x = _flux(3)
    with torch.inference_mode():
        torch.testing.assert_close(fast.eval()(x), full.eval()(x), rtol=1e-5, atol=1e-6)
    m = create_model("specvit_tiny", n_pixels=N_PIX, pool="mean", dropout=0.0).eval()
    seen = []
    h = m.blocks[-1].register_forward_hook(lambda mod, a, out: seen.append(out.shape))
    with torch.no_grad():
        m(x)
    h.remove()
    assert seen == [(3, m.tokenizer.n_tokens, m.config.hidden)]  # mean pooling reads every token


def test_cls_only_last_block_really_skips_the_other_tokens():
    fast, _ = _pair()
    seen = []
    h = fast.blocks[-1].register_forward_hook(lambda mod, a, out: seen.append(out.shape))
    fast(_flux(2))
    h.remove()
    assert seen == [(2, 1, fast.config.hidden)]


@pytest.mark.parametrize("use_rope", [False, True])
def test_block_prefix_queries_equal_the_first_rows(use_rope):
    from specvit.models.position import RotaryEmbedding

    torch.manual_seed(3)
    blk = Block(dim=32, heads=4, mlp_dim=64, dropout=0.0).eval()
    rope = RotaryEmbedding(n_positions=11, head_dim=8) if use_rope else None
    x = torch.randn(2, 11, 32)
    full = blk(x, rope)
    for k in (1, 3):
        torch.testing.assert_close(blk(x, rope, n_queries=k), full[:, :k], rtol=1e-5, atol=1e-6)


def test_cpu_dropout_has_dropout_semantics():
    from specvit.models.dropout import Dropout

    p = 0.1
    d = Dropout(p).train()
    x = (1.0 + torch.rand(1000, 1000)).requires_grad_()
    torch.manual_seed(5)
    y = d(x)
    kept = y != 0
    rate = kept.float().mean().item()
    assert abs(rate - (1 - p)) < 5 * (p * (1 - p) / x.numel()) ** 0.5  # binomial: 5 sigma = 1.5e-3
    torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=1e-6, atol=0.0)  # inverted-dropout scaling
    rows = kept.float().mean(dim=1)  # independent per element: no row is all kept or all dropped
    assert rows.min() > 0.8 and rows.max() < 1.0
    g = torch.randn_like(x)
    y.backward(g)
    torch.testing.assert_close(x.grad, g * kept / (1 - p), rtol=1e-6, atol=0.0)
    torch.manual_seed(5)
    assert torch.equal(d(x), y)  # reproducible from torch's seed
    d.eval()
    assert torch.equal(d(x), x)
    pairs = kept.flatten().float().view(-1, 2)  # elements 2i and 2i+1 come from the two halves of one 64-bit draw
    for half in (pairs[:, 0], pairs[:, 1]):
        assert abs(half.mean().item() - (1 - p)) < 5 * (p * (1 - p) / half.numel()) ** 0.5
    corr = torch.corrcoef(pairs.T)[0, 1].item()  # independent halves: correlation ~ N(0, 1/sqrt(n))
    assert abs(corr) < 5 / pairs.shape[0] ** 0.5
    odd = Dropout(0.5).train()(torch.ones(7, 3))  # odd element count
    assert odd.shape == (7, 3) and set(odd.unique().tolist()) <= {0.0, 2.0}
    d16 = Dropout(p).train()  # bf16 activations: the mask is still drawn in float32
    rate16 = (d16(torch.ones(1000, 1000, dtype=torch.bfloat16)) != 0).float().mean().item()
    assert abs(rate16 - (1 - p)) < 1.5e-3


def test_dropout_exact_torch_path_is_reachable():
    from specvit.models.dropout import Dropout

    x = torch.randn(64, 64)
    torch.manual_seed(2)
    ref = torch.nn.Dropout(0.3).train()(x)
    torch.manual_seed(2)
    assert torch.equal(Dropout(0.3, fast_cpu=False).train()(x), ref)
    m = create_model("specvit_tiny", n_pixels=N_PIX)
    assert isinstance(m.drop, Dropout) and all(isinstance(b.attn.drop, Dropout) for b in m.blocks)
