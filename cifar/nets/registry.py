"""Net registry: every net is built by name, as in timm."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

NetFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, NetFactory] = {}


def register_net(name: str) -> Callable[[NetFactory], NetFactory]:
    """Decorator that registers ``factory(num_classes=...) -> nn.Module`` under ``name``."""

    def decorator(factory: NetFactory) -> NetFactory:
        if name in _REGISTRY:
            raise ValueError(f"net {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_nets() -> list[str]:
    """Names of all registered nets, sorted."""
    return sorted(_REGISTRY)


def build_net(name: str, num_classes: int = 10, weights: str | Path | None = None) -> nn.Module:
    """Build the registered net ``name``: freshly initialised, or with trained ``weights``.

    ``weights`` is a ``.safetensors`` file, a train.py run folder or shipped result (``results/NAME``), a
    checkpoint folder, or the NAME of a shipped result in the repository's ``results/``; the net then carries
    ``pretrained_cfg`` (the normalisation its inputs need, the class names). See :mod:`cifar.results`.

    Raises:
        ValueError: ``name`` is not registered.
        cifar.checkpoint.CheckpointError: the weights are not found, hold another net, or do not fit.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown net {name!r}; valid names: {', '.join(list_nets())}") from None
    net = factory(num_classes=num_classes)
    if weights is not None:
        # Imported here: cifar.results reads weights through cifar.checkpoint, which builds nets with this module.
        from cifar.results import load_pretrained
        load_pretrained(net, name, weights)
    return net


def net_description(name: str) -> str:
    """First line of the net factory's docstring."""
    doc = (_REGISTRY[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
