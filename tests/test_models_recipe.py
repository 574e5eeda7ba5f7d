"""The convolutional stem option of SpecViT (specvit.models.convstem)."""
import hashlib

import pytest
import torch

from specvit.errors import InputError
from specvit.models import create_model
from specvit.models.convstem import ConvStem
from specvit.models.tokenizers import patch_layout


def _digest(model) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


# computed with the code before conv_stem existed (main at 342c521): the default path is unchanged
GOLDEN = {
    "specvit_p16_h256_l6": "0dcf85f22449eb133ec43b591fe84bf9e13891387cb7e8e6b53dbcba31b330c2",
    "specvit_p32_h64_l3": "bb9ed448597a34905f79b4d762e232e306db21c68bcc750088d648848f805f2a",
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_default_models_are_bitwise_unchanged(name):
    torch.manual_seed(0)
    m = create_model(name)
    assert m.config.conv_stem == ()
    assert not any(isinstance(x, ConvStem) for x in m.modules())
    assert _digest(m) == GOLDEN[name]


@pytest.mark.parametrize("n_pixels,patch,stride,channels", [
    (256, 16, 16, (8,)), (256, 16, 8, (4, 8)), (250, 32, 32, (4, 8)), (4096, 32, 32, (16, 32)), (300, 8, 4, (6, 6))])
def test_stem_token_count_matches_the_patch_layout(n_pixels, patch, stride, channels):
    stem = ConvStem(n_pixels=n_pixels, patch_size=patch, stride=stride, hidden=12, channels=channels)
    out = stem(torch.randn(3, n_pixels))
    assert out.shape == (3, patch_layout(n_pixels, patch, stride)[0], 12)


def test_specvit_with_stem_shapes_gradients_and_round_trip():
    torch.manual_seed(0)
    m = create_model("specvit_tiny", n_pixels=256, conv_stem=[4, 8], conv_stem_kernel=5)
    assert m.config.conv_stem == (4, 8)
    assert isinstance(m.tokenizer, ConvStem)
    initial = _digest(m)
    x = torch.randn(6, 256)
    y = m(x)
    assert y.shape == (6, 1)
    y.sum().backward()
    stem_grads = [p.grad for p in m.tokenizer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in stem_grads)
    # the config rebuilds the same architecture (and, with the same seed, the same weights)
    torch.manual_seed(0)
    m2 = create_model(m.model_name, **m.config.to_dict())
    assert m2.config == m.config
    assert _digest(m2) == initial


def test_stem_token_sees_its_own_patch_and_neighbours_only():
    # receptive field: a pixel change moves its own token and (through the kernels) at most the next ones
    torch.manual_seed(0)
    stem = ConvStem(n_pixels=512, patch_size=32, stride=32, hidden=8, channels=(4, 4)).eval()
    x = torch.randn(1, 512)
    x2 = x.clone()
    x2[0, 200] += 5.0  # token 6 (pixels 192..223)
    d = (stem(x2) - stem(x)).abs().sum(-1)[0]
    changed = torch.nonzero(d > 0).flatten().tolist()
    assert 6 in changed and set(changed) <= {5, 6, 7}


def test_registered_stem_model_builds_and_runs():
    m = create_model("specvit_p32_h64_l3_stem", n_pixels=1024)
    assert m.config.conv_stem and isinstance(m.tokenizer, ConvStem)
    assert m(torch.randn(2, 1024)).shape == (2, 1)


@pytest.mark.parametrize("opts,field", [
    ({"conv_stem": (4, 8, 8, 8, 8)}, "patch_size/stride"),   # 2^5 = 32 does not divide patch 16
    ({"conv_stem": (4,), "conv_stem_kernel": 4}, "conv_stem_kernel"),
    ({"conv_stem": (4, 0)}, "conv_stem"),
    ({"conv_stem": (4,), "tokenizer": "sw"}, "tokenizer"),
])
def test_bad_stem_options_name_the_field(opts, field):
    with pytest.raises(InputError) as e:
        create_model("specvit_tiny", n_pixels=256, **opts)
    assert e.value.field == field


@pytest.mark.parametrize("extra", [{}, {"conv_stem": (4, 8)}, {"pos_encoding": "sinusoidal"}, {"gaussian": True, "n_labels": 2}])
def test_flatten_pool_shapes_gradients_and_scale(extra):
    torch.manual_seed(0)
    m = create_model("specvit_tiny", n_pixels=256, pool="flatten", **extra)
    n_tokens = patch_layout(256, 16, 16)[0]
    assert m.cls_token is None and m.head.linear.in_features == 32 * n_tokens
    x = torch.randn(64, 256)
    out = m(x)
    mean = out[0] if isinstance(out, tuple) else out
    assert mean.shape == (64, extra.get("n_labels", 1))
    mean.sum().backward()
    assert m.head.linear.weight.grad.abs().sum() > 0 and m.tokenizer.parameters().__next__().grad.abs().sum() > 0
    # at init the flattened head's weights are scaled by 1 / sqrt(n_tokens): outputs stay O(0.1), as a CLS head's
    w = m.head.linear.weight.detach()
    assert abs(float(w.std()) * n_tokens ** 0.5 / 0.02 - 1) < 0.2
    assert float(mean.detach().pow(2).mean().sqrt()) < 0.5


def test_flatten_head_sees_where_a_feature_is():
    # unlike mean pooling without positions, the flatten head is not invariant to moving a token
    torch.manual_seed(0)
    m = create_model("specvit_tiny", n_pixels=64, patch_size=16, pool="flatten", pos_encoding="sinusoidal").eval()
    x = torch.zeros(1, 64)
    x[0, :16] = 1.0
    y = torch.roll(x, 16, dims=1)
    with torch.no_grad():
        assert not torch.allclose(m(x), m(y))


def test_stem_and_flatten_model_saves_and_loads(tmp_path):
    from specvit.models.io import load_model, save_model

    torch.manual_seed(0)
    m = create_model("specvit_tiny", n_pixels=256, conv_stem=(4, 8), pool="flatten")
    m.train()
    m(torch.randn(16, 256))  # moves the BatchNorm running statistics away from their initial values
    m.eval()
    save_model(tmp_path / "model", m, label_names=["log_g"], label_mean=[3.0], label_std=[1.0])
    m2, meta = load_model(tmp_path / "model")
    assert m2.config == m.config
    x = torch.randn(3, 256)
    with torch.no_grad():
        assert torch.equal(m2(x), m(x))
