"""Training speed of several nets on this machine, side by side: one model-only training step after another
(forward, backward, SGD step on a fixed batch; no data loading), the nets taking turns round by round so that
a shared machine slows them alike.

    python bench/net_speed.py                                        # the c4net and c4next nets, 1 thread
    python bench/net_speed.py --nets c4net_deep16 c4net_w64 --mixed-precision no --rounds 5
    OMP_NUM_THREADS=2 python bench/net_speed.py --threads 2
    python bench/net_speed.py --nets c4next_inverted --compile       # eager against torch.compile, side by side

One row per net: parameters, MMACs, the median and best images/s over the rounds, and the median as a ratio to
the first net's (the default net unless --nets says otherwise). Each round times ``--steps`` steps after
``--warmup`` untimed ones, as ``bench.py``'s model measurement does. ``--compile`` adds a row per net under
``torch.compile`` (inductor), taking its turn beside the eager one; its compilation falls in the warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

# Run as a script from a checkout (`python bench/net_speed.py`), Python puts bench/ on the path, not the
# repository root that holds the library and bench.py.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from bench import model_speed  # noqa: E402  (bench.py, the speed benchmark: its model-only step)
from cifar.allocator import keep_freed_memory  # noqa: E402
from cifar.hardware import native_bf16  # noqa: E402
from cifar.nets import DEFAULT_NET, build_net, list_nets  # noqa: E402
from cifar.nets.analysis import analyze_net  # noqa: E402


def default_nets() -> list[str]:
    """The default net first, then every other c4net and c4next net but the tiny ones."""
    others = [name for name in list_nets() if name.startswith("c4") and not name.endswith("_tiny")
              and name != DEFAULT_NET]
    return [DEFAULT_NET, *others]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--nets", nargs="+", choices=list_nets(), metavar="NET", default=default_nets(),
                        help="nets to time, the first being the reference of the ratios (default: the default net, "
                             "then the other c4net and c4next nets)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16"),
                        help="auto: what train.py's auto trains in on this CPU")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (never more than free cores)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per net and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--compile", action="store_true", help="also time each net under torch.compile")
    args = parser.parse_args(argv)
    for name in ("batch_size", "threads", "rounds", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is not valid: give a positive integer")
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup} is not valid: give an integer >= 0")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # as train.py allocates: large activations freed and allocated again fault no pages
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    precision = args.mixed_precision
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "no"
    print(f"CPU, {args.threads} torch thread(s), batch {args.batch_size}, {precision}, "
          f"{'channels-last' if args.channels_last else 'NCHW'}, {args.rounds} round(s) of {args.steps} steps",
          flush=True)
    variants = [(name, compiled) for name in args.nets for compiled in ((False, True) if args.compile else (False,))]
    speeds: dict[tuple[str, bool], list[float]] = {variant: [] for variant in variants}
    for _ in range(args.rounds):
        for name, compiled in variants:
            settings = SimpleNamespace(model=name, channels_last=args.channels_last, compile=compiled,
                                       batch_size=args.batch_size, mixed_precision=precision,
                                       warmup=args.warmup, steps=args.steps)
            speeds[name, compiled].append(model_speed(settings, device).images_per_second)
    reference = statistics.median(speeds[variants[0]])
    print(f"{'net':<27} {'params':>9} {'MMACs':>7} {'img/s median':>13} {'best':>7} {'ratio':>6}")
    for name, compiled in variants:
        report = analyze_net(build_net(name), name=name)
        median = statistics.median(speeds[name, compiled])
        label = f"{name} compiled" if compiled else name
        print(f"{label:<27} {report.params:>9,} {report.macs / 1e6:>7.1f} {median:>13,.0f} "
              f"{max(speeds[name, compiled]):>7,.0f} {median / reference:>5.2f}×", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
