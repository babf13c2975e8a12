"""Compare finished runs (seeds of one recipe, say), and generate the documentation's accuracy tables from them.

    python -m cifar.aggregate RUN_DIR... [--json FILE]      # one row per run, mean ± sample std
    python -m cifar.aggregate RUN_DIR... --markdown         # a table for the docs: one row per recipe
    python -m cifar.aggregate RUN_DIR... --plot curves.png  # also their accuracy curves side by side
    python -m cifar.aggregate --update-docs [PAGE...] [--section NAME]   # regenerate the docs' tables

Reads each run's summary.json (written by train.py when it finishes) and config.yaml, and prints one row per run
and the mean ± sample standard deviation of the final test accuracy, its flip-TTA counterpart, the best
validation accuracy and the training time. Folders without a summary.json are listed as unfinished and left out
of the statistics.

``--plot FILE`` draws the folders' accuracy curves on shared axes from their metrics.jsonl (held-out accuracy
and augmented training accuracy against epoch, one line per run), finished or still training.

``--markdown`` prints one table row per recipe (runs that differ only in their seed, on the same hardware):
model, params, epochs, seeds (linked to their folders), final-epoch test accuracy mean ± std, the same with
test-time augmentation (flip; flip and ±1 px translations: see cifar.tta), hardware, training time, and the
train.py command, rebuilt from config.yaml (where the data and the outputs live is left out).

Generated tables live in README.md, docs/*.md and results/README.md between marker comments that also name their
runs, as globs relative to the page's folder (``../results/...`` from docs/)::

    <!-- table:default-net results/c4net_deep16-35ep-* -->
    ...generated...
    <!-- /table:default-net -->

A ``layout=claims`` word among the globs sets the runs beside their write-ups' claims instead (the seed nets:
RF, MMACs, constraints, the claim, final- and best-epoch test accuracy); ``layout=search`` logs a search, one
row per run: the net and its description, the recipe's flags beyond the defaults, params, MMACs, the last
epoch's validation, augmented training and test accuracy, and the training images/s of the first epoch and the
median epoch.

``--update-docs`` regenerates every such table of every page that holds one (or of the pages given; or only the
table ``--section`` names) from its runs, so a table is never typed by hand; tests/test_results.py fails when a
page differs from what this would write.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from cifar.config import TRAJECTORY_FIELDS, config_flags
from cifar.files import write_atomic
from cifar.nets import list_nets, net_description
from cifar.nets.seeds import WRITE_UP_CLAIMS
from cifar.plots import plot_runs

REPOSITORY = Path(__file__).resolve().parents[1]

@dataclass(frozen=True)
class RunResult:
    """What summary.json and config.yaml say about one finished run; fields older runs lack are None."""

    path: str
    model: str
    seed: int | None
    epochs: int
    test_acc: float
    best_val_acc: float | None
    train_seconds: float
    test_acc_tta: float | None = None            # flip
    test_acc_tta_translate: float | None = None  # flip and ±1 px translations
    params: int | None = None
    hardware: str | None = None
    processes: int | None = None
    threads: int | None = None
    device: str | None = None
    receptive_field: int | None = None
    macs: int | None = None
    constraints: dict[str, bool] | None = None
    # From metrics.jsonl: the best epoch's test accuracy (what choosing on the test set gives), the last epoch's
    # validation and augmented training accuracy, and each epoch's training images/s.
    best_test_acc: float | None = None
    final_val_acc: float | None = None
    final_train_acc: float | None = None
    images_per_second: tuple[float, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)


class RunFolderError(Exception):
    """A folder is not a finished run; the message says which and why."""


def read_run(directory: Path) -> RunResult:
    summary_path = directory / "summary.json"
    if not summary_path.is_file():
        raise RunFolderError(f"{directory}: no summary.json (the run has not finished, or this is not a run folder)")
    try:
        summary = json.loads(summary_path.read_text())
        optional = {name: summary.get(name) for name in ("test_acc_tta", "test_acc_tta_translate", "params",
                                                          "hardware", "processes", "threads", "device",
                                                          "receptive_field", "macs", "constraints")}
        run = RunResult(path=str(directory), model=summary["model"], seed=summary.get("seed"),
                        epochs=summary["epochs"], test_acc=summary["test_acc"],
                        best_val_acc=summary.get("best_val_acc"), train_seconds=summary["train_seconds"],
                        **_curve_facts(directory / "metrics.jsonl"), **optional)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise RunFolderError(f"{summary_path}: not a train.py summary ({type(error).__name__}: {error})") from error
    config_path = directory / "config.yaml"
    if not config_path.is_file():
        return run
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as error:
        raise RunFolderError(f"{config_path}: not valid YAML ({error})") from error
    if not isinstance(config, dict):
        raise RunFolderError(f"{config_path}: not a train.py config (a mapping of settings)")
    return RunResult(**{**asdict(run), "config": config})


def read_curves(directory: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a run folder's metrics.jsonl, finished or still training."""
    metrics = directory / "metrics.jsonl"
    try:
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    except FileNotFoundError as error:
        raise RunFolderError(f"{directory}: no metrics.jsonl (not a train.py run folder, or it has not ended an "
                             "epoch yet)") from error
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{metrics}: not a train.py metrics file ({error})") from error
    epochs = [row for row in rows if isinstance(row, dict) and "epoch" in row]
    if not epochs:
        raise RunFolderError(f"{metrics}: no epoch has ended yet")
    return epochs


