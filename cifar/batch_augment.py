"""The training augmentation in torch, on whole batches on the training device: the fast path beside
``cifar.augment``'s albumentations pipeline, which stays the reference.

``BatchAugment`` runs the steps ``AugmentSettings`` documents, with the same presets, on a uint8 batch as stored
(``(B, 32, 32, 3)``) and returns what the albumentations pipeline returns per sample, stacked: normalized float32
``(B, 3, 32, 32)``. ``DeviceBatches`` keeps the training set on the device and yields the micro-batches of a
``TrainBatches`` sampler in the DataLoader's order, so the trainer can use either path.

Design:

* Parameters per epoch. A sample's random choices are a pure function of ``(seed, epoch, index)``, as in
  ``AugmentedDataset``: ``sample_params`` draws every sample's choices for an epoch at once from
  ``keyed_rng(seed, Stream.BATCH_AUGMENT, epoch)`` (20-30 ms for 50,000 samples on one CPU core, once per
  epoch) into one table on the device, and a batch gathers its rows by index. So an image's augmentation does
  not depend on the batch size, the number of processes or where a resumed run starts, and nothing is reseeded
  per sample (``cifar.data.reseed``: about 15 us per image on the albumentations path, before any pixel work).
* Float pixel work. After one uint8 gather, which also does the pad-and-crop and the flip, the steps work on
  float32 pixel values 0..255, so the constants (translations in pixels, brightness in grey levels, the holes'
  colour) are albumentations' own, and nothing is rounded between steps.
* No Python loop over samples. On a GPU a step that applies to some samples runs on the whole batch, and
  ``torch.where`` keeps its result where the sample's flag is set: choosing the subset would need its size on
  the host, i.e. the host waiting for the device. Nothing in a batch makes the host wait (the constants and the
  epoch's table move to the device once, not per batch). On a CPU the step runs on the flagged samples only.
  A step whose probability is 0 is left out.

Where this differs from albumentations 2.0.8 (tests/test_batch_augment.py compares each step with given
parameters, and the distributions over thousands of draws):

* Random numbers: another stream, drawn vectorised. The same seed gives other (equally distributed)
  augmentations than ``AugmentedDataset``; the two paths are not interchangeable bit for bit.
* Affine: ``F.grid_sample`` (bilinear) on an affine grid with ``align_corners=True``, which puts the sample
  points on pixel centres as OpenCV does and makes ``padding_mode="reflection"`` mirror about the edge pixels'
  centres, i.e. OpenCV's BORDER_REFLECT_101 (not BORDER_REFLECT). On a float image it matches
  ``cv2.warpAffine`` to about 1e-3 grey levels; albumentations then rounds to uint8, so the two differ by at
  most half a grey level (OpenCV's 1/32-pixel coordinate steps add nothing visible). Translations are whole
  pixels, ``int(uniform(-shift, shift) * 32)`` truncated towards zero, as albumentations draws them.
* Colour: brightness/contrast is ``clip(x * alpha + beta)``; albumentations' uint8 lookup table truncates, 0 to
  1 grey level darker. Hue/saturation/value is exact float HSV; OpenCV's 8-bit HSV holds hue in 2-degree units
  and albumentations' hue table truncates, which moves saturated pixels by up to about 13 grey levels (1 on
  average). A pixel counts as grey (its saturation is not shifted) when its channels are exactly equal; OpenCV
  also counts pixels whose saturation rounds to 0 (spread below 1/510 of the value).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from cifar.augment import (
    BRIGHTNESS_LIMIT,
    CONTRAST_LIMIT,
    HUE_SHIFT_LIMIT,
    SATURATION_SHIFT_LIMIT,
    VALUE_SHIFT_LIMIT,
    AugmentSettings,
    TrainBatches,
    augment_settings,
    check_arrays,
    check_stats,
    cutout_colour,
)
from cifar.data import IMAGE_SHAPE, Stream, keyed_rng

_SIDE = IMAGE_SHAPE[0]
# Devices where a step computes only the images it applies to (see _where_flagged).
_SUBSET_DEVICE_TYPES = frozenset({"cpu"})
# Sextants of the hue circle (60 degrees each) per OpenCV 8-bit hue unit (2 degrees).
_SEXTANTS_PER_HUE_UNIT = 2 / 60


@dataclass(frozen=True)
class SampleParams:
    """Random choices for a set of samples: one float32 entry per sample in every field, except the hole fields
    (``SLOT_FIELDS``), which have one column per hole slot, ``(n, most holes)``.

    Flags are 0.0 or 1.0; counts, offsets, translations and sizes are whole numbers (exact in float32), in pixels.

    Attributes:
        crop_y, crop_x: top-left corner of the 32x32 window in the image padded by ``pad``, in 0..2*pad.
        flip: horizontal flip.
        affine: the affine step applies.
        shift_x, shift_y: translation in pixels, ``int(uniform(-shift, shift) * 32)``.
        zoom_x, zoom_y: zoom of each axis, in [1 - scale, 1 + scale]; equal where the settings keep the ratio.
        angle: rotation in degrees, in [-rotate, rotate] (positive: counter-clockwise, as albumentations).
        brightness_contrast: the brightness/contrast step applies.
        contrast: the factor alpha, in 1 ± 0.2.
        brightness: the offset beta in grey levels, 255 * (±0.2).
        hsv: the hue/saturation/value step applies.
        hue: hue shift in OpenCV 8-bit units (2 degrees), ±20.
        saturation: saturation shift in 0..255 units, ±30.
        value: value shift in grey levels, ±20.
        cutout: the cutout step applies.
        holes: how many holes it cuts: slots 0..holes-1 apply.
        cutout_y, cutout_x: each slot's top-left corner, in 0..32 - its height (width).
        cutout_h, cutout_w: each slot's height and width in pixels.
    """

    SLOT_FIELDS: ClassVar[tuple[str, ...]] = ("cutout_y", "cutout_x", "cutout_h", "cutout_w")

    crop_y: torch.Tensor
    crop_x: torch.Tensor
    flip: torch.Tensor
    affine: torch.Tensor
    shift_x: torch.Tensor
    shift_y: torch.Tensor
    zoom_x: torch.Tensor
    zoom_y: torch.Tensor
    angle: torch.Tensor
    brightness_contrast: torch.Tensor
    contrast: torch.Tensor
    brightness: torch.Tensor
    hsv: torch.Tensor
    hue: torch.Tensor
    saturation: torch.Tensor
    value: torch.Tensor
    cutout: torch.Tensor
    holes: torch.Tensor
    cutout_y: torch.Tensor
    cutout_x: torch.Tensor
    cutout_h: torch.Tensor
    cutout_w: torch.Tensor

    def table(self) -> torch.Tensor:
        """The fields as the columns of one ``(n, columns)`` float32 tensor, so that a batch is one gather."""
        return torch.cat([getattr(self, field.name).reshape(len(self.flip), -1) for field in dataclasses.fields(self)],
                         dim=1)

    @classmethod
    def from_table(cls, table: torch.Tensor) -> SampleParams:
        """The inverse of ``table``: its columns (views, no copy) as fields; ``table()`` of the result copies."""
        names = [field.name for field in dataclasses.fields(cls)]
        singles = len(names) - len(cls.SLOT_FIELDS)  # the slot fields come last, one block of columns each
        slots = (table.shape[1] - singles) // len(cls.SLOT_FIELDS)
        widths = [1] * singles + [slots] * len(cls.SLOT_FIELDS)
        parts = table.split(widths, dim=1)
        return cls(*(part.squeeze(1) if name not in cls.SLOT_FIELDS else part
                     for name, part in zip(names, parts, strict=True)))

    def select(self, rows: torch.Tensor) -> SampleParams:
        """The choices of the samples at positions ``rows`` (int64)."""
        return SampleParams.from_table(self.table().index_select(0, rows))


def sample_params(augment: str | AugmentSettings, seed: int, epoch: int, n: int) -> SampleParams:
    """Every sample's random choices for epoch ``epoch`` of ``n`` training samples (CPU tensors of length n).

    A pure function of its arguments: row ``index`` is what sample ``index`` gets in that epoch. All fields are
    drawn whatever the settings, in a fixed order, so one step's choices do not move when another is switched off.

    Raises:
        ValueError: an unknown preset name, or a seed or epoch outside [0, 2**64).
    """
    return SampleParams.from_table(_draw_table(augment_settings(augment), seed, epoch, n))


def _draw_table(settings: AugmentSettings, seed: int, epoch: int, n: int) -> torch.Tensor:
    """``sample_params`` as a ``SampleParams.table()``, drawn straight into it."""
    rng = keyed_rng(seed, Stream.BATCH_AUGMENT, epoch)

    def coin(p: float) -> np.ndarray:
        return rng.random(n) < p

    def uniform(limit: float) -> np.ndarray:
        return rng.uniform(-limit, limit, n)

    columns: dict[str, np.ndarray] = {
        "crop_y": rng.integers(0, 2 * settings.pad + 1, n),
        "crop_x": rng.integers(0, 2 * settings.pad + 1, n),
        "flip": coin(settings.hflip_p),
        "affine": coin(settings.affine_p),
        "shift_x": np.trunc(uniform(settings.shift) * _SIDE),
        "shift_y": np.trunc(uniform(settings.shift) * _SIDE),
        "zoom_x": 1.0 + uniform(settings.scale),
        "zoom_y": 1.0 + uniform(settings.scale),
        "angle": uniform(settings.rotate),
        "brightness_contrast": coin(settings.color_p),
        "contrast": 1.0 + uniform(CONTRAST_LIMIT),
        "brightness": 255.0 * uniform(BRIGHTNESS_LIMIT),
        "hsv": coin(settings.color_p),
        "hue": uniform(HUE_SHIFT_LIMIT),
        "saturation": uniform(SATURATION_SHIFT_LIMIT),
        "value": uniform(VALUE_SHIFT_LIMIT),
        "cutout": coin(settings.cutout_p),
        "holes": rng.integers(settings.cutout_holes[0], settings.cutout_holes[1] + 1, n),
    }
    if settings.keep_ratio:  # drawn all the same, so that the keep_ratio switch moves no other choice
        columns["zoom_y"] = columns["zoom_x"]
    slots = [_draw_hole(rng, settings.cutout_size, n) for _ in range(settings.cutout_holes[1])]
    for position, name in enumerate(SampleParams.SLOT_FIELDS):
        columns[name] = np.stack([slot[position] for slot in slots], axis=1)
    table = np.concatenate([columns[field.name].reshape(n, -1).astype(np.float32)
                            for field in dataclasses.fields(SampleParams)], axis=1)
    return torch.from_numpy(table)


def _draw_hole(rng: np.random.Generator, size: tuple[float, float], n: int) -> tuple[np.ndarray, ...]:
    """One hole slot for ``n`` samples, as CoarseDropout draws a hole: height and width from ``size`` (whole
    pixels when its upper end is 1 or more, else fractions of the side, truncated), then a corner that keeps the
    hole inside the image. Returns (y, x, height, width)."""
    low, high = size
    if high >= 1:
        height, width = rng.integers(int(low), int(high) + 1, n), rng.integers(int(low), int(high) + 1, n)
    else:
        height = np.trunc(_SIDE * rng.uniform(low, high, n)).astype(np.int64)
        width = np.trunc(_SIDE * rng.uniform(low, high, n)).astype(np.int64)
    return rng.integers(0, _SIDE - height + 1), rng.integers(0, _SIDE - width + 1), height, width


class BatchAugment:
    """The training pipeline of ``build_train_transform`` for whole batches, on the batch's device.

    Args:
        augment: a name in ``AUGMENT_PRESETS`` or ``AugmentSettings``, or one pipeline per epoch that differ
            only in their affine and cutout probabilities (as ``fade_out`` makes them).
        mean, std: per-channel statistics in [0, 1] units (``CifarArrays.mean``/``.std``); the mean is also
            the holes' colour where the settings fill with it (``cutout_colour``, as the albumentations
            pipeline fills its uint8 image).
        seed: the run seed.
        n: the number of training samples (the indices given are in ``0..n-1``).

    Raises:
        ValueError: an unknown preset name (the message lists the valid ones), or bad statistics.
    """

    def __init__(self, augment: str | AugmentSettings | Sequence[AugmentSettings], mean: Sequence[float],
                 std: Sequence[float], seed: int, n: int) -> None:
        one = isinstance(augment, (str, AugmentSettings))
        self.pipelines = (augment_settings(augment),) if one else tuple(map(augment_settings, augment))
        if not self.pipelines or len({_without_probabilities(p) for p in self.pipelines}) > 1:
            raise ValueError("BatchAugment takes one pipeline, or one per epoch that differ only in their affine and "
                             f"cutout probabilities (as fade_out makes them); got {augment!r}")
        # A step runs where any epoch may use it; each sample's coin, drawn with its epoch's probability, decides.
        self.settings = dataclasses.replace(self.pipelines[0], affine_p=max(p.affine_p for p in self.pipelines),
                                            cutout_p=max(p.cutout_p for p in self.pipelines))
        check_stats(mean, std)
        if n < 1:
            raise ValueError(f"BatchAugment needs at least one training sample, got n={n!r}")
        self.seed, self.n = seed, n
        # Normalize as albumentations does, (x - 255 * mean) * (1 / (255 * std)); the holes' colour.
        self._constants = torch.tensor([[255.0 * m for m in mean], [1 / (255.0 * s) for s in std],
                                        [float(level) for level in cutout_colour(self.settings, mean)]])
        self._epoch_table: tuple[int, torch.device, torch.Tensor] | None = None

    def params(self, epoch: int, device: torch.device | str = "cpu") -> SampleParams:
        """Every sample's choices in epoch ``epoch`` (``sample_params``), on ``device``."""
        return SampleParams.from_table(self._table(epoch, torch.device(device)))

    def __call__(self, images: torch.Tensor, epoch: int, indices: torch.Tensor) -> torch.Tensor:
        """Augment and normalize a batch of training samples.

        Args:
            images: uint8 ``(B, 32, 32, 3)``, the samples as stored, on the device to work on.
            epoch: the epoch the batch belongs to.
            indices: int64 ``(B,)``, each image's index in the training set (``0..n-1``, not checked: a check
                would make a CUDA device wait for the host).

        Returns:
            float32 ``(B, 3, 32, 32)``, contiguous, on the images' device.
        """
        if indices.shape != (len(images),) or indices.dtype != torch.int64:
            raise ValueError(f"expected int64 indices of shape ({len(images)},), got {indices.dtype} "
                             f"{tuple(indices.shape)}")
        rows = self._table(epoch, images.device).index_select(0, indices.to(images.device, non_blocking=True))
        return self.apply(images, SampleParams.from_table(rows))

    def _table(self, epoch: int, device: torch.device) -> torch.Tensor:
        # The last epoch's table is kept: its batches then cost one gather each, not a draw for the whole set.
        if self._epoch_table is None or self._epoch_table[:2] != (epoch, device):
            pipeline = self.pipelines[0] if len(self.pipelines) == 1 else self.pipelines[epoch]
            self._epoch_table = (epoch, device, _draw_table(pipeline, self.seed, epoch, self.n).to(device))
        return self._epoch_table[2]

    def _constants_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """255 * mean, 1 / (255 * std) and the hole's colour, each ``(1, 3, 1, 1)`` on ``device``."""
        if self._constants.device != device:
            self._constants = self._constants.to(device)
        mean, inverse_std, fill = self._constants.view(3, 1, 3, 1, 1)
        return mean, inverse_std, fill

    def apply(self, images: torch.Tensor, params: SampleParams) -> torch.Tensor:
        """Augment and normalize ``images`` (uint8 ``(B, 32, 32, 3)``) with the given choices, one row per image
        (fields of length B on the images' device)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(f"expected uint8 images of shape (B, {', '.join(map(str, IMAGE_SHAPE))}), got "
                             f"{images.dtype} {tuple(images.shape)}")
        settings = self.settings
        mean, inverse_std, fill = self._constants_on(images.device)
        if settings.pad or settings.hflip_p:
            images = self._crop_and_flip(images, params)
        x = images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)  # a new tensor
        if settings.affine_p:
            x = _where_flagged(params.affine, self._warp, x, params)
        if settings.color_p:
            alpha = torch.where(params.brightness_contrast > 0, params.contrast, 1.0)
            beta = torch.where(params.brightness_contrast > 0, params.brightness, 0.0)
            x = (x * _per_sample(alpha) + _per_sample(beta)).clamp_(0.0, 255.0)
            x = _where_flagged(params.hsv, _shift_hsv, x, params)
        if settings.cutout_p:
            x = torch.where(self._hole(params, x.device), fill, x)
        return (x - mean) * inverse_std

    def _crop_and_flip(self, images: torch.Tensor, params: SampleParams) -> torch.Tensor:
        """Pad, random crop and flip in one uint8 gather of each output pixel's source pixel (``index_select`` of
        whole pixels: on a CPU several times faster than advanced indexing or ``gather``)."""
        pad, device = self.settings.pad, images.device
        steps = torch.arange(_SIDE, device=device)
        rows = params.crop_y.long()[:, None] - pad + steps
        cols = params.crop_x.long()[:, None] - pad + torch.where(params.flip[:, None] > 0, _SIDE - 1 - steps, steps)
        if self.settings.border == "reflect":
            rows, cols = _reflect_101(rows), _reflect_101(cols)
        else:
            inside = ((rows >= 0) & (rows < _SIDE))[:, :, None] & ((cols >= 0) & (cols < _SIDE))[:, None, :]
            rows, cols = rows.clamp(0, _SIDE - 1), cols.clamp(0, _SIDE - 1)
        first = torch.arange(len(images), device=device)[:, None, None] * _SIDE * _SIDE
        pixels = (first + rows[:, :, None] * _SIDE + cols[:, None, :]).view(-1)
        gathered = images.reshape(-1, IMAGE_SHAPE[2]).index_select(0, pixels).view(images.shape)
        return gathered if self.settings.border == "reflect" else gathered * inside[..., None]

    def _warp(self, x: torch.Tensor, params: SampleParams) -> torch.Tensor:
        """The affine step: albumentations' map about the centre, inverted into ``grid_sample``'s output-to-input
        grid in ``align_corners=True`` coordinates (pixel centres at -1..1).

        The grid is what ``F.affine_grid`` computes, built elementwise: its batched matmul costs more than the
        sampling on a busy CPU with several threads, and elementwise each sample's grid is the same in any batch.
        """
        # albumentations maps input to output as centre + shift + R @ diag(zoom_x, zoom_y) @ (input - centre), so
        # the way back divides each axis by its own zoom after rotating back.
        radians = torch.deg2rad(params.angle)
        cos, sin = torch.cos(radians)[:, None, None], torch.sin(radians)[:, None, None]
        centres = torch.linspace(-1.0, 1.0, _SIDE, device=x.device)
        unit = 2 / (_SIDE - 1)  # pixels to grid units
        from_x = (centres - params.shift_x[:, None] * unit)[:, None, :]  # (B, 1, W): output x minus the shift
        from_y = (centres - params.shift_y[:, None] * unit)[:, :, None]  # (B, H, 1)
        grid = torch.stack([(cos * from_x - sin * from_y) / params.zoom_x[:, None, None],
                            (sin * from_x + cos * from_y) / params.zoom_y[:, None, None]], dim=-1)
        padding = "reflection" if self.settings.border == "reflect" else "zeros"
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=True)

    def _hole(self, params: SampleParams, device: torch.device) -> torch.Tensor:
        """Where the holes are, bool ``(B, 1, 32, 32)``: false everywhere for a sample without any."""
        steps = torch.arange(_SIDE, device=device)
        slots = params.cutout_y.shape[1]
        applies = (params.cutout[:, None] > 0) & (torch.arange(slots, device=device) < params.holes[:, None])
        top, left = params.cutout_y[..., None], params.cutout_x[..., None]  # (B, slots, 1)
        in_rows = (steps >= top) & (steps < top + params.cutout_h[..., None])  # (B, slots, 32)
        in_cols = (steps >= left) & (steps < left + params.cutout_w[..., None])
        inside = in_rows[..., :, None] & in_cols[..., None, :] & applies[..., None, None]  # (B, slots, 32, 32)
        return inside.any(dim=1, keepdim=True)


def _without_probabilities(settings: AugmentSettings) -> AugmentSettings:
    return dataclasses.replace(settings, affine_p=0.0, cutout_p=0.0)


def _where_flagged(flags: torch.Tensor, step: Callable[[torch.Tensor, SampleParams], torch.Tensor], x: torch.Tensor,
                   params: SampleParams) -> torch.Tensor:
    """``x`` with ``step`` applied to the images whose flag is 1, the others unchanged (``x`` may be overwritten).

    On a CPU only the flagged images are computed. On other devices all are, and ``torch.where`` keeps the
    flagged ones: picking a data-dependent subset there would make the host wait for the device.
    """
    if x.device.type not in _SUBSET_DEVICE_TYPES:
        return torch.where(_per_sample(flags > 0), step(x, params), x)
    chosen = flags.nonzero().squeeze(1)
    if not len(chosen):
        return x
    return x.index_copy_(0, chosen, step(x.index_select(0, chosen), params.select(chosen)))


def _per_sample(column: torch.Tensor) -> torch.Tensor:
    """A ``(B,)`` column shaped to broadcast over ``(B, C, H, W)``."""
    return column.view(-1, 1, 1, 1)


def _reflect_101(coordinates: torch.Tensor) -> torch.Tensor:
    """Positions outside 0..31 mirrored about the edge pixels (OpenCV's BORDER_REFLECT_101), any distance out."""
    period = 2 * (_SIDE - 1)
    folded = coordinates.remainder(period)
    return torch.where(folded >= _SIDE, period - folded, folded)


def _shift_hsv(x: torch.Tensor, params: SampleParams) -> torch.Tensor:
    """albumentations' HueSaturationValue on float RGB 0..255 ``(B, 3, H, W)``, per-sample shifts in its units.

    Hue is kept in sextants (0..6); the way back is the closed form
    ``channel = V * (1 - S * clamp(min(k, 4 - k), 0, 1))`` with ``k = (n + hue) mod 6``, n = 5, 3, 1 for R, G, B.
    """
    red, green, blue = x.unbind(dim=1)
    top = torch.maximum(torch.maximum(red, green), blue)
    spread = top - torch.minimum(torch.minimum(red, green), blue)
    sat = spread / top.clamp_min(1e-6)  # a black pixel has spread 0: saturation 0
    safe_spread = spread.clamp_min(1e-6)  # where spread is 0 the hue is irrelevant (saturation 0 stays 0)
    sextant = torch.where(
        top == red,
        (green - blue) / safe_spread,
        torch.where(top == green, 2 + (blue - red) / safe_spread, 4 + (red - green) / safe_spread),
    )
    sextant = (sextant + (params.hue * _SEXTANTS_PER_HUE_UNIT).view(-1, 1, 1)).remainder(6)
    # Grey pixels stay grey whatever the saturation shift, as albumentations keeps saturation 0 at 0.
    sat = torch.where(sat > 0, (sat + (params.saturation / 255).view(-1, 1, 1)).clamp(0, 1), sat)
    top = (top + params.value.view(-1, 1, 1)).clamp(0, 255)
    offsets = torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)  # 5, 3, 1: made there, not copied
    k = (offsets + sextant[:, None]).remainder(6)
    return top[:, None] * (1 - sat[:, None] * torch.minimum(k, 4 - k).clamp(0, 1))


