"""Train a shipped result's last epoch again and check its final weights against the shipped ones.

    python -m cifar.replay results/NAME [--data-dir DIR] [--keep DIR]

This launches train.py the way the original run ran: the same number of processes (``accelerate launch`` for more
than one) and of threads per process (``OMP_NUM_THREADS``), both recorded in ``summary.json``, with the run's
``config.yaml``, resuming from ``results/NAME/last_epoch_start/`` (the checkpoint taken at the start of the last
epoch) into a temporary folder. Then it compares every tensor of the new ``model.safetensors`` with the shipped
one. The data are read from the run's ``--data-dir`` unless ``--data-dir`` says otherwise.

What it promises is keyed to the run's fingerprint, which train.py records in ``summary.json`` and in every
checkpoint (``cifar.hardware.bitwise_fingerprint``): the torch build, the instruction sets oneDNN and MKL dispatch
to, torch's CPU capability, the CPU model, and processes x threads per process. On the CPU in fp32, with the same
data and under the same fingerprint, the last epoch comes out bit for bit, and any other bit is a finding. Under
another fingerprint, or for a run that records none (trained before train.py recorded it), the libraries add in
another order: the replay is then numerical (the largest difference of each tensor, and whether the replayed
weights reach the shipped test accuracy) and alleges nothing. Runs trained on a GPU or in bf16/fp16 are refused.

The last line is the verdict, and the exit code says the same:

  0  REPLAY MATCHES             every tensor bit for bit (under any fingerprint)
  1  REPLAY DIFFERS             the same fingerprint, other bits: the shipped weights are not what this code
                                trains from this checkpoint (changed since shipping, other code or other data)
  2  error: ...                 no replay was possible; the message says why
  3  REPLAY AGREES NUMERICALLY  another fingerprint; other bits, but the same tensors and the shipped test accuracy
  4  REPLAY UNCONFIRMED         another fingerprint, and the test accuracy (or the set of tensors) differs too:
                                this machine cannot tell its rounding from a changed result, so replay under the
                                run's fingerprint for a verdict
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import torch

from cifar import checkpoint as ckpt
from cifar.hardware import FINGERPRINT_FIELDS, bitwise_fingerprint, fingerprint_differences
from cifar.results import LAST_EPOCH_START, ResultError, read_summary

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"
EXIT_MATCHES, EXIT_DIFFERS, EXIT_NOT_REPLAYED, EXIT_AGREES_NUMERICALLY, EXIT_UNCONFIRMED = 0, 1, 2, 3, 4
PROMISE = ("Bit for bit is promised on the CPU in fp32 under the run's fingerprint (torch build, oneDNN's and MKL's "
           "instruction sets, torch's CPU capability, CPU model, processes x threads per process) with the same data")


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay of a shipped result needs, read from the result and checked."""

    result: Path
    checkpoint: Path
    processes: int
    threads: int
    epochs: int
    step: int                                    # the optimizer step at which the last epoch starts
    fingerprint: Mapping[str, Any] | None        # summary.json's: where the run finished; None in older runs
    start_fingerprint: Mapping[str, Any] | None  # the checkpoint's: where its last epoch began


@dataclass(frozen=True)
class TensorDifference:
    """A tensor of the replay whose values are not bit for bit the shipped ones."""

    name: str
    differing: int  # values
    total: int
    largest: float  # the largest absolute difference

    def __str__(self) -> str:
        return f"{self.name}: {self.differing} of {self.total} values differ, by up to {self.largest:.3g}"


@dataclass(frozen=True)
class WeightComparison:
    """The shipped weights against the replayed ones, tensor by tensor."""

    tensors: int                            # in the shipped file
    mismatches: list[str]                   # missing, extra, another dtype or shape: no rounding makes these
    differences: list[TensorDifference]     # same dtype and shape, other bits

    @property
    def equal(self) -> bool:
        return not self.mismatches and not self.differences

    def lines(self) -> list[str]:
        """One line per tensor that is not bit for bit the same, in name order."""
        return sorted([*self.mismatches, *map(str, self.differences)])

    def summary(self) -> str:
        """How many tensors differ and the largest difference, in a few words."""
        words = [f"{len(self.mismatches) + len(self.differences)} of {self.tensors} tensors differ"]
        if self.differences:
            top = max(self.differences, key=lambda difference: difference.largest)
            words.append(f"by up to {top.largest:.3g} (in {top.name})")
        if self.mismatches:
            words.append(f"{len(self.mismatches)} of them missing, extra or of another dtype or shape")
        return ", ".join(words)


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
    missing = [key for key in ("processes", "threads", "device") if key not in summary]
    if missing:
        raise ResultError(f"{result}/summary.json does not record {', '.join(missing)} (it was written by an older "
                          "train.py), so the run cannot be repeated as it ran: train it again with this train.py")
    meta = ckpt.verify_checkpoint(checkpoint)["meta"]
    config = meta["config"]
    if summary["device"] != "cpu" or config.get("mixed_precision") != "no":
        raise ResultError(f"{result} was trained on {summary['device']} with mixed precision "
                          f"{config.get('mixed_precision')}: a replay checks bit-exactness only where train.py "
                          "promises it (on the CPU in fp32); re-evaluate it with train.py --eval-only instead")
    return ReplayPlan(result=result, checkpoint=checkpoint, processes=int(summary["processes"]),
                      threads=int(summary["threads"]), epochs=int(summary["epochs"]), step=int(meta["step"]),
                      fingerprint=summary.get("fingerprint"), start_fingerprint=meta.get("fingerprint"))


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


