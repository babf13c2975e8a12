"""Dilated convolutions on the CPU through space-to-batch or through their taps, where oneDNN's own backward is slow.

oneDNN's depthwise kernels compute no dilated backward (they require dilation 1), so on x86 the backward
of a dilated depthwise conv falls to its generic grouped kernel (AVX-512) or to im2col + sgemm (AVX2,
whose backward-weights kernel requires dilation 1 for every conv). Two other computations of the same
backward run on fast kernels:

- Space-to-batch → undilated convolution → batch-to-space (TensorFlow's ``with_space_to_batch``): a conv
  with dilation ``d`` at stride 1 is an undilated conv of each of the ``d × d`` phases ``[r::d, s::d]`` of
  its zero-padded input, and at stride ``d`` it is that conv of phase 0 alone.
- The taps, for a depthwise conv at stride 1 (where space-to-batch leaves oneDNN tiny maps: 16 phases of
  2×2 pixels for c4net's C4, dilation 4 on 8×8): the input gradient is the same depthwise conv of the output
  gradient by the kernel turned 180°, which oneDNN's forward kernel computes fast, and the weight gradient
  is, per tap, the per-channel sum of the output gradient times the input shifted by the tap, over only the
  output rectangle whose input lies in the image (:func:`depthwise_weight_grad`).

:class:`Conv2d` is an ``nn.Conv2d`` (same parameters and state-dict keys) whose backward takes one of these
paths where :func:`backward_path` says so (``bench/dilated_conv.py`` times them all). Its forward stays
oneDNN's dilated conv (faster than through the phases or the taps), so outputs are unchanged, and without a
gradient (evaluation, the net analysis) it is ``nn.Conv2d`` itself. The input gradient equals the native one
up to rounding; the weight gradient differs in the last bits (summation order), which is why the path is a
fixed rule of the layer's configuration rather than a run-time measurement: a resumed run computes what an
uninterrupted one does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """Channels-last for a channels-last tensor (not also contiguous, as 1×1 maps are), else contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _placements(offset: int, length: int, d: int, phases: int) -> list[tuple[slice, slice]]:
    """Per phase ``r < phases`` along one axis, for a line of ``length`` pixels placed at ``offset`` in a canvas:
    (the pixels of the line in canvas phase ``r``, i.e. canvas pixels ``r``, ``r + d``, ..., and where they sit
    within that phase)."""
    placements = []
    for r in range(phases):
        first = (r - offset) % d
        count = len(range(first, length, d))
        start = (first + offset) // d
        placements.append((slice(first, length, d), slice(start, start + count)))
    return placements


