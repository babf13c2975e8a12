"""Augmentation presets, the pipelines they build, and reproducible per-sample randomness."""

from __future__ import annotations

import dataclasses
import pickle
import warnings

import albumentations as A
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cifar.augment import (
    ALBUMENTATIONS_DEFAULTS,
    AUGMENT_PRESETS,
    AugmentedDataset,
    AugmentSettings,
    TrainBatches,
    PlainDataset,
    augment_settings,
    build_test_transform,
    build_train_transform,
    epoch_permutation,
    fade_out,
    steps_per_epoch,
)

MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)
SEED_PRESETS = [f"seed00{i}" for i in range(5)]
# Every step off: tests switch on the one they look at.
NOTHING = AugmentSettings(hflip_p=0.0, affine_p=0.0, cutout_p=0.0)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(1, 256, (48, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def labels(images: np.ndarray) -> np.ndarray:
    return np.arange(len(images), dtype=np.int64) % 10


def pixels(tensor: torch.Tensor, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> np.ndarray:
    """A normalized CHW tensor back in uint8 HWC pixel units."""
    image = tensor.numpy().transpose(1, 2, 0) * np.array(std) + np.array(mean)
    return np.rint(image * 255).astype(np.int64)


def step_names(augment: str | AugmentSettings) -> list[str]:
    return [type(step).__name__ for step in build_train_transform(augment, MEAN, STD).transforms]


# ---------------------------------------------------------------- presets and settings


def test_presets_are_named_like_the_nets() -> None:
    assert set(AUGMENT_PRESETS) == {"standard", "light", "light_crop", "none", *SEED_PRESETS, "seed002_as_run",
                                    "seed_16px"}


def test_presets_build_the_seeds_pipelines_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # deprecated albumentations APIs or arguments warn
        for name in AUGMENT_PRESETS:
            build_train_transform(name, MEAN, STD)
        build_test_transform(MEAN, STD)
    three = ["HorizontalFlip", "Affine", "CoarseDropout", "Normalize"]
    for name in ("standard", "seed000", "seed001", "seed002", "seed002_as_run", "seed004", "seed_16px"):
        assert step_names(name) == three, name
    assert step_names("none") == ["Normalize"]
    assert step_names("light_crop") == [
        "PadIfNeeded", "RandomCrop", "HorizontalFlip", "Affine", "CoarseDropout", "Normalize",
    ]  # fmt: skip
    assert step_names("seed003") == [
        "PadIfNeeded", "RandomCrop", "HorizontalFlip", "Affine",
        "RandomBrightnessContrast", "HueSaturationValue", "CoarseDropout", "Normalize",
    ]  # fmt: skip
    seed002 = build_train_transform("seed002", MEAN, STD).transforms
    assert [step.p for step in seed002] == [0.5, 0.7, 0.5, 1.0]
    seed003 = build_train_transform("seed003", MEAN, STD).transforms
    assert (seed003[0].min_height, seed003[0].min_width) == (36, 36)
    assert seed003[3].rotate == (-15, 15)
    assert [step.p for step in seed003[4:6]] == [0.5, 0.5]


def test_unknown_preset_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown augment preset 'seed009': choose one of standard, light, "
                                         "light_crop, none, seed000"):
        augment_settings("seed009")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hflip_p", 1.5, r"hflip_p=1.5 is out of range: expected a probability in \[0, 1\]"),
        ("cutout_size", (0, 16), r"cutout_size=\(0, 16\) is not a \(low, high\) range in whole pixels"),
        ("cutout_size", (16, 12), r"cutout_size=\(16, 12\) is not a \(low, high\) range in whole pixels"),
        ("cutout_size", (0.2, 0.1), r"cutout_size=\(0.2, 0.1\) is not a \(low, high\) range of fractions"),
        ("cutout_size", (0.5, 16.0), r"cutout_size=\(0.5, 16.0\) is not a \(low, high\) range in whole pixels"),
        ("cutout_size", 16, r"cutout_size=16 is not a \(low, high\) range of fractions"),
        ("cutout_holes", (2, 1), r"cutout_holes=\(2, 1\) is not \(fewest, most\) holes"),
        ("cutout_holes", (1, 9), r"cutout_holes=\(1, 9\) is not \(fewest, most\) holes"),
        ("cutout_fill", "grey", r"cutout_fill='grey' is not one of \['black', 'mean'\]"),
        ("keep_ratio", 1, "keep_ratio=1 is not True or False"),
        ("pad", 2.5, "pad=2.5 is not an integer"),
        ("border", "wrap", r"border='wrap' is not one of \['constant', 'reflect'\]"),
    ],
)
def test_bad_settings_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentSettings(**{field: value})  # type: ignore[arg-type]


