"""What a net is, computed from the net itself: receptive field, parameters, MACs, layer shapes, constraints.

One forward pass of a 1-image batch runs under a :class:`~torch.overrides.TorchFunctionMode` that sees every
torch function the net calls (``F.conv2d``, pooling, ``add``, ``cat``, ``flatten``, ...). Each spatial
tensor carries a :class:`Field`, the window of input pixels its first output pixel sees, so branches,
residual adds and concatenations are followed exactly as the net computes them, not as a hand-written list
claims. An op that changes the spatial size and is not understood raises :class:`UnsupportedOpError`
rather than report a wrong receptive field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

MAX_PARAMS = 200_000  # the assignment: fewer than 200k parameters
MIN_RECEPTIVE_FIELD = 45  # the assignment: receptive field > 44

CONSTRAINTS = ("params_lt_200k", "rf_gt_44", "no_maxpool", "depthwise_separable", "dilated", "gap")


class UnsupportedOpError(RuntimeError):
    """The net calls an op whose effect on the receptive field the analysis does not know."""


@dataclass(frozen=True)
class Field:
    """Per spatial axis (height, width): output pixel ``i`` sees input pixels ``lo + i*jump`` to
    ``lo + i*jump + size - 1``. ``lo`` goes negative where padding reaches outside the image."""

    size: tuple[int, int]
    jump: tuple[int, int]
    lo: tuple[int, int]

    def through_window(self, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                       padding: tuple[int, int]) -> Field:
        """The field after a sliding window (convolution or pooling)."""
        return Field(
            size=tuple(s + (k - 1) * d * j for s, k, d, j in zip(self.size, kernel, dilation, self.jump)),
            jump=tuple(j * s for j, s in zip(self.jump, stride)),
            lo=tuple(lo - p * j for lo, p, j in zip(self.lo, padding, self.jump)),
        )

    def union(self, other: Field) -> Field:
        """The field of an elementwise combination (residual add, concatenation) of two maps."""
        if self.jump != other.jump:
            raise UnsupportedOpError(f"combining maps of different strides {self.jump} and {other.jump}")
        lo = tuple(min(a, b) for a, b in zip(self.lo, other.lo))
        hi = tuple(max(a + s, b + t) for a, s, b, t in zip(self.lo, self.size, other.lo, other.size))
        return Field(size=tuple(h - low for h, low in zip(hi, lo)), jump=self.jump, lo=lo)


INPUT_FIELD = Field(size=(1, 1), jump=(1, 1), lo=(0, 0))


@dataclass(frozen=True)
class ConvOp:
    """One convolution call, as the net made it."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @property
    def is_depthwise(self) -> bool:
        return self.groups == self.in_channels > 1 and max(self.kernel) > 1

    @property
    def is_pointwise(self) -> bool:
        return self.kernel == (1, 1) and self.groups == 1

    @property
    def is_dilated(self) -> bool:
        return max(self.dilation) > 1 and max(self.kernel) > 1


@dataclass(frozen=True)
class _Spatial:
    """What the trace knows of a 4-D map: its field and the conv that last produced it (through
    single-input elementwise ops such as BatchNorm or ReLU), to recognise depthwise → pointwise pairs."""

    field: Field
    producer: ConvOp | None


@dataclass(frozen=True)
class _Collapsed:
    """A tensor whose spatial axes were reduced away; ``average`` tells whether by a global average."""

    average: bool


