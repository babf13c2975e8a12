"""Train a CIFAR-10 net, from a laptop CPU to a multi-node GPU cluster, and resume it exactly.

    accelerate launch train.py --epochs 35                      # every GPU the accelerate config names
    python train.py --cpu --subset 2000 --epochs 2              # a quick CPU run
    accelerate launch --multi_gpu --num_processes 2 train.py --cpu ...   # 2-process DDP on a CPU (gloo)

Everything a run writes goes to --output-dir: config.yaml, metrics.jsonl, summary.json, model.safetensors,
best.safetensors (chosen on --val-size images, never on the test set), plots/ and checkpoints/.
CIFAR-10 is read from --data-dir, and downloaded there (checksummed) when no dataset is found; --no-download
forbids network access.

Exit codes: 0 done; 1 unexpected error; 2 bad input (flags, config, data, checkpoint, W&B setup);
3 the loss became non-finite (the last good checkpoint is kept); 74 a file could not be saved (a full disk, say:
the message names the folder, the error, the newest complete checkpoint and the command that continues the run,
see cifar/saving.py); 75 stopped by SIGTERM or SIGUSR1 after saving
a checkpoint (run the same command with --resume auto to continue). SIGUSR1 means "out of time, come back later":
inside a SLURM job the main process then also requeues the job (see slurm/). 130 stopped by SIGINT (Ctrl-C) after
saving a checkpoint, likewise; a second Ctrl-C stops at once without saving (the newest checkpoint is kept).
A stop signal that arrives before training starts is acted on after the first step; one that arrives after the
last step lets the run finish (only evaluation and writing are left). See cifar/stopping.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast, broadcast_object_list, gather_object
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cifar import checkpoint as ckpt
from cifar import plots
from cifar.allocator import keep_freed_memory
from cifar.augment import (AugmentedDataset, PlainDataset, TrainBatches, build_test_transform, build_train_transform,
                           epoch_permutation, fade_out, train_loader)
from cifar.batch_augment import BatchAugment, DeviceBatches, resolve_augment_backend
from cifar.config import ConfigError, TrainConfig, parse_config, save_yaml, trajectory_differences
from cifar.data import CifarArrays, CifarDataError, load_cifar, stratified_split, stratified_subset
from cifar.files import write_atomic
from cifar.hardware import (bitwise_fingerprint, device_name, hardware_spans, library_isas, loader_workers,
                            native_bf16, peak_memory_mb, usable_cpus)
from cifar.metrics import confusion_matrix, per_class_table
from cifar.nets import build_net
from cifar.nets.whitening import fit_patch_whitening
from cifar.nets.analysis import NetReport, analyze_net
from cifar.optim import build_optimizer, debiased_ema_update, fix_norm_scales
from cifar.pretrained import resolve_weights
from cifar.saving import (EXIT_SAVE_FAILED, SaveFailed, failure_message, newest_complete_checkpoint,
                          resume_command)
from cifar.schedulers import build_schedule, schedule_lr
from cifar.slurm import RequeueError, requeue, requeue_target
from cifar.step_totals import LaggedTotals, StepTotals, add_batch, add_stop_flags, new_totals
from cifar.stopping import (EXIT_INTERRUPTED, EXIT_STOPPED, StopRequest, end_workers_at_exit, exit_process,
                            ignore_stop_signals)
from cifar.sync_bn import convert_sync_batchnorm
from cifar.tta import TTA_VARIANTS, tta_logits

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3


class BadInput(Exception):
    """Something the user gave cannot work; the message says what and how to fix it."""


class RunStopped(Exception):
    def __init__(self, message: str, code: int, requeue: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.requeue = requeue


@dataclass
class Progress:
    """Where the run is: everything besides weights and optimizer state that a resume needs."""

    epoch: int = 0                 # the epoch in progress (== epochs when training is over)
    step_in_epoch: int = 0         # optimizer steps of that epoch already taken
    global_step: int = 0
    running: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # this epoch: loss sum, correct, count
    history: list[dict[str, Any]] = field(default_factory=list)            # metrics.jsonl rows
    best_val_acc: float | None = None
    best_epoch: int | None = None
    best_checkpoint: str | None = None
    last_epoch_start: str | None = None  # the checkpoint that `python -m cifar.replay` trains the last epoch from
    train_seconds: float = 0.0
    wandb_run_id: str | None = None


@dataclass
class Feed:
    """What the net is trained and evaluated on, by this process."""

    train_set: AugmentedDataset
    loader: DataLoader | DeviceBatches  # the training batches: a DataLoader of albumentations, or device batches
    batches: TrainBatches               # which samples each optimizer step takes, on this process
    test_loader: DataLoader
    val_loader: DataLoader | None       # the validation split's, which alone selects best.safetensors
    val_images: int
    total_steps: int
    description: str                    # how the batches are augmented, for the start-up line


@dataclass
class Learner:
    """The net and what trains it."""

    report: NetReport             # params, receptive field, MACs, constraints
    model: torch.nn.Module        # as accelerate prepared it (DDP, torch.compile): what trains
    plain_net: torch.nn.Module    # the same net unwrapped: what a checkpoint holds
    eval_net: torch.nn.Module     # what is evaluated and exported: the EMA's net with --ema, else plain_net
    optimizer: Any
    schedule: Any
    ema: AveragedModel | None


def main(argv: list[str], stop: StopRequest) -> int:
    # Every process parses the same flags; only the main one talks, so N processes do not print N errors.
    cfg = parse_config(argv)
    accelerator, cfg = start_processes(cfg)
    # The main process decodes (or downloads) first and writes the cache; the others then read the cache.
    with accelerator.main_process_first():
        data = load_cifar(cfg.data_dir, download=cfg.download and accelerator.is_main_process)
    if cfg.eval_only:
        return evaluate_weights(cfg, accelerator, data)
    feed = build_feed(cfg, accelerator, data)
    learner = build_learner(cfg, accelerator, data, feed)
    progress = resume_or_start(cfg, accelerator, learner)
    introduce_run(cfg, accelerator, data, feed, learner, progress)
    if cfg.wandb:
        progress.wandb_run_id = start_wandb(cfg, accelerator, learner.report, progress.wandb_run_id)
    try:
        train(cfg, accelerator, data, feed, learner, progress, stop)
    except RunStopped as stopped:
        return end_stopped_run(cfg, accelerator, stopped)
    finish(cfg, accelerator, data, feed, learner, progress)
    return 0


# ====================================================================== the steps of main()


def start_processes(cfg: TrainConfig) -> tuple[Accelerator, TrainConfig]:
    """The accelerator (processes, device, precision) and the settings resolved for it, the same on every
    process."""
    # Before the first large tensor: glibc would otherwise page-fault every CPU activation afresh each step.
    keep_freed_memory()
    precision = resolve_precision(cfg)
    accelerator = Accelerator(cpu=cfg.cpu, mixed_precision=precision, log_with="wandb" if cfg.wandb else None,
                              dynamo_backend="inductor" if cfg.compile else "no")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        # Otherwise each process would train its own copy of the same model, and all would write one folder.
        raise BadInput(
            f"{launched} processes were launched but they did not form a process group (each sees "
            f"{accelerator.num_processes}): on a machine without GPUs add --cpu to use gloo, on GPUs check that "
            "every process sees a GPU (CUDA_VISIBLE_DEVICES)")
    backend = resolve_augment_backend(cfg.augment_backend, accelerator.device)
    if backend == "torch":  # batches augmented on the device: no loader workers
        workers = 0
    elif cfg.num_workers is not None:
        workers = cfg.num_workers
    else:  # LOCAL_WORLD_SIZE: the processes on this node, as torchrun and accelerate launch set it
        workers = loader_workers(accelerator.device.type, usable_cpus(), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    # The output folder's name has a time in it: take the main process's, so every process writes one folder.
    [cfg] = broadcast_object_list([cfg.resolved(precision, backend, workers)])
    return accelerator, cfg


def build_feed(cfg: TrainConfig, accelerator: Accelerator, data: CifarArrays) -> Feed:
    """The training split (less --val-size, at most --subset), its augmented batches, and the evaluation sets."""
    try:  # sizes that this dataset cannot give: the library says which and why
        train_idx, val_idx = stratified_split(data.train_labels, cfg.val_size, cfg.seed)
        if cfg.subset is not None:
            train_idx = train_idx[stratified_subset(data.train_labels[train_idx], cfg.subset, cfg.seed)]
        batches = TrainBatches(len(train_idx), cfg.seed, cfg.batch_size, cfg.grad_accum,
                               accelerator.process_index, accelerator.num_processes)
    except ValueError as error:
        raise BadInput(f"--val-size {cfg.val_size}, --subset {cfg.subset}, --batch-size {cfg.batch_size}: "
                       f"{error}") from error
    # A fading augmentation is one pipeline per epoch, in either backend.
    if cfg.augment_fade_from is None:
        augment, transform = cfg.augment, build_train_transform(cfg.augment, data.mean, data.std)
    else:
        augment = fade_out(cfg.augment, cfg.epochs, cfg.augment_fade_from)
        transform = [build_train_transform(pipeline, data.mean, data.std) for pipeline in augment]
    train_set = AugmentedDataset(data.train_images[train_idx], data.train_labels[train_idx], transform, cfg.seed)
    loader: DataLoader | DeviceBatches
    if cfg.augment_backend == "torch":
        # A GPU outruns per-image augmentation in a few CPU workers: keep the uint8 set on the device, augment
        # whole batches there (cifar/batch_augment.py), each sample still a pure function of (seed, epoch, index).
        loader = DeviceBatches(train_set.images, train_set.labels, batches,
                               BatchAugment(augment, data.mean, data.std, cfg.seed, len(train_set)),
                               accelerator.device)
        description = "torch batch augmentation on the device"
    else:
        loader = train_loader(train_set, batches, cfg.num_workers, pin_memory=accelerator.device.type == "cuda",
                              worker_init_fn=ignore_stop_signals)
        description = f"albumentations in {cfg.num_workers} DataLoader worker(s) per process"
    # Evaluation shards the images over the processes; gather_for_metrics puts exactly these back together.
    test_loader = accelerator.prepare(eval_loader(data.test_images, data.test_labels, data, cfg))
    val_loader = (accelerator.prepare(eval_loader(data.train_images[val_idx], data.train_labels[val_idx], data, cfg))
                  if len(val_idx) else None)
    return Feed(train_set, loader, batches, test_loader, val_loader, len(val_idx), cfg.epochs * batches.steps,
                description)


def build_learner(cfg: TrainConfig, accelerator: Accelerator, data: CifarArrays, feed: Feed) -> Learner:
    """The net, its optimizer and LR schedule, and the EMA of its weights with --ema."""
    # Same init on every process (DDP would broadcast rank 0's anyway); then per-process streams for dropout.
    torch.manual_seed(cfg.seed)
    net = build_net(cfg.model)
    # A whitening stem starts from this run's training patches (every process fits the same filters); a resumed
    # run then loads the filters it trained with, as --eval-only does.
    fit_patch_whitening(net, feed.train_set.images, data.mean, data.std)
    report = analyze_net(net, name=cfg.model)
    if cfg.sync_bn:
        net = convert_sync_batchnorm(net)
    if not cfg.train_norm_scales:
        fix_norm_scales(net)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    torch.manual_seed(cfg.seed + 1 + accelerator.process_index)
    optimizer = build_optimizer(net, cfg.optimizer, cfg.lr, cfg.weight_decay, momentum=cfg.momentum,
                                nesterov=cfg.nesterov, bias_lr_scale=cfg.bias_lr_scale)
    # Not handed to prepare(): it follows the optimizer's own step count, once per optimizer step.
    schedule = build_schedule(cfg.scheduler, optimizer, feed.total_steps, **cfg.scheduler_params)
    model, optimizer = accelerator.prepare(net, optimizer)
    plain_net = accelerator.unwrap_model(model, keep_torch_compile=False)
    ema = (AveragedModel(plain_net, multi_avg_fn=debiased_ema_update(cfg.ema_decay), use_buffers=True)
           if cfg.ema else None)
    return Learner(report, model, plain_net, ema.module if ema is not None else plain_net, optimizer, schedule,
                   ema)


def resume_or_start(cfg: TrainConfig, accelerator: Accelerator, learner: Learner) -> Progress:
    """Where training starts: from the checkpoint --resume names (the learner's state loaded), or at step 0."""
    checkpoints = Path(cfg.output_dir) / "checkpoints"
    resume_from = find_resume_checkpoint(cfg, accelerator, checkpoints)
    if resume_from is None:
        if cfg.resume == "auto":
            accelerator.print(f"--resume auto: no checkpoint in {checkpoints}, starting fresh")
        return Progress()
    progress = load_training_state(resume_from, cfg, accelerator, learner.plain_net, learner.optimizer,
                                   learner.schedule, learner.ema)
    accelerator.print(f"resumed from {resume_from} (epoch {progress.epoch + 1}, step {progress.global_step})")
    return progress


def introduce_run(cfg: TrainConfig, accelerator: Accelerator, data: CifarArrays, feed: Feed, learner: Learner,
                  progress: Progress) -> None:
    """What this run is: config.yaml and the metrics so far in its folder; the settings, the net and the hardware
    on the console; on a fresh start, the augmented samples of epoch 1 as a plot."""
    out = Path(cfg.output_dir)
    with saving(accelerator, cfg, "the run's settings and first plot", out):
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, out / "config.yaml")
            write_metrics(out, progress.history)
            if progress.global_step == 0:
                plot_augmented_samples(feed.train_set, feed.loader, data, cfg, out / "plots" / "augmented_samples.png")
    say = accelerator.print
    say(f"config ({out / 'config.yaml'}):")
    for key, value in cfg.to_dict().items():
        say(f"  {key}: {value}")
    report = learner.report
    failed = [name for name, ok in report.constraints.items() if not ok]
    say(f"net {cfg.model}: {report.params:,} params, receptive field {report.receptive_field}, "
        f"{report.macs / 1e6:.1f} MMACs/image, constraints {'FAILED: ' + ', '.join(failed) if failed else 'all met'}")
    say(f"{hardware(accelerator)}; {len(feed.train_set):,} training images, {feed.val_images:,} validation, "
        f"{len(data.test_labels):,} test; {feed.batches.steps} steps/epoch, {feed.total_steps} steps; "
        f"{feed.description}")


