"""The ``c4next`` family: C1C2C3C4 stages of ConvNeXt/MetaFormer-style or inverted-residual blocks, GAP, linear.

``c4net`` spends its MACs on two 3×3 separable convs per block at a fixed width, most of them at 16×16 and 8×8.
Compact nets that fit CIFAR-10 far better at this size (a 97k-parameter MetaFormer-style net at 94% after 200
epochs; depthwise-separable ResNets at 92% after 30) spend theirs differently: a cheap depthwise spatial mixer
(several kernel sizes and dilations side by side) and a wider 1×1 channel MLP per block, with more of the work
at 32×32. Every choice is a field of :class:`C4NextSpec`, so the accuracy search varies designs without new code:

- ``block="metaformer"``: ``x + scale · fc2(act(fc1(norm(mixer(x)))))`` (ConvNeXt's order; ``gated`` makes the
  activation a GLU: fc1 doubles its outputs and one half gates the other);
- ``block="inverted"``: ``x + scale · norm(fc2(act(norm(mixer(act(norm(fc1(x))))))))`` (MobileNetV2's order: the
  depthwise mixer runs at the expanded width).

The mixer splits its channels among :class:`Branch` es: identity, depthwise k×k at dilation d, or a 3×3 average
pool before the depthwise conv. No max-pooling anywhere: stages downsample with strided depthwise-separable
transitions. The stem is a dense 3×3 conv, or a frozen patch-whitening conv fitted to the training images
(:mod:`cifar.nets.whitening`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from cifar.nets import dilated
from cifar.nets.layers import CifarNet, ClassifierHead, DepthwiseSeparableConv, same_padding
from cifar.nets.registry import register_spec
from cifar.nets.whitening import PatchWhitening

BLOCK_KINDS = ("metaformer", "inverted")
NORMS = ("batch", "layer")
ACTIVATIONS = ("relu", "gelu", "silu")
STEMS = ("conv", "whiten")


def _check(ok: bool, what: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{what} {value!r} is not valid; it must be {allowed}")


@dataclass(frozen=True)
class Branch:
    """One share of a block's channels in the spatial mixer: ``kernel_size`` 0 passes them through unchanged;
    otherwise a depthwise ``kernel_size``² conv at ``dilation``, after a 3×3 average pool where ``pool``."""

    kernel_size: int = 3
    dilation: int = 1
    pool: bool = False

    def __post_init__(self) -> None:
        _check(self.kernel_size == 0 or (self.kernel_size >= 3 and self.kernel_size % 2 == 1), "kernel_size",
               self.kernel_size, "0 (identity) or an odd number >= 3")
        _check(self.dilation >= 1, "dilation", self.dilation, "an integer >= 1")
        _check(self.kernel_size > 0 or (self.dilation == 1 and not self.pool), "an identity branch with dilation/pool",
               (self.dilation, self.pool), "(1, False): an identity has no window")


IDENTITY = Branch(kernel_size=0)


@dataclass(frozen=True)
class NextStageSpec:
    """One stage: a transition to ``width`` channels at ``stride`` (the stem, for C1), then ``depth`` blocks
    whose mixers split the channels among ``branches`` and whose MLPs widen to ``expansion`` × ``width``."""

    width: int
    depth: int
    stride: int = 1
    branches: tuple[Branch, ...] = (Branch(),)
    expansion: float = 2.0

    def __post_init__(self) -> None:
        _check(self.width >= len(self.branches), "width", self.width,
               f"at least the number of branches ({len(self.branches)})")
        _check(self.depth >= 0, "depth", self.depth, "an integer >= 0")
        _check(self.stride in (1, 2), "stride", self.stride, "1 or 2")
        _check(len(self.branches) >= 1 and any(b.kernel_size for b in self.branches), "branches", self.branches,
               "at least one depthwise branch")
        _check(self.expansion > 0, "expansion", self.expansion, "a positive number")


@dataclass(frozen=True)
class C4NextSpec:
    """A whole ``c4next`` net: four stages and the choices every block shares."""

    stages: tuple[NextStageSpec, NextStageSpec, NextStageSpec, NextStageSpec]
    block: str = "metaformer"
    norm: str = "batch"
    activation: str = "gelu"
    gated: bool = False
    layer_scale: float | None = 1.0  # initial per-channel scale of each residual branch; None: no scale
    stem: str = "conv"

    def __post_init__(self) -> None:
        _check(len(self.stages) == 4, "stages", len(self.stages), "4 (C1, C2, C3, C4)")
        _check(self.stages[0].stride == 1, "C1's stride", self.stages[0].stride, "1 (the stem keeps 32×32)")
        for name, value, choices in (("block", self.block, BLOCK_KINDS), ("norm", self.norm, NORMS),
                                     ("activation", self.activation, ACTIVATIONS), ("stem", self.stem, STEMS)):
            _check(value in choices, name, value, "one of: " + ", ".join(choices))
        _check(not (self.gated and self.block == "inverted"), "gated", self.gated,
               "False with block 'inverted' (its activation sits between norm and the depthwise mixer)")
        _check(self.layer_scale is None or self.layer_scale > 0, "layer_scale", self.layer_scale,
               "None or a positive number")

    def scaled(self, width_divisor: int) -> C4NextSpec:
        """The same design at 1/``width_divisor`` of every width (at least 8 channels), for fast tests."""
        stages = tuple(NextStageSpec(max(8, s.width // width_divisor), s.depth, s.stride, s.branches, s.expansion)
                       for s in self.stages)
        return C4NextSpec(stages, self.block, self.norm, self.activation, self.gated, self.layer_scale, self.stem)


def _norm(kind: str, channels: int) -> nn.Module:
    # GroupNorm with one group normalises over (C, H, W) per image: the channels-first LayerNorm of PoolFormer.
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(1, channels)


def _activation(kind: str) -> nn.Module:
    # In place where the backward needs only the output: one activation-sized tensor less per layer, which on a
    # CPU (memory-bound elementwise work) is time as much as memory.
    return {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU, "silu": lambda: nn.SiLU(inplace=True)}[kind]()


def _shares(channels: int, parts: int) -> list[int]:
    """``channels`` split into ``parts`` near-equal shares, the larger ones first."""
    return [channels // parts + (i < channels % parts) for i in range(parts)]


class SpatialMixer(nn.Module):
    """The channels split among branches (identity, depthwise k×k at dilation d, average pool + depthwise),
    then concatenated back in order."""

    def __init__(self, channels: int, branches: tuple[Branch, ...]) -> None:
        super().__init__()
        self.shares = _shares(channels, len(branches))
        self.branches = nn.ModuleList(self._branch(share, b) for share, b in zip(self.shares, branches))

    @staticmethod
    def _branch(channels: int, branch: Branch) -> nn.Module:
        if branch.kernel_size == 0:
            return nn.Identity()
        k, d = branch.kernel_size, branch.dilation
        conv = dilated.Conv2d(channels, channels, k, 1, same_padding(k, d), d, groups=channels, bias=False)
        if not branch.pool:
            return conv
        return nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.branches) == 1:
            return self.branches[0](x)
        parts = torch.split(x, self.shares, dim=1)
        return torch.cat([branch(part) for branch, part in zip(self.branches, parts)], dim=1)


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch (CaiT, ConvNeXt)."""

    def __init__(self, channels: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels, 1, 1), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class GatedActivation(nn.Module):
    """GLU with ``act``: the first half of the channels, activated, times the second half."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=1)
        return self.act(value) * gate


class NextBlock(nn.Module):
    """``x + branch(x)``: a spatial mixer and a 1×1 MLP in the order ``spec.block`` names."""

    def __init__(self, width: int, stage: NextStageSpec, spec: C4NextSpec) -> None:
        super().__init__()
        hidden = max(1, round(width * stage.expansion))
        if spec.block == "metaformer":
            layers = [SpatialMixer(width, stage.branches), _norm(spec.norm, width),
                      nn.Conv2d(width, hidden * (2 if spec.gated else 1), 1, bias=False),
                      GatedActivation(nn.GELU() if spec.activation == "gelu" else nn.ReLU() if spec.activation == "relu"
                                      else nn.SiLU()) if spec.gated else _activation(spec.activation),
                      nn.Conv2d(hidden, width, 1, bias=False)]
        else:
            layers = [nn.Conv2d(width, hidden, 1, bias=False), _norm(spec.norm, hidden), _activation(spec.activation),
                      SpatialMixer(hidden, stage.branches), _norm(spec.norm, hidden), _activation(spec.activation),
                      nn.Conv2d(hidden, width, 1, bias=False), _norm(spec.norm, width)]
        if spec.layer_scale is not None:
            layers.append(LayerScale(width, spec.layer_scale))
        self.branch = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def _stem(spec: C4NextSpec, width: int) -> nn.Sequential:
    if spec.stem == "conv":
        return nn.Sequential(dilated.Conv2d(3, width, 3, 1, 1, bias=False), _norm(spec.norm, width),
                             _activation(spec.activation))
    whitening = PatchWhitening(3, 3)
    return nn.Sequential(whitening, _activation(spec.activation), nn.Conv2d(whitening.out_channels, width, 1, bias=False),
                         _norm(spec.norm, width), _activation(spec.activation))


def c4next_from_spec(spec: C4NextSpec, num_classes: int = 10, dropout: float = 0.0) -> CifarNet:
    """A ``c4next`` net: per stage its transition (the stem for C1) and blocks; a norm of the residual stream
    before GAP (nothing normalises it inside the blocks) and the linear classifier."""
    stages: list[nn.Module] = []
    channels = spec.stages[0].width
    for index, stage in enumerate(spec.stages):
        if index == 0:
            layers = [_stem(spec, stage.width)]
        elif stage.stride > 1 or stage.width != channels:
            layers = [DepthwiseSeparableConv(channels, stage.width, 3, stage.stride), _norm(spec.norm, stage.width)]
        else:
            layers = []
        layers += [NextBlock(stage.width, stage, spec) for _ in range(stage.depth)]
        if index == len(spec.stages) - 1:
            layers.append(_norm(spec.norm, stage.width))
        stages.append(nn.Sequential(*layers))
        channels = stage.width
    return CifarNet(nn.Sequential(*stages), ClassifierHead(channels, num_classes, dropout))


# The anchor's mixer: a quarter of the channels each as identity, depthwise 3×3, 7×7, and pool + 7×7 at dilation 3.
SPLIT_MIXER = (IDENTITY, Branch(3), Branch(7), Branch(7, dilation=3, pool=True))
DILATED_MIXER = (Branch(3), Branch(3, dilation=2))

C4NEXT_SPECS: dict[str, C4NextSpec] = {
    # The anchor's layout with BatchNorm (fast, folds into the conv at inference): most blocks at 32×32 and 16×16.
    "c4next_split": C4NextSpec(
        stages=(NextStageSpec(48, 3, 1, SPLIT_MIXER, 1.0), NextStageSpec(80, 3, 2, SPLIT_MIXER, 1.0),
                NextStageSpec(112, 1, 2, SPLIT_MIXER, 1.0), NextStageSpec(112, 1, 1, DILATED_MIXER, 1.0)),
        block="metaformer", gated=True),
    # MobileNetV2's order: the depthwise convs run at 3× the width, where they are cheap and see more channels.
    "c4next_inverted": C4NextSpec(
        stages=(NextStageSpec(32, 2, 1, (Branch(3),), 3.0), NextStageSpec(56, 3, 2, (Branch(3),), 3.0),
                NextStageSpec(72, 2, 2, DILATED_MIXER, 3.0), NextStageSpec(72, 1, 1, (Branch(3, dilation=2),), 3.0)),
        block="inverted", activation="relu"),
    # ConvNeXt's order with one 3×3 depthwise branch and ReLU: the blocks CPU-cheap elementwise work allows.
    "c4next_m": C4NextSpec(
        stages=(NextStageSpec(40, 2, 1, (Branch(3),), 2.0), NextStageSpec(80, 2, 2, (Branch(3),), 2.0),
                NextStageSpec(104, 1, 2, DILATED_MIXER, 2.0), NextStageSpec(112, 1, 1, (Branch(3, dilation=2),), 2.0)),
        block="metaformer", activation="relu", layer_scale=None),
    # c4next_m's blocks with more of the work at 32×32 (3 blocks of 48): 53 MMACs, the parameters moved out of C3/C4.
    "c4next_m_deep32": C4NextSpec(
        stages=(NextStageSpec(48, 3, 1, (Branch(3),), 2.0), NextStageSpec(96, 2, 2, (Branch(3),), 2.0),
                NextStageSpec(96, 1, 2, DILATED_MIXER, 2.0), NextStageSpec(96, 1, 1, (Branch(3, dilation=2),), 2.0)),
        block="metaformer", activation="relu", layer_scale=None),
    # c4next_m with 5×5 depthwise kernels: each block sees more, for 16 more MACs per channel-pixel.
    "c4next_m_k5": C4NextSpec(
        stages=(NextStageSpec(40, 2, 1, (Branch(5),), 2.0), NextStageSpec(80, 2, 2, (Branch(5),), 2.0),
                NextStageSpec(104, 1, 2, (Branch(5), Branch(3, dilation=2)), 2.0),
                NextStageSpec(112, 1, 1, (Branch(3, dilation=2),), 2.0)),
        block="metaformer", activation="relu", layer_scale=None),
}
TINY_C4NEXT = "c4next_tiny"


def _branch_name(branch: Branch) -> str:
    """``id``, ``k3``, ``k7d3``, ``pk7d3`` (pooled first): a branch in the net's description."""
    if branch.kernel_size == 0:
        return "id"
    return f"{'p' if branch.pool else ''}k{branch.kernel_size}{f'd{branch.dilation}' if branch.dilation > 1 else ''}"


def _description(spec: C4NextSpec) -> str:
    return (f"c4next, {spec.block} blocks, widths {'/'.join(str(s.width) for s in spec.stages)}, "
            f"depths {'/'.join(str(s.depth) for s in spec.stages)}, "
            f"mixers {'/'.join('+'.join(map(_branch_name, s.branches)) for s in spec.stages)}, {spec.stem} stem")


C4NEXT_SPECS["c4next_m_whiten"] = replace(C4NEXT_SPECS["c4next_m"], stem="whiten")

# The whitening stem and the split mixer: the tiny net takes every path a test can reach.
for _name, _spec in {**C4NEXT_SPECS, TINY_C4NEXT: replace(C4NEXT_SPECS["c4next_split"], stem="whiten").scaled(4)}.items():
    register_spec(_name, c4next_from_spec, _spec, _description(_spec))
