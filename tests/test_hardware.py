"""What the trainer reads off the machine: usable CPUs and the DataLoader workers it picks from them."""

from __future__ import annotations

import os

import pytest

from cifar.hardware import loader_workers, usable_cpus


def test_usable_cpus_follow_the_affinity_mask() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this platform")
    assert usable_cpus() == len(os.sched_getaffinity(0)) >= 1


@pytest.mark.parametrize("cpus, local_processes", [(2, 1), (2, 2), (64, 8), (1, 1)])
def test_cpu_training_takes_one_worker_whatever_the_machine(cpus: int, local_processes: int) -> None:
    assert loader_workers("cpu", cpus, local_processes) == 1


@pytest.mark.parametrize("cpus, local_processes, workers", [
    (16, 1, 8),   # capped: more workers than a small net needs
    (16, 2, 7),   # each process's 8 CPUs, less one for itself
    (32, 8, 3),
    (8, 8, 1),    # at least one, even with no CPU to spare
    (4, 8, 1),
    (16, 0, 8),   # an unset local count counts as one process
])
def test_gpu_training_shares_the_cpus_among_the_node_processes(cpus: int, local_processes: int, workers: int) -> None:
    assert loader_workers("cuda", cpus, local_processes) == workers
