"""cifar.slurm (which job to requeue) and cifar.aggregate (comparing finished runs), without a cluster."""

from __future__ import annotations

import json
import shutil
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


# ---------------------------------------------------------------- GPUs per node, as SLURM spells them


def gpus_on_node(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """slurm/common.sh's gpus_on_node in a job's environment holding only ``env`` besides the basics."""
    job = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SLURM_JOB_ID": "5", **env}
    return subprocess.run(["bash", "-c", ". slurm/common.sh && gpus_on_node"], cwd=ROOT, env=job,
                          capture_output=True, text=True)


@pytest.mark.parametrize("env, count", [
    ({}, "0"),
    ({"SLURM_GPUS_ON_NODE": "4"}, "4"),
    ({"SLURM_GPUS_ON_NODE": "a100:4"}, "4"),                      # some sites write the type in
    ({"SLURM_GPUS_PER_NODE": "gpu:a100:4"}, "4"),                 # --gpus-per-node with the GRES name, no _ON_NODE
    ({"SLURM_GPUS_PER_NODE": "a100:2,v100:1"}, "3"),              # several types on one node
    ({"SLURM_GPUS_PER_NODE": "08"}, "8"),                         # not octal
    ({"SLURM_JOB_GPUS": "0,1,2"}, "3"),                           # indices only: counted, not summed
    ({"SLURM_GPUS_ON_NODE": "2", "SLURM_GPUS_PER_NODE": "a100:4"}, "2"),  # what the node has wins over the request
    ({"GPUS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "4"}, "1"),     # the user's setting wins
])
def test_gpus_on_node_reads_every_spelling_slurm_uses(tmp_path: Path, env: dict[str, str], count: str) -> None:
    done = gpus_on_node(tmp_path, **env)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, count, "")


@pytest.mark.parametrize("name, value", [("SLURM_GPUS_ON_NODE", "lots"), ("SLURM_GPUS_PER_NODE", "a100:"),
                                         ("SLURM_JOB_GPUS", "GPU-8f1c,GPU-22ab"), ("GPUS_PER_NODE", "four")])
def test_an_unreadable_gpu_count_is_an_error_naming_the_variable_and_the_fix(tmp_path: Path, name: str,
                                                                             value: str) -> None:
    """Read as 0 GPUs, it would train on the CPU of a GPU node without a word."""
    done = gpus_on_node(tmp_path, **{name: value})
    assert done.returncode == 2 and done.stdout == ""
    assert f"{name}='{value}'" in done.stderr and "export GPUS_PER_NODE=" in done.stderr


@pytest.mark.parametrize("env, processes, cpu", [
    ({"SLURM_GPUS_PER_NODE": "gpu:a100:4"}, "4", False),
    ({"SLURM_GPUS_ON_NODE": "1"}, "1", False),
    ({}, "1", True),
    ({"CPU_PROCS_PER_NODE": "2"}, "2", True),
])
def test_the_template_launches_one_process_per_gpu_or_cpu_processes(tmp_path: Path, env: dict[str, str],
                                                                   processes: str, cpu: bool) -> None:
    """slurm/train.sbatch as a job runs it, with an srun that records what it was asked to start, in a checkout
    without .venv: CIFAR_ACTIVATE="" means no environment to activate, not the default one."""
    recorded = tmp_path / "srun-args"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {recorded}\n")
    (bin_dir / "srun").chmod(0o755)
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "slurm", checkout / "slurm")
    job = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "SLURM_JOB_ID": "5", "SLURM_JOB_NAME": "cifar",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_CPUS_ON_NODE": "8", "CIFAR_ACTIVATE": "", "CIFAR_DIR": str(checkout),
           **env}
    done = subprocess.run(["bash", str(checkout / "slurm" / "train.sbatch"), "--epochs", "1"], cwd=tmp_path, env=job,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    args = recorded.read_text().splitlines()
    assert args[args.index("--num_processes") + 1] == processes
    assert ("--multi_gpu" in args) == (processes != "1")
    train_args = args[args.index("train.py") + 1:]
    assert ("--cpu" in train_args) == cpu and train_args[-2:] == ["--epochs", "1"]
    assert f"1 node(s) x {processes} process(es), {'--cpu' if cpu else 'GPU'}" in done.stdout


# ---------------------------------------------------------------- accelerate launch configs


@pytest.mark.parametrize("name, distributed, processes, machines, cpu", [
    ("cpu_2proc", "MULTI_GPU", 2, 1, True),
    ("single_gpu", "NO", 1, 1, False),
    ("multi_gpu", "MULTI_GPU", 8, 1, False),
    ("multi_node", "MULTI_GPU", 16, 2, False),
])
def test_launch_configs_are_read_by_the_pinned_accelerate(name: str, distributed: str, processes: int, machines: int,
                                                          cpu: bool) -> None:
    """accelerate refuses a config file with a key it does not know; each file means what its comments say."""
    from accelerate.commands.config.config_args import load_config_from_file
    config = load_config_from_file(str(ROOT / "accelerate_configs" / f"{name}.yaml"))
    assert (config.distributed_type.value, config.num_processes, config.num_machines, config.use_cpu) == \
        (distributed, processes, machines, cpu)
    assert config.mixed_precision in ("no", "bf16") and config.compute_environment.value == "LOCAL_MACHINE"