def plot_curves(directories: list[Path], path: Path) -> Path:
    """:func:`cifar.plots.plot_runs` of these run folders, each labelled by its folder's name (its whole path
    where two folders share a name)."""
    names = [directory.name for directory in directories]
    labels = [str(d) if names.count(d.name) > 1 else d.name for d in directories]
    return plot_runs({label: read_curves(d) for label, d in zip(labels, directories)}, path)


def _curve_facts(metrics: Path) -> dict[str, Any]:
    """What :class:`RunResult` takes from a metrics.jsonl (nothing without one): the highest per-epoch test
    accuracy, the last epoch's validation and augmented training accuracy, each epoch's training images/s."""
    if not metrics.is_file():
        return {}
    rows = [row for row in map(json.loads, filter(str.strip, metrics.read_text().splitlines())) if "epoch" in row]
    accuracies = [row["test_acc"] for row in rows if row.get("test_acc") is not None]
    last = rows[-1] if rows else {}
    return {"best_test_acc": max(accuracies, default=None), "final_val_acc": last.get("val_acc"),
            "final_train_acc": last.get("train_acc"),
            "images_per_second": tuple(row["images_per_second"] for row in rows if "images_per_second" in row)}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


Stats = dict[str, float | int | None]


def aggregate(runs: list[RunResult]) -> Stats:
    """Mean and sample standard deviation (None for fewer than two runs) of each run statistic."""
    result: Stats = {"runs": len(runs)}
    columns = {"test_acc": [r.test_acc for r in runs],
               "test_acc_tta": [r.test_acc_tta for r in runs if r.test_acc_tta is not None],
               "best_val_acc": [r.best_val_acc for r in runs if r.best_val_acc is not None],
               "train_seconds": [r.train_seconds for r in runs]}
    for name, values in columns.items():
        result[f"{name}_mean"], result[f"{name}_std"] = _mean_std(values)
    return result


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _pm(mean: float | None, std: float | None, show: Callable[[float], str]) -> str:
    if mean is None:
        return "-"
    return show(mean) + ("" if std is None else " ± " + show(std))


def _mean_pm_std(stats: Stats, name: str, percent: bool) -> str:
    return _pm(stats[f"{name}_mean"], stats[f"{name}_std"], _pct if percent else (lambda v: f"{v:.1f}"))


def runs_table(runs: list[RunResult], stats: Stats, unfinished: list[str]) -> str:
    header = (f"{'run':<32} {'model':<12} {'seed':>5} {'epochs':>6} {'test acc':>9} {'flip TTA':>9} "
              f"{'best val':>9} {'train s':>9}")
    lines = [header, "-" * len(header)]
    for run in runs:
        lines.append(f"{Path(run.path).name:<32} {run.model:<12} {'-' if run.seed is None else run.seed:>5} "
                     f"{run.epochs:>6} {_pct(run.test_acc):>9} {_pct(run.test_acc_tta):>9} "
                     f"{_pct(run.best_val_acc):>9} {run.train_seconds:>9.1f}")
    lines.append("-" * len(header))
    lines.append(f"{stats['runs']} run(s): test acc {_mean_pm_std(stats, 'test_acc', True)}, "
                 f"flip TTA {_mean_pm_std(stats, 'test_acc_tta', True)}, "
                 f"best val {_mean_pm_std(stats, 'best_val_acc', True)}, "
                 f"train {_mean_pm_std(stats, 'train_seconds', False)} s (mean ± sample std)")
    lines.extend(f"not counted: {reason}" for reason in unfinished)
    return "\n".join(lines)


