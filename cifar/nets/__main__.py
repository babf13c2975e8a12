"""Look at the nets before training: ``python -m cifar.nets [NAME] [--json]``.

Without NAME: one row per registered net (params, receptive field, MACs, constraints met).
With NAME: that net's layer table and totals. ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from cifar.nets import DEFAULT_NET, build_net, list_nets, net_description
from cifar.nets.analysis import CONSTRAINTS, MAX_PARAMS, MIN_RECEPTIVE_FIELD, NetReport, analyze_net

CONSTRAINT_TEXT = {
    "params_lt_200k": f"params < {MAX_PARAMS:,}",
    "rf_gt_44": f"receptive field > {MIN_RECEPTIVE_FIELD - 1}",
    "no_maxpool": "no max-pooling",
    "depthwise_separable": "depthwise-separable conv",
    "dilated": "dilated conv",
    "gap": "global average pooling before the classifier",
}


def _failed(report: NetReport) -> list[str]:
    return [name for name in CONSTRAINTS if not report.constraints[name]]


def nets_table(reports: list[NetReport]) -> str:
    """One row per net."""
    width = max(len("net"), *(len(report.name) for report in reports))
    header = f"{'net':<{width}} {'params':>9} {'RF':>5} {'MMACs':>8}  {'constraints':<28} description"
    rows = [header, "-" * len(header)]
    for report in reports:
        failed = _failed(report)
        met = "all met" if not failed else "fails: " + ", ".join(failed)
        default = " (default)" if report.name == DEFAULT_NET else ""
        rows.append(
            f"{report.name:<{width}} {report.params:>9,} {report.receptive_field:>5} {report.macs / 1e6:>8.2f}  "
            f"{met:<28} {net_description(report.name)}{default}"
        )
    return "\n".join(rows)


def layer_table(report: NetReport) -> str:
    """The layer table of one net, then its totals and constraints."""
    header = f"{'layer':<28} {'type':<18} {'output':<16} {'params':>8} {'MACs':>11} {'RF':>5}"
    rows = [header, "-" * len(header)]
    for layer in report.layers:
        shape = "x".join(str(d) for d in layer.output_shape)
        rf = "" if layer.receptive_field is None else str(layer.receptive_field)
        rows.append(f"{layer.name:<28} {layer.kind:<18} {shape:<16} {layer.params:>8,} {layer.macs:>11,} {rf:>5}")
    rows += [
        "-" * len(header),
        f"{report.name}: {report.params:,} params, receptive field {report.receptive_field}, "
        f"{report.macs / 1e6:.2f} MMACs per 32x32 image",
    ]
    rows += [f"  [{'x' if report.constraints[name] else ' '}] {CONSTRAINT_TEXT[name]}" for name in CONSTRAINTS]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifar.nets", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help=f"a registered net; one of: {', '.join(list_nets())}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    if args.name is None:
        reports = [analyze_net(build_net(name), name=name) for name in list_nets()]
        print(json.dumps([r.summary() for r in reports], indent=2) if args.json else nets_table(reports))
        return 0
    if args.name not in list_nets():
        parser.error(f"unknown net {args.name!r}; valid names: {', '.join(list_nets())}")
    report = analyze_net(build_net(args.name), name=args.name)
    print(json.dumps(report.to_dict(), indent=2) if args.json else layer_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
