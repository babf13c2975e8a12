"""Which oneDNN kernel runs each layer kind of one training step, and where the step's time goes, in fp32 and in
bf16 autocast side by side in one process.

    OMP_NUM_THREADS=1 python bench/onednn_kernels.py                                  # this CPU's own level
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 OMP_NUM_THREADS=1 python bench/onednn_kernels.py   # an AVX512-BF16 CPU's
    OMP_NUM_THREADS=1 python bench/onednn_kernels.py --net c4next_inverted --reps 2         # another net

Four precisions of the same step (the net's forward under autocast as ``accelerator.prepare()`` wraps it, the
loss in fp32, backward, SGD step; channels-last): ``fp32``; ``bf16`` as train.py trains it (dilated and strided
depthwise convs in fp32 under CPU autocast, ``cifar.nets.dilated.Conv2d``); ``bf16 dw32`` with every depthwise
conv in fp32, the undilated stride-1 ones too; ``bf16 dw`` with the rule off (every depthwise conv a plain
``nn.Conv2d``, so autocast runs it in bf16 on oneDNN's own kernels). Printed, each figure the minimum over
``--reps`` rounds that run the precisions in turn (the machine may be shared; the minimum is the least disturbed):
milliseconds per step; per precision, each oneDNN primitive of a step (``ONEDNN_VERBOSE``) by layer kind, pass,
data type and implementation, with its calls and milliseconds; the profiler's self CPU time per ATen op. The
fp32 linear layer is MKL's (``aten::addmm``), not oneDNN's.
``ONEDNN_MAX_CPU_ISA`` holds oneDNN to a lower instruction-set level than the CPU's: it shows which kernels such a
CPU gets, not how fast they run there.
``bf16 dw`` can crash where train.py cannot: torch 2.14.1's oneDNN segfaults in the bf16 backward of a 7×7
depthwise conv at dilation 3 over 32×32 maps with fewer than 8 channels (``c4next_tiny``'s split mixer; fp32,
which train.py runs dilated depthwise convs in, passes). Give such a net's real size instead.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Run as a script from a checkout, Python puts bench/ on the path, not the repository root that holds the library.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from cifar.allocator import keep_freed_memory  # noqa: E402
from cifar.hardware import library_isas  # noqa: E402
from cifar.nets import DEFAULT_NET, build_net, dilated, list_nets  # noqa: E402
from cifar.optim import build_optimizer  # noqa: E402

PRECISIONS = ("fp32", "bf16", "bf16 dw32", "bf16 dw")
PASSES = {"forward_training": "fwd", "forward_inference": "fwd", "backward_data": "bwd-data",
          "backward_weights": "bwd-weights", "backward": "bwd"}
# "g96mb128_ic96oc96_ih16oh16kh3sh1dh1ph2_..." : groups (absent for an ungrouped conv), channels, kernel, dilation
# (oneDNN counts it from 0), stride.
_CONV = re.compile(r"^(?:g(\d+))?mb\d+_ic(\d+)oc(\d+)_ih\d+oh\d+kh(\d+)sh(\d+)dh(\d+)")


def layer_kind(primitive: str, problem: str) -> str:
    """The layer kind a oneDNN primitive computes, from its verbose line's primitive and problem descriptor."""
    if primitive in ("matmul", "inner_product"):
        return "linear"
    found = _CONV.match(problem) if primitive == "convolution" else None
    if not found:
        return primitive
    groups, kernel, stride, dilation = found[1], int(found[4]), int(found[5]), int(found[6])
    if groups:
        kind = "depthwise" if int(groups) == int(found[2]) == int(found[3]) else "grouped"
    else:
        kind = "pointwise 1x1" if kernel == 1 else f"dense {kernel}x{kernel}"
    return ("dilated " if dilation else "") + kind + (f" /{stride}" if stride > 1 else "")


