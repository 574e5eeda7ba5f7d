"""``python -m specvit``: the same command as ``specvit`` (memory policy, then the CLI)."""
from specvit.cli import console_main

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in tests/test_cli_entry.py
    console_main()
