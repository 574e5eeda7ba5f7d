"""Attention recovered by hooks equals what the fused SDPA kernel used."""
import numpy as np
import pytest
import torch

from specvit.errors import InputError

models = pytest.importorskip("specvit.models")
from specvit.evaluate.attention import attention_maps, attention_rollout, cls_attention, patch_wavelengths  # noqa: E402


def _tiny(**kw):
    args = dict(n_pixels=128, patch_size=16, hidden=32, depth=2, heads=1, mlp_dim=64, dropout=0.0)
    args.update(kw)
    return models.create_model("specvit_p16_h256_l6", **args)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_hooked_weights_reproduce_the_attention_output(pos):
    torch.manual_seed(0)
    m = _tiny(pos_encoding=pos).eval()
    x = torch.randn(3, 128)
    seen = {}

    def grab(mod, args, out):
        seen["in"], seen["rope"], seen["out"] = args[0], (args[1] if len(args) > 1 else None), out

    h = m.blocks[1].attn.register_forward_hook(grab)
    with torch.no_grad():
        m(x)
    h.remove()
    w = torch.as_tensor(attention_maps(m, x)[1])  # (B, N, N), one head -> exact
    attn = m.blocks[1].attn
    v = attn.qkv(seen["in"]).chunk(3, dim=-1)[2]
    with torch.no_grad():
        recon = attn.proj(w @ v)
    n = seen["out"].shape[1]  # the last block of a CLS model returns its CLS row only (SpecViT.cls_only_last_block)
    assert n == 1
    torch.testing.assert_close(recon[:, :n], seen["out"], rtol=1e-4, atol=1e-5)


def test_cls_attention_and_rollout_shapes_and_normalisation():
    torch.manual_seed(1)
    m = _tiny(heads=4)
    m.train()
    x = np.random.default_rng(0).normal(size=(2, 128)).astype(np.float32)
    a = cls_attention(m, x)
    assert a.shape == (2, 8)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-5)
    r = attention_rollout(m, x)
    assert r.shape == (8,) and np.isclose(r.sum(), 1.0) and np.all(r > 0)
    assert m.training  # mode restored
    pw = patch_wavelengths(m, np.linspace(7000, 7127, 128))
    np.testing.assert_allclose(pw[:2], [7007.5, 7023.5])
    with pytest.raises(InputError, match="wave"):
        patch_wavelengths(m, np.ones(5))


def test_mean_pool_model_and_non_vit():
    m = _tiny(pool="mean")
    assert cls_attention(m, np.zeros((1, 128), np.float32)).shape == (2, 8)
    with pytest.raises(InputError, match="model"):
        attention_maps(torch.nn.Linear(3, 1), np.zeros((1, 3)))
