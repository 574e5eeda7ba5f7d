"""specvit.malloc: freed memory is reused (no page faults on the next allocation), opt-out, bad values."""
import json
import os
import subprocess
import sys

import pytest

from specvit.malloc import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc only")

# rounds that allocate, fill and free tensors of 64, 16, 32 and 8 MB (like the activations of a training
# step); count the minor page faults of the rounds after a warm-up. torch, not numpy: numpy asks for
# transparent huge pages, which hides most faults (not the zeroing).
PROBE = r"""
import json, os, resource, sys
import torch
from specvit.malloc import apply_default_policy, keep_freed_memory
applied = {"keep": keep_freed_memory, "default": apply_default_policy, "none": lambda: None}[sys.argv[1]]()
sizes = [16 << 20, 4 << 20, 8 << 20, 2 << 20]  # float32 elements
def one_round():
    ts = [torch.ones(n) for n in sizes]
    del ts
for _ in range(6):  # warm-up: the heap grows to its working size (memalign splits need a few rounds; 3 left
    # one 16 MB block unreused in 4 of 16 probes, measured 2026-12-07; 6: 0 of 46)
    one_round()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    one_round()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 4
print(json.dumps({"applied": applied, "faults_per_round": faults,
                  "env": [os.environ.get("MALLOC_MMAP_MAX_"), os.environ.get("MALLOC_TRIM_THRESHOLD_")]}))
"""


def _probe(mode, **env):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_removes_the_page_faults_of_reallocation():
    system = _probe("none")
    kept = _probe("keep")
    pages = (120 << 20) / os.sysconf("SC_PAGE_SIZE")  # 120 MB per round
    assert system["faults_per_round"] > 0.5 * pages  # glibc default: most of each round is fresh pages
    assert kept["applied"] is True and kept["faults_per_round"] < 0.05 * pages  # reused, not re-faulted
    assert kept["env"] == ["0", str(2**31 - 1)]  # inherited by child processes


def test_default_policy_opt_out_and_bad_value():
    assert _probe("default")["applied"] is True
    off = _probe("default", SPECVIT_MALLOC="system")
    assert off["applied"] is False and off["env"] == [None, None]
    bad = subprocess.run([sys.executable, "-m", "specvit.cli", "--version"], capture_output=True, text=True,
                         env={**os.environ, "SPECVIT_MALLOC": "jemalloc"})
    assert bad.returncode == 2 and "SPECVIT_MALLOC" in bad.stderr and "jemalloc" in bad.stderr


def test_keep_freed_memory_rejects_a_negative_size():
    from specvit.malloc import keep_freed_memory

    with pytest.raises(ValueError, match="max_retained_bytes"):
        keep_freed_memory(-1)


def test_cli_help_documents_the_policy():
    from specvit.cli import build_parser

    text = build_parser().format_help()
    assert "SPECVIT_MALLOC=system" in text and "2 GiB" in text
