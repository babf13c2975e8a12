"""The batch augmentation in torch (cifar/batch_augment.py) against the albumentations pipeline it stands in for.

Each step is checked twice: with given parameters against albumentations' own function for that step (pins
the conventions: directions, centre, border, units), and over a few thousand random draws against the
albumentations pipeline of the same settings (pins the distributions). Pixels are not expected to agree one for
one: the two paths draw from different random streams.
"""

from __future__ import annotations

import colorsys
import dataclasses

import albucore
import cv2
import numpy as np
import pytest
import torch
from albumentations.augmentations.dropout import functional as fdropout
from albumentations.augmentations.geometric import functional as fgeometric
from albumentations.augmentations.pixel import functional as fpixel
from torch.utils.data import DataLoader

import cifar.batch_augment
from cifar.augment import (
    fade_out,
    AUGMENT_PRESETS,
    AugmentedDataset,
    AugmentSettings,
    TrainBatches,
    build_test_transform,
    build_train_transform,
)
from cifar.batch_augment import BatchAugment, DeviceBatches, SampleParams, sample_params

MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)
# Statistics under which the output is the pixel value itself: (x - 0) / (255 * 1/255).
IDENTITY_STATS = ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
# Every step off: tests switch on the one they look at.
NOTHING = AugmentSettings(hflip_p=0.0, affine_p=0.0, cutout_p=0.0)
DRAWS = 2000
# Two-sample Kolmogorov-Smirnov critical value at significance 0.001: c * sqrt((n + m) / (n * m)), c = 1.95. The
# seeds are fixed, so a test passes or fails every time; for correct code, a seed that fails it would be a 1 in 1000
# draw, while a wrong unit or range (a factor of 2) fails it at any seed.
KS_C = 1.95


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)


def smooth_images(n: int, seed: int = 0) -> np.ndarray:
    """Photo-like images: a coarse random pattern scaled up, plus noise."""
    rng = np.random.default_rng(seed)
    coarse = [cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (32, 32), interpolation=cv2.INTER_CUBIC)
              for _ in range(n)]
    return np.clip(np.stack(coarse).astype(int) + rng.integers(-10, 10, (n, 32, 32, 3)), 0, 255).astype(np.uint8)


def given_params(n: int, slots: int = 1, **columns: np.ndarray | float) -> SampleParams:
    """Parameters that change nothing, except the columns given; the hole fields are ``(n, slots)``."""
    identity = {field.name: 0.0 for field in dataclasses.fields(SampleParams)} | {"zoom_x": 1.0, "zoom_y": 1.0,
                                                                                 "contrast": 1.0}
    values = identity | columns
    return SampleParams(**{name: torch.tensor(np.broadcast_to(
        value, (n, slots) if name in SampleParams.SLOT_FIELDS else (n,)), dtype=torch.float32)
        for name, value in values.items()})


def batch_pixels(augment: BatchAugment, images: np.ndarray, epoch: int = 0) -> np.ndarray:
    """BatchAugment's output for images 0..n-1, as float HWC pixel values (IDENTITY_STATS)."""
    out = augment(torch.from_numpy(images), epoch, torch.arange(len(images)))
    return out.permute(0, 2, 3, 1).numpy().astype(np.float64)


def albumentations_pixels(settings: AugmentSettings, images: np.ndarray, epoch: int = 0) -> np.ndarray:
    """The albumentations pipeline's output for images 0..n-1, as float HWC pixel values (IDENTITY_STATS)."""
    dataset = AugmentedDataset(images, np.zeros(len(images), np.int64),
                               build_train_transform(settings, *IDENTITY_STATS), seed=0)
    return np.stack([dataset[(epoch, index)][0].numpy().transpose(1, 2, 0) for index in range(len(images))])


