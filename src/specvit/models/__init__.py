"""Neural models behind one registry: ``create_model(name, **overrides)``.

>>> from specvit.models import create_model, list_models
>>> m = create_model("specvit_tiny", n_pixels=256)
>>> m(torch.ones(2, 256)).shape                      # doctest: +SKIP
torch.Size([2, 1])

Registered names (``list_models()``):

* ``specvit_p16_h256_l6`` -- the paper's model (patch 16, D 256, 6 layers, 8 heads, FFN 1024);
* ``specvit_p8_h128_l8``, ``specvit_p32_h256_l4``, ``specvit_p16_h384_l6`` -- the paper's sweep runners-up;
* ``specvit_p256_h64_l3`` -- the CPU quickstart's SpecViT (256-pixel patches, flatten head; docs/models.md);
* ``specvit_p32_h64_l3`` (the quickstart's size before), ``specvit_p32_h64_l3_stem`` (the same with a conv stem);
* ``specvit_small`` (D 128, 4 layers), ``specvit_tiny`` (D 32, 2 layers; tests and quickstart);
* ``cnn_paper``, ``cnn_small``; ``mlp_paper``, ``mlp_small``.

Save and load a trained model with :mod:`specvit.models.io`.
"""
from __future__ import annotations

from specvit.models.cnn import CNN1D
from specvit.models.heads import GaussianOutput
from specvit.models.mlp import MLP
from specvit.models.registry import create_model, list_models, model_class, model_defaults, register_model
from specvit.models.specvit import SpecViT

__all__ = ["create_model", "list_models", "register_model", "model_defaults", "model_class", "SpecViT", "CNN1D", "MLP", "GaussianOutput"]

register_model("specvit_p16_h256_l6", SpecViT, patch_size=16, hidden=256, depth=6, heads=8, mlp_dim=1024)
register_model("specvit_p8_h128_l8", SpecViT, patch_size=8, hidden=128, depth=8, heads=4, mlp_dim=512)
register_model("specvit_p32_h256_l4", SpecViT, patch_size=32, stride=16, hidden=256, depth=4, heads=4, mlp_dim=1024)
register_model("specvit_p16_h384_l6", SpecViT, patch_size=16, hidden=384, depth=6, heads=8, mlp_dim=1536)
register_model("specvit_small", SpecViT, patch_size=16, hidden=128, depth=4, heads=4, mlp_dim=512)
register_model("specvit_tiny", SpecViT, patch_size=16, hidden=32, depth=2, heads=2, mlp_dim=64, dropout=0.0)
register_model("specvit_p32_h64_l3", SpecViT, patch_size=32, hidden=64, depth=3, heads=4, mlp_dim=128, dropout=0.0)  # CPU quickstart size until round 2 of the ablation
# the CPU quickstart's SpecViT since round 2 of the equal-compute ablation (docs/models.md): 256-pixel patches
# (16 tokens of the 4,096-pixel MR grid) and the flatten head
register_model("specvit_p256_h64_l3", SpecViT, patch_size=256, hidden=64, depth=3, heads=4, mlp_dim=128, dropout=0.0,
               pool="flatten")
# the quickstart size with a 2-layer convolutional stem (docs/models.md, "Equal-compute ablation")
register_model("specvit_p32_h64_l3_stem", SpecViT, patch_size=32, hidden=64, depth=3, heads=4, mlp_dim=128, dropout=0.0,
               conv_stem=(16, 32))
register_model("cnn_paper", CNN1D, channels=(16, 32, 64, 128), kernel_size=9, pool=4, fc_dim=256)
register_model("cnn_small", CNN1D, channels=(8, 8, 16, 16), kernel_size=5, pool=4, fc_dim=32, dropout=0.0)
register_model("mlp_paper", MLP, hidden=(1024, 512, 256))
register_model("mlp_small", MLP, hidden=(64, 32), dropout=0.0)
