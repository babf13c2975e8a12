"""Nets by name: ``build_net(name)``, ``list_nets()``, and their analysis."""

from cifar.nets.registry import build_net, list_nets, net_description, register_net

# Importing the modules registers their nets.
from cifar.nets import c4next as _c4next  # noqa: E402,F401
from cifar.nets import default as _default  # noqa: E402,F401
from cifar.nets import seeds as _seeds  # noqa: E402,F401
from cifar.nets.default import DEFAULT_NET, TINY_NET  # noqa: E402

__all__ = ["DEFAULT_NET", "TINY_NET", "build_net", "list_nets", "net_description", "register_net"]
