"""Exceptions with messages that name the file, the field and the value."""
from __future__ import annotations


class SpecvitError(Exception):
    """Base class of every error specvit raises on purpose."""


class InputError(SpecvitError, ValueError):
    """Bad input: wrong shape, NaN, missing key, unknown config key, ...

    The message always says where (file), what (field) and which value.
    """

    def __init__(self, message: str, *, file=None, field=None, value=None):
        parts = [message]
        if file is not None:
            parts.append(f"file={str(file)!r}")
        if field is not None:
            parts.append(f"field={field!r}")
        if value is not None:
            parts.append(f"value={value!r}")
        super().__init__("; ".join(parts))
        self.message = message
        self.file, self.field, self.value = file, field, value


class ConfigError(InputError):
    """A config file or a --set override is wrong (unknown key, bad type)."""


class LabelRangeError(InputError):
    """Labels outside the range a spectral model (or a trained model) covers."""


class MissingNodeError(InputError):
    """A grid interpolation needs a node that is missing or invalid."""
