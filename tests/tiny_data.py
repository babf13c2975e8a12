"""A tiny, learnable CIFAR-like dataset in the image-folder layout, for end-to-end runs of train.py, and the
tensors train.py's evaluation feeds a net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cifar.augment import PlainDataset, build_test_transform
from cifar.data import CifarArrays

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# Ten far-apart colours; a class is its colour plus stripes whose direction and frequency also depend on it.
_PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                     (145, 30, 180), (70, 240, 240), (240, 50, 230), (128, 128, 0), (250, 250, 250)], np.float64)


def class_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy image whose colour and stripes give away its class, so a tiny net learns it in a few epochs."""
    y, x = np.mgrid[0:32, 0:32]
    stripes = np.sin((x if label % 2 else y) * (0.4 + 0.3 * (label // 2)) + rng.uniform(0, 6.3))[..., None]
    image = _PALETTE[label] * (0.7 + 0.3 * stripes) + rng.normal(0, 20, (32, 32, 3))
    return image.clip(0, 255).astype(np.uint8)


def write_tiny_cifar(root: Path, train_per_class: int = 24, test_per_class: int = 10, seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(class_image(label, rng)).save(folder / f"{i:04d}.png")
    return root


def evaluation_inputs(images: np.ndarray, data: CifarArrays) -> torch.Tensor:
    """What the net sees in train.py's evaluation (and --eval-only): the test pipeline's normalised tensors."""
    dataset = PlainDataset(images, np.zeros(len(images), np.int64), build_test_transform(data.mean, data.std))
    return torch.stack([dataset[i][0] for i in range(len(dataset))])