def both_pipelines(settings: AugmentSettings, image: np.ndarray, n: int = DRAWS) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws of ``settings`` on one image, from BatchAugment and from albumentations, in pixel values."""
    repeated = np.repeat(image[None], n, axis=0)
    ours = batch_pixels(BatchAugment(settings, *IDENTITY_STATS, seed=0, n=n), repeated)
    return ours, albumentations_pixels(settings, repeated)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(np.sort(a), points, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), points, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def assert_same_distribution(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    limit = KS_C * np.sqrt((len(ours) + len(theirs)) / (len(ours) * len(theirs)))
    distance = ks_distance(ours, theirs)
    assert distance < limit, f"{what}: KS distance {distance:.3f} >= {limit:.3f}"


def assert_rate(hits: np.ndarray, p: float, what: str) -> None:
    # 4.5 standard deviations of a binomial rate over the draws: fails by chance about once in 100,000 runs.
    limit = 4.5 * np.sqrt(p * (1 - p) / len(hits))
    assert abs(hits.mean() - p) < limit, f"{what}: rate {hits.mean():.3f}, expected {p} ± {limit:.3f}"


# ---------------------------------------------------------------- construction and plain output


def test_unknown_preset_lists_the_choices() -> None:
    choices = ("choose one of standard, light, light_crop, none, seed000, seed001, seed002, seed002_as_run, seed003, "
               "seed004, seed_16px")
    with pytest.raises(ValueError, match=f"unknown augment preset 'seed009': {choices}"):
        BatchAugment("seed009", MEAN, STD, seed=0, n=10)
    with pytest.raises(ValueError, match=r"mean and std must be 3 per-channel values in \[0, 1\] units"):
        BatchAugment("standard", (125.3, 123.0, 113.9), STD, seed=0, n=10)


def test_none_is_the_test_transform(images: np.ndarray) -> None:
    out = BatchAugment("none", MEAN, STD, seed=0, n=len(images))(torch.from_numpy(images), 0, torch.arange(len(images)))
    assert out.dtype == torch.float32 and out.shape == (len(images), 3, 32, 32) and out.is_contiguous()
    test = build_test_transform(MEAN, STD)
    expected = np.stack([test(image=image)["image"].transpose(2, 0, 1) for image in images])
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-6)


def test_bad_batches_are_refused(images: np.ndarray) -> None:
    augment = BatchAugment("standard", MEAN, STD, seed=0, n=len(images))
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \(B, 32, 32, 3\), got torch.float32"):
        augment(torch.from_numpy(images).float(), 0, torch.arange(len(images)))
    with pytest.raises(ValueError, match=r"expected int64 indices of shape \(64,\), got torch.int64 \(63,\)"):
        augment(torch.from_numpy(images), 0, torch.arange(63))


# ---------------------------------------------------------------- reproducibility


def test_sample_params_are_a_pure_function_of_seed_epoch_index() -> None:
    settings = AUGMENT_PRESETS["seed003"]
    params = sample_params(settings, seed=3, epoch=2, n=5000)
    again = sample_params("seed003", seed=3, epoch=2, n=5000)
    torch.testing.assert_close(again.table(), params.table(), rtol=0, atol=0)
    for other in (sample_params(settings, seed=3, epoch=3, n=5000), sample_params(settings, seed=4, epoch=2, n=5000)):
        assert (other.angle != params.angle).all()
    # Ranges as albumentations draws them: crops 0..2*pad, whole-pixel shifts truncated towards 0.
    assert set(params.crop_y.tolist()) == set(params.crop_x.tolist()) == {0, 1, 2, 3, 4}
    assert set(params.shift_x.tolist()) == set(params.shift_y.tolist()) == set(range(-3, 4))  # int(±3.2)
    assert 0.9 <= params.zoom_x.min() < 0.91 and 1.09 < params.zoom_x.max() <= 1.1
    assert torch.equal(params.zoom_y, params.zoom_x)  # seed003 keeps the ratio: one zoom
    assert -15 <= params.angle.min() < -14.9 and 14.9 < params.angle.max() <= 15
    assert params.cutout_y.shape == (5000, 1) and set(params.holes.tolist()) == {1}
    assert set(params.cutout_y.flatten().tolist()) == set(params.cutout_x.flatten().tolist()) == set(range(17))
    assert set(params.cutout_h.flatten().tolist()) == set(params.cutout_w.flatten().tolist()) == {16}
    # The flags are independent coins: flip and affine together about a quarter of the time.
    assert_rate((params.flip * params.affine).numpy(), 0.25, "flip and affine")


@pytest.mark.parametrize("preset", ["standard", "seed002", "seed002_as_run", "seed003"])
def test_a_sample_is_the_same_in_any_batch(images: np.ndarray, preset: str) -> None:
    augment = BatchAugment(dataclasses.replace(AUGMENT_PRESETS[preset], color_p=0.5), MEAN, STD, seed=7,
                           n=len(images))
    batch, indices = torch.from_numpy(images), torch.arange(len(images))
    whole = augment(batch, 4, indices)
    in_sevens = torch.cat([augment(batch[start:start + 7], 4, indices[start:start + 7])
                           for start in range(0, len(images), 7)])
    torch.testing.assert_close(in_sevens, whole, rtol=0, atol=0)
    shuffled = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(augment(batch[shuffled], 4, shuffled), whole[shuffled], rtol=0, atol=0)
    other_epoch = augment(batch, 5, indices)
    torch.testing.assert_close(augment(batch, 4, indices), whole, rtol=0, atol=0)  # drawn again: the same
    differ = sum(not torch.equal(a, b) for a, b in zip(whole, other_epoch, strict=True))
    # Five steps (flip, affine, cutout, two colour steps) fire with p >= 0.5 each: an image comes out the same in
    # two epochs only when neither epoch changes it or both only flip it, about 1 time in 500.
    assert differ >= len(images) - 4


def test_computing_every_image_then_selecting_gives_the_same(images: np.ndarray,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA way (each step on the whole batch, then torch.where) equals the CPU way (only flagged images)."""
    settings = dataclasses.replace(AUGMENT_PRESETS["seed003"], color_p=0.5)
    augment = BatchAugment(settings, MEAN, STD, seed=1, n=len(images))
    subset = augment(torch.from_numpy(images), 0, torch.arange(len(images)))
    monkeypatch.setattr(cifar.batch_augment, "_SUBSET_DEVICE_TYPES", frozenset())
    whole = augment(torch.from_numpy(images), 0, torch.arange(len(images)))
    torch.testing.assert_close(whole, subset, rtol=0, atol=0)


