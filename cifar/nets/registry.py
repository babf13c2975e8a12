"""Net registry: every net is built by name, as in timm."""

from __future__ import annotations

from typing import Any, Callable

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


def register_spec(name: str, build: Callable[[Any, int], nn.Module], spec: Any, description: str) -> None:
    """Register ``build(spec, num_classes)`` under ``name``: a family's layouts are data, one builder serves them all.
    ``description`` is what ``net_description`` (and ``python -m cifar.nets``) shows."""

    def factory(num_classes: int = 10) -> nn.Module:
        return build(spec, num_classes)

    factory.__doc__, factory.__name__, factory.__module__ = description, name, build.__module__
    register_net(name)(factory)


def list_nets() -> list[str]:
    """Names of all registered nets, sorted."""
    return sorted(_REGISTRY)


def build_net(name: str, num_classes: int = 10) -> nn.Module:
    """Build the registered net ``name``, freshly initialised. For trained weights by name or path, see
    :func:`cifar.pretrained.build_net`, which builds through this.

    Raises:
        ValueError: ``name`` is not registered.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown net {name!r}; valid names: {', '.join(list_nets())}") from None
    return factory(num_classes=num_classes)


def net_description(name: str) -> str:
    """First line of the net factory's docstring."""
    doc = (_REGISTRY[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