# Where the data and the outputs live, and how a run restarts: not part of a recipe's command.
COMMAND_LEAVES_OUT = ("output_dir", "data_dir", "download", "resume", "eval_only", "seed")
# What a search's runs share by its protocol (the net aside; the augmentation backend is the one the device picks):
# the rest of the trajectory is the recipe they vary.
SEARCH_PROTOCOL = ("model", "epochs", "seed", "val_size", "subset", "augment_backend")
# A generated table's columns by its layout: "recipes" compares recipes; "claims" sets nets beside what their
# write-ups claim (cifar.nets.seeds.WRITE_UP_CLAIMS), with the best epoch's test accuracy to show what choosing
# on the test set adds; "search" logs a search's runs (one seed each, on a validation split) with the net, the
# recipe beyond the defaults, cost, the last epoch's accuracies and the training speed.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "recipes": ("model", "params", "epochs", "seeds", "test acc (final epoch)", "flip TTA", "flip + translate TTA",
                "hardware", "training time", "command"),
    "claims": ("model", "params", "RF", "MMACs", "constraints", "write-up's claim", "epochs", "seeds",
               "test acc (final epoch)", "test acc (best epoch)", "hardware", "training time", "command"),
    "search": ("run", "net", "recipe", "params", "MMACs", "val acc (final epoch)",
               "augmented train acc (final epoch)", "test acc (final epoch)", "img/s: epoch 1, median"),
}


def recipe_groups(runs: list[RunResult]) -> list[list[RunResult]]:
    """The runs grouped by recipe (every trajectory setting but the seed) and hardware, in order of first
    appearance: the seeds of one recipe form one group."""
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        recipe = {name: run.config.get(name) for name in TRAJECTORY_FIELDS if name != "seed"}
        key = json.dumps([run.model, run.epochs, run.hardware, run.processes, run.threads, recipe], sort_keys=True)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def train_command(runs: list[RunResult]) -> str:
    """The command that trains ``runs`` (seeds of one recipe), rebuilt from their config.yaml: ``--seed <seed>``
    stands for the seeds when there are several. ``-`` where no config.yaml was found."""
    first = runs[0]
    if not first.config:
        return "-"
    seeds = sorted({run.seed for run in runs if run.seed is not None})
    flags = shlex.join(config_flags(first.config, leave_out=COMMAND_LEAVES_OUT))
    if len(seeds) > 1:
        flags += " --seed <seed>"
    elif seeds and seeds[0] != 0:
        flags += f" --seed {seeds[0]}"
    processes = first.processes or 1
    launch = ("python train.py" if processes == 1
              else f"accelerate launch --multi_gpu --num_processes {processes} train.py")
    threads = f"OMP_NUM_THREADS={first.threads} " if first.device == "cpu" and first.threads else ""
    return f"{threads}{launch} {flags}".rstrip()


def _group_pm(values: list[float | None], show: Callable[[float], str]) -> str:
    """Mean ± sample std of ``values``; ``-`` unless every run of the group has a value."""
    if any(value is None for value in values):
        return "-"
    return _pm(*_mean_std([value for value in values if value is not None]), show)


def _training_time(seconds: list[float | None]) -> str:
    """Mean ± sample std, both in the mean's unit: seconds under ten minutes, else minutes."""
    if any(value is None for value in seconds):
        return "-"
    mean, std = _mean_std([value for value in seconds if value is not None])
    unit, scale = ("s", 1) if mean is not None and mean < 600 else ("min", 60)
    return _pm(mean, std, lambda value: f"{value / scale:,.0f} {unit}")


def recipe_flags(config: dict[str, Any]) -> str:
    """The flags by which a run's trajectory differs from the trainer's defaults, the search protocol's
    (:data:`SEARCH_PROTOCOL`) left out; "default" for none, ``-`` without a config.yaml."""
    if not config:
        return "-"
    leave_out = [name for name in config if name not in TRAJECTORY_FIELDS or name in SEARCH_PROTOCOL]
    flags = config_flags(config, leave_out=leave_out)
    return f"`{shlex.join(flags)}`" if flags else "default"


def _images_per_second(runs: list[RunResult]) -> str:
    """The first epoch's training images/s and the median over all epochs, each the mean over ``runs``; ``-``
    unless every run logged them."""
    if any(not run.images_per_second for run in runs):
        return "-"
    first = statistics.fmean(run.images_per_second[0] for run in runs)
    median = statistics.fmean(statistics.median(run.images_per_second) for run in runs)
    return f"{first:,.0f}, {median:,.0f}"