@dataclass(frozen=True)
class LayerInfo:
    """One leaf module as the net runs it on a single image."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    receptive_field: int | None


@dataclass(frozen=True)
class NetReport:
    """Everything the analysis found; ``constraints`` maps each name in :data:`CONSTRAINTS` to a bool."""

    name: str
    params: int
    macs: int
    receptive_field: int
    layers: tuple[LayerInfo, ...]
    constraints: dict[str, bool]

    @property
    def meets_constraints(self) -> bool:
        return all(self.constraints.values())

    def summary(self) -> dict[str, Any]:
        """The JSON-ready summary: name, params, receptive_field, macs, constraints."""
        return {
            "name": self.name,
            "params": self.params,
            "receptive_field": self.receptive_field,
            "macs": self.macs,
            "constraints": dict(self.constraints),
            "meets_constraints": self.meets_constraints,
        }

    def to_dict(self) -> dict[str, Any]:
        """The summary plus the layer table."""
        return {**self.summary(), "layers": [asdict(layer) for layer in self.layers]}


def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _arg(args: tuple, kwargs: dict, position: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def _spatial_size(tensor: torch.Tensor) -> tuple[int, int]:
    return (tensor.shape[-2], tensor.shape[-1])


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors_in(item)]
    return []


@dataclass
class _Trace:
    """What the forward pass showed; filled in by :class:`_TraceMode`."""

    infos: dict[int, tuple[torch.Tensor, _Spatial | _Collapsed]] = field(default_factory=dict)
    convs: list[ConvOp] = field(default_factory=list)
    depthwise_separable: bool = False
    max_pooling: bool = False
    collapses: list[tuple[bool, Field]] = field(default_factory=list)  # (by global average, field before)
    classifier_on_average: bool = False
    macs_by_module: dict[str, int] = field(default_factory=dict)
    module_stack: list[str] = field(default_factory=list)

    def info(self, tensor: torch.Tensor) -> _Spatial | _Collapsed | None:
        entry = self.infos.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def set_info(self, tensor: torch.Tensor, info: _Spatial | _Collapsed) -> None:
        # The tensor is kept alive so its id cannot be reused by another tensor during the trace.
        self.infos[id(tensor)] = (tensor, info)

    def add_macs(self, macs: int) -> None:
        name = self.module_stack[-1] if self.module_stack else ""
        self.macs_by_module[name] = self.macs_by_module.get(name, 0) + macs


def _window_params(func: Callable, args: tuple, kwargs: dict) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, dilation, padding) of a pooling call."""
    kernel = _pair(_arg(args, kwargs, 1, "kernel_size", None))
    stride = _arg(args, kwargs, 2, "stride", None)
    stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
    padding = _pair(_arg(args, kwargs, 3, "padding", 0))
    dilation = _pair(_arg(args, kwargs, 4, "dilation", 1)) if func is F.max_pool2d else (1, 1)
    return kernel, stride, dilation, padding