def train(cfg: TrainConfig, accelerator: Accelerator, data: CifarArrays, feed: Feed, learner: Learner,
          progress: Progress, stop: StopRequest) -> None:
    """Every epoch left. Raises RunStopped when a stop signal or a non-finite loss ends the run early."""
    checkpoints = Path(cfg.output_dir) / "checkpoints"

    def checkpoint() -> None:
        save_training_state(checkpoints, cfg, accelerator, learner.plain_net, learner.optimizer, learner.schedule,
                            learner.ema, progress, data)

    while progress.epoch < cfg.epochs:
        if progress.epoch == cfg.epochs - 1 and progress.step_in_epoch == 0 and progress.last_epoch_start is None:
            # Kept for good (never pruned): the last epoch can be trained again from it and checked bit for bit.
            progress.last_epoch_start = ckpt.checkpoint_name(progress.global_step)
            checkpoint()
        seconds, images, halt = run_epoch(cfg, accelerator, learner.model, learner.plain_net, learner.optimizer,
                                          learner.schedule, learner.ema, feed.loader, feed.batches, progress, stop,
                                          checkpoint)
        end_epoch(cfg, accelerator, data, feed, learner, progress, seconds, images, checkpoint)
        if halt is not None:
            raise halt


def end_epoch(cfg: TrainConfig, accelerator: Accelerator, data: CifarArrays, feed: Feed, learner: Learner,
              progress: Progress, seconds: float, images: int, checkpoint: Callable[[], None]) -> None:
    """Evaluate the epoch's net on the validation split (which alone selects best.safetensors) and the test
    set, then save its checkpoint and metrics row and report them."""
    out = Path(cfg.output_dir)
    sync_buffers(accelerator, learner.eval_net)
    row = epoch_row(accelerator, learner.eval_net, feed.val_loader, feed.test_loader, progress, learner.schedule,
                    seconds, images)
    progress.history.append(row)
    if row.get("val_acc") is not None and (progress.best_val_acc is None or row["val_acc"] > progress.best_val_acc):
        progress.best_val_acc, progress.best_epoch = row["val_acc"], row["epoch"]
        progress.best_checkpoint = ckpt.checkpoint_name(progress.global_step)
        with saving(accelerator, cfg, "best.safetensors", out):
            if accelerator.is_main_process:
                save_net(learner.eval_net, out / "best.safetensors", cfg, data)
    progress.epoch, progress.step_in_epoch, progress.running = progress.epoch + 1, 0, [0.0, 0.0, 0.0]
    checkpoint()
    with saving(accelerator, cfg, "metrics.jsonl", out):
        if accelerator.is_main_process:
            write_metrics(out, progress.history)
    accelerator.print(epoch_line(row, cfg.epochs))
    accelerator.log({f"epoch/{k}": v for k, v in row.items() if isinstance(v, (int, float))},
                    step=progress.global_step)


