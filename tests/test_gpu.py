"""train.py on a GPU: the paths that differ from the CPU (autocast in bf16 and fp16, the fp16 loss scaler, CUDA
random states, checkpoints moving between devices, torch.compile, NCCL, SyncBatchNorm), run as users run them on
the tiny generated dataset. Every test is skipped, with the reason, where CUDA is missing; those needing two GPUs
also where there is one. `python -m pytest -m gpu` runs them (bench/gpu_check.sh does, first).

GPU kernels are not all deterministic, so runs are compared within a tolerance, not bit for bit: the relative L2
distance between two runs' trained weights (:func:`distance`). Each comparison starts both runs from one
checkpoint (step 7 of 14), so only the steps after it can differ. Calibration, on the CPU in fp32 with these runs:
the summation order alone (1 vs 2 threads) moved the weights by 1.6e-5; a resume that lost the optimizer's momentum
by 1.5e-2, one with the schedule 4 steps off by 2.8e-2. fp32 runs here keep TF32 off (NVIDIA_TF32_OVERRIDE=0),
so fp32 convolutions round as fp32.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cifar import checkpoint as ckpt
from cifar.data import load_cifar
from cifar.nets import build_net
from tests import test_train
from tests.test_train import BASE, ROOT, command, rows, train
from tests.tiny_data import write_tiny_cifar

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU here)")]
tiny = test_train.tiny  # the tiny generated dataset: test_train's session fixture, shared
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2,
                              reason=f"needs 2 GPUs (this machine has {torch.cuda.device_count()})")

TOLERANCE = 5e-3
GPU_ENV = {"NVIDIA_TF32_OVERRIDE": "0"}
# test_train's runs without --cpu: 7 steps an epoch, 2 epochs; checkpoints kept at step 7 (the start of the last
# epoch, never pruned), 12 and 14. With an EMA, whose updates a skipped fp16 step must not count. The augmentation
# backend is named, not left to auto (torch on a GPU, albumentations on a CPU): it is part of the trajectory, so a
# checkpoint continues on the other device only with the same one.
GPU = [arg for arg in BASE if arg != "--cpu"]
RUN = [*GPU, "--epochs", "2", "--ema", "--ema-decay", "0.9", "--augment-backend", "torch"]
PRECISIONS = ("no", "bf16", "fp16")
INIT_SCALE = 2.0**16  # torch's GradScaler starts there and halves it at each skipped step


def checkpoint(run: Path, step: int) -> Path:
    return run / "checkpoints" / ckpt.checkpoint_name(step)


def distance(a: Path, b: Path) -> float:
    """Relative L2 distance between the trained weights (and BatchNorm statistics) of two checkpoints."""
    first, second = (ckpt.load_checkpoint(path)["model"] for path in (a, b))
    assert first.keys() == second.keys()
    floats = [key for key, value in first.items() if value.is_floating_point()]
    diff = sum(float((first[key].double() - second[key].double()).pow(2).sum()) for key in floats)
    norm = sum(float(first[key].double().pow(2).sum()) for key in floats)
    return math.sqrt(diff / norm)


@pytest.fixture(scope="module")
def straight(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The uninterrupted 2-epoch GPU run in a precision, trained once per module when a test first asks for it."""
    runs: dict[str, Path] = {}

    def run(precision: str) -> Path:
        if precision not in runs:
            out = tmp_path_factory.mktemp(f"straight-{precision}") / "run"
            result = train(*RUN, "--data-dir", tiny, "--mixed-precision", precision, "--output-dir", out,
                           env=GPU_ENV)
            assert result.returncode == 0, result.stderr
            runs[precision] = out
        return runs[precision]

    return run


def resume(tiny: Path, source: Path, out: Path, *extra: str, cpu: bool = False) -> subprocess.CompletedProcess[str]:
    """Continue from checkpoint ``source`` into ``out``; --cpu to continue on the CPU."""
    args = [*RUN, "--cpu"] if cpu else RUN
    result = train(*args, "--data-dir", tiny, "--resume", source, "--output-dir", out, *extra, env=GPU_ENV)
    assert result.returncode == 0, result.stderr
    assert f"resumed from {source}" in result.stdout
    return result


