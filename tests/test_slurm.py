"""slurm/ templates on a real SLURM cluster that the tests start themselves (tests/slurm_cluster.py): two
nodes on this host, CPU processes, the tiny generated dataset.

1. slurm/train.sbatch, 2 processes on one node: COMPLETED, outputs present.
2. slurm/train_multinode.sbatch, 2 nodes x 1 process: one process group, the same weights as 1.
3. USR1 to the batch shell mid-run (what --signal=B:USR1@... does): checkpoint, requeue, resume, COMPLETED,
   the same W&B run continued, and weights bit-identical to 1.
4. An array of 3 seeds: 3 output folders, seeds base + task id, one W&B group, and the aggregate table.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from cifar.data import load_cifar
from cifar.slurm import RequeueError, requeue
from tests import slurm_cluster
from tests.tiny_data import write_tiny_cifar

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# 200 training images after 40 for validation: 7 steps an epoch at batch 32, a checkpoint every 2 steps.
TRAIN_ARGS = ["--model", "c4net_tiny", "--batch-size", "32", "--lr", "0.05", "--val-size", "40",
              "--num-workers", "1", "--checkpoint-every", "2", "--keep-last", "2"]
JOB_TIMEOUT = 420


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> slurm_cluster.SlurmCluster:
    reason = slurm_cluster.missing()
    if reason:
        print(f"SLURM tests skipped: {reason}")
        pytest.skip(reason)
    # Unix sockets have short paths: keep the cluster's folder near the root.
    cluster = slurm_cluster.SlurmCluster(Path(tmp_path_factory.mktemp("slurm", numbered=True)))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    data = write_tiny_cifar(tmp_path_factory.mktemp("slurm-data") / "tiny")
    load_cifar(data)  # the cache, written once, before jobs read it concurrently
    return {"data": data, "runs": tmp_path_factory.mktemp("slurm-runs")}


def job_env(workspace: dict[str, Path], **extra: str) -> dict[str, str]:
    """The job's environment: this interpreter's tools first on PATH, runs in the test's folder, and one thread
    per process (a CPU kernel's sums depend on its thread count, so jobs compared bit for bit need the same)."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "CIFAR_ACTIVATE": "",
            "CIFAR_RUNS": str(workspace["runs"]), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "OMP_NUM_THREADS": "1", **extra}


def submit(cluster: slurm_cluster.SlurmCluster, workspace: dict[str, Path], template: str, sbatch_args: list[str],
           train_args: list[str], **env: str) -> str:
    return cluster.sbatch(*sbatch_args, "--output", workspace["runs"] / "slurm-%j.out", ROOT / "slurm" / template,
                          "--data-dir", workspace["data"], *train_args, env=job_env(workspace, **env), cwd=ROOT)


def job_log(workspace: dict[str, Path], job: str) -> str:
    return (workspace["runs"] / f"slurm-{job}.out").read_text(errors="replace")


def assert_completed(states: dict[str, dict[str, str]], log: str = "") -> None:
    """Every job (every task of an array) COMPLETED; on failure show their states and the log."""
    failed = {name: f["JobState"] for name, f in states.items() if f["JobState"] != "COMPLETED"}
    assert not failed, f"{failed}\n{log}"