def end_stopped_run(cfg: TrainConfig, accelerator: Accelerator, stopped: RunStopped) -> int:
    """Say why the run stopped, give a SLURM job back to the queue if SIGUSR1 asked for it; the exit code."""
    if accelerator.is_main_process:
        print(stopped, file=sys.stderr)
    accelerator.end_training()
    if stopped.requeue and accelerator.is_main_process:
        if cfg.wandb:  # W&B's service process must be done before SLURM ends every process of the job
            import wandb
            wandb.teardown()
        # Last, because SLURM ends this allocation as soon as it takes the job back.
        requeue_own_job(accelerator.print)
    return stopped.code


def finish(cfg: TrainConfig, accelerator: Accelerator, data: CifarArrays, feed: Feed, learner: Learner,
           progress: Progress) -> None:
    """The final evaluation and the files the run folder promises: weights, summary.json, plots."""
    out = Path(cfg.output_dir)
    sync_buffers(accelerator, learner.eval_net)
    test = evaluate(accelerator, learner.eval_net, feed.test_loader)
    # Reported beside the plain accuracy, never instead of it: the views are a different way to classify.
    tta = {variant: evaluate(accelerator, learner.eval_net, feed.test_loader, tta=variant) for variant in TTA_VARIANTS}
    with saving(accelerator, cfg, "the run's results", out):
        if accelerator.is_main_process:
            write_results(cfg, out, learner.eval_net, data, test, tta, progress, learner.report, accelerator,
                          feed.total_steps)
    best = "-" if progress.best_val_acc is None else f"{progress.best_val_acc:.2%} (epoch {progress.best_epoch})"
    accelerator.print(f"test accuracy {test.accuracy:.2%} on {test.count:,} images ({tta_text(tta)}); best "
                      f"validation {best}; {progress.train_seconds:.1f} s training; wrote {out}")
    accelerator.end_training()


