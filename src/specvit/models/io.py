"""Versioned model directories: save a trained model, load it back after upgrades.

A model directory holds

* ``config.json``: ``format_version``, ``specvit_version``, ``torch_version``,
  ``model`` (registry name or null), ``model_class``, ``model_config`` (every
  constructor argument), ``label_names``, ``label_scaler`` (``mean``/``std`` per
  label, in label units: predictions are ``mean + std * output``), ``wave_A``
  (the input wavelength grid, Angstrom, or null), ``extras`` (any JSON dict:
  training config, seed, metrics, ...);
* ``weights.safetensors``: the ``state_dict``; its metadata holds ``format_version`` and the
  *fingerprint* of the configuration that made the weights (:func:`config_fingerprint`:
  a hash over the model class, ``model_config``, ``label_names``, ``label_scaler`` and
  ``wave_A``, plus those fields in compact form). :func:`load_model` recomputes it from
  ``config.json`` and refuses weights made for another configuration (e.g. a T_eff
  model's weights copied into a log g model's folder). Weights saved before
  fingerprints existed load with a warning.

Formats evolve through :data:`MIGRATIONS`: ``MIGRATIONS[v]`` turns a version-v
``config.json`` dict into version v+1; :func:`load_model` applies them in turn.
A directory written by a newer specvit (unknown version) is refused with a
clear error instead of being misread.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import specvit
from specvit.errors import InputError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"

#: ``MIGRATIONS[v](meta_dict) -> meta_dict`` upgrades format v to v + 1.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}


def _model_classes() -> dict[str, type]:
    from specvit.models import CNN1D, MLP, SpecViT

    return {c.__name__: c for c in (SpecViT, CNN1D, MLP)}


@dataclass
class ModelMeta:
    """Everything in ``config.json`` besides the weights."""

    model_name: str | None
    model_class: str
    model_config: dict[str, Any]
    label_names: list[str] = field(default_factory=list)
    label_mean: np.ndarray | None = None
    label_std: np.ndarray | None = None
    wave_A: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    specvit_version: str = specvit.__version__
    path: Path | None = None
    #: (hash, compact fields) of config.json after migrations; see :func:`config_fingerprint`
    fingerprint: tuple[str, dict] | None = None
    #: the same of config.json as stored, before migrations (weights written with an older format carry it)
    fingerprint_as_stored: tuple[str, dict] | None = None

    def unscale(self, y):
        """Scaled model output (..., n_labels) -> label units (identity without a scaler)."""
        if self.label_mean is None:
            return y
        mean = torch.as_tensor(self.label_mean, dtype=y.dtype) if torch.is_tensor(y) else self.label_mean
        std = torch.as_tensor(self.label_std, dtype=y.dtype) if torch.is_tensor(y) else self.label_std
        return mean + std * y


def _as_list(x):
    return None if x is None else np.asarray(x, dtype=float).ravel().tolist()


FINGERPRINT_KEY = "config_fingerprint"
FINGERPRINT_FIELDS_KEY = "config_fingerprint_fields"


def _digest(obj, n: int = 16) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def config_fingerprint(meta: dict) -> tuple[str, dict]:
    """``(hash, fields)`` of what makes weights meaningful, from a ``config.json`` dict.

    ``fields`` (compact, stored beside the hash so a mismatch can say what differs): ``model_class``,
    ``model_config`` (hash), ``label_names``, ``label_scaler`` (hash of mean and std), ``wave_A``
    (pixel count, first/last wavelength and a hash, or null).
    """
    d = json.loads(json.dumps(meta, default=str))  # the JSON form: the same on save and on load
    scaler = d.get("label_scaler") or None
    wave = d.get("wave_A")
    fields = {
        "model_class": d.get("model_class"),
        "model_config": _digest(d.get("model_config")),
        "label_names": list(d.get("label_names") or []),
        "label_scaler": None if scaler is None else _digest([scaler.get("mean"), scaler.get("std")]),
        "wave_A": None if wave is None else (f"{len(wave)} px {wave[0]:.3f}-{wave[-1]:.3f} A "
                                             f"#{_digest(wave, 8)}" if len(wave) else "0 px"),
    }
    return _digest(fields, 32), fields


def _fingerprint_mismatch(stored: str, stored_fields: dict, now: str, now_fields: dict) -> str:
    diffs = [f"{k}: weights {stored_fields.get(k)!r} vs config.json {now_fields.get(k)!r}"
             for k in now_fields if stored_fields.get(k) != now_fields.get(k)]
    return (f"the weights were made with another configuration than this folder's config.json (weights fingerprint "
            f"{stored}, config.json fingerprint {now}; differs in: {'; '.join(diffs) or 'unknown fields'}); "
            f"copy the whole model folder, not only the weights")


def save_model(
    path,
    model: torch.nn.Module,
    *,
    label_names=(),
    label_mean=None,
    label_std=None,
    wave_A=None,
    extras: dict | None = None,
) -> Path:
    """Write ``model`` to the directory ``path`` (atomically: a temporary directory is renamed)."""
    path = Path(path)
    cls_name = type(model).__name__
    if cls_name not in _model_classes() or not hasattr(model, "config"):
        raise InputError("not a specvit model (needs a registered class and .config)", field="model", value=cls_name)
    n_labels = getattr(model.config, "n_labels", None)
    label_names = list(label_names)
    for name, arr in (("label_names", label_names or None), ("label_mean", label_mean), ("label_std", label_std)):
        if arr is not None and n_labels is not None and len(np.ravel(arr)) != n_labels:
            raise InputError(f"needs n_labels={n_labels} entries", file=path, field=name, value=len(np.ravel(arr)))
    if (label_mean is None) != (label_std is None):
        raise InputError("label_mean and label_std go together", file=path, field="label_scaler")
    if label_std is not None and not np.all(np.asarray(label_std, dtype=float) > 0):
        raise InputError("label_std must be positive", file=path, field="label_std", value=_as_list(label_std))
    meta = {
        "format_version": FORMAT_VERSION,
        "specvit_version": specvit.__version__,
        "torch_version": torch.__version__,
        "model": getattr(model, "model_name", None),
        "model_class": cls_name,
        "model_config": model.config.to_dict(),
        "label_names": label_names,
        "label_scaler": None if label_mean is None else {"mean": _as_list(label_mean), "std": _as_list(label_std)},
        "wave_A": _as_list(wave_A),
        "extras": extras or {},
    }
    text = json.dumps(meta, indent=1, allow_nan=False)  # fails early if extras are not JSON
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        fp, fp_fields = config_fingerprint(meta)
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={
            "format_version": str(FORMAT_VERSION), FINGERPRINT_KEY: fp,
            FINGERPRINT_FIELDS_KEY: json.dumps(fp_fields, sort_keys=True)})
        (tmp / CONFIG_FILE).write_text(text)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_meta(path) -> ModelMeta:
    """Read and migrate ``config.json`` of a model directory (no weights)."""
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise InputError("not a model directory (no config.json)", file=path, field=CONFIG_FILE)
    try:
        d = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"config.json is not valid JSON ({e})", file=cfg_file) from None
    version = d.get("format_version")
    stored_fingerprint = config_fingerprint(d) if isinstance(d, dict) else None
    if not isinstance(version, int):
        raise InputError("missing or invalid format_version", file=cfg_file, field="format_version", value=version)
    if version > FORMAT_VERSION:
        raise InputError(
            f"model directory format {version} was written by specvit {d.get('specvit_version')}; this is specvit "
            f"{specvit.__version__}, which reads formats up to {FORMAT_VERSION}: upgrade specvit",
            file=cfg_file, field="format_version", value=version,
        )
    while version < FORMAT_VERSION:
        if version not in MIGRATIONS:
            raise InputError(f"no migration from format {version}", file=cfg_file, field="format_version", value=version)
        d = MIGRATIONS[version](dict(d))
        version += 1
        d["format_version"] = version
    for key in ("model_class", "model_config"):
        if key not in d:
            raise InputError("missing key", file=cfg_file, field=key)
    scaler = d.get("label_scaler")
    return ModelMeta(
        model_name=d.get("model"),
        model_class=d["model_class"],
        model_config=d["model_config"],
        label_names=list(d.get("label_names") or []),
        label_mean=None if not scaler else np.asarray(scaler["mean"], dtype=float),
        label_std=None if not scaler else np.asarray(scaler["std"], dtype=float),
        wave_A=None if d.get("wave_A") is None else np.asarray(d["wave_A"], dtype=float),
        extras=d.get("extras") or {},
        format_version=version,
        specvit_version=d.get("specvit_version", "?"),
        path=path,
        fingerprint=config_fingerprint(d),
        fingerprint_as_stored=stored_fingerprint,
    )


def build_from_meta(meta: ModelMeta) -> torch.nn.Module:
    """An untrained model with the architecture recorded in ``meta``."""
    classes = _model_classes()
    file = None if meta.path is None else meta.path / CONFIG_FILE
    if meta.model_class not in classes:
        raise InputError(f"unknown model class (known: {', '.join(classes)})", file=file, field="model_class", value=meta.model_class)
    cls = classes[meta.model_class]
    known = {f for f in cls.Config.__dataclass_fields__}
    unknown = sorted(set(meta.model_config) - known)
    if unknown:
        raise InputError(f"unknown option of {meta.model_class} (known: {', '.join(sorted(known))})",
                         file=file, field=f"model_config.{unknown[0]}", value=meta.model_config[unknown[0]])
    try:
        model = cls(**meta.model_config)
    except TypeError as e:
        raise InputError(f"model_config does not build a {meta.model_class}: {e}", file=file, field="model_config") from None
    model.model_name = meta.model_name
    return model


def load_state_dict_checked(model: torch.nn.Module, state: dict, *, file=None) -> None:
    """``model.load_state_dict(state)``, but a mismatch (other architecture) raises InputError naming the tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        detail = "; ".join(filter(None, [
            f"missing {missing[:5]}" if missing else "",
            f"unexpected {unexpected[:5]}" if unexpected else "",
            f"shape mismatch {shapes[:5]}" if shapes else "",
        ]))
        raise InputError(f"weights do not match the model configuration ({detail})", file=file, field="state_dict")
    model.load_state_dict(state)


