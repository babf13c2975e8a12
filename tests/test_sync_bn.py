"""cifar.sync_bn: plain batch norm without a group, one big batch across 2 gloo processes, and the conversion.

The 2-process runs happen once per module (spawning costs seconds) and leave their results in files that the
tests compare with a 1-process run of plain BatchNorm2d on the whole batch.
"""

from __future__ import annotations

import copy
import datetime
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cifar.sync_bn import SyncBatchNorm, convert_sync_batchnorm

WORLD_SIZE = 2
STEPS = 2
LR = 0.5
# name: (samples per rank, momentum); every global batch has 8 samples.
SCENARIOS = {
    "even": ((4, 4), 0.1),
    "even-cumulative": ((4, 4), None),
    "uneven": ((3, 5), 0.1),
}


def _net(momentum: float | None) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6, momentum=momentum), nn.ReLU())


def _train(model: nn.Module, batches: list[torch.Tensor], coeffs: list[torch.Tensor],
           reduce_grads: bool) -> dict:
    """SGD steps on the loss sum_i coeff_i * mean(model(x_i)), a sum over samples, so that the per-process
    gradients add up to the one-process gradient; ``reduce_grads`` sums them across processes (as DDP would,
    up to its averaging)."""
    record: dict = {"out": [], "input_grad": [], "param_grad": []}
    for batch, coeff in zip(batches, coeffs):
        x = batch.clone().requires_grad_()
        out = model(x).mean(dim=(1, 2, 3))
        (out * coeff).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        if reduce_grads:
            for grad in grads.values():
                dist.all_reduce(grad)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p -= LR * grads[name]
                p.grad = None
        record["out"].append(out.detach())
        record["input_grad"].append(x.grad)
        record["param_grad"].append(grads)
    record["state"] = {key: value.clone() for key, value in model.state_dict().items()}
    return record


