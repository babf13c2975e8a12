"""train.py end to end, as users run it: a subprocess (or `accelerate launch`) on a tiny generated dataset.

Slow by nature (each run starts torch, accelerate and albumentations), so marked ``slow``; CI runs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from cifar import checkpoint as ckpt
from cifar.data import load_cifar
from cifar.hardware import native_bf16
from tests.tiny_data import evaluation_inputs, write_tiny_cifar

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
TIMINGS = ("epoch_seconds", "images_per_second")
# 240 training images (40 held out for validation leave 200: six batches of 32 and one of 8), 100 test images.
BASE = ["--cpu", "--model", "c4net_tiny", "--batch-size", "32", "--lr", "0.05", "--val-size", "40",
        "--num-workers", "1", "--checkpoint-every", "2", "--keep-last", "2"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_tiny_cifar(tmp_path_factory.mktemp("data") / "tiny")
    load_cifar(root)  # build the cache once, so runs do not race to write it
    return root


def command(*args: str | Path, processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, str(ROOT / "train.py"), *map(str, args)]
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            str(ROOT / "train.py"), *map(str, args)]


def train(*args: str | Path, processes: int = 1, env: dict[str, str] | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args, processes=processes), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rows(run: Path) -> list[dict[str, object]]:
    """metrics.jsonl without the timing columns, which no two runs share."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def newest_step(run: Path) -> int:
    found = ckpt.list_checkpoints(run / "checkpoints") if (run / "checkpoints").is_dir() else []
    return int(found[-1].name.split("-")[1]) if found else -1


@dataclass
class Ending:
    returncode: int
    stdout: str
    stderr: str
    saved: bool  # the run had saved a checkpoint newer than those there at its start when the signal was sent


def run_processes(pid: int) -> list[psutil.Process]:
    """The started process and all its descendants: with several processes, `accelerate launch` (torchrun) starts
    each worker in a session of its own, out of reach of a signal to the launcher's group."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def signal_run(pid: int, sig: int, group: bool) -> list[psutil.Process]:
    """Send ``sig`` as the tests' rounds do; returns the processes of the run at that moment.

    SIGKILL goes to every process group of the run, as a scheduler ends a job (all of its processes, whatever
    their session). Another signal goes to the started process's group (as a terminal's Ctrl-C, ``group``) or to
    it alone (as ``kill`` does)."""
    members = run_processes(pid)
    if sig == signal.SIGKILL:
        groups = {pid} | {pgid for pgid in map(process_group, members) if pgid is not None}
    elif group:
        groups = {pid}  # started with start_new_session: it leads its own group
    else:
        os.kill(pid, sig)
        return members
    for pgid in groups - {os.getpgrp()}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
    return members


def describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid}: {' '.join(process.cmdline()[:6])}"
    except psutil.Error:
        return str(process.pid)


def process_group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except ProcessLookupError:
        return None


def kill_during_training(cmd: list[str], run: Path, kills, sig: int = signal.SIGKILL, group: bool = True,
                         max_delay: float = 0.6, timeout: float = 120) -> Ending:
    """Start ``cmd``, wait until it has saved a checkpoint newer than the ones already there, then send ``sig``
    (:func:`signal_run`) after the next of ``kills``' seeded delays (conftest.KillRounds, up to ``max_delay``
    seconds), so that it lands at a different point of the work each time (mid-step, mid-checkpoint,
    mid-evaluation). No signal is sent to a run that saved nothing new (``saved`` is then False; the round's check
    fails). A process of the run still there ``timeout`` seconds after the signal fails the test, and is killed:
    a survivor would go on writing checkpoints while the next round starts."""
    before = newest_step(run)
    members: list[psutil.Process] = []
    # Files, not pipes: nothing blocks on a full pipe while the test waits, and unbuffered output survives a kill.
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=stdout, stderr=stderr, text=True, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 240
            while newest_step(run) <= before and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            saved = newest_step(run) > before
            if saved:
                time.sleep(kills.delay(max_delay))
                if process.poll() is None:
                    members = signal_run(process.pid, sig, group)
                process.wait(timeout=timeout)
                deadline = time.monotonic() + timeout
                while any(map(running, members)) and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            if process.poll() is None:  # not reaped yet, so its pid and group are still this run's
                members += run_processes(process.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            survivors = [describe(member) for member in members if running(member)]
            for member in members:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.kill()  # psutil refuses a pid that now names another process
            process.wait()
        assert not survivors, f"process(es) of the run outlived {signal.Signals(sig).name}: {survivors}"
        stdout.seek(0)
        stderr.seek(0)
        return Ending(process.returncode, stdout.read(), stderr.read(), saved)


RESUMED = re.compile(r"resumed from (\S+) \(epoch \d+, step (\d+)\)")


def assert_resumed(stdout: str, step: int) -> None:
    """A restart said it resumed from the checkpoint of ``step``: the newest one there when it started."""
    found = RESUMED.search(stdout)
    assert found, f"the restart did not resume from a checkpoint:\n{stdout[-3000:]}"
    assert (Path(found[1]).name, int(found[2])) == (ckpt.checkpoint_name(step), step), found[0]


def finish_resumed(cmd: list[str], run: Path) -> None:
    """Run ``cmd`` (with --resume auto) to the end; it must resume from the newest checkpoint in ``run``."""
    step = newest_step(run)
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_resumed(result.stdout, step)


def assert_same_run(straight: Path, resumed: Path) -> None:
    assert (resumed / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()
    assert (resumed / "best.safetensors").read_bytes() == (straight / "best.safetensors").read_bytes()
    assert rows(resumed) == rows(straight)


# ---------------------------------------------------------------- one process


@pytest.fixture(scope="module")
def straight(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: three epochs never interrupted."""
    out = tmp_path_factory.mktemp("straight") / "run"
    result = train(*BASE, "--data-dir", tiny, "--epochs", "3", "--output-dir", out)
    assert result.returncode == 0, result.stderr
    return out


