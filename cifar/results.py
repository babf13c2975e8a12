"""Shipped results: a finished train.py run as the repository keeps it.

    python -m cifar.results ship RUN_DIR results/NAME     # copy a finished run into the repository
    python -m cifar.results list                         # the shipped results, with their nets and accuracies

A shipped result ``results/NAME/`` holds what train.py wrote minus ``checkpoints/`` (``config.yaml``,
``metrics.jsonl``, ``summary.json``, ``model.safetensors``, ``best.safetensors`` if the run had a validation split,
``plots/``) plus ``last_epoch_start/``: the one checkpoint train.py never prunes, taken at the start of the last
epoch, from which ``python -m cifar.replay results/NAME`` trains that epoch again and checks the final weights
bit for bit. Runs trained before train.py kept that checkpoint ship with ``--without-replay``.

A shipped result's NAME also finds its weights: ``cifar.pretrained.build_net(net, weights=NAME)``,
``train.py --eval-only NAME`` (see :mod:`cifar.pretrained`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from cifar import checkpoint as ckpt

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
LAST_EPOCH_START = "last_epoch_start"
SUMMARY = "summary.json"
# What a shipped result copies from a run folder: required files, then those a run may lack.
REQUIRED_FILES = ("config.yaml", "metrics.jsonl", SUMMARY, ckpt.RUN_WEIGHTS)
OPTIONAL_FILES = ("best.safetensors",)
FOLDERS = ("plots",)


class ResultError(Exception):
    """A run cannot be shipped, or a shipped result is incomplete; the message says why and what to do."""


def read_summary(folder: Path) -> dict[str, Any]:
    """The ``summary.json`` of a finished run or shipped result (train.py writes it last, when the run ends)."""
    path = folder / SUMMARY
    if not folder.is_dir():
        raise ResultError(f"{folder} is not a folder; pass a train.py run folder (its --output-dir) or a shipped "
                          "result (results/NAME)")
    if not path.is_file():
        raise ResultError(f"{folder} holds no finished run (no {SUMMARY}: train.py writes it when the run ends); "
                          "if it was stopped, continue it with the same command plus --resume auto, then try again")
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultError(f"{path} cannot be read ({error}); train the run again or restore the file") from error
    if not isinstance(summary, dict):
        raise ResultError(f"{path} is not a train.py summary (not a JSON object)")
    return summary


def ship_run(run: Path, destination: Path, replayable: bool = True) -> list[str]:
    """Copy the finished run folder ``run`` to ``destination`` (which must not exist) as a shipped result; return
    the names copied.

    With ``replayable`` the checkpoint taken at the start of the last epoch goes along as ``last_epoch_start/``,
    after its checksums verify; a run without one is refused. The result appears complete or not at all: it is
    assembled under a temporary name beside ``destination`` and renamed into place.

    Raises:
        ResultError: ``run`` has not finished, misses a file, has no verified last-epoch checkpoint, or
            ``destination`` exists.
    """
    summary = read_summary(run)
    missing = [name for name in REQUIRED_FILES if not (run / name).is_file()]
    if missing:
        raise ResultError(f"{run} lacks {', '.join(missing)}, which every finished train.py run writes: train it "
                          "again (or restore the files) before shipping it")
    if destination.exists():
        raise ResultError(f"{destination} already exists: remove it first, or ship under another name")
    source = None
    if replayable:
        name = summary.get("last_epoch_start")
        if name is None:
            raise ResultError(f"{run} kept no checkpoint of the start of its last epoch (it was trained before "
                              "train.py kept one), so it could not be replayed: ship it with --without-replay, or "
                              "train it again with this train.py")
        source = run / "checkpoints" / name
        try:
            ckpt.verify_checkpoint(source)
        except ckpt.CheckpointError as error:
            raise ResultError(f"{run}: the checkpoint of the last epoch's start cannot be shipped ({error}); ship "
                              "with --without-replay, or train the run again") from error
    names = [name for name in (*REQUIRED_FILES, *OPTIONAL_FILES) if (run / name).is_file()]
    folders = [name for name in FOLDERS if (run / name).is_dir()]
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.parent / f".tmp-{destination.name}-{uuid.uuid4().hex}"
    temporary.mkdir()
    try:
        for name in names:
            shutil.copy2(run / name, temporary / name)
        for name in folders:
            shutil.copytree(run / name, temporary / name)
        if source is not None:
            shutil.copytree(source, temporary / LAST_EPOCH_START)
            folders.append(LAST_EPOCH_START)
        os.rename(temporary, destination)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return names + [f"{name}/" for name in folders]


def shipped_results(results_dir: Path | None = None) -> list[str]:
    """Names of the shipped results (folders with final weights) in ``results_dir`` (default: the repository's
    ``results/``), sorted."""
    folder = results_dir or RESULTS_DIR
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if (entry / ckpt.RUN_WEIGHTS).is_file())


def _percent(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, float) else "-"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifar.results", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    ship = commands.add_parser("ship", help="copy a finished run into results/ (without its checkpoints/, with "
                                            "the checkpoint of its last epoch's start)")
    ship.add_argument("run", type=Path, help="the run's folder (train.py's --output-dir)")
    ship.add_argument("destination", type=Path, help="the new result folder, e.g. results/c4net_deep16-35ep-seed0")
    ship.add_argument("--without-replay", action="store_true",
                      help="ship a run that kept no checkpoint of its last epoch's start (cannot be replayed)")
    listing = commands.add_parser("list", help="the shipped results in results/")
    listing.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where shipped results live")
    args = parser.parse_args(argv)
    try:
        if args.command == "ship":
            copied = ship_run(args.run, args.destination, replayable=not args.without_replay)
            size = sum(path.stat().st_size for path in args.destination.rglob("*") if path.is_file())
            print(f"shipped {args.run} as {args.destination} ({size / 2**20:.1f} MiB): {', '.join(copied)}")
            return 0
        names = shipped_results(args.results_dir)
        if not names:
            print(f"no shipped results in {args.results_dir}")
        for name in names:
            summary = read_summary(args.results_dir / name)
            replay = "replayable" if (args.results_dir / name / LAST_EPOCH_START).is_dir() else "not replayable"
            print(f"{name}: {summary.get('model')}, {summary.get('epochs')} epochs, seed {summary.get('seed')}, "
                  f"test acc {_percent(summary.get('test_acc'))}, flip TTA {_percent(summary.get('test_acc_tta'))}, "
                  f"{replay}")
        return 0
    except ResultError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
