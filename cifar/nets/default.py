"""The project's own net family, ``c4net``: C1C2C3C4 stages of residual blocks, GAP, linear classifier.

The default net is ``c4net_deep16``, chosen by the recipe search in ``results/README.md`` (83.6% against
c4net's 81.9% validation accuracy at 10 epochs, with the same recipe and MACs). ``c4net``, the first layout,
stays registered: older results name it and the CPU speed benchmark compares trainers on it.

No max-pooling: stages downsample with strided transitions. Depthwise-separable convs keep the wide
stages cheap; dilation in C3 and C4 grows the receptive field without more downsampling of a 32×32 image.
Width, depth, stride, dilation and conv kind are per-stage fields of :class:`StageSpec`, so the accuracy
work can vary them without new code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cifar.nets import dilated
from cifar.nets.layers import CifarNet, ClassifierHead, DepthwiseSeparableConv, same_padding
from cifar.nets.registry import register_spec

DEFAULT_NET = "c4net_deep16"
# The family's net for CPU tests: the same blocks at 1/8 of c4net's width, so a run takes seconds.
TINY_NET = "c4net_tiny"


@dataclass(frozen=True)
class StageSpec:
    """One stage: a transition conv to ``width`` channels at ``stride``, then ``depth`` residual blocks."""

    width: int
    depth: int
    stride: int = 1
    dilation: int = 1
    separable: bool = True
    kernel: int = 3


def _conv(in_channels: int, out_channels: int, stride: int, dilation: int, separable: bool, kernel: int) -> nn.Module:
    if separable:
        return DepthwiseSeparableConv(in_channels, out_channels, kernel, stride, dilation)
    return dilated.Conv2d(in_channels, out_channels, kernel, stride, same_padding(kernel, dilation), dilation,
                          bias=False)


class ConvUnit(nn.Sequential):
    """k×k conv (plain or depthwise-separable; 3×3 by default), BatchNorm, optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 separable: bool = True, activate: bool = True, kernel: int = 3) -> None:
        layers = [_conv(in_channels, out_channels, stride, dilation, separable, kernel), nn.BatchNorm2d(out_channels)]
        if activate:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """``relu(x + unit(unit(x)))``: two 3×3 units with an identity shortcut, as in ResNet."""

    def __init__(self, channels: int, dilation: int, separable: bool, kernel: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvUnit(channels, channels, 1, dilation, separable, kernel=kernel),
            ConvUnit(channels, channels, 1, dilation, separable, activate=False, kernel=kernel),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def c4_features(stages: tuple[StageSpec, ...], in_channels: int = 3) -> nn.Sequential:
    """The convolutional trunk: per stage, a transition unit then residual blocks."""
    layers: list[nn.Module] = []
    channels = in_channels
    for stage in stages:
        # The first stage's transition sees the 3 RGB channels: a separable conv there is all but useless.
        separable = stage.separable and channels != in_channels
        blocks = [ConvUnit(channels, stage.width, stage.stride, stage.dilation, separable, kernel=stage.kernel)]
        blocks += [ResidualBlock(stage.width, stage.dilation, stage.separable, stage.kernel)
                   for _ in range(stage.depth)]
        layers.append(nn.Sequential(*blocks))
        channels = stage.width
    return nn.Sequential(*layers)


def c4net_from_stages(stages: tuple[StageSpec, ...], num_classes: int = 10, dropout: float = 0.0) -> CifarNet:
    """A ``c4net`` with the given stages."""
    return CifarNet(c4_features(stages), ClassifierHead(stages[-1].width, num_classes, dropout))


C4NET_STAGES = (
    StageSpec(width=32, depth=1, stride=1, dilation=1, separable=False),
    StageSpec(width=64, depth=1, stride=2, dilation=1),
    StageSpec(width=128, depth=1, stride=2, dilation=2),
    StageSpec(width=160, depth=1, stride=1, dilation=4),
)


# The MACs of c4net with a quarter more parameters, moved into a deeper 16×16 stage (5 separable convs instead
# of 3); C1 narrower (its dense 32×32 convs are c4net's costliest layers); C4 at dilation 2, since dilation 4 on
# an 8×8 map mostly reads padding.
C4NET_DEEP16_STAGES = (
    StageSpec(width=24, depth=1, stride=1, dilation=1, separable=False),
    StageSpec(width=96, depth=2, stride=2, dilation=1),
    StageSpec(width=144, depth=1, stride=2, dilation=2),
    StageSpec(width=160, depth=1, stride=1, dilation=2),
)


# c4net_deep16's parameters spent on width where the maps are large: separable blocks of 64 channels at 32×32 and 128
# at 16×16 (a separable conv costs C² parameters whatever the map, and its MACs grow with the map), C4 a dilated
# transition alone: 47 MMACs, 1.5× c4net_deep16's.
C4NET_W64_STAGES = (
    StageSpec(width=64, depth=2, stride=1, dilation=1),
    StageSpec(width=128, depth=2, stride=2, dilation=1),
    StageSpec(width=144, depth=1, stride=2, dilation=2),
    StageSpec(width=160, depth=0, stride=1, dilation=2),
)


# c4net_w64 a block deeper at 32×32, paid for by a narrower C3 (136): 56 MMACs.
C4NET_W64D3_STAGES = (
    StageSpec(width=64, depth=3, stride=1, dilation=1),
    StageSpec(width=128, depth=2, stride=2, dilation=1),
    StageSpec(width=136, depth=1, stride=2, dilation=2),
    StageSpec(width=160, depth=0, stride=1, dilation=2),
)


# c4net_w64 with 5×5 depthwise kernels at 32×32 and 16×16 (a depthwise kernel's parameters are few; its MACs grow
# with the map), paid for by C3 at 128 channels.
C4NET_W64K5_STAGES = (
    StageSpec(width=64, depth=2, stride=1, dilation=1, kernel=5),
    StageSpec(width=128, depth=2, stride=2, dilation=1, kernel=5),
    StageSpec(width=128, depth=1, stride=2, dilation=2),
    StageSpec(width=160, depth=0, stride=1, dilation=2),
)


# Which half of c4net_w64's move pays, at a CPU cost nearer the default's (width at 32×32 costs twice its MACs'
# share there: results/README.md): c4net_deep16's C1 with c4net_w64's 128-channel 16×16 stage...
C4NET_WIDE16_STAGES = (
    StageSpec(width=24, depth=1, stride=1, dilation=1, separable=False),
    StageSpec(width=128, depth=2, stride=2, dilation=1),
    StageSpec(width=160, depth=1, stride=2, dilation=2),
    StageSpec(width=176, depth=0, stride=1, dilation=2),
)

# ... and a 48-channel separable C1 of one block before it.
C4NET_W48_STAGES = (
    StageSpec(width=48, depth=1, stride=1, dilation=1),
    StageSpec(width=128, depth=2, stride=2, dilation=1),
    StageSpec(width=160, depth=1, stride=2, dilation=2),
    StageSpec(width=176, depth=0, stride=1, dilation=2),
)


# c4net_wide16 with more of the parameters at 16×16: a third 128-channel block there, or two of 160 channels; the
# 8×8 stages keep only their dilated transitions.
C4NET_WIDE16D3_STAGES = (
    StageSpec(width=24, depth=1, stride=1, dilation=1, separable=False),
    StageSpec(width=128, depth=3, stride=2, dilation=1),
    StageSpec(width=176, depth=0, stride=2, dilation=2),
    StageSpec(width=192, depth=0, stride=1, dilation=2),
)
C4NET_WIDE16W160_STAGES = (
    StageSpec(width=24, depth=1, stride=1, dilation=1, separable=False),
    StageSpec(width=160, depth=2, stride=2, dilation=1),
    StageSpec(width=160, depth=0, stride=2, dilation=2),
    StageSpec(width=176, depth=0, stride=1, dilation=2),
)


# c4net's layout at 1/8 of the width.
C4NET_TINY_STAGES = tuple(StageSpec(max(4, s.width // 8), s.depth, s.stride, s.dilation, s.separable)
                          for s in C4NET_STAGES)

for _name, _stages, _description in (
    ("c4net", C4NET_STAGES, "First layout: residual C1C2C3C4, separable C2-C4, dilation 2/4 in C3/C4, GAP + linear."),
    (DEFAULT_NET, C4NET_DEEP16_STAGES,
     "Default: c4net's MACs, 196k params, a deeper 16×16 stage, narrower C1, dilation 2 in C3 and C4."),
    ("c4net_w64", C4NET_W64_STAGES,
     "Wide C1/C2: separable blocks of 64 channels at 32×32 and 128 at 16×16, 192k params, 47 MMACs."),
    ("c4net_w64d3", C4NET_W64D3_STAGES,
     "c4net_w64 with three blocks at 32×32 and C3 at 136 channels, 195k params, 56 MMACs."),
    ("c4net_w64k5", C4NET_W64K5_STAGES,
     "c4net_w64 with 5×5 kernels at 32×32 and 16×16 and C3 at 128 channels, 195k params, 56 MMACs."),
    ("c4net_wide16", C4NET_WIDE16_STAGES,
     "c4net_deep16's dense 24-channel C1, then c4net_w64's 128-channel 16×16 stage; C3/C4 at 160/176 channels."),
    ("c4net_w48", C4NET_W48_STAGES,
     "A separable 48-channel block at 32×32, then c4net_w64's 128-channel 16×16 stage; C3/C4 at 160/176 channels."),
    ("c4net_wide16d3", C4NET_WIDE16D3_STAGES,
     "c4net_wide16 with three 128-channel blocks at 16×16; C3/C4 dilated transitions alone, 176/192 channels."),
    ("c4net_wide16w160", C4NET_WIDE16W160_STAGES,
     "c4net_wide16 with two 160-channel blocks at 16×16; C3/C4 dilated transitions alone, 160/176 channels."),
    (TINY_NET, C4NET_TINY_STAGES, "c4net's layout at 1/8 of the width, for fast CPU tests."),
):
    register_spec(_name, c4net_from_stages, _stages, _description)
