"""A timm-style model registry: named configurations of the model classes.

A *name* (``"specvit_p16_h256_l6"``) maps to a model class and the keyword
arguments that define that configuration. ``create_model(name, **overrides)``
builds it; any keyword given overrides the named default, so

>>> m = create_model("specvit_tiny", n_labels=3)          # doctest: +SKIP
>>> m2 = create_model(m.model_name, **m.config.to_dict())  # doctest: +SKIP

rebuilds the same architecture (``m.config`` holds every constructor argument).
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable

from specvit.errors import InputError

#: name -> (model class, default keyword arguments)
_REGISTRY: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}


def register_model(name: str, cls: Callable[..., Any], **defaults) -> None:
    """Register ``cls(**defaults)`` under ``name`` (names are unique)."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = (cls, dict(defaults))


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, sorted; ``pattern`` is a shell glob such as ``"specvit_*"``."""
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def model_defaults(name: str) -> dict[str, Any]:
    """The keyword arguments that define the named configuration (a copy)."""
    return dict(_lookup(name)[1])


def model_class(name: str) -> Callable[..., Any]:
    """The class registered under ``name`` (its ``Config`` lists the options ``create_model`` accepts)."""
    return _lookup(name)[0]


def _lookup(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(
            f"unknown model name; registered models: {', '.join(list_models())}", field="model", value=name
        ) from None


def create_model(name: str, **overrides):
    """Build the registered model ``name``; keyword arguments override its defaults.

    An unknown name or an unknown keyword raises :class:`specvit.errors.InputError`
    naming the field and listing what is allowed.
    """
    cls, defaults = _lookup(name)
    config_cls = getattr(cls, "Config", None)
    if config_cls is not None:
        known = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(
                f"unknown option for model {name!r} (known: {', '.join(sorted(known))})",
                field=unknown[0],
                value=overrides[unknown[0]],
            )
    model = cls(**{**defaults, **overrides})
    model.model_name = name
    return model


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of every model's config: all constructor arguments, JSON-serialisable."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]):
        """Build from a constructor's ``locals()`` (extra names such as ``self`` are ignored)."""
        return cls(**{f.name: _plain(arguments[f.name]) for f in dataclasses.fields(cls)})

    @classmethod
    def from_options(cls, **options):
        """Build from keyword options; missing fields take their defaults, arrays and lists become tuples.

        An unknown option raises :class:`specvit.errors.InputError` naming it and listing the known ones.
        """
        known = sorted(f.name for f in dataclasses.fields(cls))
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InputError(f"unknown option (known: {', '.join(known)})", field=unknown[0], value=options[unknown[0]])
        return cls(**{k: _plain(v) for k, v in options.items()})


def _plain(value):
    """Numpy / torch arrays and lists -> tuples of Python numbers (hashable, JSON-serialisable config values)."""
    if hasattr(value, "tolist"):  # numpy / torch arrays (e.g. a wavelength grid)
        value = value.tolist()
    return tuple(value) if isinstance(value, list) else value
