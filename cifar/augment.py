"""Training augmentations (albumentations), their presets, and Datasets that apply them reproducibly.

A training pipeline is described by ``AugmentSettings``; ``AUGMENT_PRESETS`` names the seeds' pipelines
(``seed000`` .. ``seed004``), ours (``light``, the default, and ``standard``) and ``none``.
``build_train_transform`` and ``build_test_transform`` turn settings and the training set's mean/std into
albumentations pipelines.

Reproducibility: the random choices for a training sample are a pure function of ``(seed, epoch, index)``.
``AugmentedDataset`` is indexed by ``(epoch, index)`` keys instead of an index, so the epoch travels with each
request into the DataLoader workers (persistent or not, which never see state set on the dataset after they
start), and before each sample it reseeds the pipeline from that key. ``TrainBatches`` yields the keys in the
order ``epoch_permutation(seed, epoch, n)``; the same sample in the same epoch is then the same tensor whatever
the number of workers, processes, batch size, or where a resumed run starts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cifar.data import IMAGE_SHAPE, Stream, keyed_rng, reseed

Border = Literal["reflect", "constant"]

# "reflect" mirrors without repeating the edge pixel (cv2.BORDER_REFLECT_101, albumentations 1.x's default for
# padding and ShiftScaleRotate); "constant" fills with black (albumentations 2.x's default).
_BORDER_MODES = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}
# Colour jitter limits as seed003 sets them: RandomBrightnessContrast(0.2, 0.2), HueSaturationValue(20, 30, 20).
BRIGHTNESS_LIMIT, CONTRAST_LIMIT = 0.2, 0.2
HUE_SHIFT_LIMIT, SATURATION_SHIFT_LIMIT, VALUE_SHIFT_LIMIT = 20, 30, 20


@dataclass(frozen=True)
class AugmentSettings:
    """One training pipeline. Steps run in this order, and a step with probability 0 (or ``pad`` 0) is left out:

    pad by ``pad`` pixels then random 32x32 crop → horizontal flip → affine (ShiftScaleRotate) → colour jitter
    (brightness/contrast, then hue/saturation/value) → cutout (one square hole filled with the training mean)
    → Normalize with the training mean/std.

    The defaults are albumentations' own defaults for these transforms (ShiftScaleRotate: shift 0.0625,
    scale 0.1, rotate 45, p 0.5; CoarseDropout p 0.5), i.e. what a write-up that names a transform without
    its arguments ran.

    Attributes:
        pad: pixels added on each side before the random crop back to 32x32 (seed003: 2, i.e. 36x36).
        hflip_p: probability of a horizontal flip.
        affine_p: probability of the affine step.
        shift: largest translation, as a fraction of the side, in x and y independently.
        scale: zoom drawn from [1 - scale, 1 + scale], the same for both axes (as ShiftScaleRotate did).
        rotate: largest rotation in degrees, either direction.
        border: how padding and the affine step fill pixels from outside the image, "reflect" or "constant".
        color_p: probability of each colour step, brightness/contrast ±0.2 and hue/sat/value ±20/30/20.
        cutout_p: probability of the cutout hole.
        cutout_size: side of the square hole in pixels.
    """

    pad: int = 0
    hflip_p: float = 0.5
    affine_p: float = 0.5
    shift: float = 0.0625
    scale: float = 0.1
    rotate: float = 45.0
    border: Border = "reflect"
    color_p: float = 0.0
    cutout_p: float = 0.5
    cutout_size: int = 16

    def __post_init__(self) -> None:
        side = IMAGE_SHAPE[0]
        limits: dict[str, tuple[float, float, str]] = {
            "pad": (0, side, f"an integer in 0..{side}"),
            "hflip_p": (0.0, 1.0, "a probability in [0, 1]"),
            "affine_p": (0.0, 1.0, "a probability in [0, 1]"),
            "shift": (0.0, 1.0, "a fraction of the side in [0, 1]"),
            "scale": (0.0, 0.99, "a zoom range in [0, 0.99]"),
            "rotate": (0.0, 180.0, "degrees in [0, 180]"),
            "color_p": (0.0, 1.0, "a probability in [0, 1]"),
            "cutout_p": (0.0, 1.0, "a probability in [0, 1]"),
            "cutout_size": (1, side, f"an integer in 1..{side}"),
        }
        for name, (low, high, expected) in limits.items():
            value = getattr(self, name)
            integral = name in ("pad", "cutout_size")
            if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)):
                raise ValueError(f"augment setting {name}={value!r} is not {expected}")
            if not low <= value <= high:
                raise ValueError(f"augment setting {name}={value!r} is out of range: expected {expected}")
        if self.border not in _BORDER_MODES:
            raise ValueError(f"augment setting border={self.border!r} is not one of {sorted(_BORDER_MODES)}")


# Each seed's pipeline as its write-up describes it. Where a write-up is silent, the albumentations defaults of
# its time apply: the AugmentSettings defaults, and the 1.x border (reflect) except for seed002, whose log shows
# albumentations 2.x (constant border). Cutout is one 16x16 hole filled with the mean throughout, as seed001
# and seed003 spell out (seed003 passes the mean in [0, 1] units to a uint8 image, i.e. near black; we use
# the mean colour it meant).
AUGMENT_PRESETS: Mapping[str, AugmentSettings] = MappingProxyType(
    {
        # Our first: flip, a milder affine than albumentations' 45 degrees (seed003's limits), cutout p 0.5. Named
        # "default" until the recipe search (results/README.md) made "light" the trainer's default.
        "standard": AugmentSettings(shift=0.1, scale=0.1, rotate=15.0),
        # The same transforms, weaker, the trainer's default: a net of this size underfits at 10-35 epochs
        # (recipe search, results/README.md).
        "light": AugmentSettings(shift=0.0625, scale=0.05, rotate=10.0, cutout_p=0.25),
        "none": AugmentSettings(hflip_p=0.0, affine_p=0.0, cutout_p=0.0),
        # Names the three transforms only.
        "seed000": AugmentSettings(),
        # Spells out the hole (1 hole, 16x16, mean fill); flip and ShiftScaleRotate without arguments.
        "seed001": AugmentSettings(),
        # Flip p=0.5, ShiftScaleRotate p=0.7, 16x16 cutout p=0.5. (Its log shows albumentations 2.x ignored
        # the 1.x CoarseDropout arguments it passed; we reproduce the documented intent.)
        "seed002": AugmentSettings(affine_p=0.7, border="constant"),
        # PadIfNeeded(36) + RandomCrop(32), flip, ShiftScaleRotate(0.1, 0.1, 15, p=0.5), colour jitter at 0.5,
        # CoarseDropout without p (0.5).
        "seed003": AugmentSettings(pad=2, shift=0.1, scale=0.1, rotate=15.0, color_p=0.5),
        # Names the three transforms only.
        "seed004": AugmentSettings(),
    }
)


def augment_settings(augment: str | AugmentSettings) -> AugmentSettings:
    """The settings of a preset name, or the settings themselves.

    Raises:
        ValueError: an unknown preset name; the message lists the valid ones.
    """
    if isinstance(augment, AugmentSettings):
        return augment
    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augment preset {augment!r}: choose one of {', '.join(AUGMENT_PRESETS)}")
    return AUGMENT_PRESETS[augment]


def build_train_transform(augment: str | AugmentSettings, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """The training pipeline for a preset name or settings, normalizing with the training ``mean``/``std``.

    Args:
        augment: a name in ``AUGMENT_PRESETS`` or ``AugmentSettings``.
        mean, std: per-channel statistics in [0, 1] units (``CifarArrays.mean``/``.std``); the mean is also
            the cutout colour.

    Returns:
        A pipeline mapping a uint8 HWC image to a normalized float32 HWC image. Its randomness comes from
        whatever state was last set on it; ``AugmentedDataset`` sets it per sample.
    """
    settings = augment_settings(augment)
    check_stats(mean, std)
    border = _BORDER_MODES[settings.border]
    side = IMAGE_SHAPE[0]
    steps: list[A.BasicTransform] = []
    if settings.pad:
        steps += [
            A.PadIfNeeded(min_height=side + 2 * settings.pad, min_width=side + 2 * settings.pad, border_mode=border),
            A.RandomCrop(height=side, width=side),
        ]
    if settings.hflip_p:
        steps.append(A.HorizontalFlip(p=settings.hflip_p))
    if settings.affine_p:
        # ShiftScaleRotate in albumentations 2.x is a deprecated Affine; keep_ratio restores its single zoom.
        steps.append(
            A.Affine(
                translate_percent=(-settings.shift, settings.shift),
                scale=(1.0 - settings.scale, 1.0 + settings.scale),
                rotate=(-settings.rotate, settings.rotate),
                keep_ratio=True,
                border_mode=border,
                p=settings.affine_p,
            )
        )
    if settings.color_p:
        steps += [
            A.RandomBrightnessContrast(brightness_limit=BRIGHTNESS_LIMIT, contrast_limit=CONTRAST_LIMIT,
                                       p=settings.color_p),
            A.HueSaturationValue(
                hue_shift_limit=HUE_SHIFT_LIMIT, sat_shift_limit=SATURATION_SHIFT_LIMIT,
                val_shift_limit=VALUE_SHIFT_LIMIT, p=settings.color_p
            ),
        ]
    if settings.cutout_p:
        size = (settings.cutout_size, settings.cutout_size)
        steps.append(
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=size,
                hole_width_range=size,
                fill=tuple(round(255 * value) for value in mean),  # the image is still uint8 here
                p=settings.cutout_p,
            )
        )
    steps.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    return A.Compose(steps)


def build_test_transform(mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Normalize with the training ``mean``/``std`` ([0, 1] units): the pipeline for test and validation images."""
    check_stats(mean, std)
    return A.Compose([A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)])


