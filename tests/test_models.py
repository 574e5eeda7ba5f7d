"""SpecViT, CNN, MLP: shapes, gradients, options, registry (tiny models, small inputs)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from specvit.errors import InputError
from specvit.models import GaussianOutput, create_model, list_models
from specvit.models.chunknorm import ChunkNorm
from specvit.models.position import RotaryEmbedding
from specvit.models.tokenizers import patch_layout

N_PIX = 200  # not a multiple of 16: exercises the remainder handling
WAVE = np.geomspace(7100.0, 8850.0, N_PIX)


def tiny(**kw):
    kw.setdefault("n_pixels", N_PIX)
    if kw.get("pos_encoding") == "wavelength":
        kw.setdefault("wave", WAVE)
    return create_model("specvit_tiny", **kw)


def flux(b=3, n=N_PIX, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 1.0 + 0.1 * torch.randn(b, n, generator=g)


COMBOS = list(itertools.product(["c1d", "sw"], ["learned", "sinusoidal", "rope", "wavelength"], ["cls", "mean"]))


@pytest.mark.parametrize("tokenizer,pos,pool", COMBOS)
def test_shapes_and_gradients_every_option(tokenizer, pos, pool):
    m = tiny(tokenizer=tokenizer, pos_encoding=pos, pool=pool, stride=12, n_labels=2)
    y = m(flux())
    assert y.shape == (3, 2)
    y.square().sum().backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []


@pytest.mark.parametrize("mode", ["zscore", "continuum"])
@pytest.mark.parametrize("stats", [True, False])
def test_chunk_norm_model_shapes_and_gradients(mode, stats):
    m = tiny(chunk_norm=mode, chunk_size=64, chunk_stats=stats, gaussian=True, n_labels=3)
    out = m(flux())
    assert isinstance(out, GaussianOutput) and out.mean.shape == out.log_var.shape == (3, 3)
    (out.mean.sum() + out.log_var.sum()).backward()
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in m.parameters())


def test_paper_model_parameter_count():
    m = create_model("specvit_p16_h256_l6")
    D, L, F, P, T = 256, 6, 1024, 16, 4096 // 16
    block = 2 * 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + (D * F + F) + (F * D + D)
    expected = (P * D + D) + D + (T + 1) * D + L * block + 2 * D + (D + 1)
    n = sum(p.numel() for p in m.parameters())
    assert n == expected
    assert 4.8e6 <= n <= 4.9e6  # the paper's ~4.9M
    assert m.tokenizer.n_tokens == 256 and m.pos.table.shape == (1, 257, 256)


def test_patch_layout_covers_every_pixel():
    assert patch_layout(4096, 16, 16) == (256, 0)
    assert patch_layout(200, 16, 12) == (17, 8)  # 15*12+16 = 196 < 200: a 17th patch ends at 16*12+16 = 208, pad 8
    n, pad = patch_layout(200, 16, 12)
    assert (n - 1) * 12 + 16 == 200 + pad
    m = tiny(stride=12).eval()
    x = flux(1)
    x2 = x.clone()
    x2[0, -1] += 1.0  # the last pixel must reach the output
    assert not torch.allclose(m(x), m(x2))
    with pytest.raises(InputError, match="stride"):
        patch_layout(200, 8, 16)


def test_registry_round_trip_and_errors():
    names = list_models()
    for required in ["specvit_p16_h256_l6", "specvit_tiny", "cnn_paper", "mlp_paper", "cnn_small", "mlp_small"]:
        assert required in names
    m = tiny(tokenizer="sw", pos_encoding="rope", pool="mean", n_labels=4)
    m2 = create_model(m.model_name, **m.config.to_dict())
    assert m2.config == m.config
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in m2.state_dict().items()}
    with pytest.raises(InputError, match="specvit_p16_h256_l6") as e:
        create_model("vit_does_not_exist")
    assert "vit_does_not_exist" in str(e.value)
    with pytest.raises(InputError, match="hiddden"):
        create_model("specvit_tiny", hiddden=3)
    with pytest.raises(InputError, match="pos_encoding"):
        tiny(pos_encoding="alibi")
    with pytest.raises(InputError, match="tokenizer"):
        tiny(tokenizer="fft")


def test_bad_input_shape_is_clear():
    m = tiny()
    with pytest.raises(InputError, match="flux"):
        m(torch.ones(2, N_PIX + 1))
    with pytest.raises(InputError, match="flux"):
        create_model("mlp_small", n_pixels=N_PIX)(torch.ones(N_PIX))


def test_gaussian_head_clamps_log_variance():
    m = tiny(gaussian=True, n_labels=2).eval()
    with torch.no_grad():
        m.head.linear.bias[2:] = 100.0  # log-variance outputs
    out = m(flux())
    mean, log_var = out  # unpacks as a tuple
    assert mean.shape == (3, 2) and torch.all(log_var == 10.0)


def test_wavelength_encoding_uses_the_wavelengths():
    torch.manual_seed(0)
    m = tiny(pos_encoding="wavelength").eval()
    x = flux()
    y = m(x)
    assert not torch.allclose(y, m(x, wave=WAVE * 1.001))  # Doppler-shifted grid
    assert torch.allclose(y, m(x, wave=WAVE))
    m2 = tiny(pos_encoding="wavelength", wave=WAVE * 1.05)
    m2.load_state_dict(m.state_dict())  # same weights, other grid
    assert not torch.allclose(y, m2.eval()(x))
    with pytest.raises(InputError, match="wave"):
        create_model("specvit_tiny", n_pixels=N_PIX, pos_encoding="wavelength")
    with pytest.raises(InputError, match="wave"):
        tiny(pos_encoding="wavelength", wave=WAVE[:-1])


def test_rope_scores_depend_on_relative_position_only():
    rope = RotaryEmbedding(n_positions=40, head_dim=8)
    g = torch.Generator().manual_seed(1)
    q0, k0 = torch.randn(8, generator=g), torch.randn(8, generator=g)
    q = rope(q0.expand(1, 1, 40, 8))[0, 0]
    k = rope(k0.expand(1, 1, 40, 8))[0, 0]
    scores = q @ k.T
    assert torch.allclose(scores[3, 10], scores[20, 27], atol=1e-5)  # offset 7 both
    assert torch.allclose(torch.linalg.norm(q, dim=-1), torch.linalg.norm(q0).expand(40), atol=1e-5)  # a rotation


def test_chunk_norm_statistics_and_invariance():
    g = torch.Generator().manual_seed(2)
    x = 3.0 + torch.randn(4, 250, generator=g)
    cn = ChunkNorm(n_pixels=250, chunk_size=100, mode="zscore")  # chunks 100, 100, 50
    out, stats = cn(x)
    assert stats.shape == (4, 3, 2)
    for lo, hi in [(0, 100), (100, 200), (200, 250)]:
        c = out[:, lo:hi]
        assert torch.allclose(c.mean(1), torch.zeros(4), atol=1e-5)
        assert torch.allclose(c.std(1, unbiased=False), torch.ones(4), atol=1e-4)
    assert torch.allclose(stats[:, 0, 0], x[:, :100].mean(1), atol=1e-5)
    assert torch.allclose(cn(5.0 * x)[0], out, atol=1e-4)  # a flux-scale change is removed


def test_continuum_division_flattens_a_smooth_continuum():
    wave = torch.linspace(7100, 8850, 1030)  # 10 chunks of 100 + one of 30
    cont = 2.0 + 1e-3 * (wave - 7100)  # a sloped continuum, 2 .. 3.75
    line = 1 - 0.5 * torch.exp(-0.5 * ((wave - 8000) / 2.0) ** 2)
    x = (cont * line)[None]
    cn = ChunkNorm(n_pixels=1030, chunk_size=100, mode="continuum")
    out, stats = cn(x)
    far = (wave - 8000).abs() > 20
    assert torch.allclose(out[0, far], torch.ones(1), atol=0.005)  # continuum divided out, edges included
    assert out[0, (wave - 8000).abs().argmin()] < 0.6  # the line survives
    assert torch.allclose(cn(7.0 * x)[0], out, atol=1e-5)
    assert stats.shape == (1, 11, 2)


@pytest.mark.parametrize("name", ["cnn_small", "mlp_small"])
def test_baseline_nets_shapes_and_gradients(name):
    m = create_model(name, n_pixels=256, n_labels=3, gaussian=True)
    out = m(flux(4, 256))
    assert out.mean.shape == (4, 3)
    (out.mean.sum() + out.log_var.sum()).backward()
    assert all(p.grad is not None for p in m.parameters())
    m2 = create_model(name, **m.config.to_dict())
    assert m2.config == m.config


def test_paper_baseline_sizes():
    mlp = create_model("mlp_paper")
    widths = [l.out_features for l in mlp.body if isinstance(l, torch.nn.Linear)]
    assert widths == [1024, 512, 256]
    cnn = create_model("cnn_paper")
    assert sum(isinstance(l, torch.nn.Conv1d) for l in cnn.features) == 4
    assert cnn(flux(2, 4096)).shape == (2, 1)


def test_config_passed_in_builds_the_same_model():
    from specvit.models import SpecViT
    from specvit.models.specvit import SpecViTConfig

    opts = dict(n_pixels=N_PIX, hidden=16, depth=1, heads=2, mlp_dim=32, pos_encoding="wavelength", wave=WAVE)
    torch.manual_seed(0)
    a = SpecViT(**opts)
    torch.manual_seed(0)
    b = SpecViT(config=SpecViTConfig.from_options(**opts))
    assert a.config == b.config and isinstance(a.config.wave, tuple)  # arrays become tuples
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(TypeError, match="either"):
        SpecViT(config=a.config, hidden=8)
    with pytest.raises(InputError, match="hiddden"):
        SpecViT(hiddden=8)
    for field, value in [("pool", "max"), ("tokenizer", "fft"), ("pos_encoding", "alibi")]:
        with pytest.raises(InputError, match=field):
            SpecViTConfig(**{field: value})


def test_registry_model_class():
    from specvit.models import SpecViT, model_class

    assert model_class("specvit_tiny") is SpecViT and model_class("cnn_small").__name__ == "CNN1D"
    with pytest.raises(InputError, match="specvit_tiny"):
        model_class("vit_does_not_exist")


def test_sinusoidal_encoding_is_the_fixed_vaswani_table():
    m = tiny(pos_encoding="sinusoidal", stride=12)
    assert not any("pos" in n for n, _ in m.named_parameters())  # nothing to train
    table = m.pos.table[0]  # (1 + 17 tokens, D = 32): CLS at position 0
    assert table.shape == (18, 32)
    p, i = 5, 3  # channel i: sin(p / 10000**(i / 16)), channel 16 + i: the cosine
    angle = torch.tensor(p / 10000 ** (i / 16), dtype=torch.float64)
    assert torch.isclose(table[p, i], torch.sin(angle).float()) and torch.isclose(table[p, 16 + i], torch.cos(angle).float())
    assert torch.equal(table[0, :16], torch.zeros(16)) and torch.equal(table[0, 16:], torch.ones(16))


def test_chunk_stats_reach_each_token_from_its_own_chunk():
    torch.manual_seed(0)
    m = tiny(chunk_norm="zscore", chunk_size=64, stride=12)  # 17 patches centred at 7.5 + 12 k (clipped to 199)
    centres = torch.clamp(7.5 + 12 * torch.arange(17), max=N_PIX - 1)
    assert torch.equal(m.chunk_stats.token_chunk, (centres // 64).long())  # chunks of pixels 0-63, 64-127, ...
    tokens = torch.zeros(1, 17, 32)
    stats = torch.zeros(1, 4, 2)
    stats[0, 1] = torch.tensor([2.0, -1.0])  # only chunk 1 (pixels 64-127) has non-zero statistics
    out = m.chunk_stats(tokens, stats)
    moved = (out - m.chunk_stats.bias).abs().sum(-1)[0] > 0
    assert moved.tolist() == (m.chunk_stats.token_chunk == 1).tolist()
    assert not any("chunk_stats" in k for k in tiny().state_dict())  # off without chunk_norm