# ---------------------------------------------------------------- each step with given parameters


@pytest.mark.parametrize(("border", "cv2_border"), [("reflect", cv2.BORDER_REFLECT_101),
                                                    ("constant", cv2.BORDER_CONSTANT)])
def test_pad_crop_and_flip_match_opencv_padding(images: np.ndarray, border: str, cv2_border: int) -> None:
    n, pad = len(images), 3
    settings = dataclasses.replace(NOTHING, pad=pad, hflip_p=0.5, border=border)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    crop_y, crop_x, flip = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2, n)
    params = given_params(n, crop_y=crop_y, crop_x=crop_x, flip=flip)
    out = BatchAugment(settings, *IDENTITY_STATS, seed=0, n=n).apply(torch.from_numpy(images), params)
    for i, image in enumerate(images):
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2_border, value=(0, 0, 0))
        expected = padded[crop_y[i]:crop_y[i] + 32, crop_x[i]:crop_x[i] + 32]
        expected = expected[:, ::-1] if flip[i] else expected
        np.testing.assert_allclose(out[i].numpy().transpose(1, 2, 0), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("border", "cv2_border"), [("reflect", cv2.BORDER_REFLECT_101),
                                                    ("constant", cv2.BORDER_CONSTANT)])
def test_affine_matches_albumentations_warp(border: str, cv2_border: int) -> None:
    n = 64
    images = smooth_images(n)
    rng = np.random.default_rng(1)
    # A zoom per axis (ShiftScaleRotate in 2.x): a swapped or shared zoom is off by many levels once rotated.
    columns = {"affine": 1.0, "zoom_x": rng.uniform(0.9, 1.1, n), "zoom_y": rng.uniform(0.9, 1.1, n),
               "angle": rng.uniform(-45, 45, n), "shift_x": rng.integers(-3, 4, n).astype(float),
               "shift_y": rng.integers(-3, 4, n).astype(float)}
    params = given_params(n, **columns)
    settings = dataclasses.replace(NOTHING, affine_p=1.0, border=border)  # type: ignore[arg-type]
    out = BatchAugment(settings, *IDENTITY_STATS, seed=0, n=n).apply(torch.from_numpy(images), params)
    for i, image in enumerate(images):
        zoom = {"x": float(columns["zoom_x"][i]), "y": float(columns["zoom_y"][i])}
        matrix = fgeometric.create_affine_transformation_matrix(
            {"x": columns["shift_x"][i], "y": columns["shift_y"][i]}, {"x": 0.0, "y": 0.0},
            zoom, float(columns["angle"][i]), fgeometric.center((32, 32)))
        expected = fgeometric.warp_affine(image, matrix, cv2.INTER_LINEAR, 0, cv2_border, (32, 32))
        # albumentations rounds its result to uint8; a wrong centre, direction or border is off by many levels.
        np.testing.assert_allclose(out[i].numpy().transpose(1, 2, 0), expected, rtol=0, atol=0.51)


