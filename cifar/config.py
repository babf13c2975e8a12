"""The training run's settings: one typed dataclass, its command line, and its YAML form.

``TrainConfig`` is the single source of truth: ``build_parser`` generates every flag from its fields (name,
type, default, help, choices), ``parse_config`` layers them (field defaults < ``--config FILE.yaml`` < flags
given on the command line) and ``TrainConfig.__post_init__`` validates the result, so a bad value fails the
same way whether it came from a flag or a file. ``resolved`` fills what depends on the machine or the clock
(the output folder, the precision) and is what a run saves as ``config.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cifar.augment import AUGMENT_PRESETS
from cifar.nets import DEFAULT_NET, list_nets
from cifar.optim import OPTIMIZERS
from cifar.schedulers import SCHEDULERS, check_schedule

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
AUGMENT_BACKENDS = ("auto", "albumentations", "torch")


class ConfigError(ValueError):
    """A setting is invalid; the message quotes the value and says what is allowed."""


def _setting(default: Any, help: str, choices: Callable[[], Sequence[str]] | Sequence[str] | None = None) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help, "choices": choices})
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Flag ``--foo-bar`` sets field ``foo_bar``."""

    model: str = _setting(DEFAULT_NET, "net to train (python -m cifar.nets lists them)", list_nets)
    data_dir: str = _setting("./data", "folder holding CIFAR-10 (either layout) or one level above it")
    output_dir: str | None = _setting(None, "where the run writes everything (default: runs/<model>-<time>)")
    download: bool = _setting(True, "download CIFAR-10 (checksummed) into --data-dir when no dataset is found "
                                    "there; --no-download forbids network access")
    epochs: int = _setting(35, "passes over the training images")
    batch_size: int = _setting(128, "global batch: images per optimizer step over all processes")
    grad_accum: int = _setting(1, "micro-batches per optimizer step (the global batch is split into them)")
    lr: float = _setting(0.1, "peak learning rate of the schedule")
    optimizer: str = _setting("sgd", "optimizer", OPTIMIZERS)
    momentum: float = _setting(0.9, "SGD momentum (the schedule may cycle it)")
    nesterov: bool = _setting(True, "Nesterov momentum for SGD")
    scheduler: str = _setting("onecycle", "LR schedule over the whole run", SCHEDULERS)
    scheduler_params: dict[str, Any] = _setting({}, "the schedule's parameters where they differ from its defaults, "
                                                "as a YAML mapping, e.g. '{final_div_factor: 1000}' for onecycle or "
                                                "'{milestones: [0.5, 0.75], gamma: 0.1}' for step; lengths are "
                                                "fractions of the run (cifar/schedulers.py lists them)")
    weight_decay: float = _setting(5e-4, "weight decay of conv and linear weights (never of norms or biases)")
    label_smoothing: float = _setting(0.0, "label smoothing of the cross-entropy loss")
    bias_lr_scale: float = _setting(1.0, "LR multiplier of the parameters without weight decay (norm shifts and "
                                    "scales, biases)")
    train_norm_scales: bool = _setting(True, "train BatchNorm scales (--no-train-norm-scales: fixed at 1)")
    augment: str = _setting("light", "training augmentation preset", tuple(AUGMENT_PRESETS))
    augment_fade_from: float | None = _setting(None, "fade the affine and cutout steps out: their probabilities "
                                               "fall linearly toward 0 from this fraction of training on, e.g. "
                                               "0.5 (default: constant)")
    augment_backend: str = _setting("auto", "what runs the augmentation: albumentations (per image in DataLoader "
                                    "workers, the reference) or torch (whole batches on the training device); "
                                    "auto: torch on a GPU, albumentations on a CPU", AUGMENT_BACKENDS)
    seed: int = _setting(0, "seed of the net's init, the data order, the augmentation and the splits")
    mixed_precision: str = _setting("auto", "auto: bf16 where the hardware runs it natively (GPUs with bf16, "
                                            "CPUs with AMX or AVX512-BF16), else no", MIXED_PRECISION)
    cpu: bool = _setting(False, "train on the CPU even when a GPU is there (with several processes: gloo)")
    subset: int | None = _setting(None, "train on a stratified subset of N training images")
    val_size: int = _setting(0, "hold out a stratified validation split of N training images (selects best)")
    num_workers: int | None = _setting(None, "DataLoader worker processes per training process (default: 1 on a "
                                             "CPU; on a GPU the process's share of the usable CPUs less one, "
                                             "at most 8)")
    checkpoint_every: int = _setting(200, "also checkpoint every N optimizer steps (0: only at epoch ends)")
    keep_last: int = _setting(2, "keep the newest K checkpoints (plus the best one)")
    resume: str | None = _setting(None, "'auto' (newest complete checkpoint in --output-dir) or a checkpoint path")
    eval_only: str | None = _setting(None, "test a run folder, shipped result (results/NAME or NAME), "
                                           ".safetensors file or checkpoint, then exit")
    sync_bn: bool = _setting(False, "batch statistics over all processes (SyncBatchNorm)")
    ema: bool = _setting(False, "keep an EMA of the weights, over the steps it has seen (bias-corrected); evaluate "
                                "and export it")
    ema_decay: float = _setting(0.999, "EMA decay per optimizer step")
    compile: bool = _setting(False, "torch.compile the net")
    channels_last: bool = _setting(True, "channels-last memory format for the net and its inputs (on this "
                                         "project's CPU 1.45x the training and 1.6x the evaluation speed of NCHW "
                                         "for the default net)")
    log_every: int = _setting(10, "optimizer steps between progress-bar and W&B step updates")
    wandb: bool = _setting(False, "log to Weights & Biases (WANDB_MODE=offline works without network)")
    wandb_project: str = _setting("cifar", "W&B project")
    wandb_group: str | None = _setting(None, "W&B group, to compare related runs")
    wandb_name: str | None = _setting(None, "W&B run name (default: the output folder's name)")
    wandb_tags: tuple[str, ...] = _setting((), "W&B tags, comma-separated")

    def __post_init__(self) -> None:
        kinds = _field_types()
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), kinds[f.name])
            choices = _choices(f)
            if choices is not None and getattr(self, f.name) not in choices:
                raise ConfigError(f"{_flag(f.name)} {getattr(self, f.name)!r} is not valid; choose one of: "
                                  f"{', '.join(choices)}")
        for name in ("epochs", "batch_size", "grad_accum", "log_every"):
            _require(self, getattr(self, name) >= 1, name, "a positive integer")
        for name in ("checkpoint_every", "val_size", "keep_last"):
            _require(self, getattr(self, name) >= 0, name, "an integer >= 0")
        _require(self, self.num_workers is None or self.num_workers >= 0, "num_workers", "an integer >= 0")
        _require(self, self.keep_last >= 1, "keep_last", "at least 1 (the newest checkpoint is what a resume needs)")
        _require(self, self.subset is None or self.subset >= 1, "subset", "a positive number of images")
        _require(self, math.isfinite(self.lr) and self.lr > 0, "lr", "a positive finite number")
        _require(self, math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        _require(self, 0 <= self.momentum < 1, "momentum", "a number in [0, 1)")
        _require(self, 0 <= self.label_smoothing < 1, "label_smoothing", "a number in [0, 1)")
        _require(self, math.isfinite(self.bias_lr_scale) and self.bias_lr_scale > 0, "bias_lr_scale",
                 "a positive finite number")
        _require(self, 0 < self.ema_decay < 1, "ema_decay", "a number in (0, 1)")
        _require(self, self.augment_fade_from is None or 0 <= self.augment_fade_from < 1, "augment_fade_from",
                 "a fraction of training in [0, 1)")
        _require(self, self.batch_size % self.grad_accum == 0, "batch_size",
                 f"a multiple of --grad-accum {self.grad_accum} (each micro-batch is the same size)")
        try:
            check_schedule(self.scheduler, self.scheduler_params)
        except ValueError as error:
            raise ConfigError(f"--scheduler-params {self.scheduler_params!r} is not valid for --scheduler "
                              f"{self.scheduler}: {error}") from error
        if self.resume == "auto" and self.output_dir is None:
            raise ConfigError("--resume auto looks for checkpoints in --output-dir, but none was given (the default "
                              "names a new folder each run): pass the --output-dir of the run to continue")

    def resolved(self, mixed_precision: str, augment_backend: str, num_workers: int,
                 now: datetime.datetime | None = None) -> TrainConfig:
        """This config with the output folder, precision, augmentation backend and DataLoader workers filled in,
        as the run saves it."""
        stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
        output_dir = self.output_dir or str(Path("runs") / f"{self.model}-{stamp}")
        return dataclasses.replace(self, output_dir=output_dir, mixed_precision=mixed_precision,
                                   augment_backend=augment_backend, num_workers=num_workers)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tags as a list), as config.yaml and W&B store them."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items()}


