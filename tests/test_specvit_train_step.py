"""The training step's fast implementations equal the reference ones."""
from __future__ import annotations

import torch

from specvit.models import create_model
from specvit.train.trainer import adamw_impl, param_groups


def test_fused_adamw_equals_the_default_update():
    assert adamw_impl(torch.device("cpu")) == {"fused": True}
    assert adamw_impl(torch.device("meta")) == {}
    torch.manual_seed(0)
    a = create_model("specvit_tiny", n_pixels=128)
    b = create_model("specvit_tiny", n_pixels=128)
    b.load_state_dict(a.state_dict())
    start = {k: v.clone() for k, v in a.state_dict().items()}
    kw = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    opt_a = torch.optim.AdamW(param_groups(a, 0.5), **kw, **adamw_impl(torch.device("cpu")))
    opt_b = torch.optim.AdamW(param_groups(b, 0.5), **kw)  # torch's default (per-tensor loop on CPU)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(4, 128, generator=g)
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad(set_to_none=True)
            m(x).square().mean().backward()
            opt.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert not torch.equal(pa, start[name]), name  # every parameter was updated
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=lambda s: f"{name}: {s}")  # 1% of one lr step (Adam amplifies rounding of ~0 grads, e.g. the key bias)
