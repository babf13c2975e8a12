"""A frozen patch-whitening first layer, computed from the training images (airbench, Page's "How to train your
ResNet"): the first conv's filters are the eigenvectors of the covariance of the training set's k×k patches,
each scaled by 1/sqrt(its eigenvalue), so the next layer sees decorrelated inputs of unit variance from step 0
and does not spend the first epochs learning that basis.

The filters come in ± pairs: the activation that follows keeps a nonlinear view of both signs of each
component. They are fitted once at the start of a run (:func:`fit_patch_whitening`) and are part of the state
dict (a parameter that is never trained), so a checkpoint, a resume and ``--eval-only`` carry them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def patch_covariance(images: np.ndarray, mean: Sequence[float], std: Sequence[float], kernel_size: int = 3,
                     chunk: int = 1000) -> torch.Tensor:
    """The ``(C·k², C·k²)`` covariance of every k×k patch of ``images`` (uint8, ``(N, H, W, C)``) after
    normalising by ``mean`` and ``std`` (the net's inputs), accumulated in float64 a chunk of images at a time."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, C); got {images.dtype} of shape {images.shape}")
    size = images.shape[-1] * kernel_size ** 2
    total, outer, count = torch.zeros(size, dtype=torch.float64), torch.zeros(size, size, dtype=torch.float64), 0
    scale = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1) * 255
    shift = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1) * 255
    for start in range(0, len(images), chunk):
        x = (torch.from_numpy(images[start:start + chunk]).permute(0, 3, 1, 2).double() - shift) / scale
        patches = F.unfold(x, kernel_size).transpose(1, 2).reshape(-1, size)
        total += patches.sum(0)
        outer += patches.T @ patches
        count += len(patches)
    mean_patch = total / count
    return outer / count - torch.outer(mean_patch, mean_patch)


def patch_whitening_filters(covariance: torch.Tensor, channels: int, eps: float = 5e-4) -> torch.Tensor:
    """The ``(2·C·k², C, k, k)`` whitening filters of a patch ``covariance``: each eigenvector divided by
    sqrt(eigenvalue + eps), then the same negated.

    In float64: the smallest eigenvalues are a few thousandths of the largest, and float32's rounding would mix
    their eigenvectors. ``eps`` keeps those from being blown up to pure noise.
    """
    kernel_size = math.isqrt(covariance.shape[0] // channels)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
    filters = (eigenvectors / (eigenvalues + eps).sqrt()).T.reshape(-1, channels, kernel_size, kernel_size)
    return torch.cat([filters, -filters]).float()


class PatchWhitening(nn.Module):
    """A k×k conv (stride 1, same padding) whose filters :func:`fit_patch_whitening` sets and training never
    changes. Until fitted it holds the identity basis (each output one pixel of the patch), so a net built
    without data is still a working net."""

    def __init__(self, in_channels: int = 3, kernel_size: int = 3) -> None:
        super().__init__()
        size = in_channels * kernel_size ** 2
        identity = torch.eye(size).reshape(size, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.cat([identity, -identity]), requires_grad=False)
        self.padding = kernel_size // 2

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), None, 1, self.padding)


# Patches of 10,000 images pin the 27×27 covariance far below what changes the filters (5 s on one CPU core).
FIT_IMAGES = 10_000


def fit_patch_whitening(net: nn.Module, images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> int:
    """Set every :class:`PatchWhitening` layer of ``net`` from the first :data:`FIT_IMAGES` of ``images`` (uint8
    ``(N, H, W, C)``, normalised by ``mean`` and ``std`` as the net's inputs are); returns how many layers there were.

    The result depends only on its arguments: processes that pass the same images fit the same filters.
    """
    layers = [module for module in net.modules() if isinstance(module, PatchWhitening)]
    for layer in layers:
        covariance = patch_covariance(images[:FIT_IMAGES], mean, std, layer.weight.shape[-1])
        with torch.no_grad():
            layer.weight.copy_(patch_whitening_filters(covariance, layer.weight.shape[1]))
    return len(layers)
