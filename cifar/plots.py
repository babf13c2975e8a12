"""PNG plots of a run: loss and accuracy curves, the LR schedule, the confusion matrix, and image grids; and the
accuracy curves of several runs side by side.

Figures are built as ``matplotlib.figure.Figure`` objects on an Agg canvas, never through pyplot, so nothing
touches matplotlib's global figure registry or backend: the functions run headless and from any thread, and a
figure is freed with its last reference. Each function validates its inputs, writes the PNG atomically (a
temporary file in the destination folder, then a rename, so a reader or a killed run never sees half a PNG),
creates missing parent folders, and returns the path written.

Image grids take one input type, uint8 NHWC RGB; :func:`denormalize` turns the training pipeline's normalized
float NCHW batches back into it.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from cifar.files import write_atomic
from cifar.metrics import _check_matrix

_DPI = 120
# The tab10 colours of the default cycle, fixed per split so train/val/test look the same in every plot.
_SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:green", "test": "tab:orange"}


def plot_loss(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Train, test and (where rows have it) val loss against epoch, from per-epoch rows as in metrics.jsonl.

    Every row needs ``epoch``, ``train_loss`` and ``test_loss``; ``val_loss`` is drawn from the rows that have
    it, so a run without a validation split has no val line. A NaN loss (a diverged epoch) leaves a gap.
    """
    return _plot_curves(rows, path, "loss", title="loss", ylabel="loss", percent=False)


