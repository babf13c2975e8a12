"""cifar.plots: every plot writes a readable PNG atomically, inputs are validated, denormalize inverts Normalize."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from cifar import plots
from cifar.plots import (
    denormalize,
    plot_accuracy,
    plot_confusion_matrix,
    plot_image_grid,
    plot_loss,
    plot_lr,
    plot_runs,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)


def rows(epochs: int = 4, val: bool = True) -> list[dict[str, float]]:
    result = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "train_loss": 2.0 / epoch, "test_loss": 2.1 / epoch,
               "train_acc": 0.2 * epoch, "test_acc": 0.18 * epoch}
        if val:
            row |= {"val_loss": 2.2 / epoch, "val_acc": 0.17 * epoch}
        result.append(row)
    return result


def assert_png(path: Path, min_side: int = 100) -> tuple[int, int]:
    """``path`` is a PNG that PIL decodes, of a plausible size, with no temporary file left beside it."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        width, height = image.size
    assert min_side <= width <= 5000 and min_side <= height <= 5000
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    return width, height


@pytest.mark.parametrize("plot", [plot_loss, plot_accuracy])
@pytest.mark.parametrize("val", [True, False], ids=["with-val", "without-val"])
def test_curves_write_a_png(tmp_path, plot, val):
    path = tmp_path / "nested" / "folder" / "curve.png"  # parent folders are created
    assert plot(rows(val=val), path) == path
    assert_png(path)


def drawn(plot, data, path: Path, monkeypatch) -> tuple[dict[str, tuple[list[float], list[float]]], Figure]:
    """Call ``plot`` and return what it drew: each line's (x, y) by its label, and the figure."""
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, where: figures.append(figure) or save(figure, where))
    assert_png(plot(data, path))
    (figure,) = figures
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in figure.axes[0].lines}
    return lines, figure


def test_curves_draw_val_only_from_rows_that_have_it(tmp_path, monkeypatch):
    data = rows()
    del data[0]["val_loss"], data[2]["val_acc"]
    epochs = [1, 2, 3, 4]
    loss, _ = drawn(plot_loss, data, tmp_path / "loss.png", monkeypatch)
    assert loss == {"train": (epochs, [2.0 / e for e in epochs]), "val": ([2, 3, 4], [2.2 / e for e in (2, 3, 4)]),
                    "test": (epochs, [2.1 / e for e in epochs])}
    accuracy, _ = drawn(plot_accuracy, data, tmp_path / "acc.png", monkeypatch)
    assert accuracy["val"] == ([1, 2, 4], [pytest.approx(17.0 * e) for e in (1, 2, 4)])  # drawn as percentages
    assert accuracy["train"] == (epochs, [pytest.approx(20.0 * e) for e in epochs])
    # Without a validation split, no val line at all.
    assert set(drawn(plot_loss, rows(val=False), tmp_path / "none.png", monkeypatch)[0]) == {"train", "test"}


def test_runs_share_axes_one_colour_per_run_and_fall_back_to_test_without_val(tmp_path, monkeypatch):
    still_training = rows(epochs=2)
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, where: figures.append(figure) or save(figure, where))
    assert_png(plot_runs({"a": rows(), "b": still_training, "c": rows(val=False)}, tmp_path / "runs.png"))
    (figure,) = figures
    held_out, train = ({line.get_label(): line for line in axes.lines} for axes in figure.axes)
    assert list(held_out) == ["a", "b", "c (test)"] and list(train) == ["a", "b", "c"]
    assert list(held_out["b"].get_xdata()) == [1, 2]
    assert list(held_out["c (test)"].get_ydata()) == [pytest.approx(18.0 * e) for e in (1, 2, 3, 4)]
    assert list(train["a"].get_ydata()) == [pytest.approx(20.0 * e) for e in (1, 2, 3, 4)]
    assert all(held_out[name].get_color() == train[name.removesuffix(" (test)")].get_color() for name in held_out)
    assert len({line.get_color() for line in train.values()}) == 3


def test_a_search_of_more_than_ten_runs_gets_a_colour_each(tmp_path, monkeypatch):
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, where: figures.append(figure) or save(figure, where))
    assert_png(plot_runs({f"run{index}": rows() for index in range(13)}, tmp_path / "search.png"))
    (figure,) = figures
    for axes in figure.axes:  # the default cycle has ten colours: an eleventh run would repeat the first's
        assert len({line.get_color() for line in axes.lines}) == 13


@pytest.mark.parametrize(("runs", "message"), [
    ({}, "non-empty mapping"),
    ({"a": []}, "run 'a': rows must be a non-empty sequence"),
    ({"a": [{"epoch": 1, "test_acc": 0.5}]}, "run 'a': no row has 'train_acc'"),
    ({"a": [{"epoch": 1, "val_acc": 55.0, "train_acc": 0.5}]}, "must be a fraction"),
])
def test_runs_reject_bad_input(tmp_path, runs, message):
    with pytest.raises(ValueError, match=message):
        plot_runs(runs, tmp_path / "runs.png")


