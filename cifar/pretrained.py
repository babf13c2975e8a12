"""Trained nets by name, the way timm users call ``create_model``::

    from cifar.pretrained import build_net
    net = build_net("c4net_deep16", weights="c4net_deep16-35ep-seed0")
    net.pretrained_cfg  # {"weights", "mean", "std", "classes"}

Weights are found the way ``train.py --eval-only`` and ``python -m cifar.export`` take them
(:func:`resolve_weights`): a ``.safetensors`` file, a run or result folder, a checkpoint folder, or the NAME of a
shipped result in this repository's ``results/`` (:mod:`cifar.results`).

This module sits above the net registry (:mod:`cifar.nets`), the checkpoint reader and the shipped results, so
that none of those depends on another above it: the registry builds fresh nets, this layer fills them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from cifar import checkpoint as ckpt
from cifar import nets, results


def build_net(name: str, num_classes: int = 10, weights: str | Path | None = None) -> nn.Module:
    """The registered net ``name``: freshly initialised (as :func:`cifar.nets.build_net`), or with trained
    ``weights`` (anything :func:`resolve_weights` finds), in which case it carries ``pretrained_cfg``.

    Raises:
        ValueError: ``name`` is not registered.
        cifar.checkpoint.CheckpointError: the weights are not found, hold another net, or do not fit.
    """
    net = nets.build_net(name, num_classes=num_classes)
    if weights is not None:
        load_pretrained(net, name, weights)
    return net


def resolve_weights(weights: str | Path, results_dir: Path | None = None) -> Path:
    """Where ``weights`` are: the path itself if it exists (a ``.safetensors`` file, a run or result folder, a
    checkpoint folder), else the shipped result of that name in ``results_dir`` (default: the repository's
    ``results/``).

    Raises:
        CheckpointError: no such path, and no shipped result of that name (the message lists those there are).
    """
    path = Path(weights)
    if path.exists():
        return path
    folder = results_dir or results.RESULTS_DIR
    shipped = results.shipped_results(folder)
    if str(weights) in shipped:
        return folder / str(weights)
    raise ckpt.CheckpointError(
        f"weights {str(weights)!r}: no such file or folder, and no shipped result of that name in {folder} "
        f"({'shipped: ' + ', '.join(shipped) if shipped else 'none is shipped yet'}); pass a .safetensors file, "
        "a run or results/ folder, a checkpoint folder, or the name of a shipped result")


def load_pretrained(net: nn.Module, name: str, weights: str | Path) -> None:
    """Load ``weights`` (anything :func:`resolve_weights` finds) into ``net``, a fresh instance of the registered
    net ``name``, and set ``net.pretrained_cfg``: the weights' path and, where the weights record them, the mean
    and std that inputs must be normalised with and the class names in label order.

    Raises:
        CheckpointError: the weights are not found, hold another net than ``name``, or do not fit ``net`` (say,
            built with another ``num_classes``).
    """
    path = resolve_weights(weights)
    trained, trained_as, metadata = ckpt.load_net(path, default_name=name)
    if trained_as != name:
        raise ckpt.CheckpointError(f"weights {str(weights)!r} ({path}) hold net {trained_as!r}, not {name!r}: "
                                   f"build_net({trained_as!r}, weights=...), or choose weights trained as {name!r}")
    classes = json.loads(metadata["classes"]) if "classes" in metadata else None
    try:
        net.load_state_dict(trained.state_dict())
    except RuntimeError:
        count = f"{len(classes)} classes" if classes is not None else "another number of classes"
        raise ckpt.CheckpointError(f"weights {str(weights)!r} ({path}) classify {count}: build {name!r} with the "
                                   "num_classes they were trained for") from None
    config: dict[str, Any] = {"weights": str(path)}
    for key in ("mean", "std", "classes"):
        if key in metadata:
            config[key] = json.loads(metadata[key])
    net.pretrained_cfg = config
