"""cifar.nets.dilated: space-to-batch computes what F.conv2d with dilation does, and the nets are unchanged by it."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar.nets import build_net, dilated, list_nets
from cifar.nets.analysis import analyze_net
from cifar.nets.dilated import space_to_batch_conv2d


@dataclass(frozen=True)
class Case:
    batch: int
    in_channels: int
    out_channels: int
    groups: int
    kernel: int
    dilation: int
    stride: int
    padding: int
    height: int
    width: int
    bias: bool
    channels_last: bool


def random_case(seed: int) -> Case:
    """A conv that space-to-batch computes: dilation 2-4, stride 1 or the dilation, any padding and size."""
    rng = random.Random(seed)
    dilation = rng.choice([2, 3, 4])
    kernel = rng.choice([3, 3, 5, 2])
    padding = rng.choice([0, 1, dilation * (kernel - 1) // 2, dilation * (kernel - 1)])
    channels = rng.choice([4, 6, 8])
    groups = rng.choice([1, channels, 2])
    out_channels = channels * rng.choice([1, 2]) if groups == channels else rng.choice([2, 4, 6])
    smallest = max(1, dilation * (kernel - 1) + 1 - 2 * padding)
    return Case(batch=rng.choice([1, 2, 3]), in_channels=channels, out_channels=out_channels, groups=groups,
                kernel=kernel, dilation=dilation, stride=rng.choice([1, dilation]), padding=padding,
                height=rng.randint(smallest, smallest + 9), width=rng.randint(smallest, smallest + 9),
                bias=rng.random() < 0.5, channels_last=rng.random() < 0.5)


def inputs(case: Case, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    layout = torch.channels_last if case.channels_last else torch.contiguous_format
    x = torch.randn(case.batch, case.in_channels, case.height, case.width, dtype=dtype)
    weight = torch.randn(case.out_channels, case.in_channels // case.groups, case.kernel, case.kernel, dtype=dtype)
    bias = torch.randn(case.out_channels, dtype=dtype) if case.bias else None
    x, weight = x.contiguous(memory_format=layout), weight.contiguous(memory_format=layout)
    return tuple(t.requires_grad_() if t is not None else None for t in (x, weight, bias))


def conv_args(case: Case) -> tuple[int, int, int, int]:
    return case.stride, case.padding, case.dilation, case.groups


# c4net's dilated convs (at a tenth of the width), whose phases hold whole images: one copy moves them all.
C4NET_CASES = [
    Case(3, 8, 8, 8, 3, 2, 2, 2, 16, 16, False, True),
    Case(3, 8, 8, 8, 3, 2, 1, 2, 8, 8, False, False),
    Case(3, 16, 16, 16, 3, 4, 1, 4, 8, 8, False, True),
]
CASES = [random_case(seed) for seed in range(60)] + C4NET_CASES


@pytest.mark.parametrize("case", CASES, ids=[f"random{seed}" for seed in range(60)] + ["c4-transition", "c3", "c4"])
def test_forward_and_gradients_match_dilated_conv2d(case: Case) -> None:
    torch.manual_seed(0)
    x, weight, bias = inputs(case)
    wrt = [t for t in (x, weight, bias) if t is not None]
    expected = F.conv2d(x, weight, bias, *conv_args(case))
    out = space_to_batch_conv2d(x, weight, bias, *conv_args(case))
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, wrt, grad_out)
    grads = torch.autograd.grad(out, wrt, grad_out)

    assert out.grad_fn.name() == "_SpaceToBatchConvBackward", case
    assert torch.equal(out, expected), case  # the forward is the native conv itself
    # The input gradient sums the same products; the weight and bias gradients sum them in another order.
    torch.testing.assert_close(grads[0], expected_grads[0], rtol=1e-6, atol=1e-5, msg=str(case))
    for grad, expected_grad in zip(grads[1:], expected_grads[1:]):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4, msg=str(case))
    if case.channels_last and case.height > 1 and case.width > 1:
        assert grads[0].is_contiguous(memory_format=torch.channels_last), case


@pytest.mark.parametrize("case", [
    Case(2, 3, 3, 3, 3, 2, 1, 2, 5, 6, True, False),  # depthwise, stride 1, odd and even sizes
    Case(2, 4, 2, 1, 3, 3, 3, 1, 7, 8, True, True),  # dense, stride = dilation, channels-last
    Case(1, 4, 4, 2, 2, 2, 1, 0, 6, 5, False, False),  # two groups, even kernel, no padding
], ids=["depthwise", "strided", "grouped"])
def test_gradcheck_float64(case: Case) -> None:
    x, weight, bias = inputs(case, torch.float64)
    wrt = tuple(t for t in (x, weight, bias) if t is not None)

    def conv(x: torch.Tensor, weight: torch.Tensor, *bias: torch.Tensor) -> torch.Tensor:
        return space_to_batch_conv2d(x, weight, bias[0] if bias else None, *conv_args(case))

    assert torch.autograd.gradcheck(conv, wrt, fast_mode=True)


def test_refuses_a_configuration_it_does_not_compute() -> None:
    x, weight = torch.randn(1, 2, 8, 8), torch.randn(2, 2, 3, 3)
    with pytest.raises(ValueError, match="dilation 3 at stride 2"):
        space_to_batch_conv2d(x, weight, None, 2, 1, 3, 1)


# ---------------------------------------------------------------- the module and its rule


@pytest.fixture
def avx2_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a CPU with AVX2 and without AVX-512, whatever this machine is."""
    monkeypatch.setattr(dilated, "_CPU_CAPABILITY", "AVX2")


