"""The registry, every registered net, and the analysis (receptive field, MACs, constraints)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar.nets import DEFAULT_NET, TINY_NET, build_net, list_nets, register_net
from cifar.nets.analysis import CONSTRAINTS, UnsupportedOpError, analyze_net
from cifar.nets.layers import CifarNet, ClassifierHead, DepthwiseSeparableConv

SEED_NETS = [f"seed00{i}" for i in range(5)]


# ---------------------------------------------------------------- registry


def test_registry_lists_seeds_default_and_tiny() -> None:
    names = list_nets()
    assert set(SEED_NETS) <= set(names)
    assert DEFAULT_NET in names and TINY_NET in names
    assert names == sorted(names)


def test_unknown_net_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown net 'resnet9000'") as excinfo:
        build_net("resnet9000")
    for name in list_nets():
        assert name in str(excinfo.value)


def test_registering_a_name_twice_fails() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_net(DEFAULT_NET)(lambda num_classes=10: nn.Identity())


# ---------------------------------------------------------------- every net


@pytest.mark.parametrize("name", list_nets())
def test_forward_backward_and_num_classes(name: str) -> None:
    torch.manual_seed(0)
    net = build_net(name, num_classes=7)
    assert isinstance(net, CifarNet)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]  # a whitening stem is fitted, not trained
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", [DEFAULT_NET, TINY_NET])
def test_default_family_meets_every_constraint(name: str) -> None:
    report = analyze_net(build_net(name), name=name)
    assert report.constraints == {c: True for c in CONSTRAINTS}
    assert report.params < 200_000 and report.receptive_field > 44


def measured_receptive_field(net: CifarNet, size: int = 256) -> int:
    """Extent of the input pixels that reach the centre of the trunk's last map, from input gradients.

    Positive weights, identity BatchNorm and a positive input keep every ReLU open and rule out
    cancellation, so a pixel has a non-zero gradient exactly when it lies in the window."""
    features = copy.deepcopy(net.features).eval()
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.constant_(module.weight, 1.0 / module.weight[0].numel())
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
            module.reset_running_stats()
    for p in features.parameters():
        p.requires_grad_(False)
    image = torch.ones(1, 3, size, size, requires_grad=True)
    out = features(image)
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    seen = image.grad[0].abs().sum(0) > 0
    rows = seen.any(1).nonzero().flatten()
    cols = seen.any(0).nonzero().flatten()
    assert rows.min() > 0 and rows.max() < size - 1, "the window touches the border: use a larger input"
    assert rows.max() - rows.min() == cols.max() - cols.min()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("name", list_nets())
def test_receptive_field_matches_input_gradients(name: str) -> None:
    net = build_net(name)
    receptive_field = analyze_net(net).receptive_field
    # The input must hold the whole window around the centre, with a margin.
    assert receptive_field == measured_receptive_field(net, size=max(256, 2 * receptive_field))


# ---------------------------------------------------------------- receptive field by hand


def conv(k: int, s: int = 1, d: int = 1, p: int | None = None, c: int = 4) -> nn.Conv2d:
    return nn.Conv2d(c, c, k, s, d * (k - 1) // 2 if p is None else p, d)


class Stem(nn.Module):
    """Lifts RGB to 4 channels with a 1x1 conv, which adds nothing to the receptive field."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.lift, self.body = nn.Conv2d(3, 4, 1), body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.lift(x))


class Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TwoBranches(nn.Module):
    """Concatenates a 3x3 branch and a 7x7 branch of 2 channels each."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 2, 3, padding=1), nn.Conv2d(4, 2, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


class ShiftedBranches(nn.Module):
    """Adds a centred 3x3 branch (pixels i-1..i+1) to one padded on the top-left only (pixels i-2..i)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = conv(3, p=1), conv(3, p=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(F.pad(x, (2, 0, 2, 0)))


class Cropped(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1:-1, 1:-1]


def gap_net(body: nn.Module, channels: int = 4) -> CifarNet:
    return CifarNet(Stem(body), ClassifierHead(channels, 10))


@pytest.mark.parametrize(
    "body, expected",
    [
        (conv(3), 3),
        (nn.Sequential(conv(3), conv(3)), 5),
        (nn.Sequential(conv(3, s=2), conv(3)), 7),  # 3 + (3-1)*2
        (conv(3, d=2), 5),
        (nn.Sequential(conv(3, d=2), conv(3, d=4)), 13),
        (nn.Sequential(conv(3, s=2, d=2), conv(3, s=2, d=2), conv(3)), 5 + 8 + 8),
        (nn.Sequential(nn.AvgPool2d(2), conv(3)), 2 + 2 * 2),
        (nn.Sequential(nn.MaxPool2d(3, 2, 1), conv(3)), 3 + 2 * 2),
        (nn.Sequential(conv(5), Residual(nn.Sequential(conv(3), conv(3)))), 9),
        (TwoBranches(), 7),
        (nn.Sequential(DepthwiseSeparableConv(4, 4, 3, dilation=3)), 7),
        (nn.Sequential(conv(2, p=0), conv(2, p=0)), 3),
    ],
)
def test_receptive_field_hand_computed(body: nn.Module, expected: int) -> None:
    assert analyze_net(gap_net(body)).receptive_field == expected


def test_offset_branches_take_the_union_of_their_windows() -> None:
    assert analyze_net(gap_net(ShiftedBranches())).receptive_field == 4  # pixels i-2..i+1


def test_cropping_is_refused_rather_than_guessed() -> None:
    with pytest.raises(UnsupportedOpError, match="getitem"):
        analyze_net(gap_net(nn.Sequential(conv(3), Cropped())))


def test_unknown_spatial_op_is_refused() -> None:
    class Upsample(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, scale_factor=2)

    with pytest.raises(UnsupportedOpError, match="interpolate"):
        analyze_net(gap_net(nn.Sequential(conv(3), Upsample())))


# ---------------------------------------------------------------- MACs, params, layers


def test_macs_params_and_layer_shapes_hand_computed() -> None:
    net = CifarNet(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      DepthwiseSeparableConv(8, 16, stride=2)),
        ClassifierHead(16, 10),
    )
    report = analyze_net(net)
    conv_macs = 32 * 32 * 8 * 3 * 9
    depthwise_macs = 16 * 16 * 8 * 9
    pointwise_macs = 16 * 16 * 16 * 8
    linear_macs = 16 * 10
    assert report.macs == conv_macs + depthwise_macs + pointwise_macs + linear_macs
    assert report.params == sum(p.numel() for p in net.parameters())
    shapes = {layer.name: layer.output_shape for layer in report.layers}
    assert shapes["features.0"] == (8, 32, 32)
    assert shapes["features.3.0"] == (8, 16, 16)
    assert shapes["features.3.1"] == (16, 16, 16)
    assert shapes["head.0"] == (16, 1, 1) and shapes["head.2"] == (10,)
    rf = {layer.name: layer.receptive_field for layer in report.layers}
    assert rf["features.0"] == 3 and rf["features.3.0"] == 5 and rf["head.2"] is None


