"""Process memory policy: let glibc keep freed memory for reuse instead of returning it to the OS.

PyTorch and numpy on CPU allocate every large tensor with ``malloc``. glibc serves
allocations above its mmap threshold (128 kB, adapting up to 32 MB) with a fresh
``mmap`` and gives them back with ``munmap`` on free, and it trims the top of the heap
when more than the trim threshold is free. Training allocates and frees the same
activation tensors every step, so every step re-faults every page of them: on the
2-core AMD EPYC VM of 2026-12-07, one SpecViT training step at batch 128 faulted in
8.6 GB and spent 3.8-4.1 of its ~19 CPU-seconds in the kernel (measured with
``getrusage``; ``docs/training.md``).

:func:`keep_freed_memory` sets, for the calling process, ``M_MMAP_MAX = 0`` (no
separate mappings: large blocks come from the heap and are reused) and
``M_TRIM_THRESHOLD`` = ``max_retained_bytes`` (free memory at the top of the heap is
returned to the OS only above this), and writes the same settings to the environment
(``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``) so child processes (``simulate``
workers, DataLoader workers, ``torchrun`` ranks started from here) start with them.
This is the glibc-only counterpart of preloading jemalloc or tcmalloc, which PyTorch's
CPU performance guides recommend for the same reason. It changes no numbers, only
where memory comes from. The cost: memory freed below the top of the heap stays with
the process, so resident memory stays near the peak instead of falling after it (the
peak itself is unchanged; ``benchmarks/train_memory.py`` measures it).

The ``specvit`` command applies it at start-up unless ``SPECVIT_MALLOC=system``; code
that imports specvit as a library is left alone (call the function yourself).
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
INT_MAX = 2**31 - 1
ENV_OPT_OUT = "SPECVIT_MALLOC"


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded in this process (libc among them)
        libc.gnu_get_libc_version  # noqa: B018 -- present only in glibc (not musl)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(max_retained_bytes: int = INT_MAX) -> bool:
    """Serve large blocks from the heap and keep up to ``max_retained_bytes`` (bytes) of freed memory.

    Returns True where applied (Linux with glibc), False elsewhere (nothing changes). The
    retained amount is capped at ``INT_MAX`` (2 GiB - 1), glibc's limit for ``mallopt``.
    """
    if max_retained_bytes < 0:
        raise ValueError(f"max_retained_bytes must be >= 0, got {max_retained_bytes}")
    libc = _glibc()
    if libc is None:
        return False
    retained = min(int(max_retained_bytes), INT_MAX)
    ok = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, retained))
    if ok:
        os.environ["MALLOC_MMAP_MAX_"] = "0"
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(retained)
    return ok


def apply_default_policy() -> bool:
    """What the ``specvit`` command does at start-up: :func:`keep_freed_memory` unless ``SPECVIT_MALLOC=system``."""
    choice = os.environ.get(ENV_OPT_OUT, "keep").strip().lower()
    if choice == "system":
        return False
    if choice != "keep":
        from specvit.errors import ConfigError

        raise ConfigError("must be 'keep' (default) or 'system'", field=f"environment variable {ENV_OPT_OUT}",
                          value=choice)
    return keep_freed_memory()