def test_colour_steps_match_albumentations_functions() -> None:
    n = 64
    images = smooth_images(n, seed=2)
    rng = np.random.default_rng(2)
    alpha, beta = rng.uniform(0.8, 1.2, n), 255 * rng.uniform(-0.2, 0.2, n)
    hue, sat, val = rng.uniform(-20, 20, n), rng.uniform(-30, 30, n), rng.uniform(-20, 20, n)
    settings = dataclasses.replace(NOTHING, color_p=1.0)
    augment = BatchAugment(settings, *IDENTITY_STATS, seed=0, n=n)

    brightness = augment.apply(torch.from_numpy(images), given_params(n, brightness_contrast=1.0, contrast=alpha,
                                                                     brightness=beta))
    expected = np.stack([albucore.multiply_add(image, a, b) for image, a, b in zip(images, alpha, beta, strict=True)])
    difference = brightness.numpy().transpose(0, 2, 3, 1) - expected
    # albumentations' uint8 lookup table truncates: 0 to 1 level below the exact value.
    assert difference.min() > -1e-3 and difference.max() < 1

    shifted = augment.apply(torch.from_numpy(images), given_params(n, hsv=1.0, hue=hue, saturation=sat, value=val))
    expected = np.stack([fpixel.shift_hsv(image, h, s, v)
                         for image, h, s, v in zip(images, hue, sat, val, strict=True)])
    difference = np.abs(shifted.numpy().transpose(0, 2, 3, 1) - expected)
    # OpenCV's 8-bit HSV holds hue in 2-degree units and albumentations' hue table truncates: up to 1.5 units,
    # 1/20 of a sextant, i.e. up to 13 levels on a saturated pixel, 1 on average (measured: 1.0, 99th pct. 6.4).
    # A hue in the wrong units (degrees) or direction is off by tens of levels on most pixels.
    assert difference.mean() < 1.5 and np.quantile(difference, 0.99) < 8 and difference.max() < 15


def test_cutout_is_the_hole_given_in_the_mean_colour(images: np.ndarray) -> None:
    n = len(images)
    rng = np.random.default_rng(3)
    top, left, cut = rng.integers(0, 17, n), rng.integers(0, 17, n), rng.integers(0, 2, n)
    augment = BatchAugment(dataclasses.replace(NOTHING, cutout_p=0.5), MEAN, (1 / 255,) * 3, seed=0, n=n)
    params = given_params(n, cutout=cut, holes=1.0, cutout_y=top[:, None], cutout_x=left[:, None], cutout_h=16.0,
                          cutout_w=16.0)
    out = augment.apply(torch.from_numpy(images), params)
    pixels = out.numpy().transpose(0, 2, 3, 1) + 255 * np.array(MEAN)
    for i, image in enumerate(images):
        expected = image.astype(np.float64)
        if cut[i]:
            expected[top[i]:top[i] + 16, left[i]:left[i] + 16] = np.round(255 * np.array(MEAN))
        np.testing.assert_allclose(pixels[i], expected, rtol=0, atol=1e-3)