# Settings that decide the trajectory of the weights: a resumed run must share them with its checkpoint,
# or it would not continue the same run. The others (paths, workers, logging) may change between restarts.
TRAJECTORY_FIELDS = ("model", "epochs", "batch_size", "grad_accum", "lr", "optimizer", "momentum", "nesterov",
                     "scheduler", "scheduler_params", "weight_decay", "label_smoothing", "bias_lr_scale",
                     "train_norm_scales", "augment", "augment_fade_from", "augment_backend", "seed", "subset",
                     "val_size", "sync_bn", "ema", "ema_decay", "channels_last")
# What runs saved before a trajectory setting existed did instead.
_BEFORE_THE_SETTING: dict[str, Any] = {"augment_backend": "albumentations", "scheduler_params": {},
                                       "bias_lr_scale": 1.0, "train_norm_scales": True, "augment_fade_from": None}


def trajectory_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """``--flag: saved → now`` for each trajectory setting in which ``config`` differs from a saved config."""
    now = config.to_dict()
    return [f"{_flag(name)}: {saved.get(name, _BEFORE_THE_SETTING.get(name))!r} in the checkpoint, {now[name]!r} now"
            for name in TRAJECTORY_FIELDS if saved.get(name, _BEFORE_THE_SETTING.get(name)) != now[name]]