@contextlib.contextmanager
def saving(accelerator: Accelerator, cfg: TrainConfig, what: str, folder: Path) -> Iterator[None]:
    """Around the main process's writes of ``what`` into ``folder``: every process leaves the block together,
    and when a write failed (a full disk, say) every process raises the same SaveFailed, so all of them stop
    with one message and exit code instead of waiting for a main process that is gone."""
    failure: SaveFailed | None = None
    try:
        yield
    except OSError as error:
        failure = SaveFailed.from_error(what, folder, error, cfg.output_dir)
    [failure] = broadcast_object_list([failure])
    if failure is not None:
        raise failure


# ====================================================================== the training steps


def run_epoch(cfg: TrainConfig, accelerator: Accelerator, model: torch.nn.Module, plain_net: torch.nn.Module,
              optimizer: Any, schedule: Any, ema: AveragedModel | None, loader: DataLoader | DeviceBatches,
              batches: TrainBatches, progress: Progress, stop: StopRequest,
              checkpoint: Callable[[], None]) -> tuple[float, int, RunStopped | None]:
    """Optimizer steps from ``progress.step_in_epoch`` to the epoch's end, checkpointing on the way; returns
    the seconds and images of this process's share of the epoch (all of it unless resumed mid-epoch), and the stop
    to raise once the epoch is ended where a stop came with its last step. Raises RunStopped mid-epoch.

    One all-reduce per step carries the step's loss sum, correct count, image count and any stop request, so
    every process sees the same numbers, stops at the same step and exits with the same code; the host reads
    it a step later (cifar/step_totals.py), and reads every queued step before it saves anything.
    """
    batches.set_epoch(progress.epoch, progress.step_in_epoch)
    epoch_start = segment_start = time.perf_counter()
    images = 0
    halt: RunStopped | None = None
    model.train()
    micro_batches = iter(loader)
    lagged = LaggedTotals(lag=1)
    epoch_end_step = progress.global_step - progress.step_in_epoch + batches.steps
    with tqdm(total=batches.steps, initial=progress.step_in_epoch, desc=f"epoch {progress.epoch + 1}/{cfg.epochs}",
              disable=not accelerator.is_main_process, dynamic_ncols=True, leave=False) as bar:

        def settle(step: StepTotals) -> StepTotals:
            """Account a finished step on the host."""
            nonlocal images
            if not math.isfinite(step.loss_sum):
                raise RunStopped(
                    f"error: the training loss became non-finite ({step.loss_sum}) at step {step.step} "
                    f"(epoch {progress.epoch + 1}); nothing of this step was saved, the checkpoints already in "
                    f"{Path(cfg.output_dir) / 'checkpoints'} stay. Lower --lr"
                    f"{' or train in bf16 (fp16 overflows more easily)' if cfg.mixed_precision == 'fp16' else ''}, "
                    "then start again (--resume auto continues from the last good checkpoint).", EXIT_NONFINITE)
            progress.running = [r + v for r, v in zip(progress.running, (step.loss_sum, step.correct, step.count))]
            images += int(step.count)
            bar.update(1)
            if step.step % cfg.log_every == 0 or step.step == epoch_end_step:
                seconds = time.perf_counter() - epoch_start
                running_loss, running_correct, running_count = progress.running
                bar.set_postfix(loss=f"{running_loss / running_count:.3f}",
                                acc=f"{running_correct / running_count:.1%}",
                                lr=f"{step.lr:.2e}", img_s=f"{images / seconds:,.0f}")
                accelerator.log({"train/loss": step.loss_sum / step.count, "train/acc": step.correct / step.count,
                                 "lr": step.lr, "images_per_second": images / seconds}, step=step.step)
            return step

        while progress.step_in_epoch < batches.steps:
            step_images = batches.step_size(progress.step_in_epoch)
            totals = new_totals(accelerator.device)
            for micro in range(cfg.grad_accum):
                inputs, labels = next(micro_batches)
                inputs = inputs.to(accelerator.device, non_blocking=True)
                labels = labels.to(accelerator.device, non_blocking=True)
                if cfg.channels_last:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                # Gradients are averaged over processes by DDP: scale each process's sum so that the result is
                # the mean over the step's global batch, whatever the split into processes and micro-batches.
                sync = contextlib.nullcontext() if micro == cfg.grad_accum - 1 else accelerator.no_sync(model)
                with sync:
                    logits = model(inputs)
                    losses = F.cross_entropy(logits.float(), labels, reduction="none",
                                             label_smoothing=cfg.label_smoothing)
                    accelerator.backward(losses.sum() * (accelerator.num_processes / step_images))
                add_batch(totals, losses, logits, labels)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            if ema is not None and not optimizer.step_was_skipped:
                ema.update_parameters(plain_net)
            add_stop_flags(totals, stop.requested is not None, stop.requeue, stop.interrupted)
            progress.global_step += 1
            progress.step_in_epoch += 1
            # One all-reduce per step, read a step later (cifar/step_totals.py): every process sees the same
            # numbers and stop flags, and a GPU is not made to wait for the host each step.
            lagged.push(progress.global_step, lr, accelerator.reduce(totals, "sum"))
            mid_epoch = progress.step_in_epoch < batches.steps
            checkpoint_due = bool(cfg.checkpoint_every) and progress.global_step % cfg.checkpoint_every == 0
            # Every queued step is read before anything is saved: no checkpoint holds a non-finite step.
            settled = [settle(step) for step in lagged.ready(drain=checkpoint_due or not mid_epoch)]
            stopped = next((step for step in settled if step.stops), None)
            if stopped is not None:
                for step in lagged.ready(drain=True):
                    settle(step)
                # A requeue is the scheduler's decision and wins; otherwise a Ctrl-C anywhere says "interrupted".
                code = EXIT_INTERRUPTED if stopped.interrupts and not stopped.requeues else EXIT_STOPPED
                # The default output folder is named by the start time: a resume has to be told which it was.
                halt = RunStopped(f"stopped by {stop.requested or 'a signal to another process'} at step "
                                  f"{progress.global_step}; checkpoint saved. Run the same command with --resume auto "
                                  f"to continue (adding --output-dir {cfg.output_dir} if it has none).", code,
                                  requeue=stopped.requeues > 0)
                if not mid_epoch:
                    # The epoch's steps are all done: end it as usual (evaluation, its checkpoint, its W&B row) before
                    # stopping, or a resumed run would log that row at a step W&B has already closed, and lose it.
                    break
                progress.train_seconds += time.perf_counter() - segment_start
                checkpoint()
                raise halt
            if checkpoint_due and mid_epoch:
                progress.train_seconds += time.perf_counter() - segment_start
                checkpoint()
                segment_start = time.perf_counter()
    now = time.perf_counter()
    progress.train_seconds += now - segment_start
    return now - epoch_start, images, halt


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    count: int
    predictions: np.ndarray
    labels: np.ndarray