def test_holes_match_albumentations_cutout(images: np.ndarray) -> None:
    """Up to two rectangles of their own sizes, overlapping or not, black: as CoarseDropout's cutout fills them."""
    n = len(images)
    rng = np.random.default_rng(4)
    heights, widths = rng.integers(1, 12, (n, 2)), rng.integers(1, 12, (n, 2))
    tops, lefts = rng.integers(0, 33 - heights), rng.integers(0, 33 - widths)
    holes, cut = rng.integers(1, 3, n), rng.integers(0, 2, n)
    settings = dataclasses.replace(AUGMENT_PRESETS["seed002_as_run"], hflip_p=0.0, affine_p=0.0)
    params = given_params(n, slots=2, cutout=cut, holes=holes, cutout_y=tops, cutout_x=lefts, cutout_h=heights,
                          cutout_w=widths)
    out = BatchAugment(settings, *IDENTITY_STATS, seed=0, n=n).apply(torch.from_numpy(images), params)
    for i, image in enumerate(images):
        boxes = np.stack([lefts[i], tops[i], lefts[i] + widths[i], tops[i] + heights[i]], axis=1)[:holes[i] * cut[i]]
        expected = fdropout.cutout(image, boxes, 0, np.random.default_rng(0)) if len(boxes) else image
        np.testing.assert_allclose(out[i].numpy().transpose(1, 2, 0), expected, rtol=0, atol=1e-3)
    assert (cut * holes == 2).any() and (cut * holes == 1).any()


# ---------------------------------------------------------------- distributions against albumentations


def test_flip_fires_with_its_probability(images: np.ndarray) -> None:
    settings = dataclasses.replace(NOTHING, hflip_p=0.3)
    ours, theirs = both_pipelines(settings, images[0])
    for name, out in (("ours", ours), ("albumentations", theirs)):
        flipped = (out == images[0, :, ::-1]).all(axis=(1, 2, 3))
        assert ((out == images[0]).all(axis=(1, 2, 3)) | flipped).all(), name  # nothing else happens
        assert_rate(flipped, 0.3, f"{name} flips")


