"""What a run ran on and how much memory it took, said the same way by train.py and bench.py."""

from __future__ import annotations

import os
import resource

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores)"


def peak_memory_mb(device: torch.device) -> float:
    """On a GPU the most memory this process had allocated on it (since the last
    ``torch.cuda.reset_peak_memory_stats``); on the CPU the process's peak resident memory since it started."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
