"""Typed configs: dataclasses read from YAML, with ``--set key=value`` overrides.

Every verb has one dataclass (nested dataclasses for sections). An unknown key,
in the file or in an override, is an error that names the file and the key.

>>> from dataclasses import dataclass
>>> @dataclass
... class C:
...     lr: float = 3e-4
>>> load_config(C, overrides=["lr=1e-3"]).lr
0.001
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import platform
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from specvit.errors import ConfigError, InputError

T = TypeVar("T")


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value, tp, *, key: str, source):
    """Convert a YAML/CLI value to the annotated type ``tp`` (or raise ConfigError)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:  # Optional[X]: X's own error (its field, its message)
            return _coerce(value, members[0], key=key, source=source)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key=key, source=source)
            except ConfigError as e:  # try next member
                errors.append(getattr(e, "message", str(e)))
        why = "; ".join(dict.fromkeys(errors))
        raise ConfigError(f"value does not fit type {tp} ({why})", file=source, field=key, value=value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"must be one of {list(args)}", file=source, field=key, value=value)
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = _yaml_value(value, key=key, source=source) if value.strip().startswith("[") \
                else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        if origin is tuple and len(args) > 1 and args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"needs {len(args)} values", file=source, field=key, value=value)
            return tuple(_coerce(v, a, key=key, source=source) for v, a in zip(value, args))
        out = [_coerce(v, inner, key=key, source=source) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if isinstance(value, str):
            value = _yaml_value(value, key=key, source=source)
        if not isinstance(value, dict):
            raise ConfigError("must be a mapping", file=source, field=key, value=value)
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, key=key, source=source): _coerce(v, vt, key=f"{key}.{k}", source=source) for k, v in value.items()}
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError("must be a mapping", file=source, field=key, value=value)
        return _from_dict(tp, value, prefix=key + ".", source=source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError("must be true or false", file=source, field=key, value=value)
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"must be {tp.__name__}", file=source, field=key, value=value)
        try:
            if tp is int:
                f = float(value)
                if f != int(f):
                    raise ValueError
                return int(f)
            return float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            raise ConfigError(f"must be {tp.__name__}", file=source, field=key, value=value) from None
    if tp is str:
        if value is None:
            raise ConfigError("must be a string", file=source, field=key, value=value)
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def _yaml_value(text: str, *, key: str, source):
    """Parse a YAML value given as text (a list / mapping in ``--set``); a syntax error is a ConfigError."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        msg = str(getattr(e, "problem", None) or e).strip()
        raise ConfigError(f"not a valid YAML value ({msg})", file=source, field=key, value=text) from None


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _check_finite(value, default, *, key: str, source) -> None:
    """NaN is never a valid config number; +-inf only where the field's own default is infinite."""
    if isinstance(value, bool):
        return
    if isinstance(value, float):
        if math.isnan(value):
            raise ConfigError("must be a finite number, not NaN", file=source, field=key, value=value)
        if math.isinf(value) and not (isinstance(default, float) and math.isinf(default)):
            raise ConfigError("must be a finite number", file=source, field=key, value=value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_finite(v, None, key=key, source=source)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, None, key=f"{key}.{k}", source=source)


def _from_dict(cls: type[T], data: dict, *, prefix: str = "", source=None) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    names = set(fields)
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key (known: {', '.join(sorted(names))})", file=source, field=prefix + str(unknown[0])
        )
    kwargs = {}
    for k, v in data.items():
        hint = hints[k]
        default = dataclasses.MISSING
        if _is_dataclass_type(hint) and isinstance(v, dict):
            # a partial section (e.g. --set labels.log_g.dist=beta) completes the field's DEFAULT value,
            # which may differ from the section class's own defaults (each label has its own range)
            default = _field_default(fields[k])
            if isinstance(default, hint):
                v = _deep_merge(config_to_dict(default), v)
        elif isinstance(v, (float, list, tuple, dict)):
            default = _field_default(fields[k])
        value = _coerce(v, hint, key=prefix + k, source=source)
        if not dataclasses.is_dataclass(value):
            _check_finite(value, default, key=prefix + k, source=source)
        kwargs[k] = value
    try:
        return cls(**kwargs)
    except InputError as e:  # a section's own check (ConfigError, or InputError from a shared dataclass)
        field = e.field
        if prefix and field is not None and not str(field).startswith(prefix):
            field = prefix + str(field)  # it knows only its key: name the full path
        cls_e = type(e) if isinstance(e, ConfigError) else ConfigError
        raise cls_e(getattr(e, "message", str(e)), file=e.file or source, field=field, value=e.value) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e), file=source, field=prefix.rstrip(".") or cls.__name__) from None


