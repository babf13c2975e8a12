"""Train a shipped result's last epoch again and check that its final weights come out bit for bit.

    python -m cifar.replay results/NAME [--data-dir DIR] [--keep DIR]

This launches train.py the way the original run ran: the same number of processes (``accelerate launch`` for more
than one) and of threads per process (``OMP_NUM_THREADS``), both recorded in ``summary.json``, with the run's
``config.yaml``, resuming from ``results/NAME/last_epoch_start/`` (the checkpoint taken at the start of the last
epoch) into a temporary folder. Then it compares every tensor of the new ``model.safetensors`` with the shipped
one, prints a verdict and exits 0 (equal bit for bit), 1 (they differ) or 2 (no replay was possible; the message
says why). The data are read from the run's ``--data-dir`` unless ``--data-dir`` says otherwise.

Where the promise ends: train.py's training is bit-exact on the CPU in fp32, given the same torch build, the
same CPU instruction set (oneDNN picks its kernels by it), the same processes × threads per process and the same
data. Runs trained on a GPU (some of its kernels are not deterministic) or in bf16/fp16 are refused. A replay on
another torch build or instruction set still runs, and its verdict names the difference: equal weights there
are welcome, different ones break no promise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import safetensors
import torch

from cifar import checkpoint as ckpt
from cifar.results import LAST_EPOCH_START, ResultError, read_summary

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"
EXIT_EQUAL, EXIT_DIFFERENT, EXIT_NOT_REPLAYED = 0, 1, 2
PROMISE = ("the promise holds on the CPU in fp32 with the same torch build, CPU instruction set, processes x "
           "threads per process and data")


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay of a shipped result needs, read from the result and checked."""

    result: Path
    checkpoint: Path
    processes: int
    threads: int
    epochs: int
    step: int           # the optimizer step at which the last epoch starts
    torch: str          # the torch build and CPU instruction set that trained it
    cpu_capability: str


def plan_replay(result: Path) -> ReplayPlan:
    """Read and check what replaying ``result`` needs.

    Raises:
        ResultError: ``result`` is not a finished, replayable CPU fp32 run, or lacks what a replay needs.
    """
    summary = read_summary(result)
    checkpoint = result / LAST_EPOCH_START
    if not checkpoint.is_dir():
        raise ResultError(f"{result} has no {LAST_EPOCH_START}/ (the checkpoint taken at the start of the last "
                          "epoch), so its last epoch cannot be trained again: ship the run with "
                          "`python -m cifar.results ship RUN_DIR results/NAME` from a run that kept it")
    missing = [key for key in ("processes", "threads", "device", "torch", "cpu_capability") if key not in summary]
    if missing:
        raise ResultError(f"{result}/summary.json does not record {', '.join(missing)} (it was written by an older "
                          "train.py), so the run cannot be repeated as it ran: train it again with this train.py")
    meta = ckpt.verify_checkpoint(checkpoint)["meta"]
    config = meta["config"]
    if summary["device"] != "cpu" or config.get("mixed_precision") != "no":
        raise ResultError(f"{result} was trained on {summary['device']} with mixed precision "
                          f"{config.get('mixed_precision')}: a replay checks bit-exactness only where train.py "
                          f"promises it ({PROMISE}); re-evaluate it with train.py --eval-only instead")
    return ReplayPlan(result=result, checkpoint=checkpoint, processes=int(summary["processes"]),
                      threads=int(summary["threads"]), epochs=int(summary["epochs"]), step=int(meta["step"]),
                      torch=str(summary["torch"]), cpu_capability=str(summary["cpu_capability"]))