def check_stats(mean: Sequence[float], std: Sequence[float]) -> None:
    channels = IMAGE_SHAPE[2]
    if len(mean) != channels or len(std) != channels or min(std) <= 0 or not all(0 <= m <= 1 for m in mean):
        raise ValueError(
            f"mean and std must be {channels} per-channel values in [0, 1] units with std > 0 "
            f"(CifarArrays.mean/.std), got mean={tuple(mean)!r}, std={tuple(std)!r}"
        )


# ---------------------------------------------------------------- order and datasets


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` samples: a pure function of its arguments (int64)."""
    return keyed_rng(seed, Stream.ORDER, epoch).permutation(n)


def steps_per_epoch(n: int, batch_size: int, shards: int) -> int:
    """Optimizer steps in an epoch of ``n`` images at global batch ``batch_size``.

    The last, smaller batch counts when it still gives every one of the ``shards`` pieces it is split into
    (micro-batches × processes) at least one image: a process with an empty piece could not join the step.
    """
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= shards else 0)


class TrainBatches(Sampler[list[tuple[int, int]]]):
    """One process's share of each epoch, as lists of ``(epoch, index)`` keys for ``AugmentedDataset``.

    The epoch's order is ``epoch_permutation(seed, epoch, n)``, cut into global batches of ``batch_size``
    (see :func:`steps_per_epoch` for the last one); each global batch is split into ``grad_accum``
    micro-batches and each micro-batch into ``world_size`` contiguous pieces, as evenly as possible. Process
    ``rank`` gets its piece of every micro-batch, in order. So the samples of an optimizer step are the same on
    any number of processes, and a resumed run starts at any step (``set_epoch(epoch, start_step)``).
    The sampler iterates in the process that owns the DataLoader, so ``set_epoch`` reaches persistent workers.
    """

    def __init__(self, n: int, seed: int, batch_size: int, grad_accum: int = 1, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size {world_size})")
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.grad_accum, self.rank, self.world_size = grad_accum, rank, world_size
        self.steps = steps_per_epoch(n, batch_size, grad_accum * world_size)
        if self.steps == 0:
            raise ValueError(f"{n} training images make no batch of {batch_size} split {grad_accum * world_size} "
                             "ways: use a smaller batch or more images")
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Make the next iteration yield epoch ``epoch`` from optimizer step ``start_step`` on."""
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step {start_step} is not in [0, {self.steps}]")
        self.epoch, self.start_step = epoch, start_step

    def step_size(self, step: int) -> int:
        """Images in optimizer step ``step``'s global batch (the last one may be smaller)."""
        return min(self.batch_size, self.n - step * self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = self.epoch, epoch_permutation(self.seed, self.epoch, self.n)
        for step in range(self.start_step, self.steps):
            batch = order[step * self.batch_size:step * self.batch_size + self.step_size(step)]
            for micro in np.array_split(batch, self.grad_accum):
                yield [(epoch, int(index)) for index in np.array_split(micro, self.world_size)[self.rank]]

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.grad_accum


class AugmentedDataset(Dataset[tuple[torch.Tensor, int]]):
    """Training images under a random pipeline, reseeded per sample from ``(seed, epoch, index)``.

    Items are keyed by ``(epoch, index)`` (see the module docstring); iterate with
    ``DataLoader(dataset, batch_sampler=TrainBatches(len(dataset), seed, batch_size), ...)`` or any sampler
    yielding such keys.
    An item is ``(float32 CHW tensor, label)``. Not thread-safe: the pipeline's random state is set per call.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.BaseCompose, seed: int) -> None:
        self.images, self.labels = check_arrays(images, labels)
        self.transform = transform
        self.seed = seed
        # One numpy and one Python generator shared by all steps, reseeded per sample, so the steps draw
        # different numbers (Compose.set_random_seed would give each step the same seed: equal coin flips).
        self._numpy_random = keyed_rng(seed, Stream.AUGMENT)  # also rejects a bad seed here, not in a worker
        self._python_random = random.Random()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        if not isinstance(key, tuple):
            raise TypeError(
                f"AugmentedDataset items are keyed by (epoch, index), got {key!r}: give the DataLoader "
                "batch_sampler=TrainBatches(len(dataset), seed, batch_size) instead of shuffle=True or an index sampler"
            )
        epoch, index = key
        reseed(self._numpy_random, self._python_random, self.seed, Stream.AUGMENT, epoch, index)
        self.transform.set_random_state(self._numpy_random, self._python_random)
        return _to_tensor(self.transform(image=self.images[index])["image"]), int(self.labels[index])


def train_loader(dataset: AugmentedDataset, batches: TrainBatches, num_workers: int, pin_memory: bool,
                 worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
    """The training DataLoader: ``batches`` picks the keys, workers stay up across epochs."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, worker_init_fn=worker_init_fn)


class PlainDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images under a deterministic pipeline (``build_test_transform``), indexed by position: for evaluation."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.BaseCompose) -> None:
        self.images, self.labels = check_arrays(images, labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _to_tensor(self.transform(image=self.images[index])["image"]), int(self.labels[index])


def check_arrays(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE or labels.shape != (len(images),):
        raise ValueError(
            f"expected uint8 images of shape (N, {', '.join(map(str, IMAGE_SHAPE))}) and N labels "
            f"(CifarArrays fields), got images {images.dtype} {images.shape} and labels {labels.shape}"
        )
    return images, labels


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