def _net(model: str) -> str:
    """A registered net's name with its description; the name alone for one no longer registered."""
    description = net_description(model) if model in list_nets() else ""
    return f"`{model}`: {description}" if description else f"`{model}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _constraints(constraints: dict[str, bool] | None) -> str:
    if constraints is None:
        return "-"
    failed = [name for name, ok in constraints.items() if not ok]
    return "all met" if not failed else "**fails " + ", ".join(failed) + "**"


def _group_cells(group: list[RunResult], link_base: Path) -> dict[str, str]:
    """Every column any layout shows, for one group of seeds."""
    first = group[0]
    seeds = ", ".join(f"[{'-' if run.seed is None else run.seed}]"
                      f"({Path(os.path.relpath(run.path, link_base)).as_posix()})" for run in group)
    hardware = first.hardware or "-"
    if first.threads:
        hardware += f", {first.threads} thread(s) per process"
    return {
        "run": ", ".join(f"[{Path(run.path).name}]({Path(os.path.relpath(run.path, link_base)).as_posix()})"
                         for run in group),
        "net": _net(first.model), "recipe": recipe_flags(first.config),
        "val acc (final epoch)": _group_pm([run.final_val_acc for run in group], _pct),
        "augmented train acc (final epoch)": _group_pm([run.final_train_acc for run in group], _pct),
        "img/s: epoch 1, median": _images_per_second(group),
        "model": first.model, "params": "-" if first.params is None else f"{first.params:,}",
        "RF": "-" if first.receptive_field is None else str(first.receptive_field),
        "MMACs": "-" if first.macs is None else f"{first.macs / 1e6:.1f}",
        "constraints": _constraints(first.constraints),
        "write-up's claim": WRITE_UP_CLAIMS.get(first.model, "-"),
        "epochs": str(first.epochs), "seeds": seeds,
        "test acc (final epoch)": _group_pm([run.test_acc for run in group], _pct),
        "test acc (best epoch)": _group_pm([run.best_test_acc for run in group], _pct),
        "flip TTA": _group_pm([run.test_acc_tta for run in group], _pct),
        "flip + translate TTA": _group_pm([run.test_acc_tta_translate for run in group], _pct),
        "hardware": hardware, "training time": _training_time([run.train_seconds for run in group]),
        "command": f"`{train_command(group)}`",
    }


def markdown_table(runs: list[RunResult], link_base: Path, layout: str = "recipes") -> str:
    """The markdown table of ``runs`` in ``layout`` (:data:`LAYOUTS`): one row per :func:`recipe_groups` group,
    seeds linked to their folders (paths relative to ``link_base``, the folder of the file the table goes into).
    No trailing newline."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown table layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    columns = LAYOUTS[layout]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    described: set[str] = set()
    for group in recipe_groups(runs):
        cells = _group_cells(group, link_base)
        if group[0].model in described:  # a net is described at its first row only
            cells["net"] = f"`{group[0].model}`"
        described.add(group[0].model)
        lines.append("| " + " | ".join(_cell(cells[column]) for column in columns) + " |")
    return "\n".join(lines)


_SECTION = re.compile(r"<!-- table:(?P<name>[\w.-]+)(?P<patterns>(?: +[^ >]+)+) -->\n(?P<body>.*?)"
                      r"<!-- /table:(?P=name) -->", re.DOTALL)


@dataclass(frozen=True)
class TableSection:
    """A generated table in a markdown file: its name, the globs of its runs, its layout (a ``layout=NAME``
    word among the globs; default ``recipes``) and its text now."""

    name: str
    patterns: tuple[str, ...]
    body: str
    layout: str = "recipes"


def table_sections(text: str) -> list[TableSection]:
    """The generated tables of a markdown text, in order."""
    return [_section(match) for match in _SECTION.finditer(text)]


def _section(match: re.Match[str]) -> TableSection:
    words = match["patterns"].split()
    layouts = [word.removeprefix("layout=") for word in words if word.startswith("layout=")]
    patterns = tuple(word for word in words if not word.startswith("layout="))
    return TableSection(match["name"], patterns, match["body"], *layouts[-1:])


def section_folders(section: TableSection, base: Path) -> list[Path]:
    """The run folders that ``section``'s globs (relative to ``base``) match, sorted, each once."""
    found = {Path(path) for pattern in section.patterns for path in glob.glob(str(base / pattern))
             if Path(path).is_dir()}
    return sorted(found)


def section_body(section: TableSection, base: Path) -> str:
    """What ``section`` should hold: the table of its runs, or a line saying that none has been shipped yet.

    Raises:
        RunFolderError: a matched folder holds no finished run.
    """
    folders = section_folders(section, base)
    if not folders:
        return f"_No finished run matches `{' '.join(section.patterns)}` yet._\n"
    return markdown_table([read_run(folder) for folder in folders], base, section.layout) + "\n"


