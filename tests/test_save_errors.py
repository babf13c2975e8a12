"""A run that cannot save (a full disk, say) stops with one message and exit code 74: what failed where and why,
the newest complete checkpoint, and the command that continues; that command then does.

The full disk is a write that raises ENOSPC (tests/faults.py): no root, no tmpfs.
"""

from __future__ import annotations

import errno
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cifar import checkpoint as ckpt
from cifar.saving import EXIT_SAVE_FAILED, SaveFailed, failure_message, newest_complete_checkpoint, resume_command

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the message


def test_the_resume_command_is_the_runs_own_with_its_folder_and_resume_auto() -> None:
    argv = ["--epochs", "35", "--resume", "runs/a/checkpoints/step-000000002", "--output-dir=runs/x", "--cpu"]
    assert resume_command("train.py", argv, "runs/a", 1) == (
        "python train.py --epochs 35 --cpu --output-dir runs/a --resume auto")
    assert resume_command("train.py", ["--resume=auto", "--wandb-name", "a b"], "runs/b", 2) == (
        "accelerate launch [its launch options] train.py --wandb-name 'a b' --output-dir runs/b --resume auto")


def test_the_message_names_the_folder_the_error_the_checkpoint_and_the_fix(tmp_path: Path) -> None:
    disk = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "metrics.jsonl"))
    failure = SaveFailed.from_error("metrics.jsonl", tmp_path / "run", disk, tmp_path / "run")
    newest = tmp_path / "run" / "checkpoints" / "step-000000004"
    text = failure_message(failure, newest, "python train.py --output-dir run --resume auto")
    assert text == (f"could not save metrics.jsonl in {tmp_path / 'run'}: [Errno 28] No space left on device: "
                    f"'{tmp_path / 'run' / 'metrics.jsonl'}'. Nothing saved before is lost: the newest complete "
                    f"checkpoint is {newest}. Free some space for {tmp_path / 'run'}, then continue with: python "
                    "train.py --output-dir run --resume auto")
    read_only = SaveFailed.from_error("the checkpoint", tmp_path, OSError(errno.EROFS, "Read-only file system"),
                                      tmp_path)
    text = failure_message(read_only, None, "CMD")
    assert "start again from the beginning" in text and f"Make {tmp_path} writable, then continue with: CMD" in text


def test_only_a_checkpoint_that_verifies_counts_as_complete(tmp_path: Path) -> None:
    assert newest_complete_checkpoint(tmp_path) is None
    good = ckpt.write_checkpoint(tmp_path / "checkpoints", 2, {"x": 1}, {})
    broken = ckpt.write_checkpoint(tmp_path / "checkpoints", 4, {"x": 1}, {})
    (broken / "x.pt").write_bytes(b"damaged")
    assert newest_complete_checkpoint(tmp_path) == good


# ---------------------------------------------------------------- end to end (slow)


def faulty_train(fault: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.faults", fault, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def assert_one_message_then_resume(done: subprocess.CompletedProcess[str], what: str, out: Path,
                                   newest: str) -> subprocess.CompletedProcess[str]:
    """The failed run's stderr ends in the one message promised; the command it names finishes the run."""
    assert done.returncode == EXIT_SAVE_FAILED, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: could not save {what} in ") and "[Errno 28] No space left on device" in message
    assert f"the newest complete checkpoint is {out / 'checkpoints' / newest}. Free some space" in message
    assert not [entry for entry in (out / "checkpoints").iterdir() if entry.name.startswith(".tmp-")]
    command = shlex.split(message.split("then continue with: ")[1])
    assert command[0] == "python" and command[-4:] == ["--output-dir", str(out), "--resume", "auto"]
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'checkpoints' / newest}" in resumed.stdout + resumed.stderr
    assert (out / "summary.json").is_file() and (out / "model.safetensors").is_file()
    return resumed


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_and_says_how_to_continue(tmp_path: Path) -> None:
    from tests.test_train import BASE
    from tests.tiny_data import write_tiny_cifar

    data, out = write_tiny_cifar(tmp_path / "tiny"), tmp_path / "run"
    done = faulty_train("full-disk=step-000000004", *BASE, "--data-dir", data, "--epochs", "2", "--output-dir", out)
    assert not (out / "checkpoints" / "step-000000004").exists()
    assert_one_message_then_resume(done, "the checkpoint", out, "step-000000002")


@pytest.mark.slow
def test_a_full_disk_while_plotting_the_results_keeps_the_final_checkpoint(tmp_path: Path) -> None:
    from tests.test_train import BASE
    from tests.tiny_data import write_tiny_cifar

    data, out = write_tiny_cifar(tmp_path / "tiny"), tmp_path / "run"
    done = faulty_train("full-disk=accuracy.png", *BASE, "--data-dir", data, "--epochs", "1", "--output-dir", out)
    assert not (out / "plots" / "accuracy.png").exists()
    resumed = assert_one_message_then_resume(done, "the run's results", out, "step-000000007")
    assert "epoch   1/1" not in resumed.stdout + resumed.stderr  # nothing trained again: only the results
    assert (out / "plots" / "accuracy.png").is_file()


@pytest.mark.slow
def test_with_two_processes_both_stop_with_the_one_message(tmp_path: Path) -> None:
    """Only the main process writes; the other learns of the failure at the same point and stops with it, rather
    than waiting for a main process that is gone."""
    from tests.test_train import ACCELERATE, BASE, free_port
    from tests.tiny_data import write_tiny_cifar

    data, out = write_tiny_cifar(tmp_path / "tiny"), tmp_path / "run"
    done = subprocess.run([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                           str(free_port()), "-m", "tests.faults", "full-disk=step-000000004", *BASE, "--data-dir",
                           str(data), "--epochs", "2", "--output-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0  # the launcher's own verdict on failed processes (torch's, always 1)
    # Whichever process exits first, the launcher sends the other SIGTERM (-15), which train.py takes only after
    # its message is out.
    exits = re.findall(r"exitcode\s+:\s*(-?\d+) \(pid: (\d+)\)", done.stderr)  # the launcher's report
    codes = {code for code, _ in exits}
    assert len({pid for _, pid in exits}) == 2 and "74" in codes and codes <= {"74", "-15"}, done.stderr
    assert done.stderr.count("error: could not save the checkpoint in") == 1
    assert "newest complete checkpoint is " + str(out / "checkpoints" / "step-000000002") in done.stderr
    assert "continue with: accelerate launch [its launch options] " in done.stderr
