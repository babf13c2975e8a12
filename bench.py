"""How fast training is, and what limits it: one command, one JSON object, one readable line per measurement.

    python bench.py --data-dir data --model seed002 --batch-size 128 --cpu          # the CPU target
    python bench.py --data-dir data --model c4net --batch-size 512 --cpu --baseline-ref a287748  # vs an old trainer
    python bench.py --data-dir data --model c4net --batch-size 512 --channels-last  # a GPU
    python bench.py --data-dir data --config recipes/seed002_as_run.yaml --cpu --train-baseline  # accuracy check

Four measurements, all on the same net, batch size and machine, in this run:
  data      our training DataLoader alone (decode-free uint8 arrays -> albumentations -> tensors), images/s
  model     forward + backward + optimizer step on one batch already on the device, images/s, peak memory
  trainer   train.py itself in a subprocess (2 epochs on --train-images images; with --processes N through
            `accelerate launch`): the second epoch's training images/s (after warm-up, compilation and worker
            start-up), seconds per 50,000-image epoch, peak memory of the main process
  baseline  a loop written the way the seeds train: a torchvision-style dataset that makes each uint8 image
            a PIL image and back, albumentations in 2 DataLoader workers, fp32, NCHW, weight decay on every
            parameter, a host sync (.item()) and a progress-bar update every step; measured first, before this
            process raises the C allocator's thresholds as train.py does (cifar.allocator)
and the trainer's images/s as a ratio to the baseline's. With --baseline-ref GIT_REF, also train.py as it was
at that commit (extracted with git archive), with that version's defaults, and the ratio to it.

--config RECIPE takes the net, batch and augmentation from a train.py recipe, and the baseline's optimizer,
learning rate, schedule (cifar.schedulers, stepped per batch), loss, epochs and seed too. --train-baseline then
trains the baseline to the end of the recipe instead of timing it: the plain-loop check of the trainer, the same
recipe without train.py's machinery (keyed augmentation, no decay on norms and biases, lagged totals,
channels-last, the torch batch backend, several processes). It prints each epoch's augmented training accuracy
(counted while training, as the seeds' logs do) and test accuracy, and reports the last epoch's; the other
measurements are left out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cifar.allocator import keep_freed_memory
from cifar.augment import (AUGMENT_PRESETS, AugmentedDataset, TrainBatches, build_test_transform, build_train_transform,
                           train_loader)
from cifar.batch_augment import BatchAugment, DeviceBatches, resolve_augment_backend
from cifar.config import AUGMENT_BACKENDS, ConfigError, TrainConfig, parse_config
from cifar.data import CifarArrays, CifarDataError, load_cifar, stratified_split, stratified_subset
from cifar.hardware import device_name, native_bf16, peak_memory_mb
from cifar.nets import DEFAULT_NET, build_net, list_nets
from cifar.optim import build_optimizer
from cifar.schedulers import build_schedule

ROOT = Path(__file__).resolve().parent
FULL_EPOCH = 50_000


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data-dir", default="data", help="CIFAR-10 as train.py reads it")
    parser.add_argument("--config", metavar="RECIPE",
                        help="a train.py recipe (recipes/*.yaml): the net, batch and augmentation of every "
                             "measurement, and the baseline's optimizer, schedule, loss, epochs and seed; the "
                             "flags given here win")
    parser.add_argument("--model", choices=list_nets(), help=f"net (default: the recipe's, else {DEFAULT_NET})")
    parser.add_argument("--batch-size", type=int, help="global batch (default: the recipe's, else train.py's)")
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"),
                        help="for the model and trainer measurements (the baseline is always fp32); auto: what "
                             "train.py's auto trains in here")
    parser.add_argument("--num-workers", type=int, default=2, help="our trainer's DataLoader workers")
    parser.add_argument("--processes", type=int, default=1,
                        help="trainer processes (accelerate launch; on a CPU each gets cores/processes threads)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the net (model and trainer)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=TrainConfig.channels_last,
                        help="NHWC memory format (model and trainer)")
    parser.add_argument("--augment", choices=tuple(AUGMENT_PRESETS),
                        help="augmentation preset of all measurements (default: the recipe's, else train.py's)")
    parser.add_argument("--augment-backend", default="auto", choices=AUGMENT_BACKENDS,
                        help="our data pipeline and trainer: albumentations in DataLoader workers, or torch batches "
                             "on the device (auto: torch on a GPU, as train.py decides)")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even if a GPU is present")
    parser.add_argument("--train-images", type=int, default=None,
                        help="images per trainer epoch (default: 5,120 on a CPU, 50,000 on a GPU)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of the data, model and baseline loops")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--skip", nargs="*", default=[], choices=("data", "model", "trainer", "baseline"),
                        help="measurements to leave out")
    parser.add_argument("--baseline-ref", metavar="GIT_REF",
                        help="also time train.py as it was at this commit, side by side: 1 process, its own "
                             "defaults for everything but the data, net, batch size and run length")
    parser.add_argument("--train-baseline", action="store_true",
                        help="train the baseline to the end of the recipe and report its final test accuracy and "
                             "augmented training accuracy, instead of timing a few steps (other measurements off)")
    parser.add_argument("--epochs", type=int, help="the baseline's epochs with --train-baseline (default: the "
                                                   "recipe's)")
    parser.add_argument("--subset", type=int, help="with --train-baseline, train on a stratified subset of N "
                                                   "training images, the one train.py --subset N picks")
    parser.add_argument("--seed", type=int, help="with --train-baseline, the seed of the net's init and the "
                                                 "data order (default: the recipe's)")
    parser.add_argument("--json", type=Path, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    # train.py's own parsing layers the recipe under the flags given here and checks the result.
    flags = {"--config": args.config, "--model": args.model, "--batch-size": args.batch_size,
             "--augment": args.augment, "--epochs": args.epochs, "--subset": args.subset, "--seed": args.seed}
    try:
        args.recipe = parse_config([str(part) for flag, value in flags.items() if value is not None
                                    for part in (flag, value)])
    except ConfigError as error:
        parser.error(str(error))
    if args.train_baseline and args.recipe.augment_fade_from is not None:
        parser.error("--train-baseline trains the seeds' way, with one pipeline for the whole run: give it a recipe "
                     f"without augment_fade_from (this one has {args.recipe.augment_fade_from})")
    args.model, args.batch_size, args.augment = args.recipe.model, args.recipe.batch_size, args.recipe.augment
    return args


@dataclass
class Timing:
    images_per_second: float
    peak_memory_mb: float | None = None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if args.mixed_precision == "auto":
        args.mixed_precision = "bf16" if native_bf16(device) else "no"
    try:
        data = load_cifar(args.data_dir)
    except CifarDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.train_baseline:
        return train_baseline(data, args, device)
    needed = (args.warmup + args.steps) * args.batch_size
    if needed > len(data.train_labels) and not {"data", "baseline"} <= set(args.skip):
        print(f"error: --warmup {args.warmup} + --steps {args.steps} batches of {args.batch_size} need {needed:,} "
              f"training images, {args.data_dir} has {len(data.train_labels):,}: lower --steps or --batch-size",
              file=sys.stderr)
        return 2
    results: dict[str, Any] = {"hardware": hardware(device), "torch": torch.__version__, "model": args.model,
                               "batch_size": args.batch_size, "mixed_precision": args.mixed_precision,
                               "num_workers": args.num_workers, "compile": args.compile,
                               "channels_last": args.channels_last, "augment": args.augment,
                               "augment_backend": resolve_augment_backend(args.augment_backend, device),
                               "processes": args.processes}
    print(f"{results['hardware']}; {args.model}, batch {args.batch_size}, {args.mixed_precision}, "
          f"{args.num_workers} workers, compile {args.compile}, channels_last {args.channels_last}, "
          f"{args.processes} trainer process(es)", flush=True)

    # The seeds' loop first, same net and batch, for the ratio: it runs as their users run it, before this
    # process changes the C allocator's thresholds (which our own measurements then get, as train.py does).
    if "baseline" not in args.skip:
        timing = seed_style_loop(data, args.recipe, device, timed_steps=(args.warmup, args.steps)).timing
        results["baseline_images_per_second"] = timing.images_per_second
        say("seed-style baseline", timing.images_per_second, timing.peak_memory_mb)
    keep_freed_memory()
    # Data alone: can the pipeline keep up with the model?
    if "data" not in args.skip:
        results["data_images_per_second"] = data_pipeline_speed(data, args, device)
        say("data pipeline", results["data_images_per_second"])
    # Model alone: the ceiling for this net, precision and layout on this device.
    if "model" not in args.skip:
        timing = model_speed(args, device)
        results["model_images_per_second"], results["model_peak_memory_mb"] = (timing.images_per_second,
                                                                               timing.peak_memory_mb)
        say("model only", timing.images_per_second, timing.peak_memory_mb)
    # The trainer as users run it, plumbing included.
    if "trainer" not in args.skip:
        trainer = trainer_speed(args, device)
        results.update(trainer)
        say("trainer (train.py)", trainer["trainer_images_per_second"], trainer["trainer_peak_memory_mb"],
            f"{trainer['seconds_per_epoch']:.1f} s per 50,000-image epoch")
    # Another commit's trainer on the same machine in the same minutes: a ratio survives a noisy shared machine.
    if args.baseline_ref:
        with tempfile.TemporaryDirectory(prefix="bench-ref-") as folder:
            reference = trainer_speed(args, device, checkout_of(args.baseline_ref, Path(folder)), own_defaults=True)
        results["baseline_ref"] = args.baseline_ref
        results["ref_trainer_images_per_second"] = reference["trainer_images_per_second"]
        results["ref_trainer_peak_memory_mb"] = reference["trainer_peak_memory_mb"]
        say(f"trainer at {args.baseline_ref}", reference["trainer_images_per_second"],
            reference["trainer_peak_memory_mb"], f"{reference['seconds_per_epoch']:.1f} s per 50,000-image epoch")
    if "trainer_images_per_second" in results and "baseline_images_per_second" in results:
        results["trainer_vs_baseline"] = results["trainer_images_per_second"] / results["baseline_images_per_second"]
        print(f"trainer / baseline: {results['trainer_vs_baseline']:.2f}x")
    if "trainer_images_per_second" in results and "ref_trainer_images_per_second" in results:
        results["trainer_vs_ref"] = results["trainer_images_per_second"] / results["ref_trainer_images_per_second"]
        print(f"trainer / trainer at {args.baseline_ref}: {results['trainer_vs_ref']:.2f}x")
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def train_baseline(data: CifarArrays, args: argparse.Namespace, device: torch.device) -> int:
    """--train-baseline: the seed-style loop through the whole recipe; one line per epoch, then the JSON object."""
    cfg = args.recipe
    print(f"{hardware(device)}; seed-style loop, {cfg.model}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
          f"{cfg.optimizer} lr {cfg.lr}, {cfg.scheduler} {cfg.scheduler_params or ''}, augment {cfg.augment}, "
          f"seed {cfg.seed}, fp32", flush=True)
    run = seed_style_loop(data, cfg, device)
    last = run.history[-1]
    results = {"hardware": hardware(device), "torch": torch.__version__, "recipe": args.config,
               "config": cfg.to_dict(), "train_images": run.train_images,
               "baseline_images_per_second": run.timing.images_per_second,
               "baseline_peak_memory_mb": run.timing.peak_memory_mb,
               "baseline_test_accuracy": last["test_accuracy"], "baseline_train_accuracy": last["train_accuracy"],
               "baseline_history": run.history}
    print(f"seed-style loop after {cfg.epochs} epochs: test accuracy {last['test_accuracy']:.2%}, augmented training "
          f"accuracy {last['train_accuracy']:.2%}, {run.timing.images_per_second:,.0f} img/s training", flush=True)
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def say(what: str, images_per_second: float, peak_memory_mb: float | None = None, extra: str = "") -> None:
    memory = f", peak memory {peak_memory_mb:,.0f} MB" if peak_memory_mb is not None else ""
    print(f"{what:<22} {images_per_second:>10,.0f} img/s{memory}{', ' + extra if extra else ''}", flush=True)


# ====================================================================== the measurements


def data_pipeline_speed(data: CifarArrays, args: argparse.Namespace, device: torch.device) -> float:
    dataset = AugmentedDataset(data.train_images, data.train_labels,
                               build_train_transform(args.augment, data.mean, data.std), seed=0)
    batches = TrainBatches(len(dataset), seed=0, batch_size=args.batch_size)
    if resolve_augment_backend(args.augment_backend, device) == "torch":
        loader: Iterable[tuple[torch.Tensor, torch.Tensor]] = DeviceBatches(
            dataset.images, dataset.labels, batches,
            BatchAugment(args.augment, data.mean, data.std, seed=0, n=len(dataset)), device)
    else:
        loader = train_loader(dataset, batches, args.num_workers, pin_memory=False)
    loaded = iter(loader)
    for _ in range(args.warmup):
        next(loaded)
    synchronize(device)
    start, images = time.perf_counter(), 0
    for _ in range(args.steps):
        images += len(next(loaded)[1])
    synchronize(device)
    return images / (time.perf_counter() - start)


def model_speed(args: argparse.Namespace, device: torch.device) -> Timing:
    torch.manual_seed(0)
    net = build_net(args.model).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(net, "sgd", lr=0.01, weight_decay=5e-4, momentum=0.9, nesterov=True)
    forward = torch.compile(net) if args.compile else net
    inputs = torch.randn(args.batch_size, 3, 32, 32, device=device)
    if args.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    net.train()

    def train_step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(forward(inputs).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak_memory(device)
    for _ in range(args.warmup):
        train_step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    synchronize(device)
    return Timing(args.steps * args.batch_size / (time.perf_counter() - start), peak_memory_mb(device))


def trainer_speed(args: argparse.Namespace, device: torch.device, source: Path = ROOT,
                  own_defaults: bool = False) -> dict[str, float]:
    """train.py of ``source`` (this checkout, or another commit's files) for 2 epochs. ``own_defaults``: give
    it only the data, net, batch size and run length, so every other setting is that version's default."""
    images = args.train_images or (FULL_EPOCH if device.type == "cuda" else 5120)
    processes = 1 if own_defaults else args.processes
    with tempfile.TemporaryDirectory(prefix="bench-") as out:
        env = dict(os.environ)
        launcher = [sys.executable]
        if processes > 1:
            launcher = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
                        "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "--main_process_port", str(free_port())]
            if device.type == "cpu":  # else every process would run one thread per core
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
        command = [*launcher, str(source / "train.py"), "--data-dir", str(Path(args.data_dir).resolve()),
                   "--model", args.model, "--batch-size", str(args.batch_size), "--epochs", "2", "--val-size", "0",
                   "--checkpoint-every", "0", "--output-dir", out]
        command += ["--subset", str(images)] if images < FULL_EPOCH else []
        command += ["--cpu"] if device.type == "cpu" else []
        if not own_defaults:
            command += ["--mixed-precision", args.mixed_precision, "--num-workers", str(args.num_workers),
                        "--augment", args.augment, "--augment-backend", args.augment_backend]
            command += ["--compile"] if args.compile else []
            command += ["--channels-last" if args.channels_last else "--no-channels-last"]
        done = subprocess.run(command, cwd=source, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"error: {source / 'train.py'} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((Path(out) / "summary.json").read_text())
    steady = rows[-1]["images_per_second"]
    return {"trainer_images_per_second": steady, "seconds_per_epoch": FULL_EPOCH / steady,
            "trainer_train_images": images, "trainer_peak_memory_mb": summary["peak_memory_mb"]}


def checkout_of(ref: str, into: Path) -> Path:
    """The files of commit ``ref`` of this repository, written under ``into``."""
    listing = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True)
    if listing.returncode != 0:
        raise SystemExit(f"error: --baseline-ref {ref!r}: git cannot read that commit "
                         f"({listing.stderr.decode().strip()}); give a commit, tag or branch of this repository")
    subprocess.run(["tar", "-x", "-C", str(into)], input=listing.stdout, check=True)
    return into


class SeedStyleCIFAR(Dataset):
    """As the seeds load data: torchvision's CIFAR10 makes each uint8 array a PIL image, and the seeds'
    albumentations wrapper turns it back into an array before its pipeline (which ends in ToTensorV2)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.Compose) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = np.array(Image.fromarray(self.images[index]))
        return self.transform(image=image)["image"], int(self.labels[index])


@dataclass
class SeedStyleRun:
    """What ``seed_style_loop`` measured.

    Attributes:
        timing: training images/s (evaluation left out) and peak memory.
        history: per finished epoch, ``{"epoch", "train_loss", "train_accuracy", "test_accuracy"}``: the
            loss and accuracy on the augmented batches as they trained, and the test accuracy after the epoch.
            Empty for a timed run.
        train_images: the training images of an epoch.
        net: the net as trained.
    """

    timing: Timing
    history: list[dict[str, float]]
    train_images: int
    net: nn.Module


def seed_style_loop(data: CifarArrays, cfg: TrainConfig, device: torch.device,
                    timed_steps: tuple[int, int] | None = None) -> SeedStyleRun:
    """Train ``cfg`` as the seeds train, in plain PyTorch: see the module docstring for what that means.

    With ``timed_steps=(warmup, steps)`` it times steps ``warmup`` to ``warmup + steps - 1`` of the first epoch
    and stops there; the schedule then spans one epoch. Otherwise it trains all ``cfg.epochs`` epochs and tests
    after each, as the seeds' logs do. The training images are train.py's for the same ``val_size``, ``subset``
    and ``seed``; ``val_size`` images are held out and not used.
    """
    train_index, _ = stratified_split(data.train_labels, cfg.val_size, cfg.seed)
    if cfg.subset is not None:
        train_index = train_index[stratified_subset(data.train_labels[train_index], cfg.subset, cfg.seed)]
    train_set = SeedStyleCIFAR(data.train_images[train_index], data.train_labels[train_index], A.Compose(
        [*build_train_transform(cfg.augment, data.mean, data.std).transforms, ToTensorV2()]))
    test_set = SeedStyleCIFAR(data.test_images, data.test_labels, A.Compose(
        [*build_test_transform(data.mean, data.std).transforms, ToTensorV2()]))
    torch.manual_seed(cfg.seed)  # the init and the shuffle; albumentations in the workers is unseeded, as theirs
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=2)
    net = with_native_convs(build_net(cfg.model)).to(device)
    optimizer = seed_style_optimizer(net, cfg)
    epochs = cfg.epochs if timed_steps is None else 1
    schedule = build_schedule(cfg.scheduler, optimizer, epochs * len(loader), **cfg.scheduler_params)
    reset_peak_memory(device)
    history: list[dict[str, float]] = []
    seconds = 0.0
    for epoch in range(epochs):
        net.train()
        correct = processed = 0
        loss_sum = 0.0
        bar = tqdm(loader, file=io.StringIO())  # the seeds' progress bar, updated every step, not shown here
        start = time.perf_counter()
        for step, (inputs, labels) in enumerate(bar):
            if timed_steps is not None and step == timed_steps[0]:
                synchronize(device)
                start = time.perf_counter()
            if timed_steps is not None and step == sum(timed_steps):
                break
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = F.cross_entropy(outputs, labels, label_smoothing=cfg.label_smoothing)
            loss.backward()
            optimizer.step()
            schedule.step()
            correct += outputs.argmax(dim=1).eq(labels).sum().item()
            processed += len(inputs)
            loss_sum += loss.item() * len(inputs)
            bar.set_description(f"Loss={loss.item():.4f} Batch_id={step} Accuracy={100 * correct / processed:.2f}")
        synchronize(device)
        seconds += time.perf_counter() - start
        if timed_steps is None:
            row = {"epoch": epoch + 1, "train_loss": loss_sum / processed, "train_accuracy": correct / processed,
                   "test_accuracy": evaluate_accuracy(net, test_set, cfg.batch_size, device)}
            history.append(row)
            print(f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f}, augmented train accuracy "
                  f"{row['train_accuracy']:.2%}, test accuracy {row['test_accuracy']:.2%}", flush=True)
    images = timed_steps[1] * cfg.batch_size if timed_steps is not None else epochs * len(train_set)
    return SeedStyleRun(Timing(images / seconds, peak_memory_mb(device)), history, len(train_set), net)


def seed_style_optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg``'s optimizer as the seeds build it, over ``net.parameters()``: weight decay on every parameter,
    BatchNorm scales and biases included (train.py's ``cifar.optim`` leaves those out)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def evaluate_accuracy(net: nn.Module, test_set: Dataset, batch_size: int, device: torch.device) -> float:
    """The share of ``test_set`` that ``net`` classifies right, in eval mode; leaves ``net`` in eval mode."""
    net.eval()
    correct = 0
    with torch.no_grad():
        for inputs, labels in DataLoader(test_set, batch_size=batch_size, num_workers=2):
            correct += net(inputs.to(device)).argmax(dim=1).eq(labels.to(device)).sum().item()
    return correct / len(test_set)


def with_native_convs(net: nn.Module) -> nn.Module:
    """``net`` with every conv a plain ``nn.Conv2d``, as the seeds wrote them: the baseline must not get this
    project's CPU path for dilated convs (cifar.nets.dilated), whose modules are nn.Conv2d subclasses with the
    same parameters."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.__class__ = nn.Conv2d
    return net


# ====================================================================== device helpers


def hardware(device: torch.device) -> str:
    threads = f", {torch.get_num_threads()} torch threads" if device.type == "cpu" else ""
    return device_name(device) + threads


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
