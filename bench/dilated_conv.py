"""Every dilated conv of the registered nets on this CPU: oneDNN's own path against space-to-batch and, for
depthwise convs at stride 1, the taps path, per layer shape.

    python bench/dilated_conv.py                                  # batch 256 and 128, 1 and 2 threads, both layouts
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/dilated_conv.py   # as on a CPU without AVX-512
    python bench/dilated_conv.py --nets c4net --batch-sizes 256 --threads 1

One row per distinct dilated conv (configuration and input size, with the net layers that have it), batch
size, thread count and memory format: milliseconds of the forward and of the backward (input and weight
gradients), each computed natively (``F.conv2d`` with dilation) and through space-to-batch
(:mod:`cifar.nets.dilated`), the backward through the taps path where it applies (depthwise, stride 1; ``-``
elsewhere), the speed-ups of forward + backward that each backward gives (the forward stays native in both),
and the path :func:`cifar.nets.dilated.backward_path` picks. Each time is the minimum over ``--reps`` rounds
after a warm-up round, each round running them all in turn: the machine may be shared, and the minimum is
the least disturbed. Set ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296``
to time as the trainer allocates.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Run as a script from a checkout (`python bench/dilated_conv.py`), Python puts bench/ on the path, not the
# repository root that holds the library; an installed library (`pip install -e .`) needs no help.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from cifar.nets import build_net, dilated, list_nets  # noqa: E402
from cifar.nets.dilated import (PhaseLayout, depthwise_taps_conv2d, from_phases,  # noqa: E402
                                 space_to_batch_conv2d, to_phases)

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


@dataclass(frozen=True)
class ConvShape:
    """A dilated conv as one net layer runs it on a 32×32 image."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    groups: int
    bias: bool
    height: int
    width: int

    def describe(self) -> str:
        kind = "dw" if self.groups == self.in_channels == self.out_channels else f"g{self.groups}"
        return (f"{self.in_channels}->{self.out_channels} {kind} k{self.kernel} s{self.stride} p{self.padding} "
                f"d{self.dilation} {self.height}x{self.width}")

    def has_taps_path(self) -> bool:
        """Whether the taps path computes this conv: depthwise with multiplier 1, at stride 1."""
        return self.groups == self.in_channels == self.out_channels and self.stride == 1


def dilated_convs(nets: list[str]) -> dict[ConvShape, list[str]]:
    """Every distinct dilated conv of ``nets`` and the layers ("net:module") that have it."""
    found: dict[ConvShape, list[str]] = {}
    for net_name in nets:
        net = build_net(net_name).eval()
        handles = []
        for name, module in net.named_modules():
            if isinstance(module, nn.Conv2d) and max(module.dilation) > 1:
                def record(module: nn.Conv2d, args: tuple, name: str = name, net_name: str = net_name) -> None:
                    shape = ConvShape(module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
                                      module.padding[0], module.dilation[0], module.groups, module.bias is not None,
                                      *args[0].shape[-2:])
                    found.setdefault(shape, []).append(f"{net_name}:{name}")
                handles.append(module.register_forward_pre_hook(record))
        with torch.no_grad():
            net(torch.zeros(1, 3, 32, 32))
        for handle in handles:
            handle.remove()
    return found


def space_to_batch_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           shape: ConvShape) -> torch.Tensor:
    """The forward as space-to-batch too: an undilated conv of the phases, then batch-to-space."""
    d = shape.dilation
    layout = PhaseLayout.of(x.shape[-2:], weight.shape[-2:], shape.stride, shape.padding, d)
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    phases = to_phases(x, layout.offset, layout.in_size, d, layout.phases)
    out = F.conv2d(phases, weight, bias, padding=layout.conv_padding, groups=shape.groups)
    if layout.phases == 1:
        return out
    size = tuple(n + 2 * shape.padding - d * (k - 1) for n, k in zip(x.shape[-2:], weight.shape[-2:]))
    return from_phases(out, 0, size, d, d, fmt)


def measure(shape: ConvShape, batch: int, layout: torch.memory_format, reps: int) -> tuple[dict[str, float], str]:
    """Forward and backward milliseconds, native, space-to-batch and (where it applies) through the taps: the
    minimum over ``reps`` rounds that run each once in turn, so that a disturbance spreads over all of them
    rather than falling on one; and the name of the path :func:`cifar.nets.dilated.backward_path` picks."""
    conv = dilated.Conv2d(shape.in_channels, shape.out_channels, shape.kernel, shape.stride, shape.padding,
                          shape.dilation, shape.groups, bias=shape.bias).to(memory_format=layout)
    x = torch.randn(batch, shape.in_channels, shape.height, shape.width).contiguous(memory_format=layout)
    x.requires_grad_(True)
    args = (x, conv.weight, conv.bias, shape.stride, shape.padding, shape.dilation, shape.groups)
    wrt = [x, *conv.parameters()]
    native = F.conv2d(*args)
    via_phases = space_to_batch_conv2d(*args)
    grad = torch.randn_like(native)
    runs: dict[str, Callable[[], object]] = {
        "fwd_native": lambda: F.conv2d(*args),
        "fwd_s2b": lambda: space_to_batch_forward(x, conv.weight, conv.bias, shape),
        "bwd_native": lambda: torch.autograd.grad(native, wrt, grad, retain_graph=True),
        "bwd_s2b": lambda: torch.autograd.grad(via_phases, wrt, grad, retain_graph=True),
    }
    if shape.has_taps_path():
        via_taps = depthwise_taps_conv2d(x, conv.weight, conv.bias, shape.padding, shape.dilation)
        runs["bwd_taps"] = lambda: torch.autograd.grad(via_taps, wrt, grad, retain_graph=True)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(reps + 1):  # round 0 warms up
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: min(seconds) * 1e3 for name, seconds in times.items()}, dilated.backward_path(conv, x).name.lower()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--nets", nargs="+", default=list_nets(), choices=list_nets(), metavar="NET")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 128])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--reps", type=int, default=5, help="timed runs per measurement (the minimum is shown)")
    args = parser.parse_args(argv)

    convs = dilated_convs(args.nets)
    print(f"# CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}, torch {torch.__version__}; "
          f"milliseconds, minimum of {args.reps}")
    for shape, layers in convs.items():
        print(f"# {shape.describe()}: {', '.join(layers)}")
    header = (f"{'conv':<34} {'batch':>5} {'thr':>3} {'layout':<13} {'fwd nat':>8} {'fwd s2b':>8} "
              f"{'bwd nat':>8} {'bwd s2b':>8} {'bwd taps':>8} {'f+b s2b':>8} {'f+b taps':>8}  rule")
    print(header)
    print("-" * len(header))
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape in convs:
            for batch in args.batch_sizes:
                for layout in args.layouts:
                    ms, path = measure(shape, batch, LAYOUTS[layout], args.reps)
                    native = ms["fwd_native"] + ms["bwd_native"]
                    taps = (f"{ms['bwd_taps']:>8.1f} {native / (ms['fwd_native'] + ms['bwd_taps']):>7.2f}x"
                            if "bwd_taps" in ms else f"{'-':>8} {'-':>8}")
                    print(f"{shape.describe():<34} {batch:>5} {threads:>3} {layout:<13} {ms['fwd_native']:>8.1f} "
                          f"{ms['fwd_s2b']:>8.1f} {ms['bwd_native']:>8.1f} {ms['bwd_s2b']:>8.1f} "
                          f"{native / (ms['fwd_native'] + ms['bwd_s2b']):>7.2f}x {taps}  {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