def replay_command(plan: ReplayPlan, output_dir: Path, data_dir: Path | None = None,
                   train_script: Path = TRAIN_SCRIPT) -> list[str]:
    """The command that trains ``plan``'s last epoch again into ``output_dir``: ``python train.py`` for one
    process, ``accelerate launch`` (gloo, this machine alone) for several, with the run's own config."""
    args = ["--config", str(plan.result / "config.yaml"), "--resume", str(plan.checkpoint),
            "--output-dir", str(output_dir), "--no-wandb", "--no-download"]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    if plan.processes == 1:
        return [sys.executable, str(train_script), *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(plan.processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--num_cpu_threads_per_process", str(plan.threads), "--main_process_port", str(_free_port()),
            str(train_script), *args]


def replay_environment(plan: ReplayPlan) -> dict[str, str]:
    """This process's environment with the run's threads per process."""
    return {**os.environ, "OMP_NUM_THREADS": str(plan.threads)}


def machine_differences(plan: ReplayPlan) -> list[str]:
    """How this machine differs from the one that trained ``plan`` in what the promise depends on."""
    here = {"torch": torch.__version__, "CPU instruction set": torch.backends.cpu.get_cpu_capability()}
    there = {"torch": plan.torch, "CPU instruction set": plan.cpu_capability}
    return [f"{what} {there[what]} there, {here[what]} here" for what in here if here[what] != there[what]]


def weight_differences(expected: Path, found: Path) -> tuple[int, list[str]]:
    """The number of tensors in the safetensors file ``expected``, and one line for each tensor of ``found`` that
    is not bit for bit the same (missing, extra, another dtype or shape, other bits)."""
    with safetensors.safe_open(str(expected), "pt") as a, safetensors.safe_open(str(found), "pt") as b:
        names, others = set(a.keys()), set(b.keys())
        problems = [f"{name}: missing" for name in sorted(names - others)]
        problems += [f"{name}: not in the shipped weights" for name in sorted(others - names)]
        for name in sorted(names & others):
            x, y = a.get_tensor(name), b.get_tensor(name)
            if (x.dtype, x.shape) != (y.dtype, y.shape):
                problems.append(f"{name}: {y.dtype} {tuple(y.shape)} instead of {x.dtype} {tuple(x.shape)}")
            elif not torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
                largest = float((x.double() - y.double()).abs().max())
                problems.append(f"{name}: {int((x != y).sum())} of {x.numel()} values differ, by up to {largest:.3g}")
    return len(names), problems


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifar.replay", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("result", type=Path, help="a shipped result, e.g. results/c4net_deep16-35ep-seed0")
    parser.add_argument("--data-dir", type=Path, help="the dataset, if not where the run read it (config.yaml)")
    parser.add_argument("--keep", type=Path, help="train into this folder and keep it (default: a temporary "
                                                  "folder, removed afterwards)")
    args = parser.parse_args(argv)
    try:
        plan = plan_replay(args.result)
    except (ResultError, ckpt.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NOT_REPLAYED
    differences = machine_differences(plan)
    print(f"replaying epoch {plan.epochs} of {plan.result} from {plan.checkpoint} (step {plan.step}): "
          f"{plan.processes} process(es) x {plan.threads} thread(s) on the CPU, fp32", flush=True)
    if differences:
        print(f"note: this machine differs from the one that trained it ({'; '.join(differences)}): {PROMISE}, "
              "so a difference would break no promise", flush=True)
    if args.keep is not None and args.keep.exists():
        print(f"error: --keep {args.keep} already exists: name a new folder", file=sys.stderr)
        return EXIT_NOT_REPLAYED
    temporary = None if args.keep is not None else Path(tempfile.mkdtemp(prefix="cifar-replay-"))
    run = args.keep or temporary / "run"
    try:
        done = subprocess.run(replay_command(plan, run, args.data_dir), env=replay_environment(plan))
        if done.returncode != 0:
            print(f"error: train.py stopped with exit code {done.returncode} (its output is above), so nothing was "
                  "compared", file=sys.stderr)
            return EXIT_NOT_REPLAYED
        count, problems = weight_differences(plan.result / ckpt.RUN_WEIGHTS, run / ckpt.RUN_WEIGHTS)
        replayed = json.loads((run / "summary.json").read_text())["test_acc"]
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    shipped = read_summary(plan.result)["test_acc"]
    if not problems:
        print(f"REPLAY MATCHES: all {count} tensors of {plan.result / ckpt.RUN_WEIGHTS} came out bit for bit "
              f"(test accuracy {replayed:.2%}, shipped {shipped:.2%}); {PROMISE}")
        return EXIT_EQUAL
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    cause = (f"this machine differs from the one that trained it ({'; '.join(differences)}), which the promise "
             "does not cover" if differences else
             "same torch build and CPU instruction set as the original run: the shipped weights are not what this "
             "code trains from this checkpoint (changed since shipping, trained by other code, or other data)")
    print(f"REPLAY DIFFERS: {len(problems)} of {count} tensors of {plan.result / ckpt.RUN_WEIGHTS} differ from the "
          f"replay ({shown}); test accuracy {replayed:.2%} replayed, {shipped:.2%} shipped. {cause}; {PROMISE}")
    return EXIT_DIFFERENT


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
