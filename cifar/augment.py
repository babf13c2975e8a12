"""Training augmentations (albumentations), their presets, and Datasets that apply them reproducibly.

A training pipeline is described by ``AugmentSettings``; ``AUGMENT_PRESETS`` names the seeds' pipelines as their
write-ups give them (``seed000`` .. ``seed004``), as one write-up's log shows it ran (``seed002_as_run``), the
reading that runs shipped in results/ trained with (``seed_16px``), ours (``light``, the default, and
``standard``) and ``none``.
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

import dataclasses
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cifar.data import IMAGE_SHAPE, Stream, keyed_rng, reseed

Border = Literal["reflect", "constant"]
Fill = Literal["mean", "black"]

# "reflect" mirrors without repeating the edge pixel (cv2.BORDER_REFLECT_101, albumentations 1.x's default for
# padding and ShiftScaleRotate); "constant" fills with black (albumentations 2.x's default).
_BORDER_MODES = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}
# Colour jitter limits as seed003 sets them: RandomBrightnessContrast(0.2, 0.2), HueSaturationValue(20, 30, 20).
BRIGHTNESS_LIMIT, CONTRAST_LIMIT = 0.2, 0.2
HUE_SHIFT_LIMIT, SATURATION_SHIFT_LIMIT, VALUE_SHIFT_LIMIT = 20, 30, 20
# Most cutout holes a pipeline may ask for: the torch backend draws every hole slot for every sample.
MAX_CUTOUT_HOLES = 8


@dataclass(frozen=True)
class AugmentSettings:
    """One training pipeline. Steps run in this order, and a step with probability 0 (or ``pad`` 0) is left out:

    pad by ``pad`` pixels then random 32x32 crop → horizontal flip → affine (ShiftScaleRotate) → colour jitter
    (brightness/contrast, then hue/saturation/value) → cutout (CoarseDropout: rectangular holes) → Normalize with
    the training mean/std.

    The defaults are albumentations 1.x's ShiftScaleRotate (shift 0.0625, one zoom ±0.1, rotate 45, reflected
    border, p 0.5) with one 16x16 hole in the mean colour at p 0.5, the hole seed001 and seed003 spell out.
    ``ALBUMENTATIONS_DEFAULTS`` is what albumentations 2.0.8 itself does for transforms named without arguments.

    Attributes:
        pad: pixels added on each side before the random crop back to 32x32 (seed003: 2, i.e. 36x36).
        hflip_p: probability of a horizontal flip.
        affine_p: probability of the affine step.
        shift: largest translation, as a fraction of the side, in x and y independently.
        scale: zoom drawn from [1 - scale, 1 + scale].
        rotate: largest rotation in degrees, either direction.
        keep_ratio: one zoom for both axes (ShiftScaleRotate in 1.3); False draws the x and y zooms independently
            (ShiftScaleRotate as a special case of Affine, ``Affine(keep_ratio=False)``, in 1.4.24 and 2.x).
        border: how padding and the affine step fill pixels from outside the image, "reflect" or "constant".
        color_p: probability of each colour step, brightness/contrast ±0.2 and hue/sat/value ±20/30/20.
        cutout_p: probability of the cutout step.
        cutout_holes: (fewest, most) holes, the count drawn uniformly between them, both included.
        cutout_size: range of each hole's height and of its width, drawn independently per hole, in
            albumentations' convention: whole pixels (both ends included) when the upper end is 1 or more, else
            fractions of the side (``int(32 * uniform(low, high))`` pixels). (16, 16): a 16x16 square.
        cutout_fill: "mean" fills holes with the training mean colour, "black" with 0 (albumentations' default).
    """

    pad: int = 0
    hflip_p: float = 0.5
    affine_p: float = 0.5
    shift: float = 0.0625
    scale: float = 0.1
    rotate: float = 45.0
    keep_ratio: bool = True
    border: Border = "reflect"
    color_p: float = 0.0
    cutout_p: float = 0.5
    cutout_holes: tuple[int, int] = (1, 1)
    cutout_size: tuple[float, float] = (16, 16)
    cutout_fill: Fill = "mean"

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
        }
        for name, (low, high, expected) in limits.items():
            value = getattr(self, name)
            if not _is_number(value, integral=name == "pad"):
                raise ValueError(f"augment setting {name}={value!r} is not {expected}")
            if not low <= value <= high:
                raise ValueError(f"augment setting {name}={value!r} is out of range: expected {expected}")
        if not isinstance(self.keep_ratio, bool):
            raise ValueError(f"augment setting keep_ratio={self.keep_ratio!r} is not True or False")
        if self.border not in _BORDER_MODES:
            raise ValueError(f"augment setting border={self.border!r} is not one of {sorted(_BORDER_MODES)}")
        if self.cutout_fill not in get_args(Fill):
            raise ValueError(f"augment setting cutout_fill={self.cutout_fill!r} is not one of {sorted(get_args(Fill))}")
        _check_range("cutout_holes", self.cutout_holes, integral=True, low=1, high=MAX_CUTOUT_HOLES,
                     expected=f"(fewest, most) holes, integers with 1 <= fewest <= most <= {MAX_CUTOUT_HOLES}")
        size = self.cutout_size
        pixels = isinstance(size, tuple) and len(size) == 2 and _is_number(size[1]) and size[1] >= 1
        if pixels:
            _check_range("cutout_size", size, integral=True, low=1, high=side,
                         expected=f"a (low, high) range in whole pixels, 1 <= low <= high <= {side}")
        else:
            _check_range("cutout_size", size, integral=False, low=0, high=1,
                         expected="a (low, high) range of fractions of the side, 0 < low <= high < 1",
                         open_ends=True)


def _is_number(value: object, integral: bool = False) -> bool:
    return not isinstance(value, bool) and isinstance(value, int if integral else (int, float))


def _check_range(name: str, value: object, integral: bool, low: float, high: float, expected: str,
                 open_ends: bool = False) -> None:
    """Refuse ``value`` unless it is a (low, high) tuple of numbers with ``low <= value[0] <= value[1] <= high``
    (both ends strict with ``open_ends``)."""
    ok = (isinstance(value, tuple) and len(value) == 2 and all(_is_number(v, integral) for v in value)
          and value[0] <= value[1])
    if ok:
        first, last = value  # type: ignore[misc]
        ok = low < first and last < high if open_ends else low <= first and last <= high
    if not ok:
        raise ValueError(f"augment setting {name}={value!r} is not {expected}")


# albumentations 2.0.8's own defaults, what HorizontalFlip(), ShiftScaleRotate() and CoarseDropout() do when a
# write-up names them without arguments (tests/test_augment.py builds those and compares): flip p 0.5;
# ShiftScaleRotate shift 0.0625, scale 0.1 per axis, rotate 45, constant (black) border, p 0.5; CoarseDropout 1-2
# holes, each side 10-20% of the image's (3-6 pixels here), filled with 0, p 0.5.
ALBUMENTATIONS_DEFAULTS = AugmentSettings(keep_ratio=False, border="constant", cutout_holes=(1, 2),
                                          cutout_size=(0.1, 0.2), cutout_fill="black")

# Each seed's pipeline as its write-up describes it, and as its log shows it ran where that differs. A write-up
# that names a transform without arguments gets the library's defaults. The silent ones (seed000, seed004) show
# no version: they get 2.0.8's (ALBUMENTATIONS_DEFAULTS), the version this project installs and the one seed002's
# log shows for the same assignment. Older defaults differ: 1.3's CoarseDropout is 8 holes of 8x8 and 1.4.24's one
# 8x8 hole, both with a reflected border. seed003 passes the mean in [0, 1] units to a uint8 image as its hole
# colour, i.e. near black; we use the mean colour it meant.
AUGMENT_PRESETS: Mapping[str, AugmentSettings] = MappingProxyType(
    {
        # Our first: flip, a milder affine than albumentations' 45 degrees (seed003's limits), cutout p 0.5. Named
        # "default" until the recipe search (results/README.md) made "light" the trainer's default.
        "standard": AugmentSettings(shift=0.1, scale=0.1, rotate=15.0),
        # The same transforms, weaker, the trainer's default: a net of this size underfits at 10-35 epochs
        # (recipe search, results/README.md).
        "light": AugmentSettings(shift=0.0625, scale=0.05, rotate=10.0, cutout_p=0.25),
        # "light" with its translation moved to a reflect-pad-4 random crop (up to 4 whole pixels, no resampling)
        # from the affine's 2-pixel shift: the translation ResNet recipes train with, as a generalisation lever.
        "light_crop": AugmentSettings(pad=4, shift=0.0, scale=0.05, rotate=10.0, cutout_p=0.25),
        "none": AugmentSettings(hflip_p=0.0, affine_p=0.0, cutout_p=0.0),
        # Names the three transforms only: the library's defaults.
        "seed000": ALBUMENTATIONS_DEFAULTS,
        # Spells out the hole (1 hole, 16x16, mean fill) in 1.x's argument names (max_holes, ...); flip and
        # ShiftScaleRotate without arguments, so 1.x's defaults for them (reflected border; one zoom, as 1.3 drew).
        "seed001": AugmentSettings(),
        # Flip p=0.5, ShiftScaleRotate p=0.7, 16x16 cutout p=0.5 as written, with 2.x's constant border (its log
        # shows 2.x). The log also shows 2.x ignoring the CoarseDropout arguments it passed: see seed002_as_run.
        "seed002": AugmentSettings(affine_p=0.7, border="constant"),
        # What seed002's log shows ran (002 l.160-163): albumentations 2.x warned that ShiftScaleRotate is a
        # special case of Affine and that CoarseDropout's 'num_holes, max_h_size, max_w_size, min_h_size,
        # min_w_size, fill_value' are not valid, so the hole was CoarseDropout's 2.x default (1-2 holes of 10-20%
        # of the side, black), and ShiftScaleRotate, with no argument shown, 2.x's defaults at the written p 0.7.
        "seed002_as_run": dataclasses.replace(ALBUMENTATIONS_DEFAULTS, affine_p=0.7),
        # PadIfNeeded(36) + RandomCrop(32), flip, ShiftScaleRotate(0.1, 0.1, 15, p=0.5), colour jitter at 0.5,
        # CoarseDropout without p (0.5).
        "seed003": AugmentSettings(pad=2, shift=0.1, scale=0.1, rotate=15.0, color_p=0.5),
        # Names the three transforms only: the library's defaults.
        "seed004": ALBUMENTATIONS_DEFAULTS,
        # seed000 and seed004 read with seed001's hole, the same pipeline as seed001: 1.x's flip and
        # ShiftScaleRotate defaults with one 16x16 mean-coloured hole. Kept while runs trained with it are shipped:
        # results/seed000-30ep-h200-seed0, seed000_rf45-30ep-h200-seed0 and seed004-30ep-h200-seed0.
        "seed_16px": AugmentSettings(),
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


def fade_out(augment: str | AugmentSettings, epochs: int, start: float) -> tuple[AugmentSettings, ...]:
    """The pipeline of each epoch of a run of ``epochs`` whose affine and cutout steps fade out: their
    probabilities keep their full value while an epoch's midpoint lies within the first ``start`` of training,
    then fall linearly toward 0 at its end (never 0 itself: the last epoch keeps 1 / (2 epochs (1 - start)) of
    them). Flip, padding and colour stay as they are. A net of our size underfits its augmented images, and the
    last epochs then fit the images it is tested on.

    Raises:
        ValueError: ``epochs`` below 1 or ``start`` outside [0, 1).
    """
    settings = augment_settings(augment)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fade_out needs a positive number of epochs, got {epochs!r}")
    if not _is_number(start) or not 0 <= start < 1:
        raise ValueError(f"the fade's start {start!r} is not a fraction of the run in [0, 1)")
    pipelines = []
    for epoch in range(epochs):
        keep = min(1.0, (1.0 - (epoch + 0.5) / epochs) / (1.0 - start))
        pipelines.append(dataclasses.replace(settings, affine_p=settings.affine_p * keep,
                                             cutout_p=settings.cutout_p * keep))
    return tuple(pipelines)


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
        # ShiftScaleRotate in albumentations 2.x is a deprecated Affine(keep_ratio=False); keep_ratio=True gives
        # 1.3's single zoom.
        steps.append(
            A.Affine(
                translate_percent=(-settings.shift, settings.shift),
                scale=(1.0 - settings.scale, 1.0 + settings.scale),
                rotate=(-settings.rotate, settings.rotate),
                keep_ratio=settings.keep_ratio,
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
        steps.append(
            A.CoarseDropout(
                num_holes_range=settings.cutout_holes,
                hole_height_range=settings.cutout_size,
                hole_width_range=settings.cutout_size,
                fill=cutout_colour(settings, mean),
                p=settings.cutout_p,
            )
        )
    steps.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    return A.Compose(steps)


def cutout_colour(settings: AugmentSettings, mean: Sequence[float]) -> tuple[int, ...]:
    """The holes' colour in uint8 levels (the image is still uint8 when the holes are cut): the training mean
    ([0, 1] units) rounded, or black."""
    return tuple(round(255 * value) if settings.cutout_fill == "mean" else 0 for value in mean)


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
    """Training images under a random pipeline (or one per epoch, as :func:`fade_out` gives them), reseeded per
    sample from ``(seed, epoch, index)``.

    Items are keyed by ``(epoch, index)`` (see the module docstring); iterate with
    ``DataLoader(dataset, batch_sampler=TrainBatches(len(dataset), seed, batch_size), ...)`` or any sampler
    yielding such keys.
    An item is ``(float32 CHW tensor, label)``. Not thread-safe: the pipeline's random state is set per call.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.BaseCompose | Sequence[A.BaseCompose],
                 seed: int) -> None:
        self.images, self.labels = check_arrays(images, labels)
        if not isinstance(transform, A.BaseCompose) and (not isinstance(transform, Sequence) or not transform):
            raise ValueError(f"transform must be a pipeline or a non-empty sequence of them, one per epoch; got "
                             f"{transform!r}")
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
        transform = self.transform if isinstance(self.transform, A.BaseCompose) else self.transform[epoch]
        reseed(self._numpy_random, self._python_random, self.seed, Stream.AUGMENT, epoch, index)
        transform.set_random_state(self._numpy_random, self._python_random)
        return _to_tensor(transform(image=self.images[index])["image"]), int(self.labels[index])


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
