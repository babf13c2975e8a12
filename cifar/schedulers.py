"""LR and momentum schedules, defined per optimizer step.

Each schedule is a pure function of the optimizer step (0-based) and the run's ``total_steps``:
``onecycle_lr``, ``step_lr``, ``cyclic_lr``, ``cosine_lr``, plus ``onecycle_momentum`` and
``cyclic_momentum`` for the two that cycle momentum (beta1 for Adam-family optimizers). :class:`Schedule`
applies one to an optimizer.

Conventions shared by every schedule:

- ``total_steps`` is the number of optimizer steps in the run (epochs × optimizer steps per epoch, counted
  with the global batch and any gradient accumulation), so one global batch gives one schedule on any
  number of processes.
- Lengths that users think of in epochs are fractions of the run (``pct_start``, ``warmup_pct``,
  ``half_cycle_pct``, ``milestones``): k epochs of an E-epoch run is ``k / E``. A fraction ``f`` becomes
  step ``round(f * total_steps)``, except OneCycle's ``pct_start``, which keeps torch's phase boundary
  ``pct_start * total_steps - 1`` so that the values match ``OneCycleLR``.
- ``max_lr`` is the schedule's peak and is the lr the optimizer was built with (:class:`Schedule` reads it
  from each param group, as torch schedulers read ``initial_lr``); the other LR parameters are ratios to it.
  One ``lr`` setting thus serves every schedule.
- Steps at or past ``total_steps`` hold the value of the last step, so an extra step never raises.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

SCHEDULERS = ("onecycle", "step", "cyclic", "cosine")

Anneal = Callable[[float, float, float], float]


def _require(ok: bool, name: str, value: object, valid: str) -> None:
    """Raise the ValueError for a bad parameter, quoting the value and what is valid."""
    if not ok:
        raise ValueError(f"{name} must be {valid}; got {value!r}")


def _position(step: int, total_steps: int) -> int:
    """The validated step, held at the run's last step once the run is over."""
    _require(isinstance(total_steps, int) and total_steps >= 1, "total_steps", total_steps, "an integer >= 1")
    _require(isinstance(step, int) and step >= 0, "step", step, "an integer >= 0")
    return min(step, total_steps - 1)


def _steps(fraction: float, total_steps: int) -> int:
    """The step a fraction of the run falls on, halves rounded up (Python's round() would go to even)."""
    return math.floor(fraction * total_steps + 0.5)


def _require_momentum_range(base_momentum: float, max_momentum: float) -> None:
    _require(0 <= base_momentum <= max_momentum < 1, "(base_momentum, max_momentum)",
             (base_momentum, max_momentum), "0 <= base_momentum <= max_momentum < 1")