def twin_convs(**kwargs: int) -> tuple[nn.Conv2d, dilated.Conv2d]:
    reference = nn.Conv2d(**kwargs)
    conv = dilated.Conv2d(**kwargs)
    conv.load_state_dict(reference.state_dict())
    return reference, conv


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_depthwise_module_takes_space_to_batch_and_matches_nn_conv2d(avx2_cpu: None,
                                                                     channels_last: bool) -> None:
    torch.manual_seed(0)
    reference, conv = twin_convs(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=2, dilation=2,
                                 groups=8)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    reference, conv = reference.to(memory_format=layout), conv.to(memory_format=layout)
    x = torch.randn(4, 8, 16, 16).contiguous(memory_format=layout).requires_grad_()
    out, expected = conv(x), reference(x)
    assert out.grad_fn.name() == "_SpaceToBatchConvBackward"
    assert torch.equal(out, expected)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, conv.weight, conv.bias], grad_out)
    expected_grads = torch.autograd.grad(expected, [x, reference.weight, reference.bias], grad_out)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("why, kwargs, device, grad", [
    ("not dilated", dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4), "cpu", True),
    ("stride neither 1 nor the dilation", dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=3,
                                               dilation=3, groups=4), "cpu", True),
    ("unequal dilations", dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, dilation=(2, 1), groups=4),
     "cpu", True),
    ("no gradient wanted", dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, dilation=2, groups=4),
     "cpu", False),
    ("not on the CPU", dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, dilation=2, groups=4), "meta",
     True),
])
def test_module_keeps_the_native_conv(avx2_cpu: None, why: str, kwargs: dict, device: str,
                                      grad: bool) -> None:
    reference, conv = twin_convs(**kwargs)
    x = torch.randn(2, 4, 9, 9)
    with torch.set_grad_enabled(grad):
        out = conv.to(device)(x.to(device))
    assert out.grad_fn is None if not grad else out.grad_fn.name() == "ConvolutionBackward0", why
    if device == "cpu":
        assert torch.equal(out, reference(x)), why