# ---------------------------------------------------------------- precision, loss scaler, random states


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_short_run_in_each_precision_trains_on_the_gpu(straight: Callable[[str], Path], precision: str) -> None:
    run = straight(precision)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"] == "cuda" and f"mixed precision {precision}" in summary["hardware"]
    assert summary["steps"] == 14 and summary["test_images"] == 100
    history = rows(run)
    assert all(math.isfinite(row["train_loss"]) for row in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # the tiny dataset is learnable in two epochs
    state = ckpt.load_checkpoint(checkpoint(run, 14))
    assert state["model"].keys() == build_net("c4net_tiny").state_dict().keys()
    assert ("scaler" in state) == (precision == "fp16")
    # A step the fp16 scaler skipped (an overflow) halves the scale, and moves neither the schedule nor the EMA.
    skipped = round(math.log2(INIT_SCALE / state["scaler"]["scale"])) if precision == "fp16" else 0
    print(f"{precision}: {skipped} of 14 steps skipped by the loss scaler")
    assert 0 <= skipped < 14
    assert state["schedule"]["step"] == int(state["ema"]["n_averaged"]) == 14 - skipped


def test_fp16_overflow_skips_the_step_and_moves_neither_schedule_nor_ema(tmp_path: Path) -> None:
    """The calls train.py makes per step, with a loss made infinite once: accelerate's GradScaler skips that step,
    the schedule (which counts the optimizer's real steps) and the EMA stay, and the halved scale survives a
    checkpoint. A subprocess, so this test's accelerate state cannot leak into others."""
    script = f"""
import json, math, torch
from pathlib import Path
from accelerate import Accelerator
from accelerate.utils import GradScalerKwargs
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from cifar import checkpoint as ckpt
from cifar.nets import build_net
from cifar.optim import build_optimizer
from cifar.schedulers import build_schedule

# A scale of 1 overflows only where the loss is made to: the outcome of each step is known.
accelerator = Accelerator(mixed_precision="fp16", kwargs_handlers=[GradScalerKwargs(init_scale=1.0)])
torch.manual_seed(0)
net = build_net("c4net_tiny")
optimizer = build_optimizer(net, "sgd", 0.05, 5e-4, momentum=0.9, nesterov=True)
schedule = build_schedule("onecycle", optimizer, 10)
model, optimizer = accelerator.prepare(net, optimizer)
ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
inputs = torch.randn(8, 3, 32, 32, device=accelerator.device)
outcomes = []
for factor in (1.0, math.inf, 1.0):
    before = [p.detach().clone() for p in net.parameters()]
    accelerator.backward(model(inputs).float().mean() * factor)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    schedule.step()
    if not optimizer.step_was_skipped:
        ema.update_parameters(net)
    moved = any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    outcomes.append([optimizer.step_was_skipped, moved, schedule.state_dict()["step"], int(ema.n_averaged),
                     accelerator.scaler.get_scale()])
saved = ckpt.write_checkpoint(Path({str(tmp_path)!r}), 3, {{"scaler": accelerator.scaler.state_dict()}}, {{}})
restored = torch.amp.GradScaler("cuda")
restored.load_state_dict(ckpt.load_checkpoint(saved)["scaler"])
print(json.dumps({{"outcomes": outcomes, "restored_scale": restored.get_scale()}}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # [skipped, weights moved, schedule position, EMA updates, loss scale] after each step
    assert report["outcomes"] == [[False, True, 1, 1, 1.0], [True, False, 1, 1, 0.5], [False, True, 2, 2, 0.5]]
    assert report["restored_scale"] == 0.5


def test_a_checkpoint_holds_the_cuda_random_state_of_its_own_gpu_only(straight: Callable[[str], Path]) -> None:
    """One state, of the GPU the process trains on: a state per visible GPU could not be restored where fewer
    are visible (another node, another CUDA_VISIBLE_DEVICES)."""
    rng = ckpt.load_checkpoint(checkpoint(straight("bf16"), 14))["rng"]
    assert len(rng) == 1 and isinstance(rng[0]["cuda"], torch.Tensor)


def test_cuda_random_state_restores_the_stream_and_tolerates_other_gpu_counts() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(3)
    state = ckpt.rng_state(device)
    expected = torch.rand(4, device=device)
    torch.manual_seed(4)
    ckpt.set_rng_state(state, device)
    assert torch.equal(torch.rand(4, device=device), expected)
    # Older checkpoints: a state per GPU the writer saw, more than this machine has.
    torch.manual_seed(4)
    ckpt.set_rng_state({**state, "cuda": [state["cuda"]] * (torch.cuda.device_count() + 1)}, device)
    assert torch.equal(torch.rand(4, device=device), expected)
    # Written on the CPU: the GPU keeps its stream.
    torch.manual_seed(5)
    follow = torch.rand(4, device=device)
    torch.manual_seed(5)
    ckpt.set_rng_state(ckpt.rng_state(torch.device("cpu")), device)
    assert torch.equal(torch.rand(4, device=device), follow)


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_resumed_run_ends_where_the_uninterrupted_one_does(tiny: Path, straight: Callable[[str], Path],
                                                            precision: str, tmp_path: Path) -> None:
    """From the start of the last epoch (optimizer, schedule, EMA, loss scaler, random states, running sums)."""
    reference = straight(precision)
    out = tmp_path / "resumed"
    resume(tiny, checkpoint(reference, 7), out, "--mixed-precision", precision)
    gap = distance(checkpoint(reference, 14), checkpoint(out, 14))
    print(f"{precision}: resumed vs uninterrupted {gap:.2e}")
    assert gap < TOLERANCE
    assert [(row["epoch"], row["step"], row["train_images"]) for row in rows(out)] == \
        [(row["epoch"], row["step"], row["train_images"]) for row in rows(reference)]
    if precision == "fp16":  # the scaler's state cannot carry over into another precision
        other = train(*RUN, "--data-dir", tiny, "--resume", checkpoint(reference, 7), "--output-dir",
                      tmp_path / "bf16", "--mixed-precision", "bf16", env=GPU_ENV)
        assert other.returncode == 2 and "--mixed-precision fp16" in other.stderr, other.stderr


def test_a_checkpoint_moves_from_the_gpu_to_the_cpu_and_back(tiny: Path, straight: Callable[[str], Path],
                                                             tmp_path: Path) -> None:
    """Tensors load onto the CPU whatever wrote them, then onto the run's device: a GPU run's checkpoint continues
    on the CPU, and that run's checkpoint on the GPU again, each ending close to the uninterrupted GPU run."""
    reference = straight("no")
    on_cpu, on_gpu = tmp_path / "cpu", tmp_path / "gpu"
    resume(tiny, checkpoint(reference, 7), on_cpu, cpu=True)
    resume(tiny, checkpoint(on_cpu, 12), on_gpu)
    assert json.loads((on_cpu / "summary.json").read_text())["device"] == "cpu"
    assert json.loads((on_gpu / "summary.json").read_text())["device"] == "cuda"
    gaps = [distance(checkpoint(reference, 14), checkpoint(run, 14)) for run in (on_cpu, on_gpu)]
    print(f"GPU -> CPU {gaps[0]:.2e}, GPU -> CPU -> GPU {gaps[1]:.2e} from the uninterrupted GPU run")
    assert max(gaps) < TOLERANCE


# ---------------------------------------------------------------- torch.compile


def test_compile_agrees_with_eager_and_writes_plain_checkpoints(tiny: Path, straight: Callable[[str], Path],
                                                                tmp_path: Path) -> None:
    """A compiled run continues an eager run's checkpoint, ends close to the eager run, and writes checkpoints
    without torch.compile's `_orig_mod.` prefix, which load into a plain net."""
    reference = straight("no")
    out = tmp_path / "compiled"
    resume(tiny, checkpoint(reference, 7), out, "--compile")
    gap = distance(checkpoint(reference, 14), checkpoint(out, 14))
    print(f"compiled vs eager {gap:.2e}")
    assert gap < TOLERANCE
    plain = build_net("c4net_tiny").state_dict().keys()
    for path in ckpt.list_checkpoints(out / "checkpoints"):
        state = ckpt.load_checkpoint(path)
        assert state["model"].keys() == plain, path
        assert {key.removeprefix("module.") for key in state["ema"]} - {"n_averaged"} == plain, path
    net, name, _ = ckpt.load_net(out)
    assert name == "c4net_tiny" and net.state_dict().keys() == plain


# ---------------------------------------------------------------- counting the test set


@pytest.fixture(scope="module")
def full_test_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 training images and CIFAR-10's 10,000 test images (generated), a number no batch size here divides."""
    root = write_tiny_cifar(tmp_path_factory.mktemp("data") / "full-test", train_per_class=6, test_per_class=1000)
    load_cifar(root)
    return root


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=two_gpus)])
def test_exactly_10000_test_images_are_counted(full_test_set: Path, processes: int, tmp_path: Path) -> None:
    """Evaluation batches of 24 per process leave a part batch, which accelerate fills up with repeated images
    where there are several processes; those must not be counted, in the plain evaluation or the test-time
    augmented ones."""
    out = tmp_path / "run"
    done = subprocess.run(
        command("--model", "c4net_tiny", "--data-dir", full_test_set, "--epochs", "1", "--batch-size", "24",
                "--num-workers", "1", "--checkpoint-every", "0", "--output-dir", out, processes=processes),
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "augment_backend: torch" in (out / "config.yaml").read_text()  # what auto chooses on a GPU
    assert json.loads((out / "summary.json").read_text())["test_images"] == 10_000
    assert f"{processes} process(es) on" in done.stdout
    assert "on 10,000 images" in done.stdout and done.stdout.count("(10,000 images)") == 2, done.stdout


# ---------------------------------------------------------------- two GPUs: NCCL, SyncBatchNorm, another GPU count


@two_gpus
def test_sync_bn_on_two_gpus_matches_one_gpu_and_resumes_on_either_count(tiny: Path, tmp_path: Path) -> None:
    """With --sync-bn, 2 processes (NCCL) train as 1 does on the same global batch; without it they measurably
    do not. Checkpoints of either continue on the other count (the random states then warn), ending close."""
    args = [*RUN, "--data-dir", tiny, "--mixed-precision", "no"]
    runs = {name: tmp_path / name for name in ("one", "two", "two_plain", "one_from_two", "two_from_one")}
    for name, processes, extra in [("one", 1, ["--sync-bn"]), ("two", 2, ["--sync-bn"]), ("two_plain", 2, [])]:
        result = train(*args, *extra, "--output-dir", runs[name], processes=processes, env=GPU_ENV)
        assert result.returncode == 0, result.stderr
    for name, processes, source in [("one_from_two", 1, "two"), ("two_from_one", 2, "one")]:
        result = train(*args, "--sync-bn", "--resume", checkpoint(runs[source], 7), "--output-dir", runs[name],
                       processes=processes, env=GPU_ENV)
        assert result.returncode == 0, result.stderr
        assert "random states of" in result.stderr
    final = {name: checkpoint(run, 14) for name, run in runs.items()}
    synced = distance(final["one"], final["two"])
    plain = distance(final["one"], final["two_plain"])
    print(f"2 vs 1 GPU: sync-bn {synced:.2e}, plain batch norm {plain:.2e}")
    assert synced < TOLERANCE and plain > 10 * synced
    assert distance(final["one"], final["one_from_two"]) < TOLERANCE
    assert distance(final["two"], final["two_from_one"]) < TOLERANCE
