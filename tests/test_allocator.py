"""keep_freed_memory: large CPU tensors freed and allocated again stop costing fresh page faults."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

# Allocates and frees a 64 MiB tensor again and again, as training steps do with their activations, and prints
# the minor page faults of the last 20 times (the heap takes a few rounds to settle). 64 MiB is 16,384 pages:
# faulting each allocation afresh costs ~330,000.
PROBE = """
import resource, sys, torch
from cifar.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() is True
for _ in range(10):
    torch.ones(16 * 2**20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_PER_TENSOR = 16 * 2**20 * 4 // 4096


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1], env={"OMP_NUM_THREADS": "1"})
    return int(done.stdout.strip())


@pytest.mark.slow  # two Python subprocesses
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_freed_tensors_are_reused_instead_of_faulted_again() -> None:
    default, kept = page_faults("default"), page_faults("keep")
    assert default > 10 * PAGES_PER_TENSOR  # the problem is real with glibc's defaults
    assert kept < PAGES_PER_TENSOR  # the freed blocks are reused
