"""train.py with a fault that a test cannot cause for real without root (a full disk), without a bug to find, or at an
exact step:

    python -m tests.faults full-disk=TEXT TRAIN_ARGS...     # every write to a path holding TEXT fails with ENOSPC
    python -m tests.faults crash-checkpoint TRAIN_ARGS...   # the first checkpoint raises RuntimeError
    python -m tests.faults sigusr1-after-step=N TRAIN_ARGS...   # SIGUSR1 as step N ends: the run stops at step N + 1
    accelerate launch ... -m tests.faults FAULT TRAIN_ARGS...   # the same in every process

Run from the repository root. The fault replaces a library function in this process only, then train.py runs as
its own `__main__`, exactly as `python train.py TRAIN_ARGS...` would.
"""

from __future__ import annotations

import errno
import os
import runpy
import signal
import sys
from pathlib import Path

from cifar import checkpoint, files, step_totals

TRAIN = Path(__file__).resolve().parents[1] / "train.py"


def fill_disk_at(text: str) -> None:
    """Writes whose path holds ``text`` fail as on a full disk; files write through this one function."""
    write = files.write_durably

    def full(path: Path, data: bytes) -> None:
        if text in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, data)

    files.write_durably = checkpoint.write_durably = full  # checkpoint imported the name itself


def crash_checkpoint() -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a fault injected by tests/faults.py")

    checkpoint.write_checkpoint = crash


def sigusr1_after_step(step: int) -> None:
    """SIGUSR1 to this process while step ``step`` records its stop flags (read before the signal): the request rides
    on step ``step + 1``'s flags, so the run stops there, wherever in an epoch that is."""
    add_stop_flags = step_totals.add_stop_flags
    calls = 0

    def add_and_signal(*args: object, **kwargs: object) -> None:
        nonlocal calls
        add_stop_flags(*args, **kwargs)
        calls += 1
        if calls == step:
            os.kill(os.getpid(), signal.SIGUSR1)

    step_totals.add_stop_flags = add_and_signal  # train.py imports the name when runpy runs it, after this


if __name__ == "__main__":
    fault, *arguments = sys.argv[1:]
    if fault.startswith("full-disk="):
        fill_disk_at(fault.removeprefix("full-disk="))
    elif fault == "crash-checkpoint":
        crash_checkpoint()
    elif fault.startswith("sigusr1-after-step="):
        sigusr1_after_step(int(fault.removeprefix("sigusr1-after-step=")))
    else:
        sys.exit(f"unknown fault {fault!r}: full-disk=TEXT, crash-checkpoint or sigusr1-after-step=N")
    sys.argv = [str(TRAIN), *arguments]
    runpy.run_path(str(TRAIN), run_name="__main__")