def test_a_run_writes_what_it_promises(straight: Path) -> None:
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model.safetensors", "best.safetensors"):
        assert (straight / name).is_file(), name
    for name in ("loss", "accuracy", "lr", "confusion_matrix", "misclassified", "augmented_samples"):
        assert (straight / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    history = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3] and [row["step"] for row in history] == [7, 14, 21]
    for row in history:
        assert {"lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", *TIMINGS} <= set(row)
        assert row["train_images"] == 200
    saved = (straight / "config.yaml").read_text()
    # --mixed-precision auto on a CPU: bf16 where it has AMX or AVX512-BF16 (cifar.hardware.native_bf16), else fp32;
    # so the resume tests that compare with this run resume in bf16 exactly where the CPU runs bf16 natively.
    assert f"mixed_precision: {'bf16' if native_bf16(torch.device('cpu')) else 'no'}\n" in saved
    assert "num_workers: 1\n" in saved
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["test_images"] == 100 and summary["params"] == 3858 and summary["receptive_field"] > 44
    assert summary["test_acc"] == history[-1]["test_acc"]
    assert summary["hardware"].startswith("1 process(es) on CPU")
    # Which kernels trained it (a bf16 run on AMX tiles or on AVX512-BF16), as the fingerprint names them.
    assert f"(oneDNN: {summary['fingerprint']['onednn_isa']})" in summary["hardware"]
    assert {row["hardware"] for row in history} == {summary["hardware"]}
    best = max(history, key=lambda row: row["val_acc"])  # the first of equals, as the trainer keeps it
    assert summary["best_val_acc"] == best["val_acc"] and summary["best_epoch"] == best["epoch"]
    # Plain keys: the weights load into a freshly built net.
    from cifar.nets import build_net
    build_net("c4net_tiny").load_state_dict(load_file(straight / "model.safetensors"), strict=True)
    # keep-last 2 plus the best one, plus the start of the last epoch (step 14), which cifar.replay needs.
    kept = ckpt.list_checkpoints(straight / "checkpoints")
    assert kept[-1].name == ckpt.checkpoint_name(21) and 3 <= len(kept) <= 4
    assert summary["last_epoch_start"] == ckpt.checkpoint_name(14)
    assert straight / "checkpoints" / ckpt.checkpoint_name(14) in kept