@contextlib.contextmanager
def own_forward(net: torch.nn.Module) -> Iterator[None]:
    """Runs ``net`` with its class's forward for the duration. Under mixed precision accelerator.prepare()
    replaces the (unwrapped) net's forward with one that runs under autocast, so without this an evaluation
    on a CPU would follow the training precision, not the one evaluate() chooses."""
    prepared = net.__dict__.pop("forward", None)
    try:
        yield
    finally:
        if prepared is not None:
            net.forward = prepared


@torch.no_grad()
def evaluate(accelerator: Accelerator, net: torch.nn.Module, loader: DataLoader, tta: str | None = None) -> Evaluation:
    """Loss and accuracy over exactly the loader's images: gather_for_metrics drops the padding that evens
    out the processes' shards. With ``tta`` (a variant of cifar.tta) the logits are averaged over its views.
    ``net`` is the unwrapped net (no DDP wrapper): evaluation needs no gradient synchronisation."""
    was_training = net.training
    net.eval()
    losses, predictions, labels = [], [], []
    # On a CPU in float32 whatever the run trained in: its figures then come out the same on any CPU
    # (--eval-only, AMX or not), and a forward pass costs little next to training.
    precision = accelerator.autocast() if accelerator.device.type == "cuda" else contextlib.nullcontext()
    with own_forward(net), precision:
        for inputs, targets in loader:
            logits = net(inputs) if tta is None else tta_logits(net, inputs, tta)
            batch_losses = F.cross_entropy(logits.float(), targets, reduction="none")
            gathered = accelerator.gather_for_metrics((batch_losses, logits.argmax(1), targets))
            for bucket, value in zip((losses, predictions, labels), gathered):
                bucket.append(value.cpu())
    net.train(was_training)
    loss, prediction, label = (torch.cat(bucket) for bucket in (losses, predictions, labels))
    return Evaluation(loss=float(loss.double().sum() / len(loss)),
                      accuracy=float((prediction == label).double().mean()),
                      count=len(label), predictions=prediction.numpy(), labels=label.numpy())


def epoch_row(accelerator: Accelerator, net: torch.nn.Module, val_loader: DataLoader | None, test_loader: DataLoader,
              progress: Progress, schedule: Any, seconds: float, images: int) -> dict[str, Any]:
    """The metrics.jsonl row of the epoch that just ended."""
    loss_sum, correct, count = progress.running
    row: dict[str, Any] = {"epoch": progress.epoch + 1, "step": progress.global_step,
                           "lr": schedule.get_last_lr()[0], "train_loss": loss_sum / count,
                           "train_acc": correct / count, "train_images": int(count)}
    if val_loader is not None:
        val = evaluate(accelerator, net, val_loader)
        row.update(val_loss=val.loss, val_acc=val.accuracy)
    test = evaluate(accelerator, net, test_loader)
    row.update(test_loss=test.loss, test_acc=test.accuracy, epoch_seconds=seconds,
               images_per_second=images / seconds if images else None, hardware=hardware(accelerator))
    return row