def _phase_view(x: torch.Tensor, d: int) -> torch.Tensor:
    """``x`` (N, C, H, W), H and W multiples of ``d``, viewed as (d, d, N, C, H/d, W/d): ``[r, s]`` is
    ``x[..., r::d, s::d]``. Splitting an axis is a view whatever the strides."""
    n, c, h, w = x.shape
    return x.view(n, c, h // d, d, w // d, d).permute(3, 5, 0, 1, 2, 4)


def _is_whole_phases(offset: int, size: Sequence[int], d: int, phases: int) -> bool:
    """Whether every phase holds the same rectangle of the image (all phases, whole phases of offset and
    size), so that one copy through :func:`_phase_view` moves it: one parallel loop rather than d², which
    matters where threads wait at each loop's end for a CPU shared with other work."""
    return phases == d and offset % d == 0 and all(n % d == 0 for n in size)


def to_phases(x: torch.Tensor, offset: int, phase_size: tuple[int, int], d: int, phases: int) -> torch.Tensor:
    """Space-to-batch of ``x`` placed at ``(offset, offset)`` in a zero canvas of ``d·phase_size`` pixels.

    Returns ``(phases²·N, C, *phase_size)``: batch block ``r·phases + s`` is the canvas's pixels
    ``[r::d, s::d]``. ``phases = d`` gives every phase (space-to-batch); ``phases = 1`` only the first (the
    input a stride-``d`` conv reads). Each pixel is copied once; the canvas is never built. The result is
    channels-last whatever the layout of ``x``: oneDNN's kernels read that directly, where they would
    reorder NCHW, and the copy transposes for free (measured faster for NCHW inputs too).
    """
    n, c, h, w = x.shape
    out = torch.empty((phases * phases * n, c, *phase_size), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    row_placements = _placements(offset, h, d, phases)
    col_placements = _placements(offset, w, d, phases)
    covered = all(at == slice(0, size) for placements, size in ((row_placements, phase_size[0]),
                                                                (col_placements, phase_size[1]))
                  for _, at in placements)
    if not covered:
        out.zero_()
    blocks = out.view(phases, phases, n, c, *phase_size)
    if _is_whole_phases(offset, (h, w), d, phases):
        at = offset // d
        blocks[..., at:at + h // d, at:at + w // d].copy_(_phase_view(x, d))
        return out
    for r, (rows, at_rows) in enumerate(row_placements):
        for s, (cols, at_cols) in enumerate(col_placements):
            blocks[r, s, :, :, at_rows, at_cols].copy_(x[:, :, rows, cols])
    return out


def from_phases(blocks: torch.Tensor, offset: int, size: tuple[int, int], d: int, phases: int,
                memory_format: torch.memory_format) -> torch.Tensor:
    """The inverse of :func:`to_phases`: the ``size`` pixels at ``(offset, offset)`` of the canvas whose phases
    are ``blocks``; pixels of phases not given (``phases < d``) are zero."""
    n = blocks.shape[0] // (phases * phases)
    out = torch.empty((n, blocks.shape[1], *size), dtype=blocks.dtype, device=blocks.device,
                      memory_format=memory_format)
    if phases != d:
        out.zero_()
    blocks = blocks.view(phases, phases, n, *blocks.shape[1:])
    if _is_whole_phases(offset, size, d, phases):
        at = offset // d
        _phase_view(out, d).copy_(blocks[..., at:at + size[0] // d, at:at + size[1] // d])
        return out
    for r, (rows, at_rows) in enumerate(_placements(offset, size[0], d, phases)):
        for s, (cols, at_cols) in enumerate(_placements(offset, size[1], d, phases)):
            out[:, :, rows, cols] = blocks[r, s, :, :, at_rows, at_cols]
    return out


@dataclass(frozen=True)
class PhaseLayout:
    """How a conv of dilation ``d`` at stride 1 or ``d`` splits into undilated convs of phases.

    The input goes at ``offset`` into a canvas of ``in_size`` pixels per phase, of which the first ``phases``
    per axis are convolved (all ``d`` at stride 1, the first alone at stride ``d``) by an undilated conv with
    padding ``conv_padding``; each phase's output is ``out_size``.
    """

    phases: int
    offset: int
    conv_padding: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]

    @staticmethod
    def of(size: Sequence[int], kernel: Sequence[int], stride: int, padding: int, d: int) -> PhaseLayout:
        """The layout for an input of ``size`` (H, W) and a ``kernel`` (kh, kw).

        Padding by whole phases is left to the phase conv, which pads without copying, as far as oneDNN's
        depthwise backward-weights kernel takes it: at most ``(k - 1) // 2``, on maps no smaller than the
        kernel; beyond that it falls back to im2col + sgemm. The rest of the padding goes into the canvas.
        """
        def layout(conv_padding: int) -> PhaseLayout:
            offset = padding - d * conv_padding
            in_size = tuple(-(-(n + 2 * offset) // d) for n in size)
            out_size = tuple(n + 2 * conv_padding - k + 1 for n, k in zip(in_size, kernel))
            return PhaseLayout(d if stride == 1 else 1, offset, conv_padding, in_size, out_size)

        padded_by_conv = layout(min(padding // d, (min(kernel) - 1) // 2))
        if all(n >= k for n, k in zip(padded_by_conv.in_size, kernel)):
            return padded_by_conv
        return layout(0)


class _SpaceToBatchConv(torch.autograd.Function):
    """``F.conv2d`` with dilation ``d`` at stride 1 or ``d`` whose backward is an undilated conv of the phases."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, d, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, d, groups, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, d, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, d, groups, has_bias = ctx.conf
        layout = PhaseLayout.of(x.shape[-2:], weight.shape[-2:], stride, padding, d)
        x_phases = to_phases(x, layout.offset, layout.in_size, d, layout.phases)
        if layout.phases == d:
            g_phases = to_phases(grad_out, 0, layout.out_size, d, d)
        else:
            g_phases = grad_out.contiguous(memory_format=torch.channels_last)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            g_phases, x_phases, weight, [weight.shape[0]] if has_bias else None,
            [1, 1], [layout.conv_padding] * 2, [1, 1], False, [0, 0], groups, mask)
        if mask[0]:
            gx = from_phases(gx, layout.offset, x.shape[-2:], d, layout.phases, _memory_format(x))
        return gx, gw, gb, None, None, None, None


def space_to_batch_supported(stride: tuple[int, ...], padding: tuple[int, ...] | str, dilation: tuple[int, ...],
                             padding_mode: str = "zeros") -> bool:
    """Whether :func:`space_to_batch_conv2d` computes a conv of this configuration: the same dilation
    ``d > 1``, stride (1 or ``d``) and zero padding on both axes."""
    d = dilation[0]
    return (d > 1 and len(set(dilation)) == 1 and stride[0] in (1, d) and len(set(stride)) == 1
            and not isinstance(padding, str) and len(set(padding)) == 1 and padding_mode == "zeros")


def space_to_batch_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                          padding: int, dilation: int, groups: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``, whose backward is an undilated conv
    of the phases of ``x``; ``dilation > 1`` and ``stride`` is 1 or ``dilation``."""
    if dilation < 2 or stride not in (1, dilation):
        raise ValueError(f"space-to-batch computes a conv of dilation > 1 at stride 1 or equal to the dilation, "
                         f"not dilation {dilation} at stride {stride}; use F.conv2d for it")
    return _SpaceToBatchConv.apply(x, weight, bias, stride, padding, dilation, groups)


def _tap_slices(offset: int, in_size: int, out_size: int) -> tuple[slice, slice] | None:
    """Along one axis, where ``out[y]`` reads ``in[y + offset]``: (the output pixels whose input pixel lies in the
    image, those input pixels), or None where there are none."""
    first, stop = max(0, -offset), min(out_size, in_size - offset)
    if stop <= first:
        return None
    return slice(first, stop), slice(first + offset, stop + offset)


# Images per chunk of the weight gradient's tap products: about 2^17 input values (half a MiB of float32), so
# that a chunk of the input and of the output gradient, and the per-tap sums, stay near a core's L2 cache
# (c4net's C4 at batch 512: about 3× faster than one pass over the whole batch per tap; 2^16-2^17 measured
# fastest of 2^15-2^19 from 16 to 160 channels).
_TAP_CHUNK_VALUES = 2 ** 17


def depthwise_weight_grad(grad_out: torch.Tensor, x: torch.Tensor, kernel: Sequence[int], padding: int,
                          d: int) -> torch.Tensor:
    """The weight gradient ``(C, 1, kh, kw)`` of a depthwise conv of ``x`` at stride 1 with ``padding`` and dilation
    ``d``: per tap and channel, the sum of ``grad_out`` times the input pixels the tap reads.

    Each tap multiplies only the output rectangle whose input lies in the image (no padding is built). The batch
    goes through in chunks: per tap, each chunk's products are added elementwise into that tap's sums, which
    are reduced over images and pixels once at the end: the order of every sum is fixed by the shapes (the final
    reductions are torch's own sums, the same bits for the same shapes and thread count).
    Chunks are channels-last, so that the products and the per-channel sums run along contiguous channels.
    """
    n, c, h, w = x.shape
    out_h, out_w = grad_out.shape[-2:]
    taps = {}
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            rows, cols = _tap_slices(i * d - padding, h, out_h), _tap_slices(j * d - padding, w, out_w)
            if rows is not None and cols is not None:
                taps[i, j] = rows, cols
    chunk = max(1, _TAP_CHUNK_VALUES // (c * h * w))
    sums = {tap: torch.empty((min(chunk, n), c, rows[0].stop - rows[0].start, cols[0].stop - cols[0].start),
                             dtype=x.dtype, device=x.device, memory_format=torch.channels_last).zero_()
            for tap, (rows, cols) in taps.items()}
    for start in range(0, n, chunk):
        x_chunk = x[start:start + chunk].contiguous(memory_format=torch.channels_last)
        grad_chunk = grad_out[start:start + chunk].contiguous(memory_format=torch.channels_last)
        for tap, (rows, cols) in taps.items():
            sums[tap][:len(x_chunk)].addcmul_(grad_chunk[:, :, rows[0], cols[0]], x_chunk[:, :, rows[1], cols[1]])
    weight_grad = x.new_zeros((c, 1, *kernel))
    for (i, j), tap_sums in sums.items():
        weight_grad[:, 0, i, j] = tap_sums.sum((0, 2, 3))
    return weight_grad


def depthwise_input_grad(grad_out: torch.Tensor, weight: torch.Tensor, padding: int, d: int,
                         memory_format: torch.memory_format) -> torch.Tensor:
    """The input gradient of a depthwise conv at stride 1 with ``padding`` and dilation ``d``: the same conv of
    ``grad_out`` by the kernel turned 180°, with the taps' shifts reversed (padding ``d·(k - 1) - padding``), which
    oneDNN's depthwise forward kernel computes fast. Where the padding exceeds the kernel's reach, the border
    outputs read no input pixel: they are cropped instead of padded negatively."""
    grad_out = grad_out.contiguous(memory_format=memory_format)
    reversed_padding = []
    for axis, k in zip((2, 3), weight.shape[-2:]):
        reach = d * (k - 1) - padding
        if reach < 0:
            grad_out = grad_out.narrow(axis, -reach, grad_out.shape[axis] + 2 * reach)
        reversed_padding.append(max(reach, 0))
    return F.conv2d(grad_out, weight.flip(-2, -1), None, 1, reversed_padding, d, weight.shape[0])


class _DepthwiseTapsConv(torch.autograd.Function):
    """``F.conv2d`` of a depthwise conv with dilation at stride 1 whose backward is :func:`depthwise_input_grad`
    and :func:`depthwise_weight_grad`."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, d):
        ctx.save_for_backward(x, weight)
        ctx.conf = (padding, d, bias is not None)
        return F.conv2d(x, weight, bias, 1, padding, d, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        padding, d, has_bias = ctx.conf
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = depthwise_input_grad(grad_out, weight, padding, d, _memory_format(x))
        if ctx.needs_input_grad[1]:
            grad_weight = depthwise_weight_grad(grad_out, x, weight.shape[-2:], padding, d)
        if has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None


def depthwise_taps_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                          dilation: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, 1, padding, dilation, groups=C)`` for a depthwise ``weight`` ``(C, 1, kh, kw)``
    on ``x`` ``(N, C, H, W)``, whose backward sums the kernel's taps (:class:`_DepthwiseTapsConv`)."""
    channels = x.shape[1]
    if weight.shape[:2] != (channels, 1):
        raise ValueError(f"the taps path computes a depthwise conv (weight (C, 1, kh, kw) for C = {channels} input "
                         f"channels), not a weight of shape {tuple(weight.shape)}; use F.conv2d for it")
    return _DepthwiseTapsConv.apply(x, weight, bias, padding, dilation)


# The x86 instruction sets the rule was measured on (ATen's CPU capability, which oneDNN's kernels follow).
_CPU_CAPABILITY = torch.backends.cpu.get_cpu_capability()
_MEASURED_CAPABILITIES = ("AVX2", "AVX512")


class BackwardPath(enum.Enum):
    """How :class:`Conv2d` computes its backward (its forward is oneDNN's dilated conv on every path)."""

    NATIVE = "oneDNN's own backward (nn.Conv2d)"
    SPACE_TO_BATCH = "space_to_batch_conv2d: an undilated conv of the input's phases"
    TAPS = "depthwise_taps_conv2d: the input gradient as a conv, the weight gradient as per-tap sums"


def backward_path(conv: nn.Conv2d, x: torch.Tensor) -> BackwardPath:
    """The path ``conv(x)`` computes its backward by.

    Space-to-batch or the taps only on an x86 CPU (AVX2 or AVX-512), in float32 outside autocast, when a
    gradient of ``x`` or of the weight is wanted, for a configuration :func:`space_to_batch_supported`, and
    there only where ``bench/dilated_conv.py`` measured forward + backward faster than native (every dilated
    conv of the registered nets, one thread; speed-ups with AVX2 / with AVX-512):
    - depthwise (channel multiplier 1) at stride 1: the taps, at batch 512 and 256 (the machine shared with
      two trainings; each time the minimum of 5): channels-last 5.8-9.8× / 1.3-9.7× (5.2-9.7× at dilation 4,
      where space-to-batch gave 1.1-2.6× / 1.1-2.3×), NCHW 1.5-4.0× / 2.4-4.5×. Against space-to-batch the taps
      won every shape but ties at dilation 2 on 8×8 maps of 16 and 128 channels at batch 256 (backward 2.3 vs
      2.7 ms, 19.0 vs 20.9 ms, within the spread of repeated runs); on larger maps, checked by hand at batch 256
      (32×32 at dilation 2 and 8, 16×16 at dilation 4, a 5×5 kernel), their backward was 1.07-2.1× faster;
    - stride = dilation (the strided transitions): space-to-batch, where one phase, 1/d² of the input, is
      convolved (1.3-10× / 1.8-14× at batch 128 and 256);
    - depthwise with a channel multiplier > 1 at stride 1 (no registered net has one): space-to-batch, as for
      every depthwise conv before the taps (measured on c4net's, multiplier 1, at batch 128 and 256:
      channels-last 2.2-6.3× / 2.5-3.7×, NCHW 1.0-2.4× / 1.3-3.0×);
    - other convs at stride 1, with AVX2 only (AVX-512 has a dilated backward-weights kernel for them:
      0.65-1.04×), where the padding is whole phases (a multiple of the dilation, so nothing is copied for
      it): space-to-batch at dilation 2 (1.0-1.5×), and in channels-last at dilation 3 and 4 too (1.0-1.5×);
      not at dilation 8, whose 4×4 phases of a 32×32 map cost as much as they save.
    A fixed rule, not a run-time measurement, so that a resumed run computes what an uninterrupted one does.
    """
    if not (_CPU_CAPABILITY in _MEASURED_CAPABILITIES and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and torch.is_grad_enabled()
            and (x.requires_grad or conv.weight.requires_grad)
            and space_to_batch_supported(conv.stride, conv.padding, conv.dilation, conv.padding_mode)):
        return BackwardPath.NATIVE
    d = conv.dilation[0]
    channels_last = _memory_format(x) == torch.channels_last
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    if depthwise and conv.stride[0] == 1:
        return BackwardPath.TAPS
    if conv.stride[0] == d or conv.groups == conv.in_channels:
        return BackwardPath.SPACE_TO_BATCH
    if _CPU_CAPABILITY == "AVX2" and conv.padding[0] % d == 0 and (d == 2 or channels_last and d <= 4):
        return BackwardPath.SPACE_TO_BATCH
    return BackwardPath.NATIVE


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes its backward through space-to-batch or the taps where :func:`backward_path`
    says so.

    It has the parameters, state-dict keys and forward output of an ``nn.Conv2d`` built with the same
    arguments, and its name, so that a net prints and analyses as before; where the rule does not apply
    (CUDA, no dilation, no gradient, other strides) it is an ``nn.Conv2d``. Under CPU autocast a dilated or
    strided depthwise conv computes in float32 and returns float32 (:meth:`float32_under_cpu_autocast`).
    """

    def float32_under_cpu_autocast(self) -> bool:
        """Whether this conv computes in float32 under CPU autocast: a depthwise conv that is dilated or strided.

        oneDNN's bf16 backward of those falls to generic kernels (``jit_bf16``, im2col + gemm,
        ``brgconv_strided``), many times slower than its float32 ones and the taps; few FLOPs, they run in float32
        on the paths above. An undilated stride-1 depthwise conv stays in bf16 on oneDNN's depthwise kernels
        (``brdgmm_dw``, ``jit_dw``), which saves the casts around it: training steps alone, bf16, batch 128, 1
        thread, against every depthwise conv in float32, docs/speed.md.
        """
        return self.groups == self.in_channels > 1 and (self.dilation != (1, 1) or self.stride != (1, 1))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.device.type == "cpu" and torch.is_autocast_enabled("cpu") and self.float32_under_cpu_autocast():
            with torch.autocast("cpu", enabled=False):
                return self._float32_forward(input.float())
        return self._float32_forward(input)

    def _float32_forward(self, input: torch.Tensor) -> torch.Tensor:
        path = backward_path(self, input)
        if path is BackwardPath.SPACE_TO_BATCH:
            return space_to_batch_conv2d(input, self.weight, self.bias, self.stride[0], self.padding[0],
                                         self.dilation[0], self.groups)
        if path is BackwardPath.TAPS:
            return depthwise_taps_conv2d(input, self.weight, self.bias, self.padding[0], self.dilation[0])
        return super().forward(input)
