"""Test-time augmentation: a net's logits averaged over views of each image that training taught it to treat alike.

Two named variants, each reported beside the plain accuracy, never instead of it:

- ``flip``: the image and its horizontal mirror (training flips at random).
- ``flip_translate``: those two, plus the image shifted by one pixel diagonally (down-right, and up-left; the
  border reflected) and the mirror of each shifted image, as airbench's TTA does: six views.

The logits of all views are averaged with equal weight. Views are NCHW batches of the same shape as the input,
so a net in eval mode (BatchNorm on its running statistics) sees each view as it would any test batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TTA_VARIANTS = ("flip", "flip_translate")


def tta_views(images: torch.Tensor, variant: str) -> list[torch.Tensor]:
    """The views of the NCHW batch ``images`` that ``variant`` averages over, ``images`` itself first."""
    if variant not in TTA_VARIANTS:
        raise ValueError(f"unknown test-time augmentation {variant!r}; choose one of: {', '.join(TTA_VARIANTS)}")
    if images.ndim != 4:
        raise ValueError(f"images must be an NCHW batch; got shape {tuple(images.shape)}")
    views = [images, images.flip(-1)]
    if variant == "flip_translate":
        height, width = images.shape[-2:]
        padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
        # Crops at offset 0 and 2 of the 1-pixel padding: the content moves one pixel down-right and up-left.
        shifted = [padded[..., top:top + height, top:top + width] for top in (0, 2)]
        views += [view for image in shifted for view in (image, image.flip(-1))]
    return views


def tta_logits(net: nn.Module, images: torch.Tensor, variant: str) -> torch.Tensor:
    """The mean of ``net``'s logits over :func:`tta_views` of ``images``, in float32."""
    views = tta_views(images, variant)
    return torch.stack([net(view).float() for view in views]).mean(0)