def test_bad_statistics_are_refused() -> None:
    with pytest.raises(ValueError, match=r"mean and std must be 3 per-channel values in \[0, 1\] units"):
        build_test_transform((125.3, 123.0, 113.9), STD)


# ---------------------------------------------------------------- output


def test_items_are_normalized_float32_chw(images: np.ndarray, labels: np.ndarray) -> None:
    expected = (images[5] / 255.0 - np.array(MEAN)) / np.array(STD)
    train = AugmentedDataset(images, labels, build_train_transform("none", MEAN, STD), seed=0)
    test = PlainDataset(images, labels, build_test_transform(MEAN, STD))
    for tensor, label in (train[(3, 5)], test[5]):
        assert tensor.dtype == torch.float32 and tensor.shape == (3, 32, 32) and tensor.is_contiguous()
        assert label == 5 and isinstance(label, int)
        np.testing.assert_allclose(tensor.numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_an_index_instead_of_a_key_is_refused_with_the_fix(images: np.ndarray, labels: np.ndarray) -> None:
    dataset = AugmentedDataset(images, labels, build_train_transform("standard", MEAN, STD), seed=0)
    with pytest.raises(TypeError, match=r"keyed by \(epoch, index\), got 3: .*TrainBatches"):
        dataset[3]


def test_augmenting_leaves_the_source_images_alone(images: np.ndarray, labels: np.ndarray) -> None:
    before = images.copy()
    settings = dataclasses.replace(AUGMENT_PRESETS["seed003"], hflip_p=1.0, affine_p=1.0, color_p=1.0, cutout_p=1.0)
    dataset = AugmentedDataset(images, labels, build_train_transform(settings, MEAN, STD), seed=0)
    for index in range(len(images)):
        dataset[(0, index)]
    np.testing.assert_array_equal(images, before)


# ---------------------------------------------------------------- reproducibility


def run_epochs(
    dataset: AugmentedDataset, sampler: TrainBatches, epochs: list[int], **loader: object
) -> list[torch.Tensor]:
    batches = DataLoader(dataset, batch_sampler=sampler, **loader)  # type: ignore[arg-type]
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out.append(torch.cat([x for x, _ in batches]))
    return out


def test_a_sample_is_the_same_whatever_the_workers_and_batch_size(images: np.ndarray, labels: np.ndarray) -> None:
    dataset = AugmentedDataset(images, labels, build_train_transform("seed003", MEAN, STD), seed=11)
    serial = run_epochs(dataset, TrainBatches(len(images), 11, batch_size=5), [0, 1], num_workers=0)
    parallel = run_epochs(
        dataset, TrainBatches(len(images), 11, batch_size=8), [0, 1], num_workers=2, persistent_workers=True
    )
    for epoch in (0, 1):
        torch.testing.assert_close(parallel[epoch], serial[epoch], rtol=0, atol=0)
        # And the same as asking for the keys one by one, in the epoch's order.
        order = epoch_permutation(11, epoch, len(images))
        direct = torch.stack([dataset[(epoch, int(index))][0] for index in order])
        torch.testing.assert_close(direct, serial[epoch], rtol=0, atol=0)
    assert not torch.equal(serial[0], serial[1])


def test_same_key_repeats_other_epoch_and_seed_differ(images: np.ndarray, labels: np.ndarray) -> None:
    transform = build_train_transform("standard", MEAN, STD)
    dataset = AugmentedDataset(images, labels, transform, seed=3)
    other_seed = AugmentedDataset(images, labels, transform, seed=4)
    for index in range(len(images)):
        torch.testing.assert_close(dataset[(2, index)][0], dataset[(2, index)][0], rtol=0, atol=0)
    differ_epoch = sum(not torch.equal(dataset[(2, i)][0], dataset[(3, i)][0]) for i in range(len(images)))
    differ_seed = sum(not torch.equal(dataset[(2, i)][0], other_seed[(2, i)][0]) for i in range(len(images)))
    # Each of flip, affine, cutout fires with p=0.5: both draws leave an image untouched 1/64 of the time.
    assert differ_epoch >= len(images) - 4 and differ_seed >= len(images) - 4


def test_a_pickled_copy_gives_the_same_samples(images: np.ndarray, labels: np.ndarray) -> None:
    # What spawn- and forkserver-started DataLoader workers receive.
    dataset = AugmentedDataset(images, labels, build_train_transform("seed003", MEAN, STD), seed=2)
    copy = pickle.loads(pickle.dumps(dataset))
    for index in range(8):
        torch.testing.assert_close(copy[(1, index)][0], dataset[(1, index)][0], rtol=0, atol=0)


def test_epoch_permutation_is_a_pure_function() -> None:
    order = epoch_permutation(5, 2, 1000)
    assert sorted(order.tolist()) == list(range(1000))
    np.testing.assert_array_equal(epoch_permutation(5, 2, 1000), order)
    assert not np.array_equal(epoch_permutation(5, 3, 1000), order)
    assert not np.array_equal(epoch_permutation(6, 2, 1000), order)
    sampler = TrainBatches(1000, 5, batch_size=1000)
    sampler.set_epoch(2)
    assert list(sampler) == [[(2, int(index)) for index in order]] and len(sampler) == 1


@pytest.mark.parametrize(("n", "batch", "accum", "world", "steps"),
                         [(100, 32, 1, 1, 4), (100, 32, 2, 2, 4), (100, 32, 1, 5, 3), (96, 32, 4, 8, 3), (7, 8, 1, 1, 1)])
def test_train_batches_shard_every_step_across_processes(n: int, batch: int, accum: int, world: int,
                                                         steps: int) -> None:
    """The processes' pieces of each step put together are that step's global batch, in the epoch's order."""
    samplers = [TrainBatches(n, 3, batch, accum, rank, world) for rank in range(world)]
    assert {sampler.steps for sampler in samplers} == {steps} == {steps_per_epoch(n, batch, accum * world)}
    for sampler in samplers:
        sampler.set_epoch(4)
    pieces = [list(sampler) for sampler in samplers]
    assert all(len(p) == steps * accum for p in pieces)
    order = epoch_permutation(3, 4, n).tolist()
    for step in range(steps):
        seen = [key for micro in range(accum) for rank in range(world) for key in pieces[rank][step * accum + micro]]
        assert all(key[0] == 4 and key for key in seen)
        assert [index for _, index in seen] == order[step * batch:(step + 1) * batch]
    # Every image once, except a last batch too small to split: then it waits for another epoch's order.
    covered = sorted(index for p in pieces for piece in p for _, index in piece)
    assert covered == sorted(order[:min(n, steps * batch)])


def test_train_batches_resume_at_a_step() -> None:
    whole = TrainBatches(100, 1, 16, grad_accum=2, rank=1, world_size=2)
    whole.set_epoch(1)
    resumed = TrainBatches(100, 1, 16, grad_accum=2, rank=1, world_size=2)
    resumed.set_epoch(1, start_step=4)
    assert list(resumed) == list(whole)[4 * 2:] and len(resumed) == (whole.steps - 4) * 2
    with pytest.raises(ValueError, match="start_step 8"):
        resumed.set_epoch(1, start_step=8)
    with pytest.raises(ValueError, match="no batch of 64"):
        TrainBatches(10, 1, 64, world_size=16)


# ---------------------------------------------------------------- what the steps do


@pytest.mark.parametrize("preset", ["standard", "light", "light_crop", "seed001", "seed002", "seed003", "seed_16px"])
def test_cutout_is_one_16x16_hole_in_the_mean_colour(preset: str) -> None:
    constant = np.full((40, 32, 32, 3), (200, 30, 90), np.uint8)
    settings = dataclasses.replace(AUGMENT_PRESETS[preset], pad=0, hflip_p=0.0, affine_p=0.0, color_p=0.0, cutout_p=1.0)
    dataset = AugmentedDataset(constant, np.zeros(40, np.int64), build_train_transform(settings, MEAN, STD), seed=1)
    corners = set()
    for index in range(len(constant)):
        image = pixels(dataset[(0, index)][0])
        hole = (image != (200, 30, 90)).any(axis=-1)
        rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
        assert hole.sum() == 16 * 16 and len(rows) == 16 and len(cols) == 16
        assert (image[hole] == np.rint(np.array(MEAN) * 255)).all()
        corners.add((rows[0], cols[0]))
    assert len(corners) > 20  # the hole moves


def test_flip_and_affine_fire_with_their_probabilities(images: np.ndarray) -> None:
    n = 2000
    image = images[:1].repeat(n, axis=0)
    flip_only = dataclasses.replace(NOTHING, hflip_p=0.3)
    flip = AugmentedDataset(image, np.zeros(n, np.int64), build_train_transform(flip_only, MEAN, STD), seed=0)
    flipped = sum(np.array_equal(pixels(flip[(0, i)][0]), image[0, :, ::-1]) for i in range(n))
    assert abs(flipped / n - 0.3) < 0.04
    seed002 = dataclasses.replace(AUGMENT_PRESETS["seed002"], hflip_p=0.0, cutout_p=0.0)
    affine = AugmentedDataset(image, np.zeros(n, np.int64), build_train_transform(seed002, MEAN, STD), seed=0)
    moved = sum(not np.array_equal(pixels(affine[(0, i)][0]), image[0]) for i in range(n))
    assert abs(moved / n - 0.7) < 0.04


def test_steps_draw_independent_numbers(images: np.ndarray) -> None:
    # Seeding every step alike (Compose.set_random_seed) makes their coin flips equal: flip and cutout would
    # always come together. They must be independent: both in about a quarter of the samples.
    n = 2000
    image = images[:1].repeat(n, axis=0)  # no zero pixel, so a black hole (mean 0) is easy to find
    settings = dataclasses.replace(NOTHING, hflip_p=0.5, cutout_p=0.5)
    dataset = AugmentedDataset(
        image, np.zeros(n, np.int64), build_train_transform(settings, (0, 0, 0), (1, 1, 1)), seed=0
    )
    both = 0
    for index in range(n):
        out = pixels(dataset[(0, index)][0], (0, 0, 0), (1, 1, 1))
        hole = (out == 0).all(axis=-1)
        both += hole.any() and np.array_equal(out[~hole], image[0, :, ::-1][~hole])
    assert abs(both / n - 0.25) < 0.04


# ---------------------------------------------------------------- the library's own pipelines


def literal_pipeline(*steps: A.BasicTransform) -> A.Compose:
    """A pipeline as a seed write-up would build it with albumentations 2.0.8, normalizing last."""
    return A.Compose([*steps, A.Normalize(mean=MEAN, std=STD)])


def assert_same_samples(ours: A.Compose, theirs: A.Compose, images: np.ndarray) -> None:
    """Both pipelines give every sample the same tensor when seeded alike: the same steps drawing the same numbers.
    Also checks that the samples were augmented (a pipeline that did nothing would match another such)."""
    labels = np.zeros(len(images), np.int64)
    ours_set, theirs_set = (AugmentedDataset(images, labels, pipeline, seed=5) for pipeline in (ours, theirs))
    changed = 0
    for index in range(len(images)):
        sample = ours_set[(0, index)][0]
        torch.testing.assert_close(sample, theirs_set[(0, index)][0], rtol=0, atol=0)
        changed += not np.array_equal(pixels(sample), images[index])
    assert changed > len(images) // 2


@pytest.mark.parametrize("preset", ["seed000", "seed004"])
def test_silent_write_ups_get_albumentations_own_defaults(images: np.ndarray, preset: str) -> None:
    """seed000 and seed004 name flip, ShiftScaleRotate and CoarseDropout without arguments: their presets are what
    the installed albumentations builds from exactly that."""
    assert AUGMENT_PRESETS[preset] == ALBUMENTATIONS_DEFAULTS
    with pytest.warns(UserWarning, match="ShiftScaleRotate is a special case of Affine"):
        theirs = literal_pipeline(A.HorizontalFlip(), A.ShiftScaleRotate(), A.CoarseDropout())
    many = np.concatenate([images] * 6)  # 288 samples: every combination of the three coins many times
    assert_same_samples(build_train_transform(preset, MEAN, STD), theirs, many)


def test_seed002_as_run_is_what_its_log_shows(images: np.ndarray) -> None:
    """seed002's write-up (l.71-74) with the arguments its log shows albumentations 2.x ignoring (l.160-163): the
    two warnings come out word for word, and the pipeline that results is the seed002_as_run preset."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = literal_pipeline(
            A.HorizontalFlip(p=0.5),
            A.ShiftScaleRotate(p=0.7),
            # The arguments l.162 names, with 16x16 holes (l.73) in the mean colour.
            A.CoarseDropout(num_holes=1, max_h_size=16, max_w_size=16, min_h_size=16, min_w_size=16,
                            fill_value=MEAN, p=0.5),
        )
    messages = {str(warning.message) for warning in caught}
    assert messages == {  # 002 l.160 and l.162
        "ShiftScaleRotate is a special case of Affine transform. Please use Affine transform instead.",
        "Argument(s) 'num_holes, max_h_size, max_w_size, min_h_size, min_w_size, fill_value' are not valid for "
        "transform CoarseDropout",
    }
    many = np.concatenate([images] * 6)
    assert_same_samples(build_train_transform("seed002_as_run", MEAN, STD), theirs, many)


def test_as_run_holes_are_one_or_two_black_rectangles_of_3_to_6_pixels(images: np.ndarray) -> None:
    settings = dataclasses.replace(AUGMENT_PRESETS["seed002_as_run"], hflip_p=0.0, affine_p=0.0, cutout_p=1.0)
    n = 400
    many = np.concatenate([images] * (n // len(images) + 1))[:n]  # no zero pixel: a hole is where the zeros are
    dataset = AugmentedDataset(many, np.zeros(n, np.int64), build_train_transform(settings, MEAN, STD), seed=3)
    areas = []
    for index in range(n):
        hole = (pixels(dataset[(0, index)][0]) == 0).all(axis=-1)
        rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
        assert 9 <= hole.sum() <= 72 and 3 <= len(rows) and 3 <= len(cols), index
        areas.append(hole.sum())
    # One hole covers 9 to 36 pixels, a side's mean 4.3 (3 at p 0.25, 4 and 5 at 0.3125, 6 at 0.125), so about 19;
    # half the draws cut two: about 27 on average. Only two holes can cover more than 36.
    areas = np.array(areas)
    assert 24 < areas.mean() < 30 and (areas > 36).mean() > 0.1


def test_fade_out_keeps_the_pipeline_until_its_start_then_lowers_affine_and_cutout_linearly() -> None:
    light = AUGMENT_PRESETS["light"]
    pipelines = fade_out("light", 10, 0.5)
    assert pipelines[:5] == (light,) * 5  # epoch midpoints 0.05 .. 0.45 lie before the start
    keep = [pipeline.affine_p / light.affine_p for pipeline in pipelines[5:]]
    assert keep == pytest.approx([0.9, 0.7, 0.5, 0.3, 0.1])
    assert [p.cutout_p / light.cutout_p for p in pipelines[5:]] == pytest.approx(keep)
    assert all(dataclasses.replace(p, affine_p=light.affine_p, cutout_p=light.cutout_p) == light for p in pipelines)
    assert fade_out("light", 4, 0.0)[0].affine_p == pytest.approx(light.affine_p * 7 / 8)  # from the first epoch
    assert fade_out("light", 1, 0.9) == (light,)  # a one-epoch run's midpoint comes before a late start


@pytest.mark.parametrize(("epochs", "start", "message"), [
    (0, 0.5, "positive number of epochs"), (10, 1.0, r"start 1.0 is not a fraction"),
    (10, -0.1, "not a fraction"), (True, 0.5, "positive number of epochs")])
def test_fade_out_rejects_what_is_not_a_schedule(epochs: object, start: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fade_out("light", epochs, start)


def test_a_dataset_with_one_pipeline_per_epoch_uses_the_epochs_own(images: np.ndarray, labels: np.ndarray) -> None:
    always_flip = dataclasses.replace(NOTHING, hflip_p=1.0)
    per_epoch = [build_train_transform(NOTHING, MEAN, STD), build_train_transform(always_flip, MEAN, STD)]
    dataset = AugmentedDataset(images, labels, per_epoch, seed=0)
    assert np.array_equal(pixels(dataset[(0, 3)][0]), images[3])
    assert np.array_equal(pixels(dataset[(1, 3)][0]), images[3, :, ::-1])
    with pytest.raises(ValueError, match="one per epoch"):
        AugmentedDataset(images, labels, [], seed=0)