def check_fingerprint(meta: ModelMeta, wfile) -> None:
    """Refuse weights whose stored fingerprint differs from the one of ``meta``'s config.json (warn if none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(wfile), framework="pt") as f:
            md = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - a corrupt header: say so
        raise InputError(f"cannot read the weights file ({e})", file=wfile, field=WEIGHTS_FILE) from None
    stored = md.get(FINGERPRINT_KEY)
    if stored is None or meta.fingerprint is None:
        warnings.warn(f"{wfile}: weights carry no configuration fingerprint (saved by an older specvit); "
                      f"cannot check that they belong to this config.json", UserWarning, stacklevel=3)
        return
    now, now_fields = meta.fingerprint
    accepted = {now, (meta.fingerprint_as_stored or meta.fingerprint)[0]}
    if stored not in accepted:
        try:
            stored_fields = json.loads(md.get(FINGERPRINT_FIELDS_KEY) or "{}")
        except json.JSONDecodeError:
            stored_fields = {}
        raise InputError(_fingerprint_mismatch(stored, stored_fields, now, now_fields), file=wfile,
                         field=FINGERPRINT_KEY, value=stored)


def load_model(path, map_location="cpu") -> tuple[torch.nn.Module, ModelMeta]:
    """Load a model directory -> ``(model in eval mode, ModelMeta)``."""
    meta = read_meta(path)
    model = build_from_meta(meta)
    wfile = Path(path) / WEIGHTS_FILE
    if not wfile.is_file():
        raise InputError("weights file missing", file=wfile, field=WEIGHTS_FILE)
    state = load_file(str(wfile), device=str(map_location))
    load_state_dict_checked(model, state, file=wfile)  # another architecture: names the tensors
    check_fingerprint(meta, wfile)  # same shapes, other labels / scaler / grid / config: names what differs
    return model.to(map_location).eval(), meta
