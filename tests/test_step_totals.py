"""The step totals: packed per step, read one step late, all of them before anything is saved."""

import math

import pytest
import torch

from cifar.step_totals import LaggedTotals, StepTotals, add_batch, add_stop_flags, new_totals


def step_totals(loss: float, stop: bool = False) -> torch.Tensor:
    totals = new_totals(torch.device("cpu"))
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
    add_batch(totals, torch.full((3,), loss / 3, dtype=torch.float64), logits, torch.tensor([0, 1, 1]))
    add_stop_flags(totals, stop, requeue=False, interrupted=stop)
    return totals


def _read_all(tensors: list[torch.Tensor]) -> list[StepTotals]:
    lagged = LaggedTotals(lag=1)
    for step, tensor in enumerate(tensors, start=1):
        lagged.push(step, 0.1, tensor)
    return list(lagged.ready(drain=True))


def test_a_batch_adds_its_loss_sum_correct_count_and_images() -> None:
    [step] = _read_all([step_totals(1.5)])
    assert (step.loss_sum, step.correct, step.count) == (pytest.approx(1.5), 2.0, 3.0)
    assert (step.stops, step.requeues, step.interrupts) == (0.0, 0.0, 0.0)


def test_steps_are_read_one_late_in_order_and_all_when_drained() -> None:
    lagged = LaggedTotals(lag=1)
    lagged.push(1, 0.1, step_totals(1.0))
    assert list(lagged.ready()) == []          # the newest step stays queued
    lagged.push(2, 0.2, step_totals(2.0, stop=True))
    [first] = lagged.ready()
    assert (first.step, first.lr, first.stops) == (1, 0.1, 0.0)
    assert len(lagged) == 1
    [second] = lagged.ready(drain=True)
    assert (second.step, second.lr, second.stops, second.interrupts) == (2, 0.2, 1.0, 1.0)
    assert len(lagged) == 0


def test_a_non_finite_loss_survives_the_packing() -> None:
    [step] = _read_all([step_totals(float("nan"))])
    assert not math.isfinite(step.loss_sum)


def test_a_negative_lag_is_refused() -> None:
    with pytest.raises(ValueError, match="-1"):
        LaggedTotals(lag=-1)