def test_a_single_epoch_and_a_nan_loss_still_plot(tmp_path):
    data = rows(epochs=1)
    data[0]["train_loss"] = float("nan")
    assert_png(plot_loss(data, tmp_path / "loss.png"))


def test_saving_replaces_an_existing_file_and_accepts_a_str_path(tmp_path):
    path = tmp_path / "loss.png"
    path.write_bytes(b"old")
    assert plot_loss(rows(), str(path)) == path
    assert_png(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png"]


@pytest.mark.parametrize(("data", "message"), [
    ([], r"rows must be a non-empty sequence of per-epoch mappings; got \[\]"),
    ({"epoch": 1}, "rows must be a non-empty sequence"),
    ([{"epoch": 1, "train_loss": 1.0}], r"rows\[0\] has no 'test_loss'; its keys are \['epoch', 'train_loss'\]"),
    ([{"train_loss": 1.0, "test_loss": 1.0}], r"rows\[0\] has no 'epoch'"),
    ([{"epoch": 1, "train_loss": "1.0", "test_loss": 1.0}], r"rows\[0\]\['train_loss'\] must be a number; got '1.0'"),
    ([{"epoch": 1, "train_loss": 1.0, "test_loss": 1.0}, 3], r"rows\[1\] must be a mapping; got 3"),
    ([{"epoch": 1, "train_loss": 1.0, "test_loss": None}], r"rows\[0\]\['test_loss'\] must be a number; got None"),
])
def test_loss_rejects_bad_rows(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        plot_loss(data, tmp_path / "loss.png")
    assert list(tmp_path.iterdir()) == []


def test_accuracy_must_be_a_fraction(tmp_path):
    data = rows()
    data[1]["test_acc"] = 36.0  # a percentage
    with pytest.raises(ValueError, match=r"rows\[1\]\['test_acc'\] must be a fraction in \[0, 1\]; got 36.0"):
        plot_accuracy(data, tmp_path / "acc.png")


def test_lr_writes_a_png(tmp_path):
    steps = np.arange(500)
    lrs = 0.1 * np.sin(np.pi * steps / 500) ** 2
    assert_png(plot_lr(steps, lrs, tmp_path / "lr.png"))
    assert_png(plot_lr([0], [0.1], tmp_path / "one.png"))


@pytest.mark.parametrize(("steps", "lrs", "message"), [
    ([], [], r"steps must be a non-empty 1-D sequence; got shape \(0,\)"),
    ([0, 1, 2], [0.1, 0.2], "lrs must have one value per step; got 2 lrs for 3 steps"),
    ([0.0, 1.0], [0.1, 0.2], "steps must be integers; got dtype float64"),
    ([0, 1], ["a", "b"], "lrs must be numbers; got dtype <U1"),
])
def test_lr_rejects_bad_input(tmp_path, steps, lrs, message):
    with pytest.raises(ValueError, match=message):
        plot_lr(steps, lrs, tmp_path / "lr.png")


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's "invalid value in divide"
def test_confusion_matrix_writes_a_png_including_an_empty_class(tmp_path, monkeypatch):
    """A class with no images is a row of zeros: no division by zero, not even one that only warns."""
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 1000, (10, 10))
    matrix[3] = 0
    with np.errstate(all="raise"):
        _, figure = drawn(lambda m, path: plot_confusion_matrix(m, CLASSES, path), matrix, tmp_path / "cm.png",
                          monkeypatch)
    colours = np.asarray(figure.axes[0].images[0].get_array())
    np.testing.assert_array_equal(colours[3], np.zeros(10))
    np.testing.assert_allclose(colours.sum(axis=1)[np.arange(10) != 3], 1.0)  # other rows: fractions of their class
    counts = [text.get_text() for text in figure.axes[0].texts]
    assert counts == [str(count) for count in matrix.flatten()]


@pytest.mark.parametrize(("matrix", "classes", "message"), [
    (np.zeros((2, 3), dtype=np.int64), ["a", "b"], r"square .*got shape \(2, 3\)"),
    (np.eye(2), ["a", "b"], "integer counts; got dtype float64"),
    (np.eye(2, dtype=np.int64), ["a"], r"classes must be a sequence of 2 names, one per matrix row; got \['a'\]"),
])
def test_confusion_matrix_rejects_bad_input(tmp_path, matrix, classes, message):
    with pytest.raises(ValueError, match=message):
        plot_confusion_matrix(matrix, classes, tmp_path / "cm.png")


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("count", [1, 3, 8, 13])
def test_image_grid_writes_a_png(tmp_path, count):
    titles = [f"{CLASSES[i % 10]}→{CLASSES[(i + 1) % 10]}" for i in range(count)]
    width, height = assert_png(plot_image_grid(random_images(count), titles, tmp_path / "grid.png"), min_side=32)
    if count < 8:  # fewer images than columns: one row only as wide as the images
        single = assert_png(plot_image_grid(random_images(1), titles[:1], tmp_path / "one.png"), min_side=32)
        assert width == pytest.approx(count * single[0], rel=0.1) and height == single[1]


def test_image_grid_wraps_at_columns(tmp_path):
    images = random_images(5)
    wide = assert_png(plot_image_grid(images, ["x"] * 5, tmp_path / "wide.png", columns=5), min_side=32)
    tall = assert_png(plot_image_grid(images, ["x"] * 5, tmp_path / "tall.png", columns=2), min_side=32)
    assert wide[0] > tall[0] and wide[1] < tall[1]


@pytest.mark.parametrize(("images", "titles", "columns", "message"), [
    (random_images(2).astype(np.float32), ["a", "b"], 8, "images must be uint8 .*got dtype float32"),
    (torch.zeros(2, 32, 32, 3, dtype=torch.uint8), ["a", "b"], 8, "images must be a numpy array .*got Tensor"),
    (random_images(2).transpose(0, 3, 1, 2), ["a", "b"], 8, r"NHWC \(N, H, W, 3\) .*got shape \(2, 3, 32, 32\)"),
    (random_images(1)[0], ["a"], 8, r"got shape \(32, 32, 3\)"),
    (random_images(0), [], 8, r"N >= 1; got shape \(0, 32, 32, 3\)"),
    (random_images(2), ["a"], 8, r"titles must be a sequence of 2 strings, one per image; got \['a'\]"),
    (random_images(2), "ab", 8, "titles must be a sequence of 2 strings"),
    (random_images(2), ["a", "b"], 0, "columns must be an int >= 1; got 0"),
    (random_images(2), ["a", "b"], 2.5, "columns must be an int >= 1; got 2.5"),
])
def test_image_grid_rejects_bad_input(tmp_path, images, titles, columns, message):
    with pytest.raises(ValueError, match=message):
        plot_image_grid(images, titles, tmp_path / "grid.png", columns=columns)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "torch"])
