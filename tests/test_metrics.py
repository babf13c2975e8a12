"""cifar.metrics: confusion matrix, per-class accuracy and the per-class table, against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifar.metrics import confusion_matrix, per_class_accuracy, per_class_table

# Three classes; class 2 never occurs as a label but is predicted once.
LABELS = [0, 0, 0, 1, 1]
PREDICTIONS = [0, 1, 0, 1, 2]
EXPECTED = np.array([[2, 1, 0],
                     [0, 1, 1],
                     [0, 0, 0]])


@pytest.mark.parametrize("convert", [np.array, torch.tensor], ids=["numpy", "torch"])
def test_confusion_matrix_rows_are_true_class_columns_predicted(convert):
    matrix = confusion_matrix(convert(PREDICTIONS), convert(LABELS), 3)
    assert matrix.dtype == np.int64 and matrix.shape == (3, 3)
    np.testing.assert_array_equal(matrix, EXPECTED)


def test_confusion_matrix_accepts_any_integer_dtype_and_empty_input():
    matrix = confusion_matrix(np.array(PREDICTIONS, dtype=np.uint8), np.array(LABELS, dtype=np.int32), 3)
    np.testing.assert_array_equal(matrix, EXPECTED)
    empty = confusion_matrix(np.array([], dtype=np.int64), torch.tensor([], dtype=torch.int64), 4)
    np.testing.assert_array_equal(empty, np.zeros((4, 4), dtype=np.int64))


@pytest.mark.parametrize(("predictions", "labels", "num_classes", "message"), [
    (np.array([0, 1]), np.array([0, 1, 1]), 3, "same length; got 2 predictions and 3 labels"),
    (np.array([[0, 1]]), np.array([0, 1]), 3, r"predictions must be 1-D; got shape \(1, 2\)"),
    (np.array([0, 1]), torch.zeros(2, 1, dtype=torch.int64), 3, r"labels must be 1-D; got shape \(2, 1\)"),
    (np.array([0, 1]), np.array([0, 3]), 3, r"labels must be in \[0, 3\); got 1 outside it, e.g. 3"),
    (np.array([-1, 1]), np.array([0, 1]), 3, r"predictions must be in \[0, 3\); got 1 outside it, e.g. -1"),
    (np.array([0.0, 1.0]), np.array([0, 1]), 3, "predictions must hold integer class indices; got dtype float64"),
    (np.array([0, 1]), torch.tensor([0.0, 1.0]), 3, "labels must hold integer class indices; got dtype torch.float32"),
    (np.array([True, False]), np.array([0, 1]), 3, "integer class indices; got dtype bool"),
    ([0, 1], np.array([0, 1]), 3, "numpy array or torch tensor; got list"),
    (np.array([0]), np.array([0]), 0, "num_classes must be an int >= 1; got 0"),
    (np.array([0]), np.array([0]), 2.0, "num_classes must be an int >= 1; got 2.0"),
])
def test_confusion_matrix_rejects_bad_input(predictions, labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(predictions, labels, num_classes)


def test_per_class_accuracy_is_diagonal_over_row_sums_and_zero_for_an_absent_class():
    accuracy = per_class_accuracy(EXPECTED)
    assert accuracy.dtype == np.float64
    np.testing.assert_allclose(accuracy, [2 / 3, 1 / 2, 0.0])
    assert not np.isnan(per_class_accuracy(np.zeros((2, 2), dtype=np.int64))).any()


@pytest.mark.parametrize(("matrix", "message"), [
    (np.zeros((2, 3), dtype=np.int64), r"square .*got shape \(2, 3\)"),
    (np.zeros((0, 0), dtype=np.int64), r"num_classes >= 1; got shape \(0, 0\)"),
    (np.zeros(3, dtype=np.int64), r"got shape \(3,\)"),
    (np.eye(2), "integer counts; got dtype float64"),
    (np.array([[1, -1], [0, 2]]), "counts must be >= 0; got minimum -1"),
    ([[1, 0], [0, 1]], "numpy array; got list"),
])
def test_matrix_functions_reject_bad_matrices(matrix, message):
    with pytest.raises(ValueError, match=message):
        per_class_accuracy(matrix)
    with pytest.raises(ValueError, match=message):
        per_class_table(matrix, ["a"] * 2)


def test_per_class_table_lists_each_class_and_a_total_at_overall_accuracy():
    table = per_class_table(EXPECTED, ["cat", "dog", "frog"])
    lines = table.splitlines()
    assert lines[0].split() == ["class", "images", "correct", "accuracy", "%"]
    assert [line.split() for line in lines if not line.startswith(("class", "-"))] == [
        ["cat", "3", "2", "66.67"],
        ["dog", "2", "1", "50.00"],
        ["frog", "0", "0", "0.00"],
        ["total", "5", "3", "60.00"],  # 3 of 5, not the mean of the per-class accuracies (38.89)
    ]
    assert not table.endswith("\n")
    # Columns line up: every line is as wide as the header.
    assert len({len(line) for line in lines}) == 1


def test_per_class_table_of_an_empty_matrix_has_zero_total_accuracy():
    table = per_class_table(np.zeros((2, 2), dtype=np.int64), ["a", "b"])
    assert table.splitlines()[-1].split() == ["total", "0", "0", "0.00"]


@pytest.mark.parametrize("classes", [["cat", "dog"], "abc", ["a", "b", "c", "d"]])
def test_per_class_table_needs_one_name_per_class(classes):
    with pytest.raises(ValueError, match="classes must be a sequence of 3 names, one per matrix row; got"):
        per_class_table(EXPECTED, classes)
