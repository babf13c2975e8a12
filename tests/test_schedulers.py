"""cifar.schedulers: closed forms, torch's own schedulers step by step, state round trips, accelerate's stepping."""

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from cifar.optim import build_optimizer
from cifar.schedulers import (SCHEDULERS, build_schedule, check_schedule, cosine_lr, cyclic_lr, cyclic_momentum,
                              onecycle_lr, onecycle_momentum, schedule_defaults, step_lr)

FUNCTIONS = {"onecycle": onecycle_lr, "step": step_lr, "cyclic": cyclic_lr, "cosine": cosine_lr}


def optimizer(name="sgd", lr=0.1, width=2):
    return build_optimizer(nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width)), name, lr=lr,
                           weight_decay=5e-4)


def momentum_of(group):
    return group["betas"][0] if "betas" in group else group["momentum"]


def run(optimizer, scheduler, steps):
    """(lr, momentum) of every param group at each optimizer step, stepping as a training loop does."""
    values = []
    for _ in range(steps):
        values.append([(g["lr"], momentum_of(g)) for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return np.array(values)


# Closed forms at chosen steps.

def test_onecycle_closed_form():
    # Peak at pct_start * total_steps - 1 = 29; the decay's midpoint is step 64.
    lr = lambda step, **kw: onecycle_lr(step, 100, 0.1, **kw)  # noqa: E731
    assert lr(0) == pytest.approx(0.1 / 25, rel=1e-12)
    assert lr(29) == pytest.approx(0.1, rel=1e-12)
    assert lr(64) == pytest.approx((0.1 + 0.1 / 25 / 1e4) / 2, rel=1e-12)
    assert lr(99) == pytest.approx(0.1 / 25 / 1e4, rel=1e-12)
    assert lr(10, anneal="linear") == pytest.approx(0.004 + (0.1 - 0.004) * 10 / 29, rel=1e-12)
    momentum = lambda step: onecycle_momentum(step, 100)  # noqa: E731
    assert [momentum(0), momentum(29), momentum(64), momentum(99)] == pytest.approx([0.95, 0.85, 0.9, 0.95],
                                                                                  rel=1e-12)


def test_step_closed_form():
    lrs = [step_lr(s, 100, 0.1, milestones=(0.5, 0.75), gamma=0.1) for s in (0, 49, 50, 74, 75, 99)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-12)


def test_cyclic_closed_form():
    # half_cycle_pct 0.1 of 80 steps: 8-step halves, from lr / 100 up to lr and back.
    lrs = [cyclic_lr(s, 80, 1e-2, half_cycle_pct=0.1) for s in (0, 4, 8, 12, 16, 24)]
    assert lrs == pytest.approx([1e-4, (1e-4 + 1e-2) / 2, 1e-2, (1e-4 + 1e-2) / 2, 1e-4, 1e-2], rel=1e-12)
    momenta = [cyclic_momentum(s, 80, half_cycle_pct=0.1) for s in (0, 4, 8, 16)]
    assert momenta == pytest.approx([0.9, 0.85, 0.8, 0.9], rel=1e-12)


def test_cosine_closed_form():
    # 10 warm-up steps (round(0.1 * 101)), then a 90-step cosine whose midpoint is step 55.
    lr = lambda step: cosine_lr(step, 101, 0.1, warmup_pct=0.1)  # noqa: E731
    end = 0.1 / 25 / 1e4
    assert [lr(0), lr(5), lr(10), lr(55), lr(100)] == pytest.approx(
        [0.004, (0.004 + 0.1) / 2, 0.1, (0.1 + end) / 2, end], rel=1e-12)
    assert cosine_lr(0, 50, 0.1, warmup_pct=0.0) == 0.1


@pytest.mark.parametrize("name", SCHEDULERS)
def test_steps_past_the_end_hold_the_last_value(name):
    function = FUNCTIONS[name]
    assert function(57, 57, 0.1) == function(500, 57, 0.1) == function(56, 57, 0.1)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_a_one_step_run_is_defined(name):
    assert FUNCTIONS[name](0, 1, 0.1) > 0


# torch's schedulers, step by step over whole runs.

def assert_same_run(ours, theirs, lr):
    np.testing.assert_allclose(ours[..., 0], theirs[..., 0], rtol=0, atol=1e-12 * lr)
    np.testing.assert_allclose(ours[..., 1], theirs[..., 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("optimizer_name, total, pct_start, anneal", [
    ("sgd", 100, 0.3, "cos"),
    ("adamw", 100, 0.3, "linear"),
    ("sgd", 37, 0.25, "cos"),  # peak between steps: 0.25 * 37 - 1 = 8.25
    ("sgd", 2, 0.3, "cos"),  # peak before step 0
])
def test_onecycle_matches_torch(optimizer_name, total, pct_start, anneal):
    opt = optimizer(optimizer_name, lr=0.05)
    ours = run(opt, build_schedule("onecycle", opt, total, pct_start=pct_start, anneal=anneal), total)
    opt = optimizer(optimizer_name, lr=0.05)
    theirs = run(opt, lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=total, pct_start=pct_start,
                                              anneal_strategy=anneal), total)
    assert_same_run(ours, theirs, 0.05)


def test_step_matches_torch_multistep_and_step():
    opt = optimizer()
    ours = run(opt, build_schedule("step", opt, 100, milestones=(0.3, 0.6, 0.9), gamma=0.5), 100)
    opt = optimizer()
    assert_same_run(ours, run(opt, lr_scheduler.MultiStepLR(opt, milestones=[30, 60, 90], gamma=0.5), 100), 0.1)

    opt = optimizer()
    ours = run(opt, build_schedule("step", opt, 100, milestones=(0.2, 0.4, 0.6, 0.8), gamma=0.1), 100)
    opt = optimizer()
    assert_same_run(ours, run(opt, lr_scheduler.StepLR(opt, step_size=20, gamma=0.1), 100), 0.1)


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_cyclic_matches_torch_seed_recipe(optimizer_name):
    # Seed 003: base_lr 1e-4, max_lr 1e-2, equal 4-epoch halves (here 0.08 of 100 steps), momentum 0.8-0.9.
    opt = optimizer(optimizer_name, lr=1e-2)
    ours = run(opt, build_schedule("cyclic", opt, 100), 100)
    opt = optimizer(optimizer_name, lr=1e-2)
    theirs = run(opt, lr_scheduler.CyclicLR(opt, base_lr=1e-4, max_lr=1e-2, step_size_up=8, step_size_down=8,
                                            base_momentum=0.8, max_momentum=0.9), 100)
    assert_same_run(ours, theirs, 1e-2)


@pytest.mark.parametrize("warmup_pct", [0.0, 0.1])
def test_cosine_matches_torch_linear_then_cosine(warmup_pct):
    total, warmup, end = 120, round(warmup_pct * 120), 0.1 / 25 / 1e4
    opt = optimizer()
    ours = run(opt, build_schedule("cosine", opt, total, warmup_pct=warmup_pct), total)
    opt = optimizer()
    cosine = lr_scheduler.CosineAnnealingLR(opt, T_max=total - 1 - warmup, eta_min=end)
    if warmup:
        warm = lr_scheduler.LinearLR(opt, start_factor=1 / 25, total_iters=warmup)
        cosine = lr_scheduler.SequentialLR(opt, [warm, cosine], milestones=[warmup])
    assert_same_run(ours, run(opt, cosine, total), 0.1)


@pytest.mark.parametrize("name", ["onecycle", "cyclic"])
@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_momentum_or_beta1_is_cycled_only_when_asked(name, optimizer_name):
    opt = optimizer(optimizer_name)
    cycled = run(opt, build_schedule(name, opt, 50), 50)[..., 1]
    assert cycled.min() < cycled.max()
    opt = optimizer(optimizer_name)
    still = run(opt, build_schedule(name, opt, 50, cycle_momentum=False), 50)[..., 1]
    assert (still == 0.9).all()
    if optimizer_name == "adamw":
        assert all(group["betas"][1] == 0.999 for group in opt.param_groups)


@pytest.mark.parametrize("name", ["step", "cosine"])
def test_schedules_without_a_momentum_cycle_leave_momentum_alone(name):
    opt = optimizer()
    assert (run(opt, build_schedule(name, opt, 20), 20)[..., 1] == 0.9).all()


# The schedule depends only on the optimizer step.

@pytest.mark.parametrize("name", SCHEDULERS)
def test_resumed_run_continues_exactly(name):
    total, cut = 60, 23
    opt = optimizer()
    whole = run(opt, build_schedule(name, opt, total), total)

    opt = optimizer()
    schedule = build_schedule(name, opt, total)
    first = run(opt, schedule, cut)
    # Through torch.save and a weights-only load, as accelerate's save_state/load_state do.
    buffer = io.BytesIO()
    torch.save(schedule.state_dict(), buffer)
    buffer.seek(0)
    # A fresh optimizer and schedule, built with other settings, adopt the saved schedule.
    fresh = optimizer(lr=0.7)
    schedule = build_schedule("step", fresh, 5)
    schedule.load_state_dict(torch.load(buffer, weights_only=True))
    rest = run(fresh, schedule, total - cut)
    np.testing.assert_array_equal(np.concatenate([first, rest]), whole)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_values_depend_only_on_the_step(name):
    """Same lr and momentum for the same total steps and peak, whatever the optimizer, the model, or how
    often step() is called between optimizer steps; the pure function gives the same values."""
    total = 40
    opt = optimizer("sgd")
    plain = run(opt, build_schedule(name, opt, total), total)[:, 0]
    other = optimizer("adamw", width=7)
    schedule = build_schedule(name, other, total)
    values = []
    for _ in range(total):
        values.append([(g["lr"], momentum_of(g)) for g in other.param_groups])
        other.step()
        for _ in range(3):
            schedule.step()
    np.testing.assert_array_equal(np.array(values)[:, 0], plain)
    np.testing.assert_array_equal(plain[:, 0], [FUNCTIONS[name](s, total, 0.1) for s in range(total)])


def test_schedule_stands_still_without_an_optimizer_step():
    opt = optimizer()
    schedule = build_schedule("onecycle", opt, 10)
    first = schedule.get_last_lr()
    for _ in range(5):
        schedule.step()
    assert schedule.get_last_lr() == first == [opt.param_groups[0]["lr"]] * 2
    opt.step()
    schedule.step()
    assert schedule.get_last_lr() == [onecycle_lr(1, 10, 0.1)] * 2


@pytest.mark.parametrize("split_batches", [False, True])
def test_accelerated_scheduler_on_four_processes_keeps_the_schedule(monkeypatch, split_batches):
    """accelerate steps a wrapped scheduler num_processes times per optimizer step unless split_batches:
    the schedule must still advance once per optimizer step."""
    accelerate_scheduler = pytest.importorskip("accelerate.scheduler")
    monkeypatch.setattr(accelerate_scheduler, "AcceleratorState", lambda: SimpleNamespace(num_processes=4))
    gradient_state = SimpleNamespace(sync_gradients=True, adjust_scheduler=True)
    monkeypatch.setattr(accelerate_scheduler, "GradientState", lambda: gradient_state)
    total = 30
    opt = optimizer()
    expected = run(opt, build_schedule("onecycle", opt, total), total)

    opt = optimizer()
    wrapped = accelerate_scheduler.AcceleratedScheduler(
        build_schedule("onecycle", opt, total), SimpleNamespace(step_was_skipped=False), split_batches=split_batches)
    values = []
    for _ in range(total):
        # A micro-step that only accumulates gradients: no optimizer step; accelerate bumps _step_count.
        gradient_state.sync_gradients = False
        wrapped.step()
        gradient_state.sync_gradients = True
        values.append([(g["lr"], momentum_of(g)) for g in opt.param_groups])
        opt.step()
        wrapped.step()
    np.testing.assert_array_equal(np.array(values), expected)
    assert wrapped.state_dict()["step"] == total


def test_accelerate_prepare_recognizes_the_schedule():
    assert isinstance(build_schedule("cosine", optimizer(), 10), lr_scheduler.LRScheduler)


# Parameters and errors.

def test_schedule_defaults_list_every_parameter():
    assert schedule_defaults("onecycle") == dict(pct_start=0.3, div_factor=25.0, final_div_factor=1e4,
                                                 anneal="cos", base_momentum=0.85, max_momentum=0.95)
    assert set(schedule_defaults("cyclic")) == {"div_factor", "half_cycle_pct", "base_momentum", "max_momentum"}
    assert SCHEDULERS == ("onecycle", "step", "cyclic", "cosine")


@pytest.mark.parametrize("call, message", [
    (lambda: build_schedule("foo", optimizer(), 10), "unknown scheduler 'foo'; valid: cosine, cyclic, onecycle, step"),
    (lambda: build_schedule("cosine", optimizer(), 0), "total_steps must be an integer >= 1; got 0"),
    (lambda: build_schedule("cosine", optimizer(), 10.0), "total_steps must be an integer >= 1; got 10.0"),
    (lambda: build_schedule("onecycle", optimizer(), 10, pct_start=1.0), "pct_start must be in (0, 1); got 1.0"),
    (lambda: build_schedule("onecycle", optimizer(), 10, anneal="exp"), "anneal must be one of cos, linear; got 'exp'"),
    (lambda: build_schedule("onecycle", optimizer(), 10, max_lr=0.1),
     "unknown parameter(s) max_lr for scheduler 'onecycle'; valid: anneal (default 'cos'), base_momentum (default "
     "0.85), div_factor (default 25.0), final_div_factor (default 10000.0), max_momentum (default 0.95), pct_start "
     "(default 0.3)"),
    (lambda: build_schedule("step", optimizer(), 10, milestones=0.5),
     "a parameter of scheduler 'step' has the wrong type ('float' object is not iterable); got {'milestones': 0.5}"),
    (lambda: build_schedule("step", optimizer(), 10, milestones=(15, 25)),
     "milestones must be increasing fractions of the run in (0, 1); got (15, 25)"),
    (lambda: build_schedule("cyclic", optimizer(), 10, base_momentum=0.95),
     "(base_momentum, max_momentum) must be 0 <= base_momentum <= max_momentum < 1; got (0.95, 0.9)"),
    (lambda: build_schedule("cyclic", optimizer(), 10, half_cycle_pct=0.0),
     "half_cycle_pct must be in (0, 1]; got 0.0"),
    (lambda: build_schedule("cosine", optimizer(), 10, warmup_pct=1.0), "warmup_pct must be in [0, 1); got 1.0"),
    (lambda: onecycle_lr(-1, 10, 0.1), "step must be an integer >= 0; got -1"),
    (lambda: step_lr(0, 10, 0.0), "max_lr must be > 0; got 0.0"),
    (lambda: build_schedule("step", optimizer(), 10).step(3), "Schedule.step() takes no epoch; got 3"),
    (lambda: build_schedule("onecycle", torch.optim.Adagrad(nn.Linear(2, 2).parameters()), 10),
     "cycle_momentum needs an optimizer with momentum or betas; got Adagrad (pass cycle_momentum=False)"),
])
def test_bad_names_and_values_raise_with_the_value_and_valid_choices(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


def test_bad_value_fails_before_the_optimizer_is_touched():
    opt = optimizer()
    with pytest.raises(ValueError):
        build_schedule("onecycle", opt, 10, pct_start=0.0)
    assert opt.param_groups[0]["lr"] == 0.1 and "initial_lr" not in opt.param_groups[0]


def test_momentum_free_optimizer_works_without_momentum_cycling():
    opt = torch.optim.Adagrad(nn.Linear(2, 2).parameters(), lr=0.1)
    schedule = build_schedule("onecycle", opt, 10, cycle_momentum=False)
    assert schedule.get_last_lr() == [pytest.approx(0.004, rel=1e-12)]


@pytest.mark.parametrize("name, params", [("onecycle", {"final_div_factor": 1e3, "pct_start": 0.25}),
                                          ("step", {"milestones": [0.8], "gamma": 0.5}),
                                          ("cyclic", {"half_cycle_pct": 0.01, "base_momentum": 0.7})])
def test_check_schedule_accepts_what_build_schedule_accepts(name, params):
    check_schedule(name, params)
    build_schedule(name, optimizer(), 100, **params)


@pytest.mark.parametrize("name, params", [("step", {"final_div_factor": 1e3}), ("onecycle", {"pct_start": 2.0}),
                                          ("cyclic", {"base_momentum": 0.95}), ("nope", {})])
def test_check_schedule_rejects_what_build_schedule_rejects(name, params):
    with pytest.raises(ValueError) as checked:
        check_schedule(name, params)
    with pytest.raises(ValueError) as built:
        build_schedule(name, optimizer(), 100, **params)
    assert str(checked.value) == str(built.value)
