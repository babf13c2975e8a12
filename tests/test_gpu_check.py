"""bench/gpu_check.sh, the script for a GPU's first minutes, kept from rotting where there is no GPU: its dry run
goes through every stage on the CPU with the tiny generated dataset.

Every test runs the script, which starts Python at least once: all are marked slow."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_data import write_tiny_cifar

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"

pytestmark = pytest.mark.slow


def stages(summary: Path) -> dict[str, list[str]]:
    """gpu_check.md's table: stage name -> [command, wall seconds, exit status, notes]."""
    rows = [line for line in summary.read_text().splitlines() if line.startswith("| ")][1:]  # past the header
    return {cells[0]: cells[1:] for cells in ([cell.strip() for cell in row.strip("|").split(" | ")] for row in rows)}


def test_the_dry_run_goes_through_every_stage_and_ships_the_results(tmp_path: Path) -> None:
    data = write_tiny_cifar(tmp_path / "tiny")
    out = tmp_path / "check"
    done = subprocess.run([str(SCRIPT), "--dry-run", "--data-dir", str(data), "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = stages(out / "gpu_check.md")
    runs = ["c4net_tiny-1ep-seed0", "c4net_tiny-1ep-seed1", "seed000-1ep-seed0"]  # the dry run's accuracy runs
    expected = ["data", "gpu tests", "bench", *runs, *(f"ship {run}" for run in runs)]  # the runs side by side
    assert list(found) == expected
    assert {name: row[2] for name, row in found.items()} == dict.fromkeys(expected, "0")
    assert all(float(row[1]) > 0 for row in found.values())
    assert "pytest -m gpu" in found["gpu tests"][0] and "--cpu" in found["bench"][0]
    for run in runs:  # each run's accuracy and its company, in its notes
        assert found[run][3].startswith("test acc ") and "side by side with 2 other run(s)" in found[run][3]
    for run in runs:
        summary = json.loads((out / "results" / run / "summary.json").read_text())
        assert (summary["model"], summary["epochs"], summary["device"]) == (run.split("-")[0], 1, "cpu")
        assert summary["seed"] == int(run[-1])
        assert (out / "results" / run / "model.safetensors").is_file()
    assert json.loads((out / "bench.json").read_text())["trainer_vs_baseline"] > 0


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="nvidia-smi is installed: a GPU may be here")
def test_the_nets_and_the_search_are_chosen_by_their_variables(tmp_path: Path) -> None:
    """GPU_CHECK_NETS trains each net with the default recipe and every seed; GPU_CHECK_SEARCH runs each net the
    search's way (a validation split, seed 0), named as in results/search, its final validation accuracy first
    in its notes."""
    data = write_tiny_cifar(tmp_path / "tiny")
    out = tmp_path / "check"
    env = {**os.environ, "GPU_CHECK_NETS": "c4net_tiny c4next_tiny", "GPU_CHECK_SEEDS": "3",
           "GPU_CHECK_SEARCH": "c4net_tiny", "GPU_CHECK_SEED_NETS": ""}
    done = subprocess.run([str(SCRIPT), "--dry-run", "--data-dir", str(data), "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = stages(out / "gpu_check.md")
    runs = ["c4net_tiny-1ep-seed3", "c4next_tiny-1ep-seed3", "s10-c4net_tiny"]
    assert [stage for stage in found if not stage.startswith(("data", "gpu tests", "bench", "ship "))] == runs
    assert "--val-size 16 --seed 0" in found["s10-c4net_tiny"][0]
    assert found["s10-c4net_tiny"][3].startswith("final val acc ")
    assert found["c4next_tiny-1ep-seed3"][3].startswith("test acc ")
    for run in runs:
        summary = json.loads((out / "results" / run / "summary.json").read_text())
        assert summary["model"] == run.removeprefix("s10-").split("-")[0]
        assert summary["seed"] == (0 if run.startswith("s10-") else 3)


def test_without_a_gpu_it_stops_at_once_and_names_the_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = subprocess.run([str(SCRIPT), "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "finds no GPU" in done.stderr and "--dry-run" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--budget", "0"], ["budget '0'", "--budget"]),
    (["--frobnicate"], ["'--frobnicate'", "--dry-run", "--data-dir"]),
])
def test_bad_arguments_are_refused_with_the_valid_ones(tmp_path: Path, args: list[str], words: list[str]) -> None:
    done = subprocess.run([str(SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and all(word in done.stderr for word in words), done.stderr


def test_stages_past_the_budget_are_stopped_or_skipped_and_say_so(tmp_path: Path) -> None:
    """The GPU tests here never end (PYTHON is a wrapper that runs `sleep` for `python -m pytest`, the real
    interpreter for the rest): the stage is stopped when the budget runs out, and nothing starts after that. The
    budget, 20 s, is a generous bound on what comes before, the data check of the tiny dataset."""
    data = write_tiny_cifar(tmp_path / "tiny")
    out = tmp_path / "check"
    python = tmp_path / "python"
    python.write_text(f"""#!/bin/sh
if [ "$1" = -m ] && [ "$2" = pytest ]; then exec sleep 600; fi
exec {shlex.quote(sys.executable)} "$@"
""")
    python.chmod(0o755)
    done = subprocess.run([str(SCRIPT), "--dry-run", "--data-dir", str(data), "--out", str(out), "--budget", "20"],
                          cwd=tmp_path, env={**os.environ, "PYTHON": str(python)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    found = stages(out / "gpu_check.md")
    assert found["data"][2] == "0"
    assert found["gpu tests"][2] == "124" and "stopped: out of budget" in found["gpu tests"][3]
    for stage in ("bench", "c4net_tiny-1ep-seed0", "c4net_tiny-1ep-seed1", "seed000-1ep-seed0"):
        assert found[stage][1:] == ["-", "skipped", "the budget is spent"]
    assert not any(stage.startswith("ship ") for stage in found)


def test_a_seed_net_without_a_recipe_is_refused_before_any_stage(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = subprocess.run([str(SCRIPT), "--dry-run", "--data-dir", str(tmp_path), "--out", str(out)], cwd=tmp_path,
                          env={**os.environ, "GPU_CHECK_SEED_NETS": "seed000 seed999"}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "seed999" in done.stderr and "seed000 seed001" in done.stderr, done.stderr
    assert not out.exists()
