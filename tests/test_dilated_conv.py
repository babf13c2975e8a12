"""cifar.nets.dilated: space-to-batch and the taps path compute what F.conv2d with dilation does, and the nets
are unchanged by them."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar.nets import build_net, dilated, list_nets
from cifar.nets.analysis import analyze_net
from cifar.nets.dilated import BackwardPath, depthwise_taps_conv2d, space_to_batch_conv2d


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
    assert_matches_dilated_conv2d(
        case, lambda x, weight, bias: space_to_batch_conv2d(x, weight, bias, *conv_args(case)),
        "_SpaceToBatchConvBackward")


def assert_matches_dilated_conv2d(case: Case, conv: Callable[..., torch.Tensor], backward_name: str) -> None:
    """``conv(x, weight, bias)`` gives F.conv2d's output exactly (the forward is the native conv itself) and its
    gradients to the last bits: the input gradient sums the same products, the weight and bias gradients sum
    them in another order."""
    torch.manual_seed(0)
    x, weight, bias = inputs(case)
    wrt = [t for t in (x, weight, bias) if t is not None]
    expected = F.conv2d(x, weight, bias, *conv_args(case))
    out = conv(x, weight, bias)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, wrt, grad_out)
    grads = torch.autograd.grad(out, wrt, grad_out)

    assert out.grad_fn.name() == backward_name, case
    assert torch.equal(out, expected), case
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


# ---------------------------------------------------------------- the taps path (depthwise, stride 1)


def random_depthwise_case(seed: int) -> Case:
    """A conv that the taps path computes: depthwise at stride 1, dilation 2-8, any padding (up to beyond the
    kernel's reach, whose border outputs read only zeros) and size."""
    rng = random.Random(seed)
    dilation = rng.choice([2, 3, 4, 8])
    kernel = rng.choice([3, 3, 5, 2])
    reach = dilation * (kernel - 1)
    padding = rng.choice([0, 1, reach // 2, reach, reach + 2])
    channels = rng.choice([1, 4, 6, 8])
    smallest = max(1, reach + 1 - 2 * padding)
    return Case(batch=rng.choice([1, 2, 3, 5]), in_channels=channels, out_channels=channels, groups=channels,
                kernel=kernel, dilation=dilation, stride=1, padding=padding,
                height=rng.randint(smallest, smallest + 9), width=rng.randint(smallest, smallest + 9),
                bias=rng.random() < 0.5, channels_last=rng.random() < 0.5)


# c4net's C3 and C4 blocks (at a tenth of the width), and C4 at its batch of 512 with the default chunks.
TAPS_CASES = [random_depthwise_case(seed) for seed in range(60)] + [
    Case(3, 13, 13, 13, 3, 2, 1, 2, 8, 8, False, True),
    Case(5, 16, 16, 16, 3, 4, 1, 4, 8, 8, True, False),
]


@pytest.mark.parametrize("two_image_chunks", [False, True], ids=["default-chunks", "two-image-chunks"])
@pytest.mark.parametrize("case", TAPS_CASES, ids=[f"random{seed}" for seed in range(60)] + ["c3", "c4"])
def test_taps_forward_and_gradients_match_dilated_conv2d(case: Case, two_image_chunks: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if two_image_chunks:  # batches of 3 and 5 then take several chunks, the last one partial
        monkeypatch.setattr(dilated, "_TAP_CHUNK_VALUES", 2 * case.in_channels * case.height * case.width)
    assert_matches_dilated_conv2d(
        case, lambda x, weight, bias: depthwise_taps_conv2d(x, weight, bias, case.padding, case.dilation),
        "_DepthwiseTapsConvBackward")


def test_taps_gradients_of_a_full_c4_batch_match_float64() -> None:
    """C4's 160-channel block at batch 512 (43 chunks of 12 images, the last partial; each tap a quarter to all of
    the map): weight gradients of up to about 550 within 2e-4 of float64 (oneDNN's own backward was 9e-4 off)."""
    case = Case(512, 160, 160, 160, 3, 4, 1, 4, 8, 8, False, True)
    torch.manual_seed(0)
    x, weight, _ = inputs(case)
    grad_out = torch.randn(512, 160, 8, 8).contiguous(memory_format=torch.channels_last)
    grads = torch.autograd.grad(depthwise_taps_conv2d(x, weight, None, 4, 4), [x, weight], grad_out)
    expected_grad_x, = torch.autograd.grad(F.conv2d(x, weight.detach(), None, *conv_args(case)), [x], grad_out)
    # float64 by the definition (ATen's float64 dilated conv backward takes minutes): per tap, the sum of the
    # output gradient times the zero-padded input shifted by the tap.
    padded, grad64 = F.pad(x.detach().double(), [4] * 4), grad_out.double()
    expected_grad_weight = torch.stack([(grad64 * padded[:, :, 4 * i:4 * i + 8, 4 * j:4 * j + 8]).sum((0, 2, 3))
                                        for i in range(3) for j in range(3)], 1).view(160, 1, 3, 3)
    torch.testing.assert_close(grads[0], expected_grad_x, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grads[1], expected_grad_weight.float(), rtol=0, atol=2e-4)


@pytest.mark.parametrize("kernel, padding", [((3, 3), 2), ((3, 5), 2), ((2, 3), 5)],
                         ids=["square", "rectangular", "padding-beyond-reach"])
def test_taps_gradcheck_float64(kernel: tuple[int, int], padding: int) -> None:
    x = torch.randn(3, 3, 7, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(3, 1, *kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return depthwise_taps_conv2d(x, weight, bias, padding, 2)

    assert torch.autograd.gradcheck(conv, (x, weight, bias), fast_mode=True)


def test_taps_take_a_gradient_of_any_strides() -> None:
    """``out.sum()`` hands the backward an expanded gradient (all strides 0)."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(4, 1, 3, 3, requires_grad=True)
    grads = torch.autograd.grad(depthwise_taps_conv2d(x, weight, None, 4, 4).sum(), [x, weight])
    expected = torch.autograd.grad(F.conv2d(x, weight, None, 1, 4, 4, 4).sum(), [x, weight])
    torch.testing.assert_close(grads[0], expected[0], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grads[1], expected[1], rtol=1e-4, atol=1e-4)


def test_taps_refuse_a_conv_that_is_not_depthwise() -> None:
    with pytest.raises(ValueError, match=r"not a weight of shape \(8, 1, 3, 3\)"):
        depthwise_taps_conv2d(torch.randn(1, 4, 8, 8), torch.randn(8, 1, 3, 3), None, 2, 2)


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


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_depthwise_module_at_stride_1_takes_the_taps_and_matches_nn_conv2d(channels_last: bool) -> None:
    torch.manual_seed(0)
    reference, conv = twin_convs(in_channels=8, out_channels=8, kernel_size=3, padding=4, dilation=4, groups=8)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    reference, conv = reference.to(memory_format=layout), conv.to(memory_format=layout)
    x = torch.randn(4, 8, 8, 8).contiguous(memory_format=layout).requires_grad_()
    out, expected = conv(x), reference(x)
    assert out.grad_fn.name() == "_DepthwiseTapsConvBackward"
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


GRAD_FN = {BackwardPath.NATIVE: "ConvolutionBackward0", BackwardPath.SPACE_TO_BATCH: "_SpaceToBatchConvBackward",
           BackwardPath.TAPS: "_DepthwiseTapsConvBackward"}
NATIVE, S2B, TAPS = BackwardPath.NATIVE, BackwardPath.SPACE_TO_BATCH, BackwardPath.TAPS


@pytest.mark.parametrize("kwargs, channels_last, expected", [
    (dict(in_channels=8, out_channels=8, groups=8, stride=2, padding=2, dilation=2), False, S2B),
    (dict(in_channels=8, out_channels=4, groups=1, stride=2, padding=2, dilation=2), False, S2B),
    (dict(in_channels=8, out_channels=8, groups=8, padding=2, dilation=2), False, TAPS),
    (dict(in_channels=8, out_channels=8, groups=8, padding=4, dilation=4), False, TAPS),
    (dict(in_channels=8, out_channels=8, groups=8, padding=4, dilation=4), True, TAPS),
    (dict(in_channels=8, out_channels=8, groups=8, padding=3, dilation=8), True, TAPS),
    (dict(in_channels=8, out_channels=16, groups=8, padding=2, dilation=2), True, S2B),
    (dict(in_channels=8, out_channels=4, groups=1, padding=2, dilation=2), False, S2B),
    (dict(in_channels=8, out_channels=4, groups=1, padding=4, dilation=4), False, NATIVE),
    (dict(in_channels=8, out_channels=4, groups=1, padding=4, dilation=4), True, S2B),
    (dict(in_channels=8, out_channels=4, groups=1, padding=1, dilation=2), True, NATIVE),
    (dict(in_channels=8, out_channels=4, groups=1, padding=8, dilation=8), True, NATIVE),
], ids=["strided-depthwise", "strided-dense", "depthwise-d2", "depthwise-d4", "depthwise-d4-channels-last",
        "depthwise-d8-part-padding", "depthwise-multiplier-2", "dense-d2", "dense-d4", "dense-d4-channels-last",
        "dense-part-phase-padding", "dense-d8"])
def test_rule_takes_the_path_measured_fastest(avx2_cpu: None, kwargs: dict, channels_last: bool,
                                              expected: BackwardPath) -> None:
    conv = dilated.Conv2d(kernel_size=3, **kwargs)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 8, 32, 32).contiguous(memory_format=layout)
    assert dilated.backward_path(conv, x) is expected
    assert conv(x).grad_fn.name() == GRAD_FN[expected]


def test_under_autocast_a_dense_conv_keeps_the_native_bf16_conv(avx2_cpu: None) -> None:
    conv = dilated.Conv2d(4, 4, 3, padding=2, dilation=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(torch.randn(2, 4, 8, 8))
    assert out.dtype == torch.bfloat16 and out.grad_fn.name() == "ConvolutionBackward0"
    out.float().sum().backward()
    assert conv.weight.grad is not None


@pytest.mark.parametrize("kwargs, grad_fn", [
    ({"padding": 2, "dilation": 2}, GRAD_FN[TAPS]),           # C3/C4's dilated depthwise convs
    ({"stride": 2, "padding": 1}, "ConvolutionBackward0"),      # an undilated strided transition
])
def test_under_autocast_a_dilated_or_strided_depthwise_conv_computes_in_float32(avx2_cpu: None, kwargs: dict,
                                                                                grad_fn: str) -> None:
    """Exactly what it computes without autocast on the same values: bf16 in, float32 out, gradients alike."""
    torch.manual_seed(0)
    conv = dilated.Conv2d(4, 4, 3, groups=4, **kwargs)
    x = torch.randn(2, 4, 8, 8).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.float32 and out.grad_fn.name() == grad_fn
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    autocast_grads = x.grad, conv.weight.grad
    x.grad = conv.weight.grad = None
    x_float = x.detach().float().requires_grad_()
    reference = conv(x_float)
    reference.backward(grad_out)
    assert torch.equal(out, reference) and torch.equal(autocast_grads[1], conv.weight.grad)
    assert autocast_grads[0].dtype == torch.bfloat16 and torch.equal(autocast_grads[0], x_float.grad.bfloat16())


def test_under_autocast_an_undilated_stride_1_depthwise_conv_stays_bf16(avx2_cpu: None) -> None:
    """oneDNN's own bf16 depthwise kernel, as autocast runs an ``nn.Conv2d``: bf16 out, the native backward."""
    conv = dilated.Conv2d(4, 4, 3, padding=1, groups=4)
    x = torch.randn(2, 4, 8, 8).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
        expected = nn.Conv2d.forward(conv, x)
    assert out.dtype == torch.bfloat16 and out.grad_fn.name() == "ConvolutionBackward0"
    assert torch.equal(out, expected)
    out.float().sum().backward()
    assert conv.weight.grad is not None and x.grad is not None


@pytest.mark.parametrize("capability, groups, stride, expected", [
    ("AVX512", 4, 1, TAPS), ("AVX512", 4, 2, S2B), ("AVX512", 1, 1, NATIVE), ("AVX2", 4, 1, TAPS),
    ("AVX2", 1, 1, S2B), ("DEFAULT", 4, 1, NATIVE), ("DEFAULT", 4, 2, NATIVE), ("SVE256", 4, 1, NATIVE),
])
def test_rule_by_instruction_set(monkeypatch: pytest.MonkeyPatch, capability: str, groups: int, stride: int,
                                 expected: BackwardPath) -> None:
    """Depthwise on every x86 CPU measured; dense convs at stride 1 with AVX2 only; nothing elsewhere."""
    monkeypatch.setattr(dilated, "_CPU_CAPABILITY", capability)
    conv = dilated.Conv2d(4, 4, 3, stride=stride, padding=2, dilation=2, groups=groups)
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    assert conv(x).grad_fn.name() == GRAD_FN[expected]


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


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
def test_c4net_trains_alike_through_space_to_batch_and_the_taps(monkeypatch: pytest.MonkeyPatch,
                                                                capability: str) -> None:
    monkeypatch.setattr(dilated, "_CPU_CAPABILITY", capability)
    net, plain = build_both("c4net_tiny", monkeypatch)
    s2b_calls, taps_calls = [], []
    monkeypatch.setattr(dilated, "space_to_batch_conv2d",
                        lambda *args: s2b_calls.append(args[3:]) or space_to_batch_conv2d(*args))
    monkeypatch.setattr(dilated, "depthwise_taps_conv2d",
                        lambda *args: taps_calls.append((args[0].shape[1], *args[3:])) or depthwise_taps_conv2d(*args))
    net, plain = net.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.tensor([0, 1, 2, 3])
    F.cross_entropy(net(images), labels).backward()
    F.cross_entropy(plain(images), labels).backward()
    assert s2b_calls == [(2, 2, 2, 8)]  # C3's strided transition
    assert taps_calls == [(16, 2, 2)] * 2 + [(16, 4, 4)] + [(20, 4, 4)] * 2  # C3's blocks, C4's transition and blocks
    for (key, p), q in zip(net.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=key)


def test_c4net_gradients_repeat_bit_for_bit() -> None:
    """The same step computes the same gradients, so that a resumed run computes what an uninterrupted one does."""
    torch.manual_seed(0)
    net = build_net("c4net_tiny").to(memory_format=torch.channels_last)
    images = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.arange(8)
    runs = []
    for _ in range(2):
        net.zero_grad()
        F.cross_entropy(net(images), labels).backward()
        runs.append([p.grad.clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