def test_scheduler_params_shape_the_learning_rate_the_run_uses(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # 14 optimizer steps; the default milestones (0.5, 0.75) would lower the LR by epoch 1's end (step 7).
    result = train(*BASE, "--data-dir", tiny, "--epochs", "2", "--output-dir", out, "--scheduler", "step",
                   "--scheduler-params", "{milestones: [0.75], gamma: 0.5}")
    assert result.returncode == 0, result.stderr
    assert [row["lr"] for row in rows(out)] == [0.05, 0.025]
    assert "scheduler_params:\n  milestones:\n  - 0.75\n  gamma: 0.5\n" in (out / "config.yaml").read_text()


def test_fixed_norm_scales_stay_at_one_and_both_settings_are_saved_with_the_run(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(*BASE, "--data-dir", tiny, "--epochs", "1", "--output-dir", out, "--no-train-norm-scales",
                   "--bias-lr-scale", "8")
    assert result.returncode == 0, result.stderr
    weights = load_file(out / "model.safetensors")
    scales = {name: w for name, w in weights.items() if name.endswith(".weight") and w.ndim == 1}
    shifts = {name: w for name, w in weights.items() if name.endswith(".bias") and name[:-5] + ".weight" in scales}
    assert scales and all(torch.equal(w, torch.ones_like(w)) for w in scales.values())
    assert all(not torch.equal(w, torch.zeros_like(w)) for w in shifts.values())  # the shifts did train
    config = (out / "config.yaml").read_text()
    assert "train_norm_scales: false\n" in config and "bias_lr_scale: 8.0\n" in config


@pytest.mark.parametrize("backend", ["albumentations", "torch"])
def test_a_fading_augmentation_changes_only_the_epochs_after_its_start(tiny: Path, tmp_path: Path,
                                                                       backend: str) -> None:
    runs = {}
    for name, fade in (("constant", ()), ("fading", ("--augment-fade-from", "0.5"))):
        runs[name] = tmp_path / name
        result = train(*BASE, "--data-dir", tiny, "--epochs", "2", "--augment", "standard", "--augment-backend",
                       backend, "--output-dir", runs[name], *fade)
        assert result.returncode == 0, result.stderr
    constant, fading = (rows(runs[name]) for name in ("constant", "fading"))
    # Epoch 1's midpoint lies before the start: the same images, the same numbers; epoch 2 keeps half the
    # affine and cutout steps.
    numbers = ("train_loss", "train_acc", "test_loss")
    assert [constant[0][key] for key in numbers] == [fading[0][key] for key in numbers]
    assert constant[1]["train_loss"] != fading[1]["train_loss"]
    assert "augment_fade_from: 0.5\n" in (runs["fading"] / "config.yaml").read_text()


def test_sigkill_anywhere_then_resume_auto_is_bit_identical(tiny: Path, straight: Path, tmp_path: Path,
                                                          kill_rounds) -> None:
    """Three SIGKILLs to the whole process group, each at a seeded random moment after a new checkpoint; every
    restart resumes from the newest checkpoint, and the run ends with the weights and metrics of one never
    interrupted."""
    def attempt(number: int) -> Path:
        out = tmp_path / f"attempt{number}" / "run"
        cmd = command(*BASE, "--data-dir", tiny, "--epochs", "3", "--output-dir", out, "--resume", "auto")
        for round_ in range(3):
            start = newest_step(out)
            # Three kills in one 3-epoch run: each round may run out its delay past a checkpoint, so the delays are
            # short enough that an AMX CPU's bf16 steps still leave the third round work to interrupt.
            ending = kill_during_training(cmd, out, kill_rounds, max_delay=0.3)
            kill_rounds.assert_killed(ending.returncode, ending.saved, ending.stderr)
            if round_:
                assert_resumed(ending.stdout, start)
        finish_resumed(cmd, out)
        return out

    assert_same_run(straight, kill_rounds.retry(attempt))


def test_torch_augmentation_backend_trains_and_resumes_bit_identically(tiny: Path, tmp_path: Path,
                                                                       kill_rounds) -> None:
    """--augment-backend torch (the batch path a GPU uses, cifar/batch_augment.py) on the CPU: a run killed after
    a checkpoint and continued with --resume auto ends with the weights of an uninterrupted run."""
    args = [*BASE, "--data-dir", tiny, "--epochs", "2", "--augment-backend", "torch"]
    reference = tmp_path / "straight"
    result = train(*args, "--output-dir", reference)
    assert result.returncode == 0, result.stderr
    saved = (reference / "config.yaml").read_text()
    # What the run used: batches augmented in the training process, whatever --num-workers asked for.
    assert "augment_backend: torch\n" in saved and "num_workers: 0\n" in saved
    assert (reference / "plots" / "augmented_samples.png").stat().st_size > 0

    def attempt(number: int) -> Path:
        out = tmp_path / f"attempt{number}" / "run"
        cmd = command(*args, "--output-dir", out, "--resume", "auto")
        ending = kill_during_training(cmd, out, kill_rounds)
        kill_rounds.assert_killed(ending.returncode, ending.saved, ending.stderr)
        finish_resumed(cmd, out)
        return out

    assert_same_run(reference, kill_rounds.retry(attempt))


@pytest.mark.parametrize("precision", [
    "no",
    pytest.param("bf16", marks=pytest.mark.skipif(
        not native_bf16(torch.device("cpu")),
        reason="exact resume in bf16 is tested where the CPU runs bf16 natively (AMX or AVX512-BF16: "
               "cifar.hardware.cpu_bf16_path); here autocast would emulate it, a path --mixed-precision auto never "
               "takes")),
])
def test_sigterm_saves_a_checkpoint_and_exits_75_then_resumes_exactly(tiny: Path, tmp_path: Path,
                                                                      precision: str) -> None:
    """Also with --ema and --channels-last: the EMA's state is part of the checkpoint."""
    args = [*BASE, "--data-dir", tiny, "--epochs", "2", "--ema", "--ema-decay", "0.9", "--channels-last",
            "--mixed-precision", precision]
    reference = tmp_path / "straight"
    result = train(*args, "--output-dir", reference)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "run"
    cmd = command(*args, "--output-dir", out, "--resume", "auto")
    stderr = sigterm_after_a_checkpoint(cmd, out)
    assert "stopped by SIGTERM" in stderr and "--resume auto" in stderr
    step = newest_step(out)
    assert ckpt.verify_checkpoint(out / "checkpoints" / ckpt.checkpoint_name(step))
    assert "ema" in ckpt.load_checkpoint(out / "checkpoints" / ckpt.checkpoint_name(step))
    assert not (out / "model.safetensors").exists()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_resumed(result.stdout, step)
    assert_same_run(reference, out)


def sigterm_after_a_checkpoint(cmd: list[str], run: Path) -> str:
    """Start ``cmd``, send SIGTERM once ``run`` holds a checkpoint of step 2 or later; the run must stop with exit 75
    (checkpoint saved). Returns its stderr."""
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while newest_step(run) < 2 and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr
    return stderr


def assert_interrupted_with_a_checkpoint(ending: Ending, run: Path) -> None:
    """The run said it stopped for the SIGINT, how to resume, and the step it saved; that checkpoint verifies."""
    step = newest_step(run)
    assert f"stopped by SIGINT at step {step}; checkpoint saved" in ending.stderr, ending.stderr
    assert "--resume auto" in ending.stderr
    assert ckpt.verify_checkpoint(run / "checkpoints" / ckpt.checkpoint_name(step))
    assert not (run / "model.safetensors").exists()


def test_sigint_alone_or_to_the_group_saves_a_checkpoint_exits_130_then_resumes_exactly(
        tiny: Path, straight: Path, tmp_path: Path, kill_rounds) -> None:
    """Ctrl-C as `kill -INT <pid>` sends it (the process alone) and as a terminal does (the whole process group,
    DataLoader workers included): the step is finished, a checkpoint saved, exit 130, no traceback."""
    def attempt(number: int) -> Path:
        out = tmp_path / f"attempt{number}" / "run"
        cmd = command(*BASE, "--data-dir", tiny, "--epochs", "3", "--output-dir", out, "--resume", "auto")
        for group in (False, True):
            start = newest_step(out)
            # Soon after a checkpoint: early enough that training is not over (then the run would just finish).
            ending = kill_during_training(cmd, out, kill_rounds, signal.SIGINT, group=group, max_delay=0.1,
                                          timeout=60)
            kill_rounds.assert_killed(ending.returncode, ending.saved, ending.stderr, signal.SIGINT, expected=130)
            assert "Traceback" not in ending.stderr, ending.stderr
            assert_interrupted_with_a_checkpoint(ending, out)
            if group:
                assert_resumed(ending.stdout, start)
        finish_resumed(cmd, out)
        return out

    assert_same_run(straight, kill_rounds.retry(attempt))


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(tiny: Path, straight: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = train(*BASE, "--data-dir", tiny, "--epochs", "3", "--output-dir", out)
    assert first.returncode == 0, first.stderr
    (out / "model.safetensors").unlink()
    newest = ckpt.list_checkpoints(out / "checkpoints")[-1]
    payload = newest / "model.pt"
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    result = train(*BASE, "--data-dir", tiny, "--epochs", "3", "--output-dir", out, "--resume", "auto")
    assert result.returncode == 0, result.stderr
    assert f"skipping checkpoint {newest}" in result.stderr and "corrupt" in result.stderr
    assert_same_run(straight, out)


def test_eval_only_reports_accuracy_a_per_class_table_and_the_fit_of_the_training_images(
        tiny: Path, straight: Path) -> None:
    summary = json.loads((straight / "summary.json").read_text())
    newest = ckpt.list_checkpoints(straight / "checkpoints")[-1]
    from cifar.nets import build_net
    net = build_net("c4net_tiny").eval()
    net.load_state_dict(load_file(straight / "model.safetensors"))
    data = load_cifar(tiny)
    with torch.no_grad():
        predicted = net(evaluation_inputs(data.train_images, data)).argmax(1)
    fit = (predicted == torch.from_numpy(data.train_labels)).float().mean().item()
    for weights in (straight / "model.safetensors", newest):
        result = train("--cpu", "--data-dir", tiny, "--eval-only", weights, "--num-workers", "0")
        assert result.returncode == 0, result.stderr
        assert f"test accuracy {summary['test_acc']:.2%} (100 images)" in result.stdout
        assert "airplane" in result.stdout and "total" in result.stdout
        assert (f"training images without augmentation: accuracy {fit:.2%} (all {len(data.train_labels):,}, "
                in result.stdout), result.stdout


def test_a_bf16_run_on_the_cpu_is_evaluated_in_fp32_during_training_and_after(tiny: Path, tmp_path: Path) -> None:
    """accelerator.prepare() runs the net's forward under autocast in bf16; evaluation on a CPU must not follow
    it. The loss train.py reports for the bf16-trained weights is the fp32 one --eval-only prints, whatever
    --mixed-precision says there (bf16 autocast runs on any CPU, natively with AMX or AVX512-BF16)."""
    out = tmp_path / "run"
    result = train(*BASE, "--data-dir", tiny, "--epochs", "4", "--lr", "0.2", "--mixed-precision", "bf16",
                   "--output-dir", out)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    printed = []
    for precision in ("no", "bf16"):
        result = train("--cpu", "--data-dir", tiny, "--eval-only", out, "--num-workers", "0",
                       "--mixed-precision", precision)
        assert result.returncode == 0, result.stderr
        printed.append(re.search(r"test accuracy .*", result.stdout).group(0))
    assert printed[0] == printed[1]
    assert f"test accuracy {summary['test_acc']:.2%} (100 images), loss {summary['test_loss']:.4f};" in printed[0]
    # The reported loss is the fp32 one, and bf16 autocast would have printed another: the check can fail.
    from cifar.nets import build_net
    net = build_net("c4net_tiny").eval()
    net.load_state_dict(load_file(out / "model.safetensors"))
    data = load_cifar(tiny)
    images, labels = evaluation_inputs(data.test_images, data), torch.from_numpy(data.test_labels)
    with torch.no_grad():
        fp32 = torch.nn.functional.cross_entropy(net(images), labels).item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = torch.nn.functional.cross_entropy(net(images).float(), labels).item()
    # train.py batches the test set, so its fp32 loss may differ in the last bits; bf16 lies ten times farther off.
    reported = abs(summary["test_loss"] - fp32)
    assert reported < 1e-5 and abs(bf16 - fp32) > 10 * reported, (summary["test_loss"], fp32, bf16)


def test_nonfinite_loss_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(*BASE, "--data-dir", tiny, "--epochs", "2", "--output-dir", out, "--lr", "1e30",
                   "--checkpoint-every", "1")
    assert result.returncode == 3, result.stderr
    assert "non-finite" in result.stderr and "at step" in result.stderr
    failed_step = int(result.stderr.split("at step ")[1].split()[0])
    kept = ckpt.list_checkpoints(out / "checkpoints")
    assert kept and newest_step(out) == failed_step - 1
    state = ckpt.load_checkpoint(kept[-1])
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not (out / "model.safetensors").exists()


def test_an_unexpected_error_mid_training_exits_1_with_a_traceback_instead_of_hanging(tiny: Path,
                                                                                    tmp_path: Path) -> None:
    """An error the trainer does not expect (a bug, injected by tests/faults.py: the first checkpoint, at step 2,
    raises) while its DataLoader workers run: they ignore SIGTERM, which multiprocessing's exit handler alone
    would wait on forever. (A failed write is expected: tests/test_save_errors.py.)"""
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "tests.faults", "crash-checkpoint", *BASE, "--data-dir", tiny,
                             "--epochs", "2", "--output-dir", out], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" in result.stderr and "RuntimeError: a fault injected" in result.stderr, result.stderr


# ---------------------------------------------------------------- several processes


TWO = [*BASE, "--epochs", "2"]


@pytest.fixture(scope="module")
def straight_two(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference of the 2-process runs: two epochs on 2 gloo processes, never interrupted."""
    out = tmp_path_factory.mktemp("straight_two") / "run"
    result = train(*TWO, "--data-dir", tiny, "--output-dir", out, processes=2)
    assert result.returncode == 0, result.stderr
    assert "2 process(es)" in result.stdout and "MULTI_CPU" in result.stdout
    return out


def test_two_processes_count_every_image_once_and_resume_exactly(tiny: Path, straight_two: Path,
                                                                 tmp_path: Path, kill_rounds) -> None:
    assert all(row["train_images"] == 200 for row in rows(straight_two))
    assert json.loads((straight_two / "summary.json").read_text())["test_images"] == 100

    def attempt(number: int) -> Path:
        out = tmp_path / f"attempt{number}" / "killed"
        cmd = command(*TWO, "--data-dir", tiny, "--output-dir", out, "--resume", "auto", processes=2)
        ending = kill_during_training(cmd, out, kill_rounds)
        kill_rounds.assert_killed(ending.returncode, ending.saved, ending.stderr)  # the launcher, with its group
        finish_resumed(cmd, out)
        return out

    assert_same_run(straight_two, kill_rounds.retry(attempt))


def test_sigint_to_the_launcher_alone_or_its_group_saves_a_checkpoint_then_resumes_exactly(
        tiny: Path, straight_two: Path, tmp_path: Path, kill_rounds) -> None:
    """`accelerate launch` (torchrun) starts each process in a session of its own and passes a SIGINT it gets
    (alone, or with its group as Ctrl-C sends it) on to each: both finish their step, save, and exit 130. The
    launcher itself then exits 1 with torch's SignalException traceback, which this project cannot change."""
    def attempt(number: int) -> Path:
        out = tmp_path / f"attempt{number}" / "run"
        cmd = command(*TWO, "--data-dir", tiny, "--output-dir", out, "--resume", "auto", processes=2)
        for group in (False, True):
            start = newest_step(out)
            ending = kill_during_training(cmd, out, kill_rounds, signal.SIGINT, group=group, max_delay=0.1,
                                          timeout=60)
            kill_rounds.assert_killed(ending.returncode, ending.saved, ending.stderr, signal.SIGINT, expected=1)
            assert all("SignalException" in part for part in ending.stderr.split("Traceback")[1:]), ending.stderr
            assert_interrupted_with_a_checkpoint(ending, out)
            if group:
                assert_resumed(ending.stdout, start)
        finish_resumed(cmd, out)
        return out

    assert_same_run(straight_two, kill_rounds.retry(attempt))


def test_sync_bn_on_two_processes_matches_one_process_with_the_same_global_batch(tiny: Path, tmp_path: Path) -> None:
    # A small LR and NCHW keep the float noise of another summation order small enough to tell apart: at BASE's
    # 0.05 it grew to 1e-3 in these 7 steps for some augmentation draws (even between 1 and 2 threads in one
    # process), and in channels-last to 3e-4 even at 0.005; NCHW at 0.005 stays near 1e-7. fp32, where auto would
    # pick bf16 (a CPU with AMX or AVX512-BF16): bf16 rounding alone moved a weight by 1.3e-3.
    args = [*BASE, "--data-dir", tiny, "--epochs", "1", "--val-size", "0", "--lr", "0.005", "--no-channels-last",
            "--mixed-precision", "no"]
    one = train(*args, "--output-dir", tmp_path / "one")
    two = train(*args, "--sync-bn", "--output-dir", tmp_path / "two", processes=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-5
    # Without synced statistics each process normalizes by its half batch: the result must differ measurably,
    # or this test would not be telling sync-bn apart from nothing.
    plain = train(*args, "--output-dir", tmp_path / "plain", processes=2)
    assert plain.returncode == 0, plain.stderr
    c = load_file(tmp_path / "plain" / "model.safetensors")
    assert max(float((a[k].double() - c[k].double()).abs().max()) for k in a if a[k].is_floating_point()) > 1e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")
def test_processes_that_form_no_group_are_an_error(tiny: Path, tmp_path: Path) -> None:
    """`accelerate launch --multi_gpu` without --cpu on a GPU-less machine starts lone processes."""
    result = train("--data-dir", tiny, "--model", "c4net_tiny", "--epochs", "1", "--output-dir", tmp_path / "run",
                   processes=2)
    assert result.returncode != 0
    assert "did not form a process group" in result.stderr and "--cpu" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------- W&B


def wandb_values(run_file: Path, key: str) -> list[str]:
    """The JSON values logged under ``key``, in order, read from an offline run's .wandb log.

    Each history or summary item is a protobuf message with the key as field 1 or 2 and its JSON value as field
    16; W&B ships no reader for offline runs, so the test finds those fields (keys and values < 128 bytes).
    """
    data, name = run_file.read_bytes(), key.encode()
    item = re.compile(rb"[\n\x12]" + re.escape(bytes([len(name)]) + name + b"\x82\x01") + rb"(.)", re.DOTALL)
    values = []
    for match in item.finditer(data):
        length = match.group(1)[0]
        values.append(data[match.end():match.end() + length].decode())
    return values


@pytest.mark.parametrize("stop_step", [4, 7])
def test_wandb_offline_writes_a_run_and_a_resumed_run_continues_it(tiny: Path, tmp_path: Path, stop_step: int) -> None:
    """The first start writes its W&B files into the output folder; the resumed one honours WANDB_DIR. Stopped in
    the middle of an epoch, or with its last step (7): that epoch is ended before the stop, so its row is logged
    once, at a step the resumed run has not passed."""
    out = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = [*BASE, "--data-dir", tiny, "--epochs", "2", "--output-dir", out, "--wandb", "--wandb-group", "g1",
            "--wandb-tags", "tiny,test", "--log-every", "1", "--resume", "auto"]
    # SIGUSR1 (what SLURM's --signal sends before a time limit) at an exact step, not after a race with a clock.
    stopped = subprocess.run([sys.executable, "-m", "tests.faults", f"sigusr1-after-step={stop_step - 1}",
                              *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ, **env})
    assert stopped.returncode == 75, stopped.stderr
    assert f"stopped by SIGUSR1 at step {stop_step}; checkpoint saved" in stopped.stderr, stopped.stderr
    ended_epochs = len((out / "metrics.jsonl").read_text().splitlines())
    assert ended_epochs == (1 if stop_step == 7 else 0)
    wandb_dir = tmp_path / "scratch"
    wandb_dir.mkdir()
    step = newest_step(out)
    result = train(*args, env={**env, "WANDB_DIR": str(wandb_dir)})
    assert result.returncode == 0, result.stderr
    assert_resumed(result.stdout, step)
    first, second = (sorted((where / "wandb").glob("offline-run-*")) for where in (out, wandb_dir))
    assert len(first) == 1 and len(second) == 1, (first, second)
    runs = first + second
    assert len({path.name.rsplit("-", 1)[1] for path in runs}) == 1, runs  # the resumed run kept the run id
    logs = [next(path.glob("run-*.wandb")) for path in runs]
    # Every optimizer step logged exactly once over the two processes' lifetimes: 2 epochs of 7 steps.
    # (A history record names its step twice, hence dict.fromkeys.)
    steps = [int(value) for log in logs for value in dict.fromkeys(wandb_values(log, "_step"))]
    assert steps == list(range(1, 15))
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [json.loads(v) for log in logs for v in wandb_values(log, "epoch/test_acc")]
    assert [v for v in logged if not isinstance(v, dict)] == [row["test_acc"] for row in history]
    assert {"last": history[-1]["test_acc"]} in logged  # the runs table's summary
    final = json.loads((out / "summary.json").read_text())
    assert wandb_values(logs[-1], "final/test_acc") == [json.dumps(final["test_acc"])]
    assert sorted(p.name.split("_")[0] for p in (runs[-1] / "files" / "media" / "images" / "plots").iterdir()) == \
        ["accuracy", "confusion", "loss", "lr", "misclassified"]


# ---------------------------------------------------------------- bad input


def test_bad_input_fails_at_once_naming_the_problem_and_the_fix(tiny: Path, straight: Path, tmp_path: Path) -> None:
    before = {path: path.read_bytes() for path in (straight / "checkpoints").rglob("*") if path.is_file()}
    newest = ckpt.list_checkpoints(straight / "checkpoints")[-1]
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not weights")
    cases = [
        (["--data-dir", tmp_path / "nothing", "--no-download"],
         ["no CIFAR-10 dataset", "nothing", "--data-dir", "--no-download"]),
        (["--data-dir", tiny, "--epochs", "0"], ["--epochs 0", "positive integer"]),
        (["--data-dir", tiny, "--model", "resnet"], ["'resnet'", "c4net"]),
        (["--data-dir", tiny, "--resume", tmp_path / "missing"], ["no such checkpoint", "missing"]),
        (["--data-dir", tiny, "--model", "c4net", "--output-dir", tmp_path / "other", "--resume", newest],
         ["'c4net_tiny'", "'c4net'", "--model c4net_tiny"]),
        (["--data-dir", tiny, "--eval-only", junk], ["junk.safetensors"]),
    ]
    for args, words in cases:
        result = train("--cpu", "--num-workers", "0", *args, timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith("error: ") and all(word in message for word in words), (args, message)
    # No W&B credentials and not offline: refused before any training.
    result = train(*BASE, "--data-dir", tiny, "--epochs", "1", "--output-dir", tmp_path / "wb", "--wandb",
                   env={"WANDB_MODE": "online", "WANDB_API_KEY": "", "HOME": str(tmp_path), "NETRC": ""})
    assert result.returncode == 2 and "WANDB_MODE=offline" in result.stderr, result.stderr
    assert not (tmp_path / "wb" / "checkpoints").exists()
    # Nothing that was saved was touched.
    assert before == {path: path.read_bytes() for path in (straight / "checkpoints").rglob("*") if path.is_file()}


def test_without_data_or_network_the_default_download_fails_at_once_naming_the_fix(tmp_path: Path,
                                                                                 closed_port: int) -> None:
    """Downloading is the default; offline it fails at once (a probe of the server, not a long network timeout).
    The download URL points at a local port that refuses connections: a machine without network, on any machine."""
    url = f"https://127.0.0.1:{closed_port}/cifar-10-python.tar.gz"
    offline = ("import runpy, sys; import cifar.data; cifar.data.DOWNLOAD_URL = sys.argv.pop(1); "
               "sys.argv[0] = 'train.py'; runpy.run_path('train.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", offline, url, "--cpu", "--num-workers", "0", "--data-dir",
                             str(tmp_path / "nothing")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    for needed in ("error: cannot download CIFAR-10: 127.0.0.1 is unreachable", str(tmp_path / "nothing"),
                   "cifar-10-batches-py", "train/<class>", "--data-dir", "--no-download"):
        assert needed in message, message
    assert not (tmp_path / "nothing" / "cifar-10-python.tar.gz").exists()