@pytest.mark.parametrize("kwargs, channels_last, expected", [
    (dict(in_channels=8, out_channels=8, groups=8, stride=2, padding=2, dilation=2), False, True),
    (dict(in_channels=8, out_channels=4, groups=1, stride=2, padding=2, dilation=2), False, True),
    (dict(in_channels=8, out_channels=8, groups=8, padding=2, dilation=2), False, True),
    (dict(in_channels=8, out_channels=8, groups=8, padding=4, dilation=4), False, True),
    (dict(in_channels=8, out_channels=8, groups=8, padding=4, dilation=4), True, True),
    (dict(in_channels=8, out_channels=4, groups=1, padding=2, dilation=2), False, True),
    (dict(in_channels=8, out_channels=4, groups=1, padding=4, dilation=4), False, False),
    (dict(in_channels=8, out_channels=4, groups=1, padding=4, dilation=4), True, True),
    (dict(in_channels=8, out_channels=4, groups=1, padding=1, dilation=2), True, False),
    (dict(in_channels=8, out_channels=4, groups=1, padding=8, dilation=8), True, False),
], ids=["strided-depthwise", "strided-dense", "depthwise-d2", "depthwise-d4", "depthwise-d4-channels-last",
        "dense-d2", "dense-d4", "dense-d4-channels-last", "dense-part-phase-padding", "dense-d8"])
def test_rule_takes_space_to_batch_where_it_was_measured_faster(avx2_cpu: None, kwargs: dict,
                                                                channels_last: bool, expected: bool) -> None:
    conv = dilated.Conv2d(kernel_size=3, **kwargs)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 8, 32, 32).contiguous(memory_format=layout)
    assert dilated.uses_space_to_batch(conv, x) is expected
    assert (conv(x).grad_fn.name() == "_SpaceToBatchConvBackward") is expected


def test_module_keeps_the_native_conv_under_autocast(avx2_cpu: None) -> None:
    conv = dilated.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(torch.randn(2, 4, 8, 8))
    assert out.dtype == torch.bfloat16 and out.grad_fn.name() == "ConvolutionBackward0"
    out.float().sum().backward()
    assert conv.weight.grad is not None


@pytest.mark.parametrize("capability, groups, expected", [
    ("AVX512", 4, True), ("AVX512", 1, False), ("AVX2", 1, True), ("DEFAULT", 4, False), ("SVE256", 4, False),
])
def test_rule_by_instruction_set(monkeypatch: pytest.MonkeyPatch, capability: str, groups: int,
                                 expected: bool) -> None:
    """Depthwise on every x86 CPU measured; dense convs at stride 1 with AVX2 only; nothing elsewhere."""
    monkeypatch.setattr(dilated, "_CPU_CAPABILITY", capability)
    conv = dilated.Conv2d(4, 4, 3, padding=2, dilation=2, groups=groups)
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    assert (conv(x).grad_fn.name() == "_SpaceToBatchConvBackward") is expected


# ---------------------------------------------------------------- the nets


def build_both(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[nn.Module, nn.Module]:
    """The net as built now, and as built with plain nn.Conv2d in place of dilated.Conv2d, from one seed."""
    torch.manual_seed(0)
    net = build_net(name)
    with monkeypatch.context() as patch:
        patch.setattr(dilated, "Conv2d", nn.Conv2d)
        torch.manual_seed(0)
        plain = build_net(name)
    return net, plain


@pytest.mark.parametrize("name", list_nets())
def test_nets_have_the_parameters_and_analysis_of_nn_conv2d_nets(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net, plain = build_both(name, monkeypatch)
    assert any(type(m) is dilated.Conv2d and max(m.dilation) > 1 for m in net.modules())
    state, plain_state = net.state_dict(), plain.state_dict()
    assert list(state) == list(plain_state)
    assert all(torch.equal(state[key], plain_state[key]) for key in state)
    assert analyze_net(net, name=name) == analyze_net(plain, name=name)
    assert repr(net) == repr(plain)


def test_c4net_trains_alike_through_space_to_batch(monkeypatch: pytest.MonkeyPatch,
                                                   avx2_cpu: None) -> None:
    net, plain = build_both("c4net_tiny", monkeypatch)
    calls = []
    monkeypatch.setattr(dilated, "space_to_batch_conv2d",
                        lambda *args: calls.append(args[3:]) or space_to_batch_conv2d(*args))
    net, plain = net.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.tensor([0, 1, 2, 3])
    F.cross_entropy(net(images), labels).backward()
    F.cross_entropy(plain(images), labels).backward()
    assert (2, 2, 2, 8) in calls and (1, 4, 4, 20) in calls  # C3's strided transition, C4's blocks
    for (key, p), q in zip(net.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=key)