def _conv_padding(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    if padding == "valid":
        return (0, 0)
    if padding == "same":  # torch puts the odd pixel of an even total on the far side
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return _pair(padding)


_MAX_POOLS = {F.max_pool2d, F.adaptive_max_pool2d, F.max_pool1d, F.max_pool3d,
              F.adaptive_max_pool1d, F.adaptive_max_pool3d}
_SPATIAL_AVERAGES = {F.avg_pool2d, F.adaptive_avg_pool2d}


class _TraceMode(TorchFunctionMode):
    """Propagates :class:`_Spatial`/:class:`_Collapsed` through every torch call of a forward pass."""

    def __init__(self, trace: _Trace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [(t, self.trace.info(t)) for t in _tensors_in(args) + _tensors_in(kwargs)]
        inputs = [(t, info) for t, info in inputs if info is not None]
        outputs = _tensors_in(out)
        if not inputs or not outputs:
            return out
        info = self._propagate(func, args, kwargs, inputs, outputs[0])
        if info is not None:
            for tensor in outputs:
                self.trace.set_info(tensor, info)
        return out

    def _propagate(self, func: Callable, args: tuple, kwargs: dict,
                   inputs: list[tuple[torch.Tensor, _Spatial | _Collapsed]],
                   out: torch.Tensor) -> _Spatial | _Collapsed | None:
        first_tensor, first = inputs[0]
        name = getattr(func, "__name__", repr(func))

        if isinstance(first, _Collapsed):
            # After global pooling only the classifier runs: linear, or a 1x1 conv on a 1x1 map.
            if func in (F.linear, F.conv2d):
                self.trace.classifier_on_average |= first.average
                self.trace.add_macs(self._linear_macs(func, args, out))
            return first

        if func is F.conv2d:
            weight = _arg(args, kwargs, 1, "weight", None)
            kernel = (weight.shape[2], weight.shape[3])
            stride = _pair(_arg(args, kwargs, 3, "stride", 1))
            dilation = _pair(_arg(args, kwargs, 5, "dilation", 1))
            padding = _conv_padding(_arg(args, kwargs, 4, "padding", 0), kernel, dilation)
            groups = int(_arg(args, kwargs, 6, "groups", 1))
            conv = ConvOp(first_tensor.shape[1], weight.shape[0], kernel, stride, dilation, groups)
            self.trace.convs.append(conv)
            if conv.is_pointwise and first.producer is not None and first.producer.is_depthwise:
                self.trace.depthwise_separable = True
            self.trace.add_macs(self._linear_macs(func, args, out))
            if _spatial_size(out) == (1, 1) and _spatial_size(first_tensor) != (1, 1) and conv.kernel != (1, 1):
                self.trace.collapses.append((False, first.field))
                return _Collapsed(average=False)
            return _Spatial(first.field.through_window(kernel, stride, dilation, padding), conv)

        if func in _MAX_POOLS:
            self.trace.max_pooling = True

        if func is F.linear or out.dim() != 4:
            # Flatten, view, mean over H and W, linear: the spatial axes are gone.
            average = func is torch.mean or name == "mean"
            if average:
                dims = _arg(args, kwargs, 1, "dim", None)
                dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
                average = {d % first_tensor.dim() for d in dims} == {2, 3}
            if func is F.linear:
                self.trace.add_macs(self._linear_macs(func, args, out))
            self.trace.collapses.append((average, first.field))
            return _Collapsed(average=average)

        if func in _SPATIAL_AVERAGES or func in _MAX_POOLS:
            if _spatial_size(out) == (1, 1):
                self.trace.collapses.append((func in _SPATIAL_AVERAGES, first.field))
                return _Collapsed(average=func in _SPATIAL_AVERAGES)
            if func in (F.avg_pool2d, F.max_pool2d):
                return _Spatial(first.field.through_window(*_window_params(func, args, kwargs)), None)
            raise UnsupportedOpError(f"{name} to a size other than 1x1")

        if func is F.pad:
            pad = tuple(_arg(args, kwargs, 1, "pad", ()))
            if len(pad) < 4:
                raise UnsupportedOpError(f"F.pad of {pad} on a 4-D map")
            padding = (pad[2], pad[0])  # (left, right, top, bottom): the far sides do not move lo
            return _Spatial(first.field.through_window((1, 1), (1, 1), (1, 1), padding), first.producer)

        if any(_spatial_size(t) != _spatial_size(out) for t, _ in inputs):
            raise UnsupportedOpError(
                f"{name} changes the spatial size {tuple(_spatial_size(first_tensor))} -> "
                f"{tuple(_spatial_size(out))}; the analysis knows conv2d, pooling and padding only"
            )
        spatial = [info for _, info in inputs if isinstance(info, _Spatial)]
        merged = spatial[0].field
        for info in spatial[1:]:
            merged = merged.union(info.field)
        # Single-input elementwise ops (BatchNorm, activations, dropout) keep the producer.
        producer = spatial[0].producer if len(inputs) == 1 else None
        return _Spatial(merged, producer)

    @staticmethod
    def _linear_macs(func: Callable, args: tuple, out: torch.Tensor) -> int:
        weight = args[1]
        per_output = weight[0].numel()  # in_features, or (in_channels / groups) * kh * kw
        return out.numel() // out.shape[0] * per_output


def _rf(field: Field) -> int:
    return max(field.size)


def analyze_net(net: nn.Module, input_shape: tuple[int, int, int] = (3, 32, 32), name: str = "") -> NetReport:
    """Trace one forward pass of a single image through ``net`` and report what it is.

    The receptive field is that of the map the net reduces to a vector (global pooling or flatten): with
    global average pooling after it, that is the window each spatial feature sees. The net runs in eval
    mode under ``no_grad`` and is put back in the mode it was in.
    """
    trace = _Trace()
    leaves = [(n, m) for n, m in net.named_modules() if not list(m.children())]
    outputs: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def enter(module_name: str) -> Callable:
        def hook(module: nn.Module, args: Any) -> None:
            trace.module_stack.append(module_name)
        return hook

    def leave(module_name: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            trace.module_stack.pop()
            tensors = _tensors_in(output)
            if tensors:
                outputs[module_name] = tensors[0]
                order.append(module_name)
        return hook

    handles = []
    for module_name, module in leaves:
        handles.append(module.register_forward_pre_hook(enter(module_name)))
        handles.append(module.register_forward_hook(leave(module_name)))
    was_training = net.training
    net.eval()
    try:
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        image = torch.zeros(1, *input_shape, device=device)
        trace.set_info(image, _Spatial(INPUT_FIELD, None))
        with torch.no_grad(), _TraceMode(trace):
            net(image)
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()

    modules = dict(leaves)
    layers = []
    for module_name in dict.fromkeys(order):  # a module called twice is listed once, at its first call
        info = trace.info(outputs[module_name])
        layers.append(LayerInfo(
            name=module_name,
            kind=type(modules[module_name]).__name__,
            output_shape=tuple(outputs[module_name].shape[1:]),
            params=sum(p.numel() for p in modules[module_name].parameters(recurse=False)),
            macs=trace.macs_by_module.get(module_name, 0),
            receptive_field=_rf(info.field) if isinstance(info, _Spatial) else None,
        ))

    if not trace.collapses:
        raise UnsupportedOpError("the net never reduces its spatial map to a vector; is it a classifier?")
    receptive_field = _rf(trace.collapses[0][1])
    params = sum(p.numel() for p in net.parameters())
    constraints = {
        "params_lt_200k": params < MAX_PARAMS,
        "rf_gt_44": receptive_field >= MIN_RECEPTIVE_FIELD,
        "no_maxpool": not trace.max_pooling,
        "depthwise_separable": trace.depthwise_separable,
        "dilated": any(conv.is_dilated for conv in trace.convs),
        "gap": all(average for average, _ in trace.collapses) and trace.classifier_on_average,
    }
    return NetReport(
        name=name,
        params=params,
        macs=sum(trace.macs_by_module.values()),
        receptive_field=receptive_field,
        layers=tuple(layers),
        constraints=constraints,
    )