def _anneal_cos(start: float, end: float, pct: float) -> float:
    """Cosine from ``start`` (pct 0) to ``end`` (pct 1), written as torch's OneCycleLR writes it."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _anneal_linear(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


_ANNEALS: dict[str, Anneal] = {"cos": _anneal_cos, "linear": _anneal_linear}


def _anneal(name: str) -> Anneal:
    _require(name in _ANNEALS, "anneal", name, f"one of {', '.join(_ANNEALS)}")
    return _ANNEALS[name]


def _two_phase(step: float, peak_step: float, last_step: int, start: float, peak: float, end: float,
               rise: Anneal, fall: Anneal) -> float:
    """``start`` at step 0, ``rise`` to ``peak`` at ``peak_step``, then ``fall`` to ``end`` at ``last_step``.

    ``peak_step`` may be fractional or negative, as in torch's OneCycleLR; a rise of zero length starts at
    the peak (where OneCycleLR divides by zero).
    """
    if step <= peak_step:
        return rise(start, peak, step / peak_step if peak_step > 0 else 1.0)
    return fall(peak, end, (step - peak_step) / (last_step - peak_step))


def _triangle(step: int, half_cycle: int) -> float:
    """0 at the start of each cycle, 1 after ``half_cycle`` steps, back to 0 after ``2 * half_cycle``."""
    return 1.0 - abs(step % (2 * half_cycle) / half_cycle - 1.0)


def _half_cycle(half_cycle_pct: float, total_steps: int) -> int:
    _require(0 < half_cycle_pct <= 1, "half_cycle_pct", half_cycle_pct, "in (0, 1]")
    return max(1, _steps(half_cycle_pct, total_steps))


def onecycle_lr(step: int, total_steps: int, max_lr: float, pct_start: float = 0.3, div_factor: float = 25.0,
                final_div_factor: float = 1e4, anneal: str = "cos") -> float:
    """torch's two-phase OneCycleLR: ``max_lr / div_factor`` up to ``max_lr`` at step
    ``pct_start * total_steps - 1``, then down to ``max_lr / div_factor / final_div_factor`` at the last step."""
    step = _position(step, total_steps)
    _require(max_lr > 0, "max_lr", max_lr, "> 0")
    _require(0 < pct_start < 1, "pct_start", pct_start, "in (0, 1)")
    _require(div_factor > 0, "div_factor", div_factor, "> 0")
    _require(final_div_factor > 0, "final_div_factor", final_div_factor, "> 0")
    shape = _anneal(anneal)
    start = max_lr / div_factor
    return _two_phase(step, pct_start * total_steps - 1, total_steps - 1, start, max_lr, start / final_div_factor,
                      shape, shape)


def onecycle_momentum(step: int, total_steps: int, pct_start: float = 0.3, base_momentum: float = 0.85,
                      max_momentum: float = 0.95, anneal: str = "cos") -> float:
    """OneCycleLR's momentum: ``max_momentum`` down to ``base_momentum`` at the LR peak and back, inverse to the LR."""
    step = _position(step, total_steps)
    _require(0 < pct_start < 1, "pct_start", pct_start, "in (0, 1)")
    _require_momentum_range(base_momentum, max_momentum)
    shape = _anneal(anneal)
    return _two_phase(step, pct_start * total_steps - 1, total_steps - 1, max_momentum, base_momentum, max_momentum,
                      shape, shape)


def step_lr(step: int, total_steps: int, max_lr: float, milestones: Sequence[float] = (0.5, 0.75),
            gamma: float = 0.1) -> float:
    """``max_lr``, multiplied by ``gamma`` from each milestone on, as torch's MultiStepLR (StepLR is the case of
    evenly spaced milestones). Milestones are increasing fractions of the run."""
    step = _position(step, total_steps)
    _require(max_lr > 0, "max_lr", max_lr, "> 0")
    _require(all(0 < m < 1 for m in milestones) and all(a < b for a, b in zip(milestones, milestones[1:])),
             "milestones", milestones, "increasing fractions of the run in (0, 1)")
    _require(gamma > 0, "gamma", gamma, "> 0")
    passed = sum(step >= _steps(m, total_steps) for m in milestones)
    return max_lr * gamma**passed


def cyclic_lr(step: int, total_steps: int, max_lr: float, div_factor: float = 100.0,
              half_cycle_pct: float = 0.08) -> float:
    """torch's triangular CyclicLR with equal halves: from ``max_lr / div_factor`` up to ``max_lr`` over
    ``half_cycle_pct`` of the run, and down again (at lr 1e-2 the defaults' base_lr is 1e-4)."""
    step = _position(step, total_steps)
    _require(max_lr > 0, "max_lr", max_lr, "> 0")
    _require(div_factor >= 1, "div_factor", div_factor, ">= 1")
    base_lr = max_lr / div_factor
    return base_lr + (max_lr - base_lr) * _triangle(step, _half_cycle(half_cycle_pct, total_steps))


def cyclic_momentum(step: int, total_steps: int, half_cycle_pct: float = 0.08, base_momentum: float = 0.8,
                    max_momentum: float = 0.9) -> float:
    """CyclicLR's momentum: ``max_momentum`` where the LR is lowest, ``base_momentum`` where it peaks."""
    step = _position(step, total_steps)
    _require_momentum_range(base_momentum, max_momentum)
    return max_momentum - (max_momentum - base_momentum) * _triangle(step, _half_cycle(half_cycle_pct, total_steps))


