"""cifar.optim: weight-decay groups, optimizer construction and the weight average of --ema."""

import pytest
import torch
from torch import nn

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cifar.optim import OPTIMIZERS, build_optimizer, debiased_ema_update, fix_norm_scales, param_groups
from cifar.schedulers import build_schedule


class Tiny(nn.Module):
    """Conv with bias, BatchNorm, GroupNorm, linear with bias, and a weight shared by two layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 5)
        self.tied = nn.Linear(4, 5)
        self.tied.weight = self.fc.weight


def ids(params):
    return sorted(id(p) for p in params)


def test_norm_weights_and_biases_get_no_decay_and_every_parameter_appears_once():
    model = Tiny()
    groups = param_groups(model, 5e-4)
    decay, no_decay = groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert ids(decay["params"]) == ids([model.conv.weight, model.fc.weight])
    assert ids(no_decay["params"]) == ids([model.conv.bias, model.bn.weight, model.bn.bias, model.gn.weight,
                                           model.gn.bias, model.fc.bias, model.tied.bias])
    everything = [p for group in groups for p in group["params"]]
    assert ids(everything) == ids(model.parameters())
    assert len(set(map(id, everything))) == len(everything)


def test_empty_group_is_left_out():
    groups = param_groups(nn.BatchNorm1d(3), 1e-4)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_settings_reach_every_group(nesterov):
    optimizer = build_optimizer(Tiny(), "sgd", lr=0.05, weight_decay=5e-4, momentum=0.8, nesterov=nesterov)
    assert type(optimizer) is torch.optim.SGD
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4, 0.0]
    for group in optimizer.param_groups:
        assert (group["lr"], group["momentum"], group["nesterov"]) == (0.05, 0.8, nesterov)


def test_adamw_settings_reach_every_group():
    optimizer = build_optimizer(Tiny(), "adamw", lr=1e-3, weight_decay=1e-4, betas=(0.85, 0.99))
    assert type(optimizer) is torch.optim.AdamW
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]
    for group in optimizer.param_groups:
        assert (group["lr"], group["betas"]) == (1e-3, (0.85, 0.99))


def test_no_decay_group_is_not_decayed_by_a_step():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    optimizer = build_optimizer(model, "adamw", lr=0.1, weight_decay=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = list(model.parameters())
    # Zero gradients: only decoupled weight decay can move a parameter.
    assert not torch.equal(before[0], after[0])
    assert all(torch.equal(b, a) for b, a in zip(before[1:], after[1:]))


def test_optimizer_names_constant():
    assert OPTIMIZERS == ("sgd", "adamw")


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="adam"), "unknown optimizer 'adam'; valid: sgd, adamw"),
    (dict(name="sgd", lr=0.0), "lr must be > 0; got 0.0"),
    (dict(name="sgd", weight_decay=-1.0), "weight_decay must be >= 0; got -1.0"),
    (dict(name="sgd", momentum=1.0), "momentum must be in [0, 1); got 1.0"),
    (dict(name="sgd", momentum=0.0, nesterov=True), "nesterov needs momentum > 0; got momentum 0.0"),
    (dict(name="adamw", betas=(0.9, 1.0)), "betas must be two values in [0, 1); got (0.9, 1.0)"),
    (dict(name="sgd", bias_lr_scale=0.0), "bias_lr_scale must be > 0; got 0.0"),
])
def test_bad_values_raise_with_the_value_and_valid_choices(kwargs, message):
    arguments = dict(lr=0.1, weight_decay=0.0) | kwargs
    with pytest.raises(ValueError) as error:
        build_optimizer(Tiny(), **arguments)
    assert str(error.value) == message


def test_bias_lr_scale_multiplies_the_no_decay_groups_lr_and_the_schedule_keeps_the_ratio():
    optimizer = build_optimizer(Tiny(), "sgd", lr=0.1, weight_decay=5e-4, momentum=0.9, bias_lr_scale=64.0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, pytest.approx(6.4)]
    schedule = build_schedule("onecycle", optimizer, total_steps=100)
    for _ in range(30):
        optimizer.step()
        schedule.step()
        weights, biases = (g["lr"] for g in optimizer.param_groups)
        assert biases == pytest.approx(64 * weights)


def test_fixed_norm_scales_never_step_and_stay_in_the_state_dict():
    model = Tiny()
    assert fix_norm_scales(model) == 1  # the BatchNorm; GroupNorm is not a batch norm
    stepped = {id(p) for group in param_groups(model, 5e-4) for p in group["params"]}
    assert id(model.bn.weight) not in stepped and id(model.bn.bias) in stepped and id(model.gn.weight) in stepped
    optimizer = build_optimizer(model, "sgd", lr=0.5, weight_decay=5e-4)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert torch.equal(model.bn.weight, torch.ones(4)) and "bn.weight" in model.state_dict()
    assert not torch.equal(model.bn.bias, torch.zeros(4))


def test_the_ema_averages_only_the_steps_it_has_seen() -> None:
    decay = 0.9
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    ema = AveragedModel(net, multi_avg_fn=debiased_ema_update(decay), use_buffers=True)
    torch_ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    steps = [3.0, -1.0, 2.0, 5.0]
    for step, value in enumerate(steps, start=1):
        with torch.no_grad():
            net[0].weight.fill_(value)
            net[1].num_batches_tracked.fill_(10 * step)
        ema.update_parameters(net)
        torch_ema.update_parameters(net)
        ages = [decay ** (step - i) for i in range(1, step + 1)]
        expected = sum(age * v for age, v in zip(ages, steps)) / sum(ages)
        assert ema.module[0].weight.item() == pytest.approx(expected, rel=1e-6), step
    # torch's keeps decay ** 3 of the first step's 3.0 and reads 2.79; the average of the steps seen is 2.38.
    assert torch_ema.module[0].weight.item() == pytest.approx(decay ** 3 * 3.0 + sum(
        (1 - decay) * decay ** (4 - i) * v for i, v in enumerate(steps[1:], start=2)))
    assert ema.module[0].weight.item() != pytest.approx(torch_ema.module[0].weight.item(), abs=0.1)
    # Integer buffers average too (truncated): the batch counter follows the recent steps.
    assert 20 < ema.module[1].num_batches_tracked.item() <= 40
    assert int(ema.n_averaged) == len(steps)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_the_ema_decay_must_lie_strictly_between_0_and_1(decay: float) -> None:
    with pytest.raises(ValueError, match=f"decay must be in \\(0, 1\\); got {decay}"):
        debiased_ema_update(decay)
