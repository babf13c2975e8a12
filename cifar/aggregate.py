"""Compare finished runs (seeds of one recipe, say): ``python -m cifar.aggregate RUN_DIR... [--json FILE]``.

Reads each run's summary.json (written by train.py when it finishes) and prints one row per run and the
mean ± sample standard deviation of the final test accuracy, best validation accuracy and training time.
Folders without a summary.json are listed as unfinished and left out of the statistics.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from cifar.files import write_atomic


@dataclass(frozen=True)
class RunResult:
    path: str
    model: str
    seed: int | None
    epochs: int
    test_acc: float
    best_val_acc: float | None
    train_seconds: float


class RunFolderError(Exception):
    """A folder is not a finished run; the message says which and why."""


def read_run(directory: Path) -> RunResult:
    summary_path = directory / "summary.json"
    if not summary_path.is_file():
        raise RunFolderError(f"{directory}: no summary.json (the run has not finished, or this is not a run folder)")
    try:
        summary = json.loads(summary_path.read_text())
        return RunResult(path=str(directory), model=summary["model"], seed=summary.get("seed"),
                         epochs=summary["epochs"], test_acc=summary["test_acc"],
                         best_val_acc=summary.get("best_val_acc"), train_seconds=summary["train_seconds"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise RunFolderError(f"{summary_path}: not a train.py summary ({type(error).__name__}: {error})") from error


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


Stats = dict[str, float | int | None]


def aggregate(runs: list[RunResult]) -> Stats:
    """Mean and sample standard deviation (None for fewer than two runs) of each run statistic."""
    result: Stats = {"runs": len(runs)}
    columns = {"test_acc": [r.test_acc for r in runs],
               "best_val_acc": [r.best_val_acc for r in runs if r.best_val_acc is not None],
               "train_seconds": [r.train_seconds for r in runs]}
    for name, values in columns.items():
        result[f"{name}_mean"], result[f"{name}_std"] = _mean_std(values)
    return result


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _mean_pm_std(stats: Stats, name: str, percent: bool) -> str:
    mean, std = stats[f"{name}_mean"], stats[f"{name}_std"]
    if mean is None:
        return "-"
    show = _pct if percent else (lambda v: f"{v:.1f}")
    return show(mean) + ("" if std is None else " ± " + show(std))


def runs_table(runs: list[RunResult], stats: Stats, unfinished: list[str]) -> str:
    header = f"{'run':<32} {'model':<12} {'seed':>5} {'epochs':>6} {'test acc':>9} {'best val':>9} {'train s':>9}"
    lines = [header, "-" * len(header)]
    for run in runs:
        lines.append(f"{Path(run.path).name:<32} {run.model:<12} {'-' if run.seed is None else run.seed:>5} "
                     f"{run.epochs:>6} {_pct(run.test_acc):>9} {_pct(run.best_val_acc):>9} "
                     f"{run.train_seconds:>9.1f}")
    lines.append("-" * len(header))
    lines.append(f"{stats['runs']} run(s): test acc {_mean_pm_std(stats, 'test_acc', True)}, "
                 f"best val {_mean_pm_std(stats, 'best_val_acc', True)}, "
                 f"train {_mean_pm_std(stats, 'train_seconds', False)} s (mean ± sample std)")
    lines.extend(f"not counted: {reason}" for reason in unfinished)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifar.aggregate", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("runs", nargs="+", type=Path, help="run output folders (e.g. runs/cifar-1234_*)")
    parser.add_argument("--json", type=Path, help="also write the runs and statistics to this JSON file")
    args = parser.parse_args(argv)
    runs, unfinished = [], []
    for directory in args.runs:
        try:
            runs.append(read_run(directory))
        except RunFolderError as error:
            unfinished.append(str(error))
    stats = aggregate(runs)
    print(runs_table(runs, stats, unfinished))
    if args.json:
        document = {**stats, "per_run": [asdict(run) for run in runs], "not_counted": unfinished}
        write_atomic(args.json, (json.dumps(document, indent=2) + "\n").encode())
    if not runs:
        print("error: none of the folders holds a finished run; pass the output folders of finished train.py "
              "runs (each has a summary.json)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