def cosine_lr(step: int, total_steps: int, max_lr: float, warmup_pct: float = 0.05, div_factor: float = 25.0,
              final_div_factor: float = 1e4) -> float:
    """Linear warm-up from ``max_lr / div_factor`` to ``max_lr`` at step ``round(warmup_pct * total_steps)``,
    then cosine decay to ``max_lr / div_factor / final_div_factor`` at the last step (OneCycle's end points).
    Equals torch's LinearLR then CosineAnnealingLR chained by SequentialLR."""
    step = _position(step, total_steps)
    _require(max_lr > 0, "max_lr", max_lr, "> 0")
    _require(0 <= warmup_pct < 1, "warmup_pct", warmup_pct, "in [0, 1)")
    _require(div_factor > 0, "div_factor", div_factor, "> 0")
    _require(final_div_factor > 0, "final_div_factor", final_div_factor, "> 0")
    start = max_lr / div_factor
    peak_step = min(_steps(warmup_pct, total_steps), total_steps - 1)
    return _two_phase(step, peak_step, total_steps - 1, start, max_lr, start / final_div_factor,
                      _anneal_linear, _anneal_cos)


# Arguments the caller of a schedule's functions supplies; the rest of their keywords are the schedule's parameters.
_POSITIONAL = ("step", "total_steps", "max_lr")


@dataclass(frozen=True)
class _Kind:
    """A schedule's pure functions."""

    lr: Callable[..., float]
    momentum: Callable[..., float] | None = None

    def functions(self) -> list[Callable[..., float]]:
        return [self.lr] if self.momentum is None else [self.lr, self.momentum]


_KINDS = {
    "onecycle": _Kind(onecycle_lr, onecycle_momentum),
    "step": _Kind(step_lr),
    "cyclic": _Kind(cyclic_lr, cyclic_momentum),
    "cosine": _Kind(cosine_lr),
}


def _kind(name: str) -> _Kind:
    if name not in _KINDS:
        raise ValueError(f"unknown scheduler {name!r}; valid: {', '.join(sorted(SCHEDULERS))}")
    return _KINDS[name]


def _call(function: Callable[..., float], step: int, total_steps: int, params: dict[str, Any], **fixed: float) -> float:
    """``function`` with the entries of ``params`` it takes: momentum and LR functions share some parameters."""
    names = inspect.signature(function).parameters
    return function(step, total_steps, **fixed, **{k: v for k, v in params.items() if k in names})


def schedule_defaults(name: str) -> dict[str, Any]:
    """The parameters of schedule ``name`` and their defaults, e.g. for a command line to list or parse."""
    defaults = {}
    for function in _kind(name).functions():
        for param in inspect.signature(function).parameters.values():
            if param.name not in _POSITIONAL:
                defaults[param.name] = param.default
    return defaults


def check_schedule(name: str, params: dict[str, Any], total_steps: int = 1000) -> None:
    """Raise ValueError, quoting the value and what is valid, unless ``params`` are parameters of schedule
    ``name`` with values it accepts over ``total_steps`` steps (a setting can be checked before the run's
    length is known: the checks of values do not depend on it)."""
    valid = schedule_defaults(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for scheduler {name!r}; "
                         f"valid: {', '.join(f'{k} (default {v!r})' for k, v in sorted(valid.items()))}")
    # Evaluate every function once so that a bad value fails here rather than at some later step.
    kind = _kind(name)
    try:
        for function in kind.functions():
            _call(function, 0, total_steps, params, **({"max_lr": 1.0} if function is kind.lr else {}))
    except TypeError as error:
        raise ValueError(f"a parameter of scheduler {name!r} has the wrong type ({error}); got {params!r}") from error


def schedule_lr(name: str, step: int, total_steps: int, max_lr: float, **params: Any) -> float:
    """The lr of schedule ``name`` at optimizer ``step``: the value :class:`Schedule` sets, e.g. to plot it."""
    return _call(_kind(name).lr, step, total_steps, params, max_lr=max_lr)


def _momentum_key(optimizer: Optimizer) -> str:
    """The param-group entry that holds momentum: SGD's ``momentum`` or Adam's ``betas`` (beta1)."""
    for key in ("momentum", "betas"):
        if key in optimizer.defaults:
            return key
    raise ValueError(f"cycle_momentum needs an optimizer with momentum or betas; got {type(optimizer).__name__} "
                     "(pass cycle_momentum=False)")


