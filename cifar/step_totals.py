"""Per-step training totals that every process agrees on, read by the host one step late.

Each optimizer step packs its loss sum, correct count, image count and the process's stop flags into one small
tensor that is summed over processes (one all-reduce), so every process sees the same numbers and stops at the
same step. Reading such a tensor on the host (``.tolist()``) waits for the device to finish the step: on a GPU
that would stall the host every step and leave the GPU idle while the next step is launched. So the host reads
step ``k``'s totals only after it has queued step ``k + 1``; by then step ``k`` is normally done. Before anything
is saved (a checkpoint, the end of an epoch) every queued step is read, so nothing is saved past a non-finite
loss and a stop request is never lost. On a CPU the tensors are ready at once and the lag changes nothing but
the step at which a stop is noticed (one later).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch

# Slots of the packed tensor.
_LOSS, _CORRECT, _COUNT, _STOP, _REQUEUE, _INTERRUPT = range(6)


@dataclass(frozen=True)
class StepTotals:
    """One optimizer step's numbers, summed over processes."""

    step: int           # the global step these totals belong to (1-based, as counted after the step)
    lr: float           # the learning rate the step used
    loss_sum: float
    correct: float
    count: float
    stops: float        # how many processes had a stop request
    requeues: float     # ... of which asked for a SLURM requeue (SIGUSR1)
    interrupts: float   # ... of which were interrupted (SIGINT)


def new_totals(device: torch.device) -> torch.Tensor:
    """The zeroed tensor a step accumulates into (float64: exact counts over any realistic batch)."""
    return torch.zeros(6, dtype=torch.float64, device=device)


def add_batch(totals: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Add one micro-batch's per-sample ``losses`` and predictions to ``totals`` without a host sync."""
    totals[_LOSS] += losses.detach().sum()
    totals[_CORRECT] += (logits.detach().argmax(1) == labels).sum()
    totals[_COUNT] += len(labels)


def add_stop_flags(totals: torch.Tensor, stop: bool, requeue: bool, interrupted: bool) -> None:
    """Record this process's stop request in the step's totals (before they are reduced)."""
    # One copy to the device, not three scalar writes (each a host-to-device transfer on a GPU).
    flags = torch.tensor((float(stop), float(requeue), float(interrupted)), dtype=totals.dtype)
    totals[_STOP:_INTERRUPT + 1] = flags.to(totals.device, non_blocking=True)


class LaggedTotals:
    """Reduced step totals, queued until the host reads them (see the module docstring)."""

    def __init__(self, lag: int = 1) -> None:
        if lag < 0:
            raise ValueError(f"lag {lag!r} must be >= 0 steps")
        self.lag = lag
        self._queued: deque[tuple[int, float, torch.Tensor]] = deque()

    def push(self, step: int, lr: float, reduced: torch.Tensor) -> None:
        """Queue step ``step``'s reduced totals (a device tensor that may still be being computed)."""
        self._queued.append((step, lr, reduced))

    def ready(self, drain: bool = False) -> Iterator[StepTotals]:
        """The queued steps the host may read now, oldest first: all but the newest ``lag``, or all with
        ``drain`` (before saving anything)."""
        keep = 0 if drain else self.lag
        while len(self._queued) > keep:
            step, lr, reduced = self._queued.popleft()
            values = reduced.tolist()
            yield StepTotals(step, lr, *values)

    def __len__(self) -> int:
        return len(self._queued)

