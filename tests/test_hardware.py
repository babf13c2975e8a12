"""What the trainer reads off the machine: usable CPUs, the DataLoader workers it picks from them, and whether
a CPU trains in bf16 under --mixed-precision auto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifar import hardware
from cifar.hardware import cpu_bf16_path, cpu_flags, hardware_spans, loader_workers, native_bf16, usable_cpus


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a Python subprocess
def test_a_process_pinned_to_one_cpu_may_use_one() -> None:
    """As `taskset -c N` or SLURM's CPU binding starts it: the mask is set before the interpreter starts."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity on this platform")
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("this process may use one CPU only: pinning cannot narrow that")
    cpu = max(allowed)
    done = subprocess.run([sys.executable, "-c", "from cifar.hardware import usable_cpus; print(usable_cpus())"],
                          cwd=ROOT, capture_output=True, text=True, check=True, timeout=120,
                          preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert done.stdout.strip() == "1"


def test_usable_cpus_count_the_affinity_mask_not_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5, 9, 11}, raising=False)
    assert usable_cpus() == 3


def test_without_an_affinity_mask_usable_cpus_count_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable"
    assert usable_cpus() == 1


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


def test_hardware_spans_name_one_machine_once_and_a_moved_run_by_its_epochs() -> None:
    gpu, cpu = "1 process(es) on NVIDIA H200", "1 process(es) on CPU (2 cores)"
    assert hardware_spans([{"epoch": e, "hardware": cpu} for e in (1, 2, 3)]) == cpu
    moved = [{"epoch": 1, "hardware": gpu}, {"epoch": 2, "hardware": gpu}, {"epoch": 3, "hardware": cpu}]
    assert hardware_spans(moved) == f"{gpu} (epochs 1-2); {cpu} (epoch 3)"
    # Rows written before train.py recorded the hardware, continued on a machine that does.
    assert hardware_spans([{"epoch": 1}, {"epoch": 2, "hardware": cpu}]) == f"not recorded (epoch 1); {cpu} (epoch 2)"
    # Back on the first machine: a third stretch, not merged with the first.
    assert hardware_spans([*moved, {"epoch": 4, "hardware": gpu}]).endswith(f"{cpu} (epoch 3); {gpu} (epoch 4)")


# Flag sets as Linux's cpuinfo lists them (the rule reads two of them; the others must not sway it).
ZEN3 = {"avx2", "fma", "sse4_2"}
SKYLAKE_X = ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
ZEN4 = SKYLAKE_X | {"avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_bf16", "amx_tile", "amx_int8"}


@pytest.mark.parametrize("flags, path", [
    (SAPPHIRE_RAPIDS, "AMX"),
    (ZEN4, "AVX512-BF16"),
    (SKYLAKE_X, None),   # AVX-512 without bf16: oneDNN has no bf16 kernels there
    (ZEN3, None),
    (set(), None),       # a CPU torch could not query, or not x86
])
def test_the_bf16_path_is_named_by_the_cpu_flags(flags: set[str], path: str | None) -> None:
    assert cpu_bf16_path(flags) == path


@pytest.mark.parametrize("flags, bf16", [(SAPPHIRE_RAPIDS, True), (ZEN4, True), (SKYLAKE_X, False), (ZEN3, False)])
def test_auto_picks_bf16_on_a_cpu_with_amx_or_avx512_bf16(monkeypatch: pytest.MonkeyPatch, flags: set[str],
                                                        bf16: bool) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    assert native_bf16(torch.device("cpu")) is bf16


def test_the_flags_the_rule_reads_are_the_ones_linux_lists() -> None:
    """torch's queries (cifar.hardware.cpu_flags) against /proc/cpuinfo on this CPU, whatever it is."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from (not Linux)")
    listed = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
              for flag in line.split(":", 1)[1].split()}
    assert cpu_flags() == {"amx_tile", "avx512_bf16"} & listed
    assert native_bf16(torch.device("cpu")) == bool({"amx_bf16", "avx512_bf16"} & listed)
