"""What a run ran on and how much memory it took, said the same way by train.py and bench.py, and what the
machine offers the data pipeline."""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # cifar.data reads usable_cpus() and loads without torch
    import torch


def usable_cpus() -> int:
    """The CPUs this process may run on: the affinity mask honours SLURM's and taskset's CPU binding, where
    ``os.cpu_count()`` would count the whole node."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loader_workers(device_type: str, cpus: int, local_processes: int) -> int:
    """DataLoader workers per training process when the user sets none.

    On a CPU, 1: the training process's own threads use the cores, and one worker is enough to decode and
    augment the next batch during the step (this project's 2-core machine: 2 processes × 1 thread with 1
    worker each was the fastest setting, README "Speed"). On a GPU the CPUs do nothing but feed it: each
    of the node's ``local_processes`` gets its share of the ``cpus`` less one for itself, at least 1 and at
    most 8 (beyond that a process's batches come faster than a small net takes them; not measured on a GPU).
    """
    if device_type != "cuda":
        return 1
    return max(1, min(8, cpus // max(1, local_processes) - 1))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores)"


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here, which is what ``--mixed-precision auto`` trains in.

    On a GPU, bf16 in hardware (torch also counts emulated bf16, V100 and T4, which is slower than fp32). On a
    CPU, AMX: oneDNN runs the dense and pointwise convs on its bf16 tiles (c4net, batch 512, 2 processes on 2
    cores of a Xeon with AMX: 783 img/s in bf16, 617 in fp32; the depthwise convs stay fp32, cifar.nets.dilated;
    README "Speed"). Without AMX oneDNN has no fast bf16 kernels on a CPU, so fp32 stays.
    """
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private: absent from some builds
    return device.type == "cpu" and amx is not None and amx()


def peak_memory_mb(device: torch.device) -> float:
    """On a GPU the most memory this process had allocated on it (since the last
    ``torch.cuda.reset_peak_memory_stats``); on the CPU the process's peak resident memory since it started."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hardware_spans(history: Sequence[Mapping[str, Any]]) -> str:
    """What trained a run's epochs, from its metrics.jsonl rows: the one description when one kind of machine
    trained them all, otherwise each stretch with its epochs, e.g. ``"A (epochs 1-28); B (epochs 29-50)"`` for a
    run continued with ``--resume auto`` elsewhere. Rows written before train.py recorded it say "not recorded"."""
    spans: list[list[Any]] = []  # [hardware, first epoch, last epoch]
    for row in history:
        name = row.get("hardware", "not recorded")
        if spans and spans[-1][0] == name:
            spans[-1][2] = row["epoch"]
        else:
            spans.append([name, row["epoch"], row["epoch"]])
    if len(spans) == 1:
        return spans[0][0]
    return "; ".join(f"{name} ({f'epoch {first}' if first == last else f'epochs {first}-{last}'})"
                     for name, first, last in spans)
