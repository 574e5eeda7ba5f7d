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


class OutputError(SpecvitError):
    """An output cannot be written: the disk is full, the directory is read-only, another process
    writes it. The message names the file (and the bytes needed, the lock file, the owner's PID)."""

    def __init__(self, message: str, *, file=None, **details):
        parts = [message]
        if file is not None:
            parts.append(f"file={str(file)!r}")
        parts.extend(f"{k}={v!r}" for k, v in details.items() if v is not None)
        super().__init__("; ".join(parts))
        self.file = file
        self.details = details


class OutputLockedError(OutputError):
    """Another live process holds the output's lock (``details``: lock, pid)."""


class DiskFullError(OutputError):
    """Not enough space (or a file-size limit) for an output (``details``: needed_bytes, free_bytes)."""
