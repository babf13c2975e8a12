"""What a run ran on and how much memory it took, said the same way by train.py and bench.py, what the
machine offers the data pipeline, and the fingerprint that decides whether a CPU run repeats bit for bit."""

from __future__ import annotations

import functools
import os
import platform
import re
import resource
import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
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
    worker each was the fastest setting, docs/speed.md). On a GPU the CPUs do nothing but feed it: each
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


# The CPU flags the bf16 rule reads, as Linux's cpuinfo names them, with the torch query that tells each: torch's
# (cpuinfo's) checks also see whether the OS enabled the registers, and work where there is no /proc/cpuinfo.
_BF16_FLAG_QUERIES = {"amx_tile": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}


def cpu_flags() -> frozenset[str]:
    """Which of the flags :func:`cpu_bf16_path` reads this CPU has (torch's queries are private: a build without
    one counts as a CPU without the flag)."""
    import torch

    return frozenset(flag for flag, query in _BF16_FLAG_QUERIES.items()
                     if getattr(torch.cpu, query, lambda: False)())


def cpu_bf16_path(flags: Collection[str]) -> str | None:
    """The bf16 path oneDNN takes on a CPU with these flags where bf16 autocast pays, or None where fp32 stays.

    A fixed rule on the flags, never a run-time timing, so that a resumed run trains as an uninterrupted one.
    - "AMX" (``amx_tile``): oneDNN runs the dense and pointwise convs and the linear layer on its bf16 tiles
      (``brg_conv_*:avx10_1_512_amx``): c4net, batch 512, 2 processes on 2 cores of a Xeon with AMX, 783 img/s in
      bf16 against 617 in fp32; c4net_deep16's step alone, batch 128, channels-last, 1 thread: 1.49x fp32.
    - "AVX512-BF16" (``avx512_bf16`` without AMX: AMD Zen 4): oneDNN runs the same layers on its
      ``avx512_core_bf16`` kernels (``brg_conv_fwd``, ``brg_conv_bwd``, ``brgconv_1x1``, ``jit_bf16``,
      ``jit_bf16_1x1``, ``brg_matmul``), the dense and pointwise convs 1.8x and 2.1x as fast as in fp32 on an AMD
      EPYC Zen 4 (``bench/onednn_kernels.py``): c4net, batch 512, 2 processes on its 2 cores, 1,014 img/s in bf16
      against 646 in fp32; c4net_deep16's step alone, batch 128, channels-last, 1 thread: 1.55x fp32. (Held to
      that level on the Xeon the same kernels ran 0.84x its fp32 ones: how bf16 dot products compare with fp32
      FMAs differs between the two designs, so only the Zen 4's own figure decides.)
    - None otherwise (AVX2, AVX-512 without bf16): no bf16 arithmetic in hardware, bf16 would be emulated.
    On both paths the dilated and strided depthwise convs stay fp32 (``cifar.nets.dilated.Conv2d``): their bf16
    backward kernels are oneDNN's generic ones at either level (docs/speed.md).
    """
    if "amx_tile" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here, which is what ``--mixed-precision auto`` trains in: on a CPU where
    :func:`cpu_bf16_path` names a path; on a GPU with bf16 in hardware (torch also counts emulated bf16, V100 and
    T4, which is slower than fp32)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_bf16_path(cpu_flags()) is not None


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



# What decides whether a CPU run in fp32 repeats bit for bit, each with the words a replay uses for it. The
# libraries pick their kernels, and so their summation order, by their own instruction-set levels, finer than
# torch's cpu_capability: an AMD Zen 4 and a Xeon with AMX are both "AVX512" to torch, yet oneDNN ranks them
# avx512_core_bf16 and (this project's Xeon) avx10_1_512_amx, and MKL (torch's BLAS: the classifier's matrix products) picks its code
# path by vendor as well as by instruction set. Measured on a Xeon with AMX, replaying the last epoch of
# results/c4net_deep16-35ep-seed0: oneDNN held to the Zen 4's level changed no bit (its fp32 kernels are
# avx512_core on both), MKL held to AVX2 changed every float tensor. On an AMD CPU MKL runs one path whatever
# MKL_ENABLE_INSTRUCTIONS says (a Zen 4's product of a 512x1000 and a 1000x10 matrix: the same bits held to SSE4_2,
# AVX2 or AVX512 as not) and its log names it "Intel(R) Architecture processors". That path cannot be chosen on
# an Intel CPU, so the CPU (vendor and model, which also stand for the cache sizes that steer oneDNN's blocking)
# is part of the fingerprint too; processes x threads split the sums.
FINGERPRINT_FIELDS: dict[str, str] = {
    "onednn_isa": "oneDNN's instruction set", "mkl_isa": "MKL's instruction set",
    "cpu_capability": "torch's CPU capability", "cpu": "CPU", "torch": "torch build",
    "processes": "processes", "threads": "threads per process"}