class DeviceBatches:
    """The training micro-batches, gathered and augmented on ``device``: a stand-in for ``train_loader``'s
    DataLoader over ``AugmentedDataset`` with the same ``TrainBatches``.

    The whole training set (150 MB of uint8 for CIFAR-10) is copied to the device once. Iterating yields
    ``(inputs, labels)`` for the keys ``batches`` yields, in its order: inputs float32 ``(B, 3, 32, 32)``,
    labels int64 ``(B,)``, both on ``device``. ``batches.set_epoch`` picks the epoch and start step as for the
    DataLoader.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batches: TrainBatches, augment: BatchAugment,
                 device: torch.device | str) -> None:
        images, labels = check_arrays(images, labels)
        if not len(images) == batches.n == augment.n:
            raise ValueError(f"{len(images)} training images, but the sampler covers {batches.n} and the "
                             f"augmentation {augment.n}: build both for the same training set")
        self.batches, self.augment = batches, augment
        self.device = torch.device(device)
        self.images = torch.from_numpy(images).to(self.device)
        self.labels = torch.from_numpy(labels).to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for keys in self.batches:
            epoch = keys[0][0]
            indices = torch.tensor([index for _, index in keys], dtype=torch.int64)
            indices = indices.to(self.device, non_blocking=True)
            inputs = self.augment(self.images.index_select(0, indices), epoch, indices)
            yield inputs, self.labels.index_select(0, indices)

    def __len__(self) -> int:
        return len(self.batches)


def resolve_augment_backend(choice: str, device: torch.device) -> str:
    """The backend that ``--augment-backend choice`` runs on ``device``: auto is torch on a GPU, which per-image
    augmentation in a few CPU workers cannot feed, and albumentations (the reference) elsewhere."""
    if choice == "auto":
        return "torch" if device.type == "cuda" else "albumentations"
    return choice