def kernel_table(verbose: str) -> dict[tuple[str, str, str, str], list[float]]:
    """(layer kind, pass, data type, implementation) -> [calls, milliseconds] of the primitives a verbose log ran."""
    table: dict[tuple[str, str, str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for line in verbose.splitlines():
        fields = line.split(",")
        if len(fields) < 11 or fields[2:5] != ["primitive", "exec", "cpu"]:
            continue
        primitive, implementation, prop, memory, problem = fields[5], fields[6], fields[7], fields[8], fields[-2]
        dtype = memory.split(":")[1] if ":" in memory else "?"
        row = table[(layer_kind(primitive, problem), PASSES.get(prop, prop), dtype, implementation)]
        row[0] += 1
        row[1] += float(fields[-1])
    return table


def captured_stdout(work: Callable[[], None]) -> str:
    """What ``work`` writes to the C library's stdout, where oneDNN prints its verbose log."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile("w+") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            work()
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        return sink.read()


class EveryDepthwiseFloat32(dilated.Conv2d):
    """The alternative to train.py's rule: under CPU autocast every depthwise conv in float32."""

    def float32_under_cpu_autocast(self) -> bool:
        return self.groups == self.in_channels > 1


def training_step(net_name: str, precision: str, batch_size: int) -> Callable[[], None]:
    torch.manual_seed(0)
    net = build_net(net_name).to(memory_format=torch.channels_last).train()
    for module in net.modules():
        if isinstance(module, dilated.Conv2d) and module.groups == module.in_channels > 1:
            if precision == "bf16 dw":  # oneDNN's own bf16 depthwise kernels: the fp32 rule of cifar.nets.dilated off
                module.__class__ = nn.Conv2d
            elif precision == "bf16 dw32":
                module.__class__ = EveryDepthwiseFloat32
    optimizer = build_optimizer(net, "sgd", lr=0.01, weight_decay=5e-4, momentum=0.9, nesterov=True)
    inputs = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32"):
            loss = F.cross_entropy(net(inputs).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default=DEFAULT_NET, choices=list_nets(), metavar="NET",
                        help=f"the net whose training step is measured (default: {DEFAULT_NET})")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5, help="rounds of the precisions in turn")
    args = parser.parse_args()
    keep_freed_memory()
    print(f"oneDNN: {library_isas()[0]}; ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}; "
          f"{torch.get_num_threads()} thread(s); {args.net}, batch {args.batch_size}, channels-last")
    steps = {precision: training_step(args.net, precision, args.batch_size) for precision in PRECISIONS}
    for step in steps.values():
        step()  # warm-up: oneDNN creates its primitives
    best: dict[str, float] = {}
    kernels: dict[str, dict[tuple[str, str, str, str], tuple[float, float]]] = defaultdict(dict)
    ops: dict[str, dict[str, float]] = defaultdict(dict)
    for _ in range(args.reps):  # each figure is its minimum over the rounds
        for precision, step in steps.items():
            start = time.perf_counter()
            step()
            best[precision] = min(best.get(precision, float("inf")), (time.perf_counter() - start) * 1e3)
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                log = captured_stdout(step)
            for key, (calls, ms) in kernel_table(log).items():
                kernels[precision][key] = (calls, min(ms, kernels[precision].get(key, (0, float("inf")))[1]))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                step()
            for event in profile.key_averages():
                ops[event.key][precision] = min(event.self_cpu_time_total / 1e3,
                                                ops[event.key].get(precision, float("inf")))
    print("ms per step (speed against fp32): " + ", ".join(
        f"{p} {ms:.0f} ({args.batch_size / ms * 1e3:.0f} img/s, {best['fp32'] / ms:.2f}x)" for p, ms in best.items()))
    for precision in PRECISIONS:
        print(f"\n{precision}: oneDNN primitives of one step (verbose timing)")
        print(f"  {'layer kind':<22} {'pass':<11} {'dtype':<5} {'implementation':<52} {'calls':>5} {'ms':>7}")
        for (kind, pass_, dtype, implementation), (calls, ms) in sorted(kernels[precision].items()):
            print(f"  {kind:<22} {pass_:<11} {dtype:<5} {implementation:<52} {calls:>5} {ms:>7.1f}")
    print("\nprofiler, self CPU ms of one step per ATen op (ops over 1 ms in any precision)")
    print(f"  {'op':<44}" + "".join(f"{p:>10}" for p in PRECISIONS))
    for op, times in sorted(ops.items(), key=lambda item: -max(item[1].values())):
        if max(times.values()) >= 1:
            print(f"  {op[:44]:<44}" + "".join(f"{times.get(p, 0.0):>10.1f}" for p in PRECISIONS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
