"""Classification metrics from predictions: the confusion matrix, per-class accuracy, and a per-class table.

Everything here is a pure function of its arguments. ``confusion_matrix`` takes numpy arrays or torch tensors
(on any device) of class indices; the other functions take its result. Rows are the true class and columns
the predicted class, so ``matrix[i, j]`` counts images of class ``i`` predicted as ``j``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def confusion_matrix(predictions: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                     num_classes: int) -> np.ndarray:
    """int64 ``(num_classes, num_classes)`` counts: rows are the true class, columns the predicted class.

    ``predictions`` and ``labels`` are 1-D integer class indices of equal length, each in
    ``[0, num_classes)``. Empty inputs give a matrix of zeros.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1; got {num_classes!r}")
    predicted = _class_indices(predictions, "predictions", num_classes)
    true = _class_indices(labels, "labels", num_classes)
    if predicted.shape != true.shape:
        raise ValueError(f"predictions and labels must have the same length; got {predicted.shape[0]} "
                         f"predictions and {true.shape[0]} labels")
    # One bincount over the flattened (true, predicted) pair index counts every cell in a single pass.
    counts = np.bincount(true * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """float64 accuracy (a fraction in [0, 1]) of each true class: the diagonal over the row sums.

    A class with no images (an all-zero row) gets 0.0, not NaN, so the result can be averaged, logged and
    plotted as is; ``matrix.sum(axis=1)`` tells such a class apart from one that got every image wrong.
    """
    matrix = _check_matrix(matrix)
    totals = matrix.sum(axis=1)
    correct = np.diagonal(matrix).astype(np.float64)
    return np.divide(correct, totals, out=np.zeros(len(matrix), dtype=np.float64), where=totals > 0)


def per_class_table(matrix: np.ndarray, classes: Sequence[str]) -> str:
    """A plain-text table, one line per class then a total line: class, images, correct, accuracy %.

    The total line's accuracy is the overall accuracy (all correct over all images), not the mean of the
    per-class accuracies; the two differ when classes have different numbers of images. A class with no
    images shows 0.00%, as in :func:`per_class_accuracy`. No trailing newline.
    """
    matrix = _check_matrix(matrix)
    if isinstance(classes, str) or len(classes) != len(matrix):
        raise ValueError(f"classes must be a sequence of {len(matrix)} names, one per matrix row; "
                         f"got {classes!r}")
    totals = matrix.sum(axis=1)
    correct = np.diagonal(matrix)
    accuracy = per_class_accuracy(matrix)
    all_images, all_correct = int(totals.sum()), int(correct.sum())
    rows = [(str(name), str(int(n)), str(int(c)), f"{100 * a:.2f}")
            for name, n, c, a in zip(classes, totals, correct, accuracy)]
    rows.append(("total", str(all_images), str(all_correct),
                 f"{100 * all_correct / all_images if all_images else 0.0:.2f}"))
    header = ("class", "images", "correct", "accuracy %")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        # Names read left-aligned, numbers right-aligned so their digits line up.
        return "  ".join([cells[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:])])

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(row) for row in rows[:-1]), rule, line(rows[-1])])


def _class_indices(values: np.ndarray | torch.Tensor, name: str, num_classes: int) -> np.ndarray:
    """``values`` as a 1-D int64 numpy array, after checking it holds class indices in ``[0, num_classes)``."""
    if isinstance(values, torch.Tensor):
        # numpy has no bfloat16, so a float tensor is refused here rather than failing inside .numpy().
        if values.is_floating_point() or values.is_complex():
            raise ValueError(f"{name} must hold integer class indices; got dtype {values.dtype}")
        values = values.detach().cpu().numpy()
    elif not isinstance(values, np.ndarray):
        raise ValueError(f"{name} must be a numpy array or torch tensor; got {type(values).__name__}")
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {tuple(values.shape)}")
    # bool is an integer dtype to numpy but never a class index; floats would be silently truncated.
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices; got dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        bad = values[(values < 0) | (values >= num_classes)]
        raise ValueError(f"{name} must be in [0, {num_classes}); got {bad.size} outside it, e.g. {bad[0]}")
    return values.astype(np.int64, copy=False)


def _check_matrix(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` after checking it is a square, non-empty, non-negative integer count matrix."""
    if not isinstance(matrix, np.ndarray):
        raise ValueError(f"matrix must be a numpy array; got {type(matrix).__name__}")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"matrix must be square (num_classes, num_classes) with num_classes >= 1; "
                         f"got shape {matrix.shape}")
    if matrix.dtype == np.bool_ or not np.issubdtype(matrix.dtype, np.integer):
        raise ValueError(f"matrix must hold integer counts; got dtype {matrix.dtype}")
    if (matrix < 0).any():
        raise ValueError(f"matrix counts must be >= 0; got minimum {matrix.min()}")
    return matrix