# A fresh interpreter with the libraries' verbose logs on runs one convolution oneDNN takes (channels_last, 3x3,
# a batch of 16: torch keeps smaller ones for its own kernels) and one matrix product (MKL); each library's
# first log lines name the instruction set it dispatches to, ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS
# (inherited) included. torch exposes neither level, and the libraries' own queries are not exported.
_PROBE = ("import torch; x = torch.ones(16, 8, 8, 8).to(memory_format=torch.channels_last); "
          "torch.nn.functional.conv2d(x, torch.ones(8, 8, 3, 3)); torch.ones(16, 64) @ torch.ones(64, 10)")
_ONEDNN_ISA = re.compile(r"^(?:onednn|dnnl)_verbose,.*\binfo,cpu,isa:(.+?)\s*$", re.MULTILINE)
# "MKL_VERBOSE oneMKL 2024.0 ... for Intel(R) 64 architecture ISA, Lnx 2.10GHz lp64 gnu_thread": the ISA text has
# commas of its own, the clock (which varies between machines of one model) is left out.
_MKL_ISA = re.compile(r"^MKL_VERBOSE .*? architecture (.+?), \S+ [\d.]+GHz", re.MULTILINE)
# cpuinfo's fields that identify a CPU's design: x86's, then ARM's (which has no model name).
_CPU_IDS = (("vendor_id", "vendor"), ("cpu family", "family"), ("model", "model"), ("stepping", "stepping"),
            ("CPU implementer", "implementer"), ("CPU part", "part"), ("CPU variant", "variant"),
            ("CPU revision", "revision"))


def parse_library_isas(verbose_output: str) -> tuple[str | None, str | None]:
    """oneDNN's and MKL's instruction-set levels as their verbose logs (``ONEDNN_VERBOSE=1``, ``MKL_VERBOSE=1``)
    name them in ``verbose_output``; None for a library whose line is not there."""
    onednn, mkl = (pattern.search(verbose_output) for pattern in (_ONEDNN_ISA, _MKL_ISA))
    return onednn.group(1) if onednn else None, mkl.group(1) if mkl else None


@functools.cache  # the libraries read their limits once per process, so one probe per process says it all
def library_isas() -> tuple[str | None, str | None]:
    """The instruction-set levels oneDNN and MKL dispatch to in this environment (see :func:`parse_library_isas`);
    "none: ..." for a library this torch build lacks, None where the probe could not tell."""
    import torch

    env = {**os.environ, "ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1", "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
        onednn, mkl = parse_library_isas(done.stdout)
    except (OSError, subprocess.SubprocessError):
        onednn = mkl = None
    return (onednn if torch.backends.mkldnn.is_available() else "none: torch is built without oneDNN",
            mkl if torch.backends.mkl.is_available() else "none: torch is built without MKL")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's name with the numbers that identify its design (a virtual machine may hide the name, e.g.
    "Intel(R) Xeon(R) Processor", but not its family, model and stepping), from Linux's ``cpuinfo``; elsewhere
    what Python's ``platform`` says."""
    try:
        first = cpuinfo.read_text().split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}
    ids = " ".join(f"{label} {fields[key]}" for key, label in _CPU_IDS if fields.get(key))
    name = fields.get("model name") or platform.machine()
    return f"{name} ({ids})" if ids else name


def bitwise_fingerprint(processes: int, threads: int) -> dict[str, Any]:
    """What decides whether a CPU run in fp32 repeats bit for bit (:data:`FINGERPRINT_FIELDS`), for a run of
    ``processes`` processes with ``threads`` threads each in this environment. train.py records it in
    ``summary.json`` and in every checkpoint; ``python -m cifar.replay`` promises equal bits only where it is
    equal."""
    import torch

    onednn, mkl = library_isas()
    return {"onednn_isa": onednn, "mkl_isa": mkl, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": cpu_model(), "torch": f"{torch.__version__} (git {torch.version.git_version[:12]})",
            "processes": processes, "threads": threads}


def fingerprint_differences(there: Mapping[str, Any] | None, here: Mapping[str, Any]) -> list[str]:
    """How fingerprint ``here`` differs from ``there``, the one a run recorded, one phrase each; empty only when
    every field is known on both sides and equal. A field either side does not know counts as a difference:
    equal bits are promised only where equality is shown."""
    if there is None:
        return ["the run records no fingerprint: an older train.py trained it"]
    differences = []
    for key, label in FINGERPRINT_FIELDS.items():
        a, b = there.get(key), here.get(key)
        if a is None or b is None:
            differences.append(f"{label} not known {'there' if a is None else 'here'}")
        elif a != b:
            differences.append(f"{label} {a} there, {b} here")
    return differences