def test_pad_and_crop_offsets_are_uniform() -> None:
    # Each pixel says where it came from: red = 8 * row, green = 8 * column. The centre pixel never leaves the image.
    rows, cols = np.mgrid[0:32, 0:32]
    coordinates = np.stack([8 * rows, 8 * cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    settings = dataclasses.replace(NOTHING, pad=2)
    for name, out in zip(("ours", "albumentations"), both_pipelines(settings, coordinates), strict=True):
        offsets = out[:, 16, 16, :2] / 8 - 16
        for axis in (0, 1):
            assert set(offsets[:, axis].tolist()) == {-2, -1, 0, 1, 2}, name
            for offset in range(-2, 3):
                assert_rate(offsets[:, axis] == offset, 0.2, f"{name} offset {offset} on axis {axis}")


# Three blobs, one per channel, at these (x, y) offsets from the centre: their centroids give the affine map.
BLOBS = np.array([(-5.0, -4.0), (5.0, -4.0), (0.0, 6.0)])
CENTRE = 15.5


def blob_image() -> np.ndarray:
    # Narrow enough (sigma 1.2 px) that the largest zoom, shift and rotation keep them off the border.
    rows, cols = np.mgrid[0:32, 0:32]
    channels = [255 * np.exp(-((cols - CENTRE - x) ** 2 + (rows - CENTRE - y) ** 2) / (2 * 1.2**2)) for x, y in BLOBS]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def estimate_affine(out: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: the affine map taking the blobs to their centroids in ``out``, as albumentations' parameters."""
    rows, cols = np.mgrid[0:32, 0:32]
    mass = out.sum(axis=(1, 2))
    centroids = np.stack([(out * cols[..., None]).sum(axis=(1, 2)) / mass,
                          (out * rows[..., None]).sum(axis=(1, 2)) / mass], axis=-1) - CENTRE  # (n, blob, xy)
    # centroid = A @ blob + t for the three blobs: solve for [A | t] per image.
    solved = np.linalg.solve(np.hstack([BLOBS, np.ones((3, 1))])[None], centroids)  # (n, 3, 2): A^T rows, then t
    a = solved[:, :2].transpose(0, 2, 1)
    # albumentations' A = [[cos, sin], [-sin, cos]] @ diag(zoom_x, zoom_y): column j is zoom_j times a unit vector.
    return {"zoom_x": np.hypot(a[:, 0, 0], a[:, 1, 0]), "zoom_y": np.hypot(a[:, 0, 1], a[:, 1, 1]),
            "angle": np.degrees(np.arctan2(-a[:, 1, 0], a[:, 0, 0])),
            "shift_x": solved[:, 2, 0], "shift_y": solved[:, 2, 1]}


@pytest.mark.parametrize("preset", ["standard", "seed002", "seed002_as_run"])
def test_affine_draws_match_albumentations(preset: str) -> None:
    settings = dataclasses.replace(AUGMENT_PRESETS[preset], hflip_p=0.0, cutout_p=0.0)
    ours, theirs = both_pipelines(settings, blob_image())
    estimates = [estimate_affine(ours), estimate_affine(theirs)]
    applied = [(np.abs(e["angle"]) > 0.05) | (np.abs(e["zoom_x"] - 1) > 2e-3) | (np.abs(e["zoom_y"] - 1) > 2e-3)
               | (np.abs(e["shift_x"]) > 0.25) | (np.abs(e["shift_y"]) > 0.25) for e in estimates]
    for name, hits in zip(("ours", "albumentations"), applied, strict=True):
        assert_rate(hits, settings.affine_p, f"{name} affine")

    # The estimator reads our own parameters back: so it measures what it should, in albumentations' conventions.
    truth = sample_params(settings, seed=0, epoch=0, n=DRAWS)
    mine = applied[0]
    assert np.array_equal(mine, truth.affine.numpy() > 0)
    for field, tolerance in (("angle", 0.5), ("zoom_x", 0.01), ("zoom_y", 0.01), ("shift_x", 0.2), ("shift_y", 0.2)):
        error = np.abs(estimates[0][field][mine] - getattr(truth, field).numpy()[mine])
        assert error.max() < tolerance, f"{field} read back {error.max():.3f} off"

    # One zoom or two: the ratio of the axes' zooms is 1 exactly where the settings keep it.
    for name, e, hits in zip(("ours", "albumentations"), estimates, applied, strict=True):
        ratio = np.abs(e["zoom_x"][hits] / e["zoom_y"][hits] - 1)
        assert (ratio.max() < 0.01) if settings.keep_ratio else (np.quantile(ratio, 0.5) > 0.02), name
    for field in ("angle", "zoom_x", "zoom_y", "shift_x", "shift_y"):
        ours_values, theirs_values = (e[field][hits] for e, hits in zip(estimates, applied, strict=True))
        if field.startswith("shift"):  # whole pixels: compare the counts, not the estimation noise around them
            ours_values, theirs_values = np.rint(ours_values), np.rint(theirs_values)
            limit = int(np.nextafter(settings.shift * 32, 0))  # int() truncates towards 0; the bound is never drawn
            assert set(ours_values.tolist()) == set(theirs_values.tolist()) == set(range(-limit, limit + 1))
        assert_same_distribution(ours_values, theirs_values, f"{preset} {field}")


def test_cutout_draws_match_albumentations() -> None:
    colour = (200, 30, 90)
    settings = dataclasses.replace(NOTHING, cutout_p=0.5)
    image = np.full((32, 32, 3), colour, np.uint8)
    repeated = np.repeat(image[None], DRAWS, axis=0)
    ours = batch_pixels(BatchAugment(settings, MEAN, STD, seed=0, n=DRAWS), repeated)
    ours = np.rint((ours * np.array(STD) + np.array(MEAN)) * 255)
    dataset = AugmentedDataset(repeated, np.zeros(DRAWS, np.int64), build_train_transform(settings, MEAN, STD), seed=0)
    theirs = np.stack([dataset[(0, i)][0].numpy().transpose(1, 2, 0) for i in range(DRAWS)])
    theirs = np.rint((theirs * np.array(STD) + np.array(MEAN)) * 255)
    fill = np.round(255 * np.array(MEAN))
    for name, out in (("ours", ours), ("albumentations", theirs)):
        hole = (out != colour).any(axis=-1)
        has_hole = hole.any(axis=(1, 2))
        assert_rate(has_hole, 0.5, f"{name} cutout")
        assert (out[hole] == fill).all(), name
        corners = []
        for mask in hole[has_hole]:
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert mask.sum() == 16 * 16 and len(rows) == len(cols) == 16, name
            corners.append((rows[0], cols[0]))
        for axis in (0, 1):
            counts = np.bincount(np.array(corners)[:, axis], minlength=17)
            assert len(counts) == 17, name  # never past 32 - 16
            expected = len(corners) / 17
            chi_square = ((counts - expected) ** 2 / expected).sum()
            # Uniform over 0..16: 16 degrees of freedom, 39.25 is the 0.001 critical value.
            assert chi_square < 39.25, f"{name} hole corner on axis {axis}: chi-square {chi_square:.1f}"


def test_colour_draws_match_albumentations() -> None:
    settings = dataclasses.replace(NOTHING, color_p=0.5)
    # On grey, hue and saturation do nothing: the change is contrast, brightness and value together.
    ours, theirs = both_pipelines(settings, np.full((32, 32, 3), 128, np.uint8))
    changes = [out[:, 0, 0, 0] - 128 for out in (ours, theirs)]
    for name, change, out in zip(("ours", "albumentations"), changes, (ours, theirs), strict=True):
        assert (out == out[:, :1, :1, :1]).all(), name  # a grey image stays one grey
        assert_rate(change == 0, 0.25, f"{name} unchanged")  # neither colour step fired
    # Standard error of each mean: about 32 / sqrt(2000) = 0.7 levels; of each std about 0.5.
    assert abs(changes[0].mean() - changes[1].mean()) < 3.5
    assert abs(changes[0].std() - changes[1].std()) < 2.5
    assert_same_distribution(changes[0], changes[1], "grey level change")

    # On a saturated colour the hue moves by up to 20 OpenCV units, 40 degrees, either way (and a little more where
    # contrast and brightness clip a channel). Compared in bins wider than albumentations' uint8 rounding (about
    # 1 degree of hue, 1/255 of saturation), which would otherwise split the half of the draws that leave the hue
    # alone into two differently scattered clusters around 0.
    colour = (200, 80, 40)
    ours, theirs = both_pipelines(settings, np.full((32, 32, 3), colour, np.uint8))
    before = colorsys.rgb_to_hsv(*(np.array(colour) / 255))
    for what, position, period, bin_width in (("hue", 0, 360.0, 4.0), ("saturation", 1, None, 0.02)):
        binned = []
        for out in (ours, theirs):
            after = np.array([colorsys.rgb_to_hsv(*(pixel / 255)) for pixel in out[:, 0, 0]])[:, position]
            change = after - before[position]
            if period:  # hue in degrees, the short way round
                change = (change * period + period / 2) % period - period / 2
            binned.append(np.rint(change / bin_width))
        assert_same_distribution(binned[0], binned[1], f"{what} change")
        if what == "hue":
            assert np.abs(binned[0]).max() >= 40 / bin_width - 1  # the full range, in OpenCV's 2-degree units


# ---------------------------------------------------------------- DeviceBatches


def loader_batches(images: np.ndarray, labels: np.ndarray, batches: TrainBatches,
                   augment: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dataset = AugmentedDataset(images, labels, build_train_transform(augment, MEAN, STD), seed=batches.seed)
    return list(DataLoader(dataset, batch_sampler=batches, num_workers=0))


@pytest.mark.parametrize(("epoch", "start_step"), [(0, 0), (3, 2)])
def test_device_batches_follow_the_dataloader(images: np.ndarray, epoch: int, start_step: int) -> None:
    n = 50
    images = images[:n]
    labels = np.arange(n, dtype=np.int64)  # a label per image: labels name the indices
    for rank in (0, 1):
        def sampler(rank: int = rank) -> TrainBatches:
            batches = TrainBatches(n, seed=5, batch_size=16, grad_accum=2, rank=rank, world_size=2)
            batches.set_epoch(epoch, start_step)
            return batches

        expected = loader_batches(images, labels, sampler(), "none")
        plain = DeviceBatches(images, labels, sampler(), BatchAugment("none", MEAN, STD, seed=5, n=n), "cpu")
        augmented_batches = sampler()
        augment = BatchAugment("standard", MEAN, STD, seed=5, n=n)
        augmented = DeviceBatches(images, labels, augmented_batches, augment, "cpu")
        assert len(plain) == len(augmented) == len(expected) == (3 - start_step) * 2
        got, got_augmented = list(plain), list(augmented)
        assert len(got) == len(got_augmented) == len(expected)
        for (inputs, labels_out), (augmented_inputs, _), (loader_inputs, loader_labels) in zip(
                got, got_augmented, expected, strict=True):
            assert labels_out.dtype == torch.int64 and torch.equal(labels_out, loader_labels)
            torch.testing.assert_close(inputs, loader_inputs, rtol=0, atol=1e-6)
            direct = augment(torch.from_numpy(images[labels_out.numpy()]), epoch, labels_out)
            torch.testing.assert_close(augmented_inputs, direct, rtol=0, atol=0)


def test_device_batches_refuse_a_sampler_of_another_size(images: np.ndarray) -> None:
    labels = np.zeros(len(images), np.int64)
    with pytest.raises(ValueError, match="64 training images, but the sampler covers 50 and the augmentation 64"):
        DeviceBatches(images, labels, TrainBatches(50, 0, 8), BatchAugment("standard", MEAN, STD, 0, 64), "cpu")


def test_as_run_hole_draws_match_albumentations(images: np.ndarray) -> None:
    """seed002_as_run's holes (CoarseDropout's 2.x defaults: 1-2 holes, sides int(32 * U(0.1, 0.2)), black, p 0.5)
    over thousands of draws: how often, how much of the image and where, against albumentations."""
    settings = dataclasses.replace(AUGMENT_PRESETS["seed002_as_run"], hflip_p=0.0, affine_p=0.0)
    ours, theirs = both_pipelines(settings, images[0])  # its pixels are 1..255: the holes are the zeros
    rows = np.arange(32)
    summaries = []
    for name, out in (("ours", ours), ("albumentations", theirs)):
        hole = (out == 0).all(axis=-1)
        assert ((out == images[0]).all(axis=-1) | hole).all(), name  # nothing else changes
        has_hole = hole.any(axis=(1, 2))
        assert_rate(has_hole, 0.5, f"{name} cutout")
        area = hole[has_hole].sum(axis=(1, 2))
        assert 9 <= area.min() and area.max() <= 72, name  # 3x3 to two 6x6
        centre_row = (hole[has_hole] * rows[:, None]).sum(axis=(1, 2)) / area
        summaries.append((area, centre_row))
    for what, position in (("hole area", 0), ("hole centre row", 1)):
        assert_same_distribution(summaries[0][position], summaries[1][position], what)


def test_one_pipeline_per_epoch_draws_each_epochs_probabilities_and_nothing_else_may_differ() -> None:
    both = dataclasses.replace(NOTHING, affine_p=1.0, cutout_p=1.0, hflip_p=0.5)
    pipelines = fade_out(both, 4, 0.0)  # keep 7/8, 5/8, 3/8, 1/8
    augment = BatchAugment(pipelines, MEAN, STD, seed=0, n=20000)
    for epoch, keep in enumerate((7 / 8, 5 / 8, 3 / 8, 1 / 8)):
        params = augment.params(epoch)
        assert abs(params.affine.float().mean().item() - keep) < 0.02
        assert abs(params.cutout.float().mean().item() - keep) < 0.02
        assert abs(params.flip.float().mean().item() - 0.5) < 0.02
    # An epoch's draws are those of its own pipeline given alone: one per epoch changes nothing else.
    alone = BatchAugment(pipelines[2], MEAN, STD, seed=0, n=20000).params(2)
    assert torch.equal(augment.params(2).table(), alone.table())
    with pytest.raises(ValueError, match="differ only in their affine and cutout probabilities"):
        BatchAugment([both, dataclasses.replace(both, rotate=5.0)], MEAN, STD, seed=0, n=10)