def replay_differences(plan: ReplayPlan, here: Mapping[str, Any]) -> list[str]:
    """How the fingerprint ``here`` of a replay differs from the run's, one phrase each; empty exactly where the
    replay must come out bit for bit. A run whose last epoch began under another fingerprint than the one it
    finished under (continued elsewhere with --resume during that epoch) was trained under two, which no single
    replay repeats."""
    differences = fingerprint_differences(plan.fingerprint, here)
    if plan.fingerprint is not None and plan.start_fingerprint != plan.fingerprint:
        differences.insert(0, "the run's last epoch began under another fingerprint than it ended under")
    return differences


def compare_weights(expected: Path, found: Path) -> WeightComparison:
    """Every tensor of the safetensors file ``found`` against ``expected``'s, bit for bit."""
    with safetensors.safe_open(str(expected), "pt") as a, safetensors.safe_open(str(found), "pt") as b:
        names, others = set(a.keys()), set(b.keys())
        mismatches = [f"{name}: missing" for name in sorted(names - others)]
        mismatches += [f"{name}: not in the shipped weights" for name in sorted(others - names)]
        differences = []
        for name in sorted(names & others):
            x, y = a.get_tensor(name), b.get_tensor(name)
            if (x.dtype, x.shape) != (y.dtype, y.shape):
                mismatches.append(f"{name}: {y.dtype} {tuple(y.shape)} instead of {x.dtype} {tuple(x.shape)}")
            elif not torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
                differences.append(TensorDifference(name, int((x != y).sum()), x.numel(),
                                                    float((x.double() - y.double()).abs().max())))
    return WeightComparison(len(names), mismatches, differences)


def verdict(comparison: WeightComparison, differences: list[str], replayed_acc: float, shipped_acc: float,
            weights: Path) -> tuple[int, str]:
    """The exit code and the one-line verdict of a replay whose weights compare as ``comparison`` with the
    shipped ``weights``, on a machine whose fingerprint differs from the run's by ``differences``
    (:func:`replay_differences`). Only under the run's own fingerprint do other bits mean another result."""
    accuracy = f"test accuracy {replayed_acc:.2%} replayed, {shipped_acc:.2%} shipped"
    if comparison.equal:
        under = (f"even under another fingerprint than the run's ({'; '.join(differences)})" if differences
                 else "under the run's fingerprint")
        return EXIT_MATCHES, (f"REPLAY MATCHES: all {comparison.tensors} tensors of {weights} came out bit for bit "
                              f"{under}; {accuracy}")
    found = f"{comparison.summary()} between {weights} and the replay; {accuracy}"
    if not differences:
        return EXIT_DIFFERS, (f"REPLAY DIFFERS: {found}. Same fingerprint as the run: the shipped weights are not "
                              "what this code trains from this checkpoint (changed since shipping, trained by other "
                              f"code, or other data). {PROMISE}")
    other = f"{PROMISE}; this replay's is not the run's ({'; '.join(differences)})"
    if not comparison.mismatches and replayed_acc == shipped_acc:
        return EXIT_AGREES_NUMERICALLY, (f"REPLAY AGREES NUMERICALLY: {found}. {other}, so these differences are "
                                         "its rounding and say nothing against the shipped result")
    return EXIT_UNCONFIRMED, (f"REPLAY UNCONFIRMED: {found}. {other}, so it cannot tell its rounding from a changed "
                              "result: replay under the run's fingerprint for a verdict")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _describe(fingerprint: Mapping[str, Any] | None) -> str:
    if fingerprint is None:
        return "none recorded"
    return "; ".join(f"{FINGERPRINT_FIELDS.get(key, key)} {value}" for key, value in fingerprint.items())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifar.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
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
    if args.keep is not None and args.keep.exists():
        print(f"error: --keep {args.keep} already exists: name a new folder", file=sys.stderr)
        return EXIT_NOT_REPLAYED
    print(f"replaying epoch {plan.epochs} of {plan.result} from {plan.checkpoint} (step {plan.step}): "
          f"{plan.processes} process(es) x {plan.threads} thread(s) on the CPU, fp32", flush=True)
    here = bitwise_fingerprint(plan.processes, plan.threads)
    print(f"the run's fingerprint: {_describe(plan.fingerprint)}\nthis replay's: {_describe(here)}", flush=True)
    expected = replay_differences(plan, here)
    print(f"not promised bit for bit here ({'; '.join(expected)}): the replay will be numerical" if expected else
          "this machine's fingerprint is the run's: the replay must come out bit for bit", flush=True)
    temporary = None if args.keep is not None else Path(tempfile.mkdtemp(prefix="cifar-replay-"))
    run = args.keep or temporary / "run"
    try:
        done = subprocess.run(replay_command(plan, run, args.data_dir), env=replay_environment(plan))
        if done.returncode != 0:
            print(f"error: train.py stopped with exit code {done.returncode} (its output is above), so nothing was "
                  "compared", file=sys.stderr)
            return EXIT_NOT_REPLAYED
        comparison = compare_weights(plan.result / ckpt.RUN_WEIGHTS, run / ckpt.RUN_WEIGHTS)
        replayed = read_summary(run)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    for line in comparison.lines():
        print(f"  {line}")
    # The replay's own record of its fingerprint decides: it is what train.py actually ran under.
    code, line = verdict(comparison, replay_differences(plan, replayed["fingerprint"]), replayed["test_acc"],
                         read_summary(plan.result)["test_acc"], plan.result / ckpt.RUN_WEIGHTS)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
