"""Building blocks shared by the nets.

Every registered net is a :class:`CifarNet`: a convolutional trunk (``features``) that keeps a spatial map,
then a ``head`` that pools globally and classifies. The split lets tools run the trunk alone (the
receptive-field measurement feeds it large inputs) without knowing how each net is written.
"""

from __future__ import annotations

import torch
from torch import nn

from cifar.nets import dilated


class CifarNet(nn.Module):
    """``head(features(x))``: a spatial trunk, then global pooling and a classifier."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the spatial size of an odd kernel at stride 1."""
    return dilation * (kernel_size - 1) // 2


class ConvBNAct(nn.Sequential):
    """Conv2d (same padding by default), BatchNorm, ReLU, optional Dropout2d."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bias: bool = False,
        dropout: float = 0.0,
    ) -> None:
        if padding is None:
            padding = same_padding(kernel_size, dilation)
        layers: list[nn.Module] = [
            dilated.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise k×k conv (groups = in_channels) followed by a 1×1 pointwise conv, with no norm between."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        padding: int | None = None,
        bias: bool = False,
    ) -> None:
        if padding is None:
            padding = same_padding(kernel_size, dilation)
        super().__init__(
            dilated.Conv2d(in_channels, in_channels, kernel_size, stride, padding, dilation, groups=in_channels,
                           bias=bias),
            nn.Conv2d(in_channels, out_channels, 1, bias=bias),
        )


class ClassifierHead(nn.Sequential):
    """Global average pooling, flatten, optional dropout, linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(in_channels, num_classes))
        super().__init__(*layers)
