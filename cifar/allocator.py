"""Keep the C allocator from handing large tensors back to the kernel, so CPU training does not page-fault.

PyTorch has no caching allocator on the CPU: every activation is a ``malloc``/``free``. glibc serves blocks
above its mmap threshold (128 KiB, growing to at most 32 MiB) with a fresh ``mmap`` and unmaps them on
``free``, and it trims the top of the heap once more than 128 KiB there is free. Either way the next step's
activations of the same size are page-faulted and zeroed by the kernel again: with c4net at batch 512 that was
18.9 M minor faults and 87 s of system time in two short epochs. Raising both thresholds makes glibc keep freed
blocks in the heap and reuse them; results are bit-identical (only where memory comes from changes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# mallopt takes an int: 1 GiB is the largest power of two it can carry. Blocks up to this size come from the
# heap, and up to this much free memory may stay at its top for the next step.
KEEP_BYTES = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to ``KEEP_BYTES`` for this process (and the workers it forks
    later). Returns whether they were set: False where the C library is not glibc (macOS, musl), which keeps
    its own behaviour. Affects only allocations made after the call; safe to call more than once."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: other C libraries lack it or take other parameter numbers
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