def test_denormalize_inverts_albumentations_normalize(as_tensor):
    images = random_images(6, seed=1)
    normalize = A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0)
    normalized = np.stack([normalize(image=image)["image"] for image in images]).transpose(0, 3, 1, 2)
    batch = torch.from_numpy(normalized) if as_tensor else normalized
    restored = denormalize(batch, MEAN, STD)
    assert restored.dtype == np.uint8 and restored.shape == images.shape
    assert np.abs(restored.astype(np.int64) - images).max() <= 1


def test_denormalize_clips_to_the_pixel_range_and_takes_half_precision():
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    batch = torch.tensor([-5.0, 5.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2).to(torch.bfloat16)
    np.testing.assert_array_equal(denormalize(batch, mean, std)[0, 0, 0], [0, 255, 128])


@pytest.mark.parametrize(("images", "mean", "std", "message"), [
    (np.zeros((2, 3, 4, 4), dtype=np.uint8), MEAN, STD, "floats of normalized values; got dtype uint8"),
    (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), MEAN, STD, "float tensor of normalized values; got dtype torch.uint8"),
    (np.zeros((3, 4, 4), dtype=np.float32), MEAN, STD, r"NCHW \(N, C, H, W\); got shape \(3, 4, 4\)"),
    (np.zeros((2, 3, 4, 4), dtype=np.float32), MEAN[:2], STD, r"one value per channel \(3\); got mean \(0.49, 0.48\)"),
    (np.zeros((2, 3, 4, 4), dtype=np.float32), MEAN, (0.2, 0.0, 0.2),
     r"std must be > 0 in every channel; got \(0.2, 0.0, 0.2\)"),
    ([[0.0]], MEAN, STD, "torch tensor or numpy array; got list"),
])
def test_denormalize_rejects_bad_input(images, mean, std, message):
    with pytest.raises(ValueError, match=message):
        denormalize(images, mean, std)


def test_path_must_be_a_png(tmp_path):
    with pytest.raises(ValueError, match=r"path must end in .png; got '.*loss.pdf'"):
        plot_loss(rows(), tmp_path / "loss.pdf")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(plots.Figure, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        plot_lr([0, 1], [0.1, 0.2], tmp_path / "lr.png")
    assert list(tmp_path.iterdir()) == []


def test_plots_run_in_threads_without_touching_pyplot(tmp_path):
    pyplot_before = sys.modules.get("matplotlib.pyplot")
    figures_before = pyplot_before.get_fignums() if pyplot_before else None
    errors: list[BaseException] = []

    def draw(index: int) -> None:
        try:
            plot_loss(rows(), tmp_path / f"loss{index}.png")
        except BaseException as error:  # surfaced by the assert below; a thread's exception is otherwise lost
            errors.append(error)

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for index in range(4):
        assert_png(tmp_path / f"loss{index}.png")
    # Another test module may have imported pyplot; then at least no figure may have joined its registry.
    if pyplot_before is None:
        assert "matplotlib.pyplot" not in sys.modules
    else:
        assert pyplot_before.get_fignums() == figures_before