# ---------------------------------------------------------------- constraints, each able to fail


def constraint_failures(body: nn.Module, head: nn.Module | None = None, channels: int = 4) -> set[str]:
    report = analyze_net(CifarNet(Stem(body), head or ClassifierHead(channels, 10)))
    return {name for name, met in report.constraints.items() if not met}


DS_DILATED_DEEP = [DepthwiseSeparableConv(4, 4), conv(3, d=2)] + [conv(3, d=4) for _ in range(5)]


def test_a_compliant_toy_net_meets_everything() -> None:
    assert constraint_failures(nn.Sequential(*copy.deepcopy(DS_DILATED_DEEP))) == set()


def test_max_pooling_is_caught() -> None:
    assert constraint_failures(nn.Sequential(*copy.deepcopy(DS_DILATED_DEEP), nn.MaxPool2d(2))) == {"no_maxpool"}


def test_depthwise_without_pointwise_is_not_separable() -> None:
    depthwise_only = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    body = nn.Sequential(depthwise_only, *copy.deepcopy(DS_DILATED_DEEP[1:]))
    assert constraint_failures(body) == {"depthwise_separable"}


def test_depthwise_then_bn_relu_then_pointwise_is_separable() -> None:
    body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 1), *copy.deepcopy(DS_DILATED_DEEP[1:]))
    assert constraint_failures(body) == set()


def test_missing_dilation_small_rf_and_many_params_are_caught() -> None:
    body = nn.Sequential(DepthwiseSeparableConv(4, 256), nn.Conv2d(256, 256, 3, padding=1), nn.Conv2d(256, 256, 3, padding=1))
    assert constraint_failures(body, channels=256) == {"dilated", "rf_gt_44", "params_lt_200k"}


def test_flatten_into_linear_is_not_gap() -> None:
    body = nn.Sequential(*copy.deepcopy(DS_DILATED_DEEP), nn.Conv2d(4, 4, 2, stride=16))
    head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 2 * 2, 10))
    assert constraint_failures(body, head) == {"gap"}


def test_avgpool_then_1x1_conv_classifier_is_gap() -> None:
    class ConvClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool, self.fc = nn.AvgPool2d(32), nn.Conv2d(4, 10, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(x)).view(-1, 10)

    assert constraint_failures(nn.Sequential(*copy.deepcopy(DS_DILATED_DEEP)), ConvClassifier()) == set()


def test_mean_over_height_and_width_is_gap() -> None:
    class MeanHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.mean((2, 3)))

    assert constraint_failures(nn.Sequential(*copy.deepcopy(DS_DILATED_DEEP)), MeanHead()) == set()


# ---------------------------------------------------------------- command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifar.nets", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_json_for_all_nets() -> None:
    result = run_cli("--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == list_nets()
    for row in rows:
        assert {"name", "params", "receptive_field", "macs", "constraints"} <= set(row)
        assert set(row["constraints"]) == set(CONSTRAINTS)
    default = next(row for row in rows if row["name"] == DEFAULT_NET)
    assert all(default["constraints"].values())


@pytest.mark.slow
def test_cli_one_net_table_and_json() -> None:
    table = run_cli(DEFAULT_NET)
    assert table.returncode == 0, table.stderr
    report = analyze_net(build_net(DEFAULT_NET), name=DEFAULT_NET)
    assert f"{report.params:,} params" in table.stdout
    assert f"receptive field {report.receptive_field}" in table.stdout
    one = json.loads(run_cli(DEFAULT_NET, "--json").stdout)
    assert one["params"] == report.params and len(one["layers"]) == len(report.layers)


@pytest.mark.slow
def test_cli_unknown_net_fails_with_the_valid_names() -> None:
    result = run_cli("nosuchnet")
    assert result.returncode == 2
    assert "unknown net 'nosuchnet'" in result.stderr and DEFAULT_NET in result.stderr