def plot_accuracy(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Train, test and optional val accuracy against epoch, as :func:`plot_loss` but for ``*_acc`` keys.

    Accuracies are fractions in [0, 1] (as metrics.jsonl stores them) and are drawn as percentages.
    """
    return _plot_curves(rows, path, "acc", title="accuracy", ylabel="accuracy (%)", percent=True)


def plot_runs(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    """Several runs' accuracy curves on shared axes, one line per run labelled by its name: held-out accuracy
    on the left (``val_acc``, or ``test_acc`` for a run whose rows have no validation split, marked "(test)"),
    augmented training accuracy (``train_acc``) on the right. ``runs`` maps names to per-epoch rows as in
    metrics.jsonl; a run still training draws the epochs it has."""
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError(f"runs must be a non-empty mapping of run names to per-epoch rows; got {runs!r}")
    figure = _new_figure((11.0, 4.2))
    held_out, train = figure.subplots(1, 2, sharex=True)
    for name, rows, colour in zip(runs, runs.values(), _distinct_colours(len(runs))):
        if isinstance(rows, (str, Mapping)) or not isinstance(rows, Sequence) or not rows:
            raise ValueError(f"run {name!r}: rows must be a non-empty sequence of per-epoch mappings; got {rows!r}")
        split = "val" if any(isinstance(row, Mapping) and "val_acc" in row for row in rows) else "test"
        held_out.plot(*_accuracy_series(rows, f"{split}_acc", name), marker="o", markersize=2, color=colour,
                      label=name if split == "val" else f"{name} (test)")
        train.plot(*_accuracy_series(rows, "train_acc", name), marker="o", markersize=2, label=name, color=colour)
    titles = {held_out: "held-out accuracy: validation split, or test where marked",
              train: "augmented training accuracy"}
    for axes, title in titles.items():
        axes.set_xlabel("epoch")
        axes.set_ylabel("accuracy (%)")
        axes.set_title(title)
        axes.grid(alpha=0.3)
    held_out.legend(fontsize="small")
    return _save(figure, path)


def _distinct_colours(count: int) -> list[str]:
    """One colour per run: the default cycle's ten, or tab20's twenty where a search compares more (the cycle
    would repeat a colour, and two runs would read as one). More than twenty repeat."""
    palette = [to_hex(rgb) for rgb in matplotlib.colormaps["tab10" if count <= 10 else "tab20"].colors]
    return [palette[index % len(palette)] for index in range(count)]


def _accuracy_series(rows: Sequence[Mapping[str, Any]], key: str, name: str) -> tuple[list[float], list[float]]:
    """Epochs and ``key`` as percentages, from the rows that have ``key``."""
    epochs, values = [], []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"run {name!r}: rows[{index}] must be a mapping; got {row!r}")
        if key not in row:
            continue
        value = _number(row, key, index)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"run {name!r}: rows[{index}][{key!r}] must be a fraction in [0, 1]; got {value!r}")
        epochs.append(_number(row, "epoch", index))
        values.append(100.0 * value)
    if not values:
        raise ValueError(f"run {name!r}: no row has {key!r}")
    return epochs, values


def plot_lr(steps: Sequence[int], lrs: Sequence[float], path: Path) -> Path:
    """The learning rate against the optimizer step; ``steps`` and ``lrs`` are equal-length and non-empty."""
    step_values = np.asarray(steps)
    lr_values = np.asarray(lrs)
    if step_values.ndim != 1 or step_values.size == 0:
        raise ValueError(f"steps must be a non-empty 1-D sequence; got shape {step_values.shape}")
    if step_values.dtype == np.bool_ or not np.issubdtype(step_values.dtype, np.integer):
        raise ValueError(f"steps must be integers; got dtype {step_values.dtype}")
    if lr_values.shape != step_values.shape:
        raise ValueError(f"lrs must have one value per step; got {lr_values.size} lrs for {step_values.size} steps")
    if lr_values.dtype == np.bool_ or not np.issubdtype(lr_values.dtype, np.number):
        raise ValueError(f"lrs must be numbers; got dtype {lr_values.dtype}")
    figure, axes = _figure((6.4, 4.0))
    axes.plot(step_values, lr_values, color=_SPLIT_COLOURS["train"])
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("learning rate")
    axes.set_title("learning rate schedule")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """The confusion matrix (rows true, columns predicted, as :func:`cifar.metrics.confusion_matrix`).

    Each cell shows its count; its colour is the count as a fraction of its true class (its row), so classes
    with different numbers of images share one scale. A class with no images is drawn as a row of zeros.
    """
    matrix = _check_matrix(matrix)
    n = len(matrix)
    if isinstance(classes, str) or len(classes) != n:
        raise ValueError(f"classes must be a sequence of {n} names, one per matrix row; got {classes!r}")
    totals = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0)
    figure, axes = _figure((1.6 + 0.6 * n, 1.2 + 0.6 * n))
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="fraction of true class", shrink=0.8)
    for (true, predicted), count in np.ndenumerate(matrix):
        # White on the dark half of the colour map keeps every count readable.
        colour = "white" if fractions[true, predicted] > 0.5 else "black"
        axes.text(predicted, true, str(count), ha="center", va="center", fontsize=7, color=colour)
    axes.set_xticks(range(n), labels=[str(name) for name in classes], rotation=45, ha="right")
    axes.set_yticks(range(n), labels=[str(name) for name in classes])
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title("confusion matrix")
    return _save(figure, path)


# Blank pixel rows above each image for its title, and pixel columns between images.
_TITLE_ROWS, _GAP = 12, 4


def plot_image_grid(images: np.ndarray, titles: Sequence[str], path: Path, columns: int = 8) -> Path:
    """uint8 NHWC RGB ``images`` in a grid ``columns`` wide, each under its title (e.g. ``"cat→dog"``).

    Fewer images than ``columns`` give a single row just as wide as the images. Pixels are shown
    nearest-neighbour, without smoothing, so 32x32 images stay sharp when scaled up.
    """
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a numpy array (see denormalize for tensors); got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (see denormalize for float batches); got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[3] != 3:
        raise ValueError(f"images must be NHWC (N, H, W, 3) RGB with N >= 1; got shape {images.shape}")
    if isinstance(titles, str) or len(titles) != len(images):
        raise ValueError(f"titles must be a sequence of {len(images)} strings, one per image; got {titles!r}")
    if isinstance(columns, bool) or not isinstance(columns, numbers.Integral) or columns < 1:
        raise ValueError(f"columns must be an int >= 1; got {columns!r}")
    width = min(int(columns), len(images))
    height = math.ceil(len(images) / width)
    # One mosaic in one Axes: a subplot per image costs seconds of layout for a 64-image grid.
    rows, cols = images.shape[1:3]
    cell_h, cell_w = rows + _TITLE_ROWS, cols + _GAP
    mosaic = np.full((height * cell_h, width * cell_w - _GAP, 3), 255, np.uint8)
    figure = _new_figure((1.3 * width, 1.45 * height))
    axes = figure.add_subplot()
    for cell, image in enumerate(images):
        top, left = (cell // width) * cell_h + _TITLE_ROWS, (cell % width) * cell_w
        mosaic[top:top + rows, left:left + cols] = image
        axes.text(left + cols / 2, top - 1, str(titles[cell]), ha="center", va="bottom", fontsize=8)
    axes.imshow(mosaic, interpolation="nearest")
    axes.set_axis_off()
    return _save(figure, path)


def denormalize(images: torch.Tensor | np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalized float NCHW images back to uint8 NHWC, the input of :func:`plot_image_grid`.

    Inverts albumentations' ``Normalize(mean, std, max_pixel_value=255)``, i.e. ``(x / 255 - mean) / std``
    with ``mean``/``std`` per channel in [0, 1] units (as :mod:`cifar.augment` builds it). Values are rounded
    and clipped to 0..255, since augmentations such as cutout or colour jitter can leave the range slightly.
    """
    if isinstance(images, torch.Tensor):
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor of normalized values; got dtype {images.dtype}")
        # float() first: numpy has no bfloat16, and half precision would lose more than one grey level.
        images = images.detach().float().cpu().numpy()
    elif not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a torch tensor or numpy array; got {type(images).__name__}")
    elif not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floats of normalized values; got dtype {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"images must be NCHW (N, C, H, W); got shape {images.shape}")
    channels = images.shape[1]
    mean_values = np.asarray(mean, dtype=np.float64)
    std_values = np.asarray(std, dtype=np.float64)
    if mean_values.shape != (channels,) or std_values.shape != (channels,):
        raise ValueError(f"mean and std must have one value per channel ({channels}); got mean {mean!r}, std {std!r}")
    if not (std_values > 0).all():
        raise ValueError(f"std must be > 0 in every channel; got {std!r}")
    pixels = (images * std_values[:, None, None] + mean_values[:, None, None]) * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _plot_curves(rows: Sequence[Mapping[str, Any]], path: Path, metric: str, title: str, ylabel: str,
                 percent: bool) -> Path:
    """Shared body of plot_loss and plot_accuracy: ``train_<metric>`` and ``test_<metric>`` in every row,
    ``val_<metric>`` in those that have it."""
    if isinstance(rows, (str, Mapping)) or not isinstance(rows, Sequence) or not rows:
        raise ValueError(f"rows must be a non-empty sequence of per-epoch mappings; got {rows!r}")
    scale = 100.0 if percent else 1.0
    figure, axes = _figure((6.4, 4.0))
    for split in ("train", "val", "test"):
        key = f"{split}_{metric}"
        required = split != "val"
        epochs, values = [], []
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ValueError(f"rows[{index}] must be a mapping; got {row!r}")
            if key not in row and not required:
                continue
            epochs.append(_number(row, "epoch", index))
            value = _number(row, key, index)
            if percent and not 0.0 <= value <= 1.0:
                raise ValueError(f"rows[{index}][{key!r}] must be a fraction in [0, 1]; got {value!r}")
            values.append(scale * value)
        if values:
            axes.plot(epochs, values, marker="o", markersize=3, label=split, color=_SPLIT_COLOURS[split])
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def _number(row: Mapping[str, Any], key: str, index: int) -> float:
    """``row[key]`` as a float, after checking it is there and is a real number (not a bool or string)."""
    if key not in row:
        raise ValueError(f"rows[{index}] has no {key!r}; its keys are {sorted(row)}")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"rows[{index}][{key!r}] must be a number; got {value!r}")
    return float(value)


def _new_figure(size: tuple[float, float]) -> Figure:
    figure = Figure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas: Agg renders the PNG, with no pyplot backend
    return figure


def _figure(size: tuple[float, float]) -> tuple[Figure, Any]:
    """A new figure with one set of axes."""
    figure = _new_figure(size)
    return figure, figure.add_subplot()


def _save(figure: Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` as a PNG atomically, creating parent folders; returns ``path``."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png; got {str(path)!r}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())
