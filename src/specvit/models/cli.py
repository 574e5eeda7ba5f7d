"""CLI of the models package: ``specvit models list|info|show``."""
from __future__ import annotations

import argparse
import json

import yaml

from specvit.errors import InputError

EPILOG = """\
examples:
  specvit models list                         # registered names, classes, parameter counts
  specvit models list 'specvit_*'
  specvit models info specvit_p16_h256_l6     # full config + parameter count
  specvit models info specvit_tiny --set tokenizer=sw --set pos_encoding=rope
  specvit models show runs/vit/model          # what a saved model directory holds
"""


def _overrides(items) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError("expected KEY=VALUE", field="--set", value=item)
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def cmd_list(args) -> int:
    from specvit.models import create_model, list_models
    from specvit.models.registry import model_class

    for name in list_models(args.pattern):
        print(f"{name:24s} {model_class(name).__name__:8s} {_n_params(create_model(name)):>12,d} params")
    return 0


def cmd_info(args) -> int:
    from specvit.models import create_model

    m = create_model(args.name, **_overrides(args.set))
    cfg = m.config.to_dict()
    if cfg.get("wave") is not None:
        cfg["wave"] = f"<{len(cfg['wave'])} wavelengths>"
    print(json.dumps({"model": args.name, "class": type(m).__name__, "n_params": _n_params(m), "config": cfg}, indent=1))
    return 0


def cmd_show(args) -> int:
    from specvit.models.io import read_meta

    meta = read_meta(args.path)
    print(json.dumps({
        "path": str(meta.path), "format_version": meta.format_version, "specvit_version": meta.specvit_version,
        "model": meta.model_name, "class": meta.model_class, "label_names": meta.label_names,
        "label_mean": None if meta.label_mean is None else meta.label_mean.tolist(),
        "label_std": None if meta.label_std is None else meta.label_std.tolist(),
        "n_wave": None if meta.wave_A is None else len(meta.wave_A),
        "config": {k: v for k, v in meta.model_config.items() if k != "wave"}, "extras": meta.extras,
    }, indent=1, default=str))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models", help="list the model zoo, show a model's config, inspect a saved model directory",
        description="Neural models behind one registry (specvit.models.create_model): SpecViT with C1D/SW "
                    "tokenizers, learned/sinusoidal/rope/wavelength position encodings, cls/mean pooling, "
                    "optional chunk normalisation (zscore/continuum) and Gaussian heads; the paper's 1D CNN "
                    "and MLP. Saved model directories are versioned (config.json + weights.safetensors).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True
    q = sub.add_parser("list", help="registered model names with parameter counts")
    q.add_argument("pattern", nargs="?", default=None, help="shell glob, e.g. 'specvit_*'")
    q.set_defaults(func=cmd_list)
    q = sub.add_parser("info", help="resolved config and parameter count of a named model")
    q.add_argument("name", help="registered model name (see 'specvit models list')")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a constructor argument (e.g. tokenizer=sw, pos_encoding=rope, chunk_norm=zscore)")
    q.set_defaults(func=cmd_info)
    q = sub.add_parser("show", help="metadata of a saved model directory (format version, labels, scaler, config)")
    q.add_argument("path", help="model directory written by specvit train / save_model")
    q.set_defaults(func=cmd_show)