def config_flags(saved: dict[str, Any], leave_out: Sequence[str] = ()) -> list[str]:
    """The train.py flags that set each value of a saved config (config.yaml's mapping) that differs from its
    default, in field order: ``--flag value``, ``--flag``/``--no-flag`` for switches, commas for lists.
    Fields in ``leave_out``, and those the saved config lacks (it predates them), are left out."""
    flags: list[str] = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in leave_out or f.name not in saved:
            continue
        value, default = saved[f.name], _default(f)
        if value == (list(default) if isinstance(default, tuple) else default):
            continue
        if isinstance(value, bool):
            flags.append(_flag(f.name) if value else "--no-" + _flag(f.name)[2:])
        elif isinstance(value, dict):
            flags += [_flag(f.name), _yaml_flow(value)]
        elif isinstance(value, list):
            flags += [_flag(f.name), ",".join(map(str, value))]
        else:
            flags += [_flag(f.name), str(value)]
    return flags


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``--config`` plus one flag per field. Defaults are left out (SUPPRESS) so that
    ``parse_config`` can tell the flags that were given from those that were not."""
    parser = argparse.ArgumentParser(
        prog="train.py", argument_default=argparse.SUPPRESS, allow_abbrev=False,
        description="Train a CIFAR-10 net (launch with `accelerate launch train.py ...`).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file of settings (field names as keys); flags win")
    types_ = _field_types()
    for f in dataclasses.fields(TrainConfig):
        kind = types_[f.name]
        help_ = f"{f.metadata['help']} (default: {_default(f)!r})"
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, help=help_)
        elif kind == tuple[str, ...]:
            parser.add_argument(_flag(f.name), type=_comma_list, help=help_)
        elif kind == dict[str, Any]:
            parser.add_argument(_flag(f.name), type=_yaml_mapping, help=help_)
        else:
            # Choices are checked in __post_init__, so a file and a flag give the same message.
            parser.add_argument(_flag(f.name), type=_scalar_type(kind), help=help_)
    return parser


def parse_config(argv: Sequence[str]) -> TrainConfig:
    """Field defaults, then ``--config`` YAML, then the flags given in ``argv``.

    Raises:
        ConfigError: an unreadable or unknown-key YAML file, or an invalid value (argparse itself exits with
            status 2 on a malformed flag).
    """
    given = vars(build_parser().parse_args(argv))
    settings = load_yaml(given.pop("config")) if "config" in given else {}
    settings.update(given)
    return TrainConfig(**settings)


def load_yaml(path: Path) -> dict[str, Any]:
    """Settings from a YAML mapping of field names (``batch_size`` or ``batch-size``) to values."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"--config {str(path)!r} cannot be read ({error.strerror}): give a YAML file") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {str(path)!r} is not valid YAML: {error}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {str(path)!r} must hold a mapping of settings, got {type(loaded).__name__}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    settings: dict[str, Any] = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ConfigError(f"--config {str(path)!r} has an unknown setting {key!r}; valid: "
                              f"{', '.join(sorted(names))}")
        if name in settings:
            raise ConfigError(f"--config {str(path)!r} sets {name!r} twice (as {key!r} and its other spelling): "
                              "keep one")
        settings[name] = value
    kinds = _field_types()
    for name, value in settings.items():
        if kinds[name] is float:
            settings[name] = _number(value)
        elif kinds[name] == dict[str, Any] and isinstance(value, dict):
            settings[name] = {key: _number(item) for key, item in value.items()}
    if isinstance(settings.get("wandb_tags"), list):
        settings["wandb_tags"] = tuple(settings["wandb_tags"])
    return settings


