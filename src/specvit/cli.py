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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
