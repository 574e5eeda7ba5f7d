"""The ``specvit`` command: one sub-command per verb, each a thin wrapper over the modules.

Each sub-command lives next to the module it wraps, in a ``cli`` module that
defines ``register(subparsers)``; this file only lists them.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from specvit import __version__
from specvit.errors import SpecvitError

#: Modules that register sub-commands, in the order of the data flow.
COMMAND_MODULES = [
    "specvit.spectra.cli",
    "specvit.observe.cli",
    "specvit.data.cli",
    "specvit.models.cli",
    "specvit.train.cli",
    "specvit.baselines.cli",
    "specvit.fisher.cli",
    "specvit.evaluate.cli",
    "specvit.quickstart",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specvit",
        description=(
            "Stellar parameters from spectra with a 1D Vision Transformer, measured against the "
            "Fisher/Cramer-Rao ceiling. Data flow: spectra -> observe -> data -> models/train -> "
            "baselines -> fisher -> evaluate."
        ),
        epilog=(
            "Memory: on Linux/glibc the specvit command keeps freed memory for reuse (no separate "
            "mappings for large blocks, up to 2 GiB retained), so training does not fault its "
            "activations in again every step; resident memory then stays near its peak. "
            "SPECVIT_MALLOC=system keeps glibc's default (specvit.malloc, docs/training.md)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"specvit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except SpecvitError as e:
        print(f"specvit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


def console_main() -> None:
    """The ``specvit`` command (and ``python -m specvit.cli``): the process memory policy, then :func:`main`.

    The policy (:mod:`specvit.malloc`; opt out with ``SPECVIT_MALLOC=system``) lets glibc reuse freed
    memory for the next training step instead of faulting it in again; :func:`main` itself, which
    tests and library code call in-process, leaves the process's allocator alone.
    """
    from specvit.malloc import apply_default_policy

    try:
        apply_default_policy()
    except SpecvitError as e:
        print(f"specvit: error: {e}", file=sys.stderr)
        sys.exit(2)
    rc = main()
    from specvit.atomic import HDF5_STATE

    if HDF5_STATE["damaged"]:  # skip HDF5's exit handler: it would segfault on the file it could not close
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":  # pragma: no cover
    console_main()
