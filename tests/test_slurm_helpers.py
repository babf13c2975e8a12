"""cifar.slurm (which job to requeue) and cifar.aggregate (comparing finished runs), without a cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cifar.aggregate import RunFolderError, aggregate, main, read_run, runs_table
from cifar.slurm import RequeueError, requeue, requeue_target

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env, target", [
    ({}, None),
    ({"SLURM_JOB_ID": "812"}, "812"),
    # The first task of an array shares the array's id: requeueing "800" would take back the whole array.
    ({"SLURM_JOB_ID": "800", "SLURM_ARRAY_JOB_ID": "800", "SLURM_ARRAY_TASK_ID": "0"}, "800_0"),
    ({"SLURM_JOB_ID": "803", "SLURM_ARRAY_JOB_ID": "800", "SLURM_ARRAY_TASK_ID": "3"}, "800_3"),
])
def test_requeue_target(env: dict[str, str], target: str | None) -> None:
    assert requeue_target(env) == target


def test_requeue_without_scontrol_names_the_problem(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RequeueError, match="scontrol is not on PATH"):
        requeue("812")


def write_run(folder: Path, seed: int, test_acc: float, best_val_acc: float | None = 0.5,
              train_seconds: float = 10.0) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "model": "c4net", "seed": seed, "test_acc": test_acc, "best_val_acc": best_val_acc, "epochs": 35,
        "train_seconds": train_seconds, "test_loss": 0.3}))
    return folder


def test_aggregate_mean_and_sample_std(tmp_path: Path) -> None:
    runs = [read_run(write_run(tmp_path / f"s{seed}", seed, acc, val, secs))
            for seed, acc, val, secs in [(0, 0.90, 0.89, 10.0), (1, 0.92, None, 20.0), (2, 0.94, 0.93, 30.0)]]
    stats = aggregate(runs)
    assert stats["runs"] == 3
    assert stats["test_acc_mean"] == pytest.approx(0.92)
    assert stats["test_acc_std"] == pytest.approx(0.02)          # sample std (n - 1)
    assert stats["best_val_acc_mean"] == pytest.approx(0.91)     # runs without a validation split left out
    assert stats["train_seconds_mean"] == pytest.approx(20.0)
    table = runs_table(runs, stats, [])
    assert "3 run(s): test acc 92.00% ± 2.00%, flip TTA -, best val 91.00% ± 2.83%, train 20.0 ± 10.0 s" in table


def test_aggregate_of_one_run_has_no_std(tmp_path: Path) -> None:
    runs = [read_run(write_run(tmp_path / "s0", 0, 0.9))]
    stats = aggregate(runs)
    assert stats["test_acc_std"] is None
    assert "1 run(s): test acc 90.00%, flip TTA -, best val 50.00%, train 10.0 s" in runs_table(runs, stats, [])


def test_unfinished_and_foreign_folders_are_named(tmp_path: Path) -> None:
    (tmp_path / "running").mkdir()
    with pytest.raises(RunFolderError, match="running: no summary.json"):
        read_run(tmp_path / "running")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "summary.json").write_text('{"accuracy": 1}')
    with pytest.raises(RunFolderError, match="not a train.py summary"):
        read_run(tmp_path / "other")


def test_cli_table_json_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    finished = [write_run(tmp_path / f"cifar-7_{task}", task, 0.8 + task / 100) for task in range(2)]
    (tmp_path / "cifar-7_2").mkdir()
    out = tmp_path / "table.json"
    assert main([*map(str, finished), str(tmp_path / "cifar-7_2"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cifar-7_0" in printed and "cifar-7_1" in printed
    assert "not counted: " in printed and "cifar-7_2: no summary.json" in printed
    document = json.loads(out.read_text())
    assert document["runs"] == 2 and [run["seed"] for run in document["per_run"]] == [0, 1]
    assert document["test_acc_mean"] == pytest.approx(0.805)
    # Nothing finished: a message and exit 2, as a module run from the shell.
    done = subprocess.run([sys.executable, "-m", "cifar.aggregate", str(tmp_path / "cifar-7_2")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "none of the folders holds a finished run" in done.stderr


@pytest.mark.parametrize("template", ["train.sbatch", "train_multinode.sbatch"])
def test_templates_refuse_to_run_outside_a_job_or_without_their_environment(template: str, tmp_path: Path) -> None:
    script = ROOT / "slurm" / template
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(script)], cwd=ROOT, env=clean, capture_output=True, text=True)
    assert done.returncode == 2 and "submit this template with sbatch" in done.stderr
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=clean, capture_output=True, text=True)
    assert done.returncode == 2 and "submit from the repository root, or export CIFAR_DIR" in done.stderr
    in_job = {**clean, "SLURM_JOB_ID": "5", "CIFAR_ACTIVATE": str(tmp_path / "no-venv" / "bin" / "activate")}
    done = subprocess.run(["bash", str(script)], cwd=ROOT, env=in_job, capture_output=True, text=True)
    assert done.returncode == 2 and "no-venv/bin/activate does not exist" in done.stderr