def set_dotted(data: dict, dotted: str, value, *, cls, source) -> None:
    """Apply ``a.b.c=value`` to a nested dict, checking every key against the dataclass."""
    parts = dotted.split(".")
    cur_cls, cur = cls, data
    for i, part in enumerate(parts):
        if typing.get_origin(cur_cls) is dict:  # free-form mapping (e.g. model.overrides.depth=2)
            for p in parts[i:-1]:
                cur = cur.setdefault(p, {})
            cur[parts[-1]] = value
            return
        if not _is_dataclass_type(cur_cls):
            raise ConfigError("cannot descend into a non-section key", file=source, field=".".join(parts[:i]))
        fields = {f.name: f for f in dataclasses.fields(cur_cls)}
        if part not in fields:
            raise ConfigError(
                f"unknown config key (known: {', '.join(sorted(fields))})", file=source, field=".".join(parts[: i + 1])
            )
        hint = typing.get_type_hints(cur_cls)[part]
        if i == len(parts) - 1:
            cur[part] = value
        else:
            if cur.get(part) is None:  # absent, or an optional section that is null: --set creates it
                cur[part] = {}
            cur = cur[part]
            cur_cls = _optional_section(hint)


def _optional_section(hint):
    """``Section | None`` -> ``Section`` (so ``--set stream.key=...`` reaches an optional section)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1 and _is_dataclass_type(members[0]):
            return members[0]
    return hint


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError("an override must look like key=value", field="--set", value=text)
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(cls: type[T], path=None, overrides=(), *, data: dict | None = None) -> T:
    """Build ``cls`` from an optional YAML file, an optional dict, then ``key=value`` overrides."""
    merged: dict = {}
    source = None
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.exists():
            raise ConfigError("config file not found", file=source)
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML: {e}", file=source) from None
        if not isinstance(loaded, dict):
            raise ConfigError("top level of a config must be a mapping", file=source)
        merged.update(loaded)
    if data:
        merged = _deep_merge(merged, copy.deepcopy(data))  # overrides below must not edit the caller's dict
    for ov in overrides:
        key, value = parse_override(ov)
        set_dotted(merged, key, value, cls=cls, source=f"--set {ov}")
    try:
        return _from_dict(cls, merged, source=source)
    except ConfigError as e:
        raise name_override(e, overrides) from None


def name_override(e: ConfigError, overrides=()) -> ConfigError:
    """``e`` with ``file='--set key=value'`` when that override gave the bad field (the last one for it wins)."""
    field = str(e.field or "")
    for ov in reversed(list(overrides)):
        key = ov.split("=", 1)[0].strip()
        if field == key or field.startswith(key + "."):
            return type(e)(getattr(e, "message", str(e)), file=f"--set {ov}", field=e.field, value=e.value)
    return e


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def config_to_dict(cfg) -> dict:
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def provenance(extra: dict | None = None) -> dict:
    """What made an output: command line, versions, platform (write it next to every output)."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("specvit", "numpy", "scipy", "torch", "h5py", "pandas", "lightgbm", "pysme-astro"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    out = {
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }
    if extra:
        out.update(extra)
    return out


def write_resolved_config(cfg, path, extra: dict | None = None) -> None:
    """Write the resolved config plus provenance as YAML (atomically)."""
    from specvit.atomic import write_text_atomic

    doc = {"config": config_to_dict(cfg), "provenance": provenance(extra)}
    write_text_atomic(path, yaml.safe_dump(json.loads(json.dumps(doc, default=str)), sort_keys=False))