def weights(run: Path) -> dict:
    return load_file(run / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    different = [name for name in first if not first[name].equal(second[name])]
    assert not different, f"{a} and {b} differ in {different}"


@pytest.fixture(scope="module")
def single_node_run(cluster: slurm_cluster.SlurmCluster, workspace: dict[str, Path]) -> Path:
    """Scenario 1, which 2 and 3 compare against: one node, 2 CPU processes, 8 epochs."""
    job = submit(cluster, workspace, "train.sbatch", ["--cpus-per-task", "2"], [*TRAIN_ARGS, "--epochs", "8"],
                 CPU_PROCS_PER_NODE="2")
    states = cluster.wait(job, JOB_TIMEOUT)
    assert_completed(states, job_log(workspace, job))
    return workspace["runs"] / f"cifar-{job}"


def test_single_node_two_processes(single_node_run: Path, workspace: dict[str, Path]) -> None:
    job = single_node_run.name.removeprefix("cifar-")
    log = job_log(workspace, job)
    assert "1 node(s) x 2 process(es), --cpu" in log
    summary = json.loads((single_node_run / "summary.json").read_text())
    assert summary["hardware"].startswith("2 process(es) on CPU")
    assert summary["epochs"] == 8 and summary["test_images"] == 100
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors", "best.safetensors", "plots/loss.png"):
        assert (single_node_run / name).is_file(), name
    assert len((single_node_run / "metrics.jsonl").read_text().splitlines()) == 8


def test_multi_node_matches_single_node(cluster: slurm_cluster.SlurmCluster, workspace: dict[str, Path],
                                        single_node_run: Path) -> None:
    job = submit(cluster, workspace, "train_multinode.sbatch", ["--cpus-per-task", "2"],
                 [*TRAIN_ARGS, "--epochs", "8"], CPU_PROCS_PER_NODE="1")
    states = cluster.wait(job, JOB_TIMEOUT)
    log = job_log(workspace, job)
    assert_completed(states, log)
    assert states[job]["NumNodes"] == "2"
    assert "2 node(s) x 1 process(es), --cpu" in log
    run = workspace["runs"] / f"cifar-{job}"
    # Two machines, one process group: train.py checks the launched world size against the group it formed.
    assert json.loads((run / "summary.json").read_text())["hardware"].startswith("2 process(es) on CPU")
    assert_same_weights(run, single_node_run)


def test_usr1_checkpoints_requeues_and_resumes_exactly(cluster: slurm_cluster.SlurmCluster,
                                                       workspace: dict[str, Path], single_node_run: Path) -> None:
    job = submit(cluster, workspace, "train.sbatch", ["--cpus-per-task", "2"],
                 [*TRAIN_ARGS, "--epochs", "8", "--wandb"], CPU_PROCS_PER_NODE="2")
    run = workspace["runs"] / f"cifar-{job}"
    # Signal once training is under way (its first checkpoint exists), as SLURM does before the time limit.
    deadline = time.monotonic() + JOB_TIMEOUT
    while not list((run / "checkpoints").glob("step-*/manifest.json")):
        assert time.monotonic() < deadline, job_log(workspace, job)
        time.sleep(0.1)
    cluster.run("scancel", "--batch", "--signal=USR1", job)

    states = cluster.wait(job, JOB_TIMEOUT)
    log = job_log(workspace, job)
    assert_completed(states, log)
    assert states[job]["Restarts"] == "1", log
    assert "stopped by SIGUSR1 at step" in log
    assert f"requeued SLURM job {job}" in log
    assert "resumed from" in log and "(start 2)" in log
    assert_same_weights(run, single_node_run)
    # The restarted job went on with the same W&B run: both offline run folders carry one id.
    run_ids = {path.name.rsplit("-", 1)[-1] for path in (run / "wandb").glob("offline-run-*")}
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2 and len(run_ids) == 1, run_ids


def test_seed_array_and_aggregate(cluster: slurm_cluster.SlurmCluster, workspace: dict[str, Path]) -> None:
    array = submit(cluster, workspace, "train.sbatch", ["--array", "0-2", "--cpus-per-task", "1"],
                   [*TRAIN_ARGS, "--epochs", "2"], CPU_PROCS_PER_NODE="1", SEED_BASE="10")
    states = cluster.wait(array, JOB_TIMEOUT)
    assert sorted(states) == [f"{array}_{task}" for task in range(3)]
    assert_completed(states)
    runs = [workspace["runs"] / f"cifar-{array}_{task}" for task in range(3)]
    for task, run in enumerate(runs):
        assert json.loads((run / "summary.json").read_text())["seed"] == 10 + task
        assert f"wandb_group: cifar-{array}" in (run / "config.yaml").read_text()
    table_json = workspace["runs"] / "aggregate.json"
    done = cluster.run(sys.executable, "-m", "cifar.aggregate", *map(str, runs), "--json", str(table_json), cwd=ROOT)
    for task in range(3):
        assert f"cifar-{array}_{task}" in done.stdout
    assert "3 run(s): test acc" in done.stdout
    stats = json.loads(table_json.read_text())
    accuracies = [json.loads((run / "summary.json").read_text())["test_acc"] for run in runs]
    assert stats["runs"] == 3
    assert stats["test_acc_mean"] == pytest.approx(sum(accuracies) / 3)
    assert [r["seed"] for r in stats["per_run"]] == [10, 11, 12]


def test_requeue_of_an_unknown_job_quotes_scontrol(cluster: slurm_cluster.SlurmCluster,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    with pytest.raises(RequeueError, match=r"`scontrol requeue 999999` failed: .*Invalid job id"):
        requeue("999999")