def tta_text(tta: dict[str, Evaluation]) -> str:
    return "test-time augmentation: " + ", ".join(f"{variant} {result.accuracy:.2%} ({result.count:,} images)"
                                                  for variant, result in tta.items())


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    val = f" | val {row['val_loss']:.3f} {row['val_acc']:.2%}" if "val_acc" in row else ""
    speed = f"{row['images_per_second']:,.0f} img/s" if row["images_per_second"] else "-"
    return (f"epoch {row['epoch']:>3}/{epochs} | train {row['train_loss']:.3f} {row['train_acc']:.2%}{val} | "
            f"test {row['test_loss']:.3f} {row['test_acc']:.2%} | lr {row['lr']:.2e} | "
            f"{row['epoch_seconds']:.1f} s {speed}")


# ====================================================================== stopping


def requeue_own_job(say: Callable[..., None]) -> None:
    """Give a preempted or timed-out SLURM job back to the queue; its restart resumes from the checkpoint."""
    job = requeue_target(os.environ)
    if job is None:
        return
    try:
        requeue(job)
    except RequeueError as error:
        say(f"warning: could not requeue SLURM job {job} ({error}); submit the same job again to resume",
            file=sys.stderr)
        return
    # Flushed now: SLURM ends the job's processes soon after it takes the job back, and a line left in the buffer
    # of a redirected stdout would be lost with them.
    say(f"requeued SLURM job {job}: it resumes from the checkpoint when it starts again", flush=True)


# ====================================================================== checkpoints


def save_training_state(directory: Path, cfg: TrainConfig, accelerator: Accelerator, net: torch.nn.Module,
                        optimizer: Any, schedule: Any, ema: AveragedModel | None, progress: Progress,
                        data: CifarArrays) -> None:
    """Every process contributes its RNG state; the main process writes the checkpoint atomically and prunes
    old ones (keeping the best and the one at the start of the last epoch); all wait for it, so no process
    exits while the checkpoint is half written, and all stop together if it could not be written."""
    rng_states = gather_object([ckpt.rng_state(accelerator.device)])
    with saving(accelerator, cfg, "the checkpoint", directory):
        if accelerator.is_main_process:
            payloads = {"model": ckpt.plain_state_dict(net), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "rng": rng_states,
                        "progress": dataclasses.asdict(progress)}
            if accelerator.scaler is not None:
                payloads["scaler"] = accelerator.scaler.state_dict()
            if ema is not None:
                payloads["ema"] = ema.state_dict()
            meta = {"model": cfg.model, "epoch": progress.epoch, "step": progress.global_step,
                    "config": cfg.to_dict(),
                    **ckpt.input_metadata(data.mean, data.std, data.classes),  # so that a checkpoint exports alone
                    # A replay from this checkpoint is bit for bit only under this fingerprint
                    # (python -m cifar.replay).
                    "fingerprint": bitwise_fingerprint(accelerator.num_processes, torch.get_num_threads())}
            ckpt.write_checkpoint(directory, progress.global_step, payloads, meta)
            keep = [directory / name for name in (progress.best_checkpoint, progress.last_epoch_start) if name]
            ckpt.prune_checkpoints(directory, cfg.keep_last, keep)


def find_resume_checkpoint(cfg: TrainConfig, accelerator: Accelerator, directory: Path) -> Path | None:
    """The checkpoint to resume from: the main process decides (verifying checksums once) and tells the others."""
    choice: list[Any] = [None]
    if accelerator.is_main_process and cfg.resume is not None:
        if cfg.resume == "auto":
            found, skipped = ckpt.latest_checkpoint(directory)
            for path, reason in skipped:
                warnings.warn(f"skipping checkpoint {path}: {reason}", stacklevel=1)
            choice = [str(found) if found is not None else None]
        else:
            path = Path(cfg.resume)
            if not path.exists():
                choice = [BadInput(f"--resume {cfg.resume!r}: no such checkpoint; give a folder under "
                                   f"<output-dir>/checkpoints/ or --resume auto")]
            else:
                try:
                    ckpt.verify_checkpoint(path)
                    choice = [str(path)]
                except ckpt.CheckpointError as error:
                    choice = [BadInput(f"--resume {cfg.resume!r}: {error}")]
    [choice] = broadcast_object_list(choice)
    if isinstance(choice, Exception):
        raise choice
    return Path(choice) if choice is not None else None


def load_training_state(path: Path, cfg: TrainConfig, accelerator: Accelerator, net: torch.nn.Module,
                        optimizer: Any, schedule: Any, ema: AveragedModel | None) -> Progress:
    meta = ckpt.read_manifest(path)["meta"]
    if meta["model"] != cfg.model:
        raise BadInput(f"checkpoint {path} holds net {meta['model']!r}, but this run trains {cfg.model!r}: pass "
                       f"--model {meta['model']} to continue it, or use a new --output-dir")
    differences = trajectory_differences(meta["config"], cfg)
    if differences:
        raise BadInput(f"checkpoint {path} was written with other settings, so resuming would not continue the same "
                       f"run: {'; '.join(differences)}. Use the original settings, or a new --output-dir.")
    state = ckpt.load_checkpoint(path)
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if ("scaler" in state) != (accelerator.scaler is not None):
        raise BadInput(f"checkpoint {path} was written with --mixed-precision {meta['config']['mixed_precision']}, "
                       f"this run uses {cfg.mixed_precision}: the fp16 loss scaler cannot carry over; resume with "
                       f"--mixed-precision {meta['config']['mixed_precision']}")
    if accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    rng = state["rng"]
    if len(rng) == accelerator.num_processes:
        ckpt.set_rng_state(rng[accelerator.process_index], accelerator.device)
    else:
        warnings.warn(f"checkpoint {path} has random states of {len(rng)} processes, this run has "
                      f"{accelerator.num_processes}: dropout draws will differ from an uninterrupted run",
                      stacklevel=1)
    return Progress(**state["progress"])


