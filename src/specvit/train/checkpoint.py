"""Training checkpoints: everything needed to continue exactly where a run stopped.

A checkpoint holds the model and optimizer/scheduler/GradScaler states, the RNG
states (torch CPU and CUDA, numpy, python), the data position (epoch, batch in
epoch, optimizer step), the early-stopping state and the model identity (name,
config). Files are written atomically; loading one made for another model
configuration is a clear :class:`specvit.errors.InputError`.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from specvit.atomic import atomic_path
from specvit.errors import InputError

FORMAT_VERSION = 1


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, *, model, optimizer, scheduler, scaler, position: dict, identity: dict, extra: dict) -> None:
    """Write a checkpoint atomically (``model`` unwrapped from DDP/compile)."""
    doc = {
        "format_version": FORMAT_VERSION,
        "identity": identity,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "position": dict(position),
        "extra": extra,
    }
    with atomic_path(path) as tmp:
        torch.save(doc, tmp)


def load_checkpoint(path, *, identity: dict) -> dict:
    """Read a checkpoint and check it belongs to the same model (name, config, labels)."""
    path = Path(path)
    try:
        doc = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated / not a checkpoint
        raise InputError(f"cannot read checkpoint: {e}", file=str(path)) from None
    if not isinstance(doc, dict) or "format_version" not in doc:
        raise InputError("not a specvit training checkpoint", file=str(path))
    if doc["format_version"] > FORMAT_VERSION:
        raise InputError("checkpoint written by a newer specvit", file=str(path), field="format_version",
                         value=doc["format_version"])
    saved = doc["identity"]
    for key in sorted(set(saved) | set(identity)):
        if saved.get(key) != identity.get(key):
            diff = key
            if isinstance(saved.get(key), dict) and isinstance(identity.get(key), dict):
                a, b = saved[key], identity[key]
                sub = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                diff = f"{key}.{sub[0]}" if sub else key
                return _mismatch(path, diff, a.get(sub[0]) if sub else a, b.get(sub[0]) if sub else b)
            return _mismatch(path, diff, saved.get(key), identity.get(key))
    return doc


def _mismatch(path, field, old, new):
    raise InputError(
        f"checkpoint was made for a different model configuration (checkpoint has {old!r}, config asks {new!r}); "
        "use another run.out_dir or run.resume=never",
        file=str(path), field=field,
    )