def save_yaml(config: TrainConfig, path: Path) -> None:
    """Write ``config`` as YAML that ``--config`` reads back to an equal config."""
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _number(value: Any) -> Any:
    """``value``, or the float a string spells: YAML 1.1 reads 1e-3 (an exponent without a dot) as a string,
    where a flag would take it as a number."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def _yaml_mapping(text: str) -> dict[str, Any]:
    """A flag's YAML mapping, e.g. ``{gamma: 0.1, milestones: [0.5, 0.75]}``; argparse reports the error."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid YAML ({error})") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a YAML mapping; write e.g. '{{gamma: 0.1}}'")
    return {str(key): _number(value) for key, value in loaded.items()}


def _yaml_flow(mapping: dict[str, Any]) -> str:
    """``mapping`` on one line, as ``_yaml_mapping`` reads it back."""
    return yaml.safe_dump(mapping, default_flow_style=True, width=10**6).strip()


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _require(config: TrainConfig, ok: bool, name: str, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{_flag(name)} {getattr(config, name)!r} is not valid; it must be {allowed}")


def _choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    choices = f.metadata["choices"]
    return tuple(choices() if callable(choices) else choices) if choices is not None else None


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _optional_inner(kind: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind):
        return next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return None


def _scalar_type(kind: Any) -> Callable[[str], Any]:
    inner = _optional_inner(kind)
    return inner if inner is not None else kind


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _check_type(name: str, value: Any, kind: Any) -> None:
    inner = _optional_inner(kind)
    if inner is not None:
        if value is None:
            return
        kind = inner
    if kind == tuple[str, ...]:
        ok = isinstance(value, tuple) and all(isinstance(item, str) for item in value)
        expected = "a list of strings"
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
    elif kind == dict[str, Any]:
        ok = isinstance(value, dict) and all(isinstance(key, str) for key in value)
        expected = "a mapping of names to values"
    else:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        expected = {int: "an integer", bool: "true or false", str: "a string"}[kind]
    if not ok:
        raise ConfigError(f"{_flag(name)} {value!r} is not valid; it must be {expected}")