def pages_with_tables(root: Path = REPOSITORY) -> list[Path]:
    """The documentation pages under ``root`` (README.md, docs/*.md, results/README.md) that hold a generated
    table."""
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "results" / "README.md"]
    return [page for page in pages if page.is_file() and table_sections(page.read_text())]


def update_tables(path: Path, only: str | None = None) -> list[str]:
    """Regenerate the tables of the markdown file ``path`` (all, or the one named ``only``) from their runs;
    return the names of those whose text changed. The file is rewritten only if one did.

    Raises:
        RunFolderError: a matched folder holds no finished run, or ``only`` names no table of ``path``.
    """
    text = path.read_text()
    sections = table_sections(text)
    if only is not None and only not in [section.name for section in sections]:
        raise RunFolderError(f"{path} has no table {only!r} (it has: "
                             f"{', '.join(section.name for section in sections) or 'none'}); mark one with "
                             f"<!-- table:{only} GLOB... --> and <!-- /table:{only} -->")
    changed = []

    def regenerate(match: re.Match[str]) -> str:
        section = _section(match)
        if only is not None and section.name != only:
            return match[0]
        body = section_body(section, path.parent)
        if body != section.body:
            changed.append(section.name)
        return match[0][:match.start("body") - match.start()] + body + f"<!-- /table:{section.name} -->"

    updated = _SECTION.sub(regenerate, text)
    if changed:
        write_atomic(path, updated.encode())
    return changed


def _update_docs(pages: list[Path], section: str | None) -> int:
    """``--update-docs``: print what changed on each page; exit status 2 with the reason when a page cannot be."""
    try:
        if section is not None:
            holding = [page for page in pages if section in {s.name for s in table_sections(page.read_text())}]
            if not holding:
                raise RunFolderError(f"no table {section!r} in {', '.join(map(str, pages)) or 'any page'}; mark "
                                     f"one with <!-- table:{section} GLOB... --> and <!-- /table:{section} -->")
            pages = holding
        for page in pages:
            changed = update_tables(page, section)
            print(f"updated {', '.join(changed)} in {page}" if changed else f"{page} is up to date")
    except (OSError, RunFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifar.aggregate", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("runs", nargs="*", type=Path, help="run output folders (e.g. runs/cifar-1234_*)")
    parser.add_argument("--json", type=Path, help="also write the runs and statistics to this JSON file")
    parser.add_argument("--markdown", action="store_true",
                        help="print a docs table (one row per recipe) instead of one row per run")
    parser.add_argument("--update-docs", nargs="*", type=Path, metavar="PAGE",
                        help="regenerate the tables of these markdown pages (default: every page of the repository "
                             "that holds one: README.md, docs/*.md, results/README.md) from the runs their markers "
                             "name")
    parser.add_argument("--section", metavar="NAME", help="with --update-docs: only the table NAME")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="also draw the folders' accuracy curves side by side (finished runs or not)")
    args = parser.parse_args(argv)
    if args.update_docs is not None:
        if args.runs or args.json or args.markdown or args.plot:
            parser.error("--update-docs takes no run folders, --json, --markdown or --plot: a table's runs are the "
                         "folders its marker names, <!-- table:NAME GLOB... -->")
        return _update_docs(args.update_docs or pages_with_tables(), args.section)
    if args.section is not None:
        parser.error("--section goes with --update-docs")
    if not args.runs:
        parser.error("give the run folders to compare (or --update-docs)")
    if args.plot:
        try:
            print(f"wrote {plot_curves(args.runs, args.plot)}")
        except (OSError, RunFolderError, ValueError) as error:
            print(f"error: --plot: {error}", file=sys.stderr)
            return 2
    runs, unfinished = [], []
    for directory in args.runs:
        try:
            runs.append(read_run(directory))
        except RunFolderError as error:
            unfinished.append(str(error))
    stats = aggregate(runs)
    if args.markdown:
        print(markdown_table(runs, Path.cwd()))
        for reason in unfinished:
            print(f"not counted: {reason}", file=sys.stderr)
    else:
        print(runs_table(runs, stats, unfinished))
    if args.json:
        document = {**stats, "per_run": [asdict(run) for run in runs], "not_counted": unfinished}
        write_atomic(args.json, (json.dumps(document, indent=2) + "\n").encode())
    if not runs and not args.plot:
        print("error: none of the folders holds a finished run; pass the output folders of finished train.py "
              "runs (each has a summary.json)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