def _worker(rank: int, port: int, out_dir: Path, init_state: dict, batches: list[torch.Tensor],
            coeffs: list[torch.Tensor]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))
    try:
        for name, (sizes, momentum) in SCENARIOS.items():
            start, stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
            model = _net(momentum)
            model.load_state_dict(init_state)
            model = convert_sync_batchnorm(model)
            assert type(model[1]) is SyncBatchNorm
            record = _train(model, [b[start:stop] for b in batches], [c[start:stop] for c in coeffs],
                            reduce_grads=True)
            torch.save(record, out_dir / f"{name}-{rank}.pt")

        start, stop = rank * 4, rank * 4 + 4
        bn = SyncBatchNorm(4)
        x32 = batches[0][start:stop].clone().requires_grad_()
        x16 = batches[0][start:stop].bfloat16().requires_grad_()
        out32, out16 = bn(x32), bn(x16)
        out16.float().sum().backward()
        torch.save({"out32": out32.detach(), "out16": out16.detach(), "grad16": x16.grad},
                   out_dir / f"bfloat16-{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """For each scenario: the 1-process reference record and the per-rank records; also the bfloat16 run."""
    out_dir = tmp_path_factory.mktemp("sync_bn")
    generator = torch.Generator().manual_seed(0)
    # An offset mean and a spread unlike 1 so that normalizing actually changes the input.
    batches = [torch.randn(8, 4, 5, 5, generator=generator) * 2 + 1 for _ in range(STEPS)]
    coeffs = [torch.rand(8, generator=generator) + 0.5 for _ in range(STEPS)]
    torch.manual_seed(0)
    init = _net(0.1)
    with torch.no_grad():
        init[1].weight.uniform_(0.5, 1.5)
        init[1].bias.uniform_(-0.5, 0.5)
    init_state = init.state_dict()
    mp.spawn(_worker, args=(_free_port(), out_dir, init_state, batches, coeffs), nprocs=WORLD_SIZE)

    results = {}
    for name, (_, momentum) in SCENARIOS.items():
        reference = _net(momentum)
        reference.load_state_dict(init_state)
        results[name] = (_train(reference, batches, coeffs, reduce_grads=False),
                         [torch.load(out_dir / f"{name}-{rank}.pt") for rank in range(WORLD_SIZE)])
    results["bfloat16"] = (batches[0], [torch.load(out_dir / f"bfloat16-{rank}.pt") for rank in range(WORLD_SIZE)])
    return results


def max_differences(reference: dict, ranks: list[dict]) -> dict[str, float]:
    """Largest absolute difference of each recorded quantity between the 1-process run and the ranks."""
    def worst(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        return max((a.double() - b.double()).abs().max().item() for a, b in pairs)

    steps = range(STEPS)
    return {
        "out": worst([(reference["out"][s], torch.cat([r["out"][s] for r in ranks])) for s in steps]),
        "input_grad": worst([(reference["input_grad"][s], torch.cat([r["input_grad"][s] for r in ranks]))
                             for s in steps]),
        "param_grad": worst([(reference["param_grad"][s][name], r["param_grad"][s][name])
                             for s in steps for r in ranks for name in reference["param_grad"][s]]),
        "state": worst([(reference["state"][key], r["state"][key]) for r in ranks for key in reference["state"]]),
    }


def _assert_matches_one_process(reference: dict, ranks: list[dict]) -> None:
    for r in ranks:
        assert list(r["state"]) == list(reference["state"])
        assert r["state"]["1.num_batches_tracked"].item() == STEPS
    differences = max_differences(reference, ranks)
    assert all(difference <= 1e-5 for difference in differences.values()), differences


@pytest.mark.parametrize("momentum", [0.1, None])
def test_without_a_process_group_it_is_plain_batch_norm(momentum: float | None) -> None:
    assert not dist.is_initialized()
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(4, momentum=momentum)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    sync = convert_sync_batchnorm(copy.deepcopy(reference))
    assert type(sync) is SyncBatchNorm

    for training in (True, True, True, False):
        reference.train(training)
        sync.train(training)
        batch = torch.randn(8, 4, 5, 5) * 2 + 1
        upstream = torch.randn(8, 4, 5, 5)
        outputs, input_grads = [], []
        for module in (reference, sync):
            x = batch.clone().requires_grad_()
            out = module(x)
            out.backward(upstream)
            outputs.append(out)
            input_grads.append(x.grad)
        torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(input_grads[1], input_grads[0], rtol=0, atol=1e-6)
        for name in ("weight", "bias"):
            torch.testing.assert_close(getattr(sync, name).grad, getattr(reference, name).grad, rtol=0, atol=1e-6)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(sync, name), getattr(reference, name), rtol=0, atol=1e-6)
    assert sync.num_batches_tracked.item() == 3


@pytest.mark.slow  # spawns the 2 processes (the module's runs fixture)
@pytest.mark.parametrize("scenario", ["even", "even-cumulative"])
def test_two_processes_train_like_one_process_with_the_whole_batch(runs: dict, scenario: str) -> None:
    _assert_matches_one_process(*runs[scenario])


@pytest.mark.slow
def test_uneven_shards_train_like_one_process_with_the_whole_batch(runs: dict) -> None:
    _assert_matches_one_process(*runs["uneven"])


@pytest.mark.slow
def test_bfloat16_input_gives_bfloat16_close_to_float32(runs: dict) -> None:
    torch.manual_seed(0)
    batch = torch.randn(8, 4, 5, 5) * 2 + 1
    bn32, bn16 = SyncBatchNorm(4), SyncBatchNorm(4)
    out32 = bn32(batch)
    x16 = batch.bfloat16().requires_grad_()
    out16 = bn16(x16)
    out16.float().sum().backward()
    assert out16.dtype == x16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, rtol=0, atol=0.05)
    torch.testing.assert_close(bn16.running_var, bn32.running_var, rtol=0, atol=0.01)

    # Across processes the statistics go through this module's own float32 code, not F.batch_norm.
    whole_batch, ranks = runs["bfloat16"]
    expected = nn.BatchNorm2d(4)(whole_batch)
    for r in ranks:
        assert r["out16"].dtype == r["grad16"].dtype == torch.bfloat16
        assert r["out32"].dtype == torch.float32
    torch.testing.assert_close(torch.cat([r["out32"] for r in ranks]), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["out16"] for r in ranks]).float(), expected, rtol=0, atol=0.05)


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def test_conversion_keeps_state_settings_and_other_modules() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), _Block(8),
        nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8, eps=1e-3, momentum=None)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10), nn.BatchNorm1d(10, affine=False),
    )
    for _ in range(2):
        model(torch.randn(4, 3, 8, 8))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    model[2].bn.weight.requires_grad_(False)
    model[3][1].eval()
    original = copy.deepcopy(model)
    state = copy.deepcopy(model.state_dict())
    before = dict(model.named_modules())

    converted = convert_sync_batchnorm(model)

    assert list(converted.state_dict()) == list(state)
    for key, value in converted.state_dict().items():
        assert torch.equal(value, state[key]), key
    converted.load_state_dict(state, strict=True)
    after = dict(converted.named_modules())
    assert list(after) == list(before)
    for name, old in original.named_modules():
        new = after[name]
        if isinstance(old, _BatchNorm):
            assert type(new) is SyncBatchNorm, name
            for attribute in ("num_features", "eps", "momentum", "affine", "track_running_stats", "training"):
                assert getattr(new, attribute) == getattr(old, attribute), (name, attribute)
            assert [p.requires_grad for p in new.parameters()] == [p.requires_grad for p in old.parameters()]
        elif not list(old.children()):
            assert new is before[name], name
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(converted.eval()(x), original.eval()(x), rtol=0, atol=0)

    root = convert_sync_batchnorm(nn.BatchNorm1d(3))
    assert type(root) is SyncBatchNorm
    assert convert_sync_batchnorm(root) is root