def sync_buffers(accelerator: Accelerator, net: torch.nn.Module) -> None:
    """Give every process the main process's BatchNorm statistics before evaluating: each process updated its
    own from its own shard, and the main process's are the ones a checkpoint keeps, so evaluation (and thus a
    resumed run) does not depend on which process evaluated which image."""
    if accelerator.num_processes > 1:
        for buffer in net.buffers():
            buffer.copy_(broadcast(buffer.clone(), from_process=0))


# ====================================================================== outputs


def save_net(net: torch.nn.Module, path: Path, cfg: TrainConfig, data: CifarArrays) -> None:
    """The weights, the net's name and what its inputs and outputs mean: all that an export needs."""
    ckpt.save_weights(ckpt.plain_state_dict(net), path,
                      {"model": cfg.model, **ckpt.input_metadata(data.mean, data.std, data.classes)})


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from the run's history (kept in every checkpoint), so a resumed run's file holds
    each epoch once."""
    write_atomic(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history).encode())


def write_results(cfg: TrainConfig, out: Path, net: torch.nn.Module, data: CifarArrays, test: Evaluation,
                  tta: dict[str, Evaluation], progress: Progress, report: NetReport, accelerator: Accelerator,
                  total_steps: int) -> None:
    save_net(net, out / "model.safetensors", cfg, data)
    summary = {"model": cfg.model, "seed": cfg.seed, "test_acc": test.accuracy, "test_loss": test.loss,
               "test_images": test.count, "test_acc_tta": tta["flip"].accuracy,
               "test_acc_tta_translate": tta["flip_translate"].accuracy,
               "best_val_acc": progress.best_val_acc, "best_epoch": progress.best_epoch,
               "epochs": cfg.epochs, "steps": progress.global_step, "params": report.params,
               "receptive_field": report.receptive_field, "macs": report.macs,
               "constraints": report.constraints, "train_seconds": progress.train_seconds,
               "peak_memory_mb": peak_memory_mb(accelerator.device),
               # A run continued elsewhere with --resume auto names each machine with its epochs.
               "hardware": hardware_spans(progress.history),
               # What a replay of the last epoch must repeat (python -m cifar.replay), and where it starts.
               "device": accelerator.device.type, "processes": accelerator.num_processes,
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "fingerprint": bitwise_fingerprint(accelerator.num_processes, torch.get_num_threads()),
               "last_epoch_start": progress.last_epoch_start}
    write_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    figures = out / "plots"
    matrix = confusion_matrix(test.predictions, test.labels, len(data.classes))
    paths = {
        "loss": plots.plot_loss(progress.history, figures / "loss.png"),
        "accuracy": plots.plot_accuracy(progress.history, figures / "accuracy.png"),
        "lr": plots.plot_lr(list(range(total_steps)),
                            [schedule_lr(cfg.scheduler, s, total_steps, cfg.lr, **cfg.scheduler_params)
                             for s in range(total_steps)],
                            figures / "lr.png"),
        "confusion_matrix": plots.plot_confusion_matrix(matrix, data.classes, figures / "confusion_matrix.png"),
    }
    wrong = np.flatnonzero(test.predictions != test.labels)[:64]
    if len(wrong):
        titles = [f"{data.classes[test.labels[i]]}→{data.classes[test.predictions[i]]}" for i in wrong]
        paths["misclassified"] = plots.plot_image_grid(data.test_images[wrong], titles, figures / "misclassified.png")
    if cfg.wandb:
        tracker = accelerator.get_tracker("wandb", unwrap=True)
        tracker.summary.update({"final/test_acc": test.accuracy, "final/test_loss": test.loss,
                                "final/test_acc_tta": tta["flip"].accuracy,
                                "best/val_acc": progress.best_val_acc, "best/epoch": progress.best_epoch})
        accelerator.get_tracker("wandb").log_images({f"plots/{k}": [str(v)] for k, v in paths.items()},
                                                    step=progress.global_step)


def plot_augmented_samples(train_set: AugmentedDataset, loader: DataLoader | DeviceBatches, data: CifarArrays,
                           cfg: TrainConfig, path: Path) -> None:
    """What the network sees in epoch 1: its first 32 training samples after augmentation, by the backend that
    trains it."""
    order = epoch_permutation(cfg.seed, 0, len(train_set))[:32]
    if isinstance(loader, DeviceBatches):
        samples = loader.augment(torch.from_numpy(train_set.images[order]), 0, torch.from_numpy(order))
    else:
        samples = torch.stack([train_set[(0, int(i))][0] for i in order])
    titles = [data.classes[train_set.labels[i]] for i in order]
    plots.plot_image_grid(plots.denormalize(samples, data.mean, data.std), titles, path)


def hardware(accelerator: Accelerator) -> str:
    # On a CPU, oneDNN's instruction set (the fingerprint's) says which kernels trained the run: in bf16, AMX tiles
    # ("... Intel AMX with bfloat16 ...") or AVX512-BF16 ("... Intel DL Boost and bfloat16 support", a Zen 4).
    kernels = f" (oneDNN: {library_isas()[0]})" if accelerator.device.type == "cpu" else ""
    return (f"{accelerator.num_processes} process(es) on {device_name(accelerator.device)}, "
            f"{accelerator.distributed_type.value}, mixed precision {accelerator.mixed_precision}{kernels}, "
            f"torch {torch.__version__}")


def eval_loader(images: np.ndarray, labels: np.ndarray, data: CifarArrays, cfg: TrainConfig) -> DataLoader:
    """Evaluation batches, normalized in this process. No workers: forking new ones at every evaluation, while
    the training loader's feeder thread may hold a lock, sometimes left a child stuck in fork (seen in CI:
    one process waited on its evaluation worker forever, the other in gather_for_metrics); and normalizing
    10,000 images here takes a fraction of a second."""
    return DataLoader(PlainDataset(images, labels, build_test_transform(data.mean, data.std)),
                      batch_size=cfg.batch_size, shuffle=False, num_workers=0)


def resolve_precision(cfg: TrainConfig) -> str:
    gpu = torch.cuda.is_available() and not cfg.cpu
    if cfg.mixed_precision == "auto":
        return "bf16" if native_bf16(torch.device("cuda" if gpu else "cpu")) else "no"
    if cfg.mixed_precision == "fp16" and not gpu:
        raise BadInput("--mixed-precision fp16 needs a GPU (its loss scaler is CUDA-only here): use bf16 or no")
    return cfg.mixed_precision


# ====================================================================== evaluation of saved weights


def evaluate_weights(cfg: TrainConfig, accelerator: Accelerator, data: CifarArrays) -> int:
    """--eval-only: test accuracy (plain and with test-time augmentation), a per-class table and the accuracy on
    the un-augmented training images, for a run folder, a shipped result (its folder, or its name in results/), a
    .safetensors file or a checkpoint."""
    net, name, _ = ckpt.load_net(resolve_weights(cfg.eval_only), default_name=cfg.model)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    # Evaluation needs neither DDP nor the autocast wrapper that prepare() would add: the net only moves.
    net = net.to(accelerator.device)
    loader = accelerator.prepare(eval_loader(data.test_images, data.test_labels, data, cfg))
    result = evaluate(accelerator, net, loader)
    tta = {variant: evaluate(accelerator, net, loader, tta=variant) for variant in TTA_VARIANTS}
    accelerator.print(f"{cfg.eval_only}: net {name}, test accuracy {result.accuracy:.2%} ({result.count:,} images), "
                      f"loss {result.loss:.4f}; {tta_text(tta)}")
    accelerator.print(per_class_table(confusion_matrix(result.predictions, result.labels, len(data.classes)),
                                      data.classes))
    # How far the net fits the images it learned from, as the test images are shown to it: the augmented training
    # accuracy a run logs says more about its augmentation than about the fit.
    fit = evaluate(accelerator, net, accelerator.prepare(eval_loader(data.train_images, data.train_labels, data, cfg)))
    accelerator.print(f"training images without augmentation: accuracy {fit.accuracy:.2%} (all {fit.count:,}, a run's "
                      f"validation split among them), loss {fit.loss:.4f}")
    accelerator.end_training()
    return 0


# ====================================================================== W&B


def start_wandb(cfg: TrainConfig, accelerator: Accelerator, report: NetReport, run_id: str | None) -> str | None:
    """Start (or, with the id a checkpoint kept, continue) the W&B run; fail before training if W&B cannot work."""
    mode = os.environ.get("WANDB_MODE", "online")
    if mode not in ("offline", "disabled", "dryrun") and not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb()):
        raise BadInput("--wandb: W&B has no API key (WANDB_API_KEY unset, no ~/.netrc entry): run `wandb login`, "
                       "set WANDB_API_KEY, or set WANDB_MODE=offline to log locally and `wandb sync` later")
    # Our own id, chosen before the run starts, so the checkpoint can carry it and a resume can reuse it.
    [run_id] = broadcast_object_list([run_id or uuid.uuid4().hex[:12]])
    config = {**cfg.to_dict(), "params": report.params, "receptive_field": report.receptive_field, "macs": report.macs}
    # W&B's run files go where WANDB_DIR says (clusters point it at scratch space), else into the run's folder.
    where = {} if os.environ.get("WANDB_DIR") else {"dir": str(cfg.output_dir)}
    try:
        accelerator.init_trackers(cfg.wandb_project, config=config, init_kwargs={"wandb": {
            "id": run_id, "resume": "allow", "group": cfg.wandb_group, "tags": list(cfg.wandb_tags),
            "name": cfg.wandb_name or Path(cfg.output_dir).name, **where}})
    except Exception as error:  # wandb raises many types; any of them means no W&B run
        raise BadInput(f"--wandb: W&B could not start a run ({type(error).__name__}: {error}); check "
                       "`wandb login`/WANDB_API_KEY and the network, or set WANDB_MODE=offline") from error
    if accelerator.is_main_process:
        run = accelerator.get_tracker("wandb", unwrap=True)
        run.define_metric("epoch/val_acc", summary="max")
        run.define_metric("epoch/test_acc", summary="last")
    return run_id


def _netrc_has_wandb() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")


# ====================================================================== entry point


def run(argv: list[str]) -> int:
    """main() with the promised exit codes: bad input is a one-line message and exit 2, not a traceback."""
    talk = int(os.environ.get("RANK", "0")) == 0
    stop = StopRequest(announce=tell_user if talk else None)
    stop.install()
    end_workers_at_exit()
    try:
        return main(argv, stop)
    except (BadInput, ConfigError, CifarDataError, ckpt.CheckpointError) as error:
        if talk:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SaveFailed as failure:
        if talk:  # the main process failed to write; the others stopped with it
            command = resume_command(sys.argv[0], argv, failure.output_dir, int(os.environ.get("WORLD_SIZE", "1")))
            print(f"error: {failure_message(failure, newest_complete_checkpoint(failure.output_dir), command)}",
                  file=sys.stderr)
        return EXIT_SAVE_FAILED
    finally:
        stop.uninstall()


def tell_user(text: str) -> None:
    """Write a line to stderr from a signal handler: os.write cannot collide with a print in progress. A closed
    stderr (a `| tee` that the same Ctrl-C ended) must not turn the stop into an error."""
    with contextlib.suppress(OSError):
        os.write(sys.stderr.fileno(), f"\n{text}\n".encode())


if __name__ == "__main__":
    exit_process(run(sys.argv[1:]))