class Schedule(LRScheduler):
    """Sets a named schedule's lr, and momentum or beta1 where it cycles them, on every param group.

    The position in the schedule is the number of optimizer steps the optimizer has completed, counted by an
    optimizer post-step hook, not the number of :meth:`step` calls. :meth:`step` catches up with that count
    and changes nothing until the next optimizer step. This keeps one schedule for one global batch on any
    number of processes even though accelerate's ``AcceleratedScheduler`` calls ``step()`` ``num_processes``
    times per optimizer step (``split_batches=False``), and it keeps the schedule still when an fp16 step is
    skipped or a step only accumulates gradients, because the optimizer then does not step.

    It subclasses ``LRScheduler`` so that ``Accelerator.prepare`` recognizes, wraps and checkpoints it.
    Build it on the plain optimizer, before ``prepare``, and build at most one per optimizer.
    ``state_dict()`` holds only plain values (name, parameters, peaks, step), so a resumed run continues
    exactly; a loaded state replaces the schedule it is loaded into, as torch schedulers' states do.
    """

    def __init__(self, optimizer: Optimizer, name: str, total_steps: int, cycle_momentum: bool = True,
                 **params: Any) -> None:
        self._optimizer_steps = 0
        self._configure(optimizer, name, total_steps, cycle_momentum, params)
        # Records each group's lr as its peak (base_lrs) and applies step 0 through step().
        super().__init__(optimizer)
        optimizer.register_step_post_hook(self._count_optimizer_step)

    def _configure(self, optimizer: Optimizer, name: str, total_steps: int, cycle_momentum: bool,
                   params: dict[str, Any]) -> None:
        """Validate a schedule and adopt it: shared by construction and :meth:`load_state_dict`."""
        check_schedule(name, params, total_steps)
        kind = _kind(name)
        cycled = cycle_momentum and kind.momentum is not None
        self._momentum = _momentum_key(optimizer) if cycled else None
        self._kind = kind
        self.name = name
        self.total_steps = total_steps
        self.cycle_momentum = cycle_momentum
        self.params = dict(params)

    def _count_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self._optimizer_steps += 1

    def get_lr(self) -> list[float]:
        """Each param group's lr at the current position."""
        return [schedule_lr(self.name, self.last_epoch, self.total_steps, max_lr, **self.params)
                for max_lr in self.base_lrs]

    def step(self, epoch: int | None = None) -> None:
        """Set the values for the optimizer's next step. ``epoch`` exists only for the ``LRScheduler``
        signature: the position is the optimizer's step count."""
        if epoch is not None:
            raise ValueError(f"Schedule.step() takes no epoch; got {epoch!r}")
        self.last_epoch = self._optimizer_steps
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        if self._momentum is not None:
            momentum = _call(self._kind.momentum, self.last_epoch, self.total_steps, self.params)
            for group in self.optimizer.param_groups:
                group[self._momentum] = (momentum, *group["betas"][1:]) if self._momentum == "betas" else momentum
        self._last_lr = lrs

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "total_steps": self.total_steps, "cycle_momentum": self.cycle_momentum,
                "params": dict(self.params), "base_lrs": list(self.base_lrs), "step": self._optimizer_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._configure(self.optimizer, state_dict["name"], state_dict["total_steps"],
                        state_dict["cycle_momentum"], state_dict["params"])
        self.base_lrs = list(state_dict["base_lrs"])
        self._optimizer_steps = state_dict["step"]
        self.step()


def build_schedule(name: str, optimizer: Optimizer, total_steps: int, **params: Any) -> Schedule:
    """The schedule ``name`` (one of :data:`SCHEDULERS`) over ``total_steps`` optimizer steps, peaking at the
    optimizer's lr. ``params`` are the schedule's parameters (:func:`schedule_defaults`) and
    ``cycle_momentum`` (default True; onecycle and cyclic only)."""
    return Schedule(optimizer, name, total_steps, **params)
