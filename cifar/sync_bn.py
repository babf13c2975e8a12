"""Batch norm whose training statistics span every process's shard of the batch, on CPU and GPU alike.

``torch.nn.SyncBatchNorm`` only accepts GPU (or XPU) tensors, so it cannot serve a CPU/gloo run, and using it
on GPUs alone would leave the production layer untested on the machines the tests run on. This layer is built
from ordinary tensor ops and ``all_reduce`` (which gloo and NCCL both provide), so one code path serves both.
Gradients flow through the reductions, so every process gets the gradient of one big batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes of the default group whose backward sums the output gradients the same way.

    Every process's output depends on every process's input, so the gradient w.r.t. one process's input is the
    sum of all processes' output gradients. (``torch.distributed.nn.functional.all_reduce`` does this too, but
    is deprecated in the pinned torch.)
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        # all_reduce works in place: the clone leaves the caller's tensor intact for autograd.
        reduced = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(reduced)
        return reduced

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return _AllReduceSum.apply(grad)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SyncBatchNorm(_BatchNorm):
    """Batch norm for inputs (N, C, ...) whose training statistics cover all processes of the default group.

    In training mode with a process group of two or more processes, the per-channel sums and element counts
    are all-reduced (shards may differ in size), the input is normalized with the global mean and biased
    variance, and the running statistics are updated with the global mean and unbiased variance, with
    ``momentum`` as in torch (``None``: cumulative average). Statistics are computed in at least float32 and
    the output has the input's dtype. Without a group, with one process or in eval mode it is plain batch norm.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected input of shape (N, C, ...), got {input.dim()}D input")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and _distributed()):
            return super().forward(input)
        self._check_input_dim(input)

        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)

        # Half-precision sums of many squares lose the variance; float64 inputs keep their precision.
        x = input.to(torch.promote_types(input.dtype, torch.float32))
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        local_count = x.numel() // channels
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), x.new_full((1,), local_count)]))
        count = totals[channels]
        # The global count can only be 1 where the local one is at most 1: checking just then spares ordinary
        # steps a host sync.
        if local_count <= 1 and count.item() <= 1:
            raise ValueError(f"expected more than 1 value per channel over all processes when training, "
                             f"got input of shape {list(input.shape)}")
        mean = totals[:channels] / count
        # Centring before squaring costs a second all_reduce but avoids the cancellation in E[x²] - E[x]²
        # when the mean is large against the spread.
        centered = x - mean.view(shape)
        var = _AllReduceSum.apply((centered * centered).sum(dims)) / count
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)

        if self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                # torch's running variance is unbiased although it normalizes with the biased one.
                unbiased = var * (count / (count - 1))
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every batch norm layer (``BatchNorm1d/2d/3d``, torch's SyncBatchNorm) replaced by
    :class:`SyncBatchNorm`, recursively; returns the new layer when ``module`` itself is one.

    The replacement shares the original's parameters and buffers, as torch's ``convert_sync_batchnorm`` does,
    so device, dtype, values and ``requires_grad`` carry over and an optimizer built beforehand stays valid.
    """
    converted = module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        converted = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats)
        if module.affine:
            converted.weight = module.weight
            converted.bias = module.bias
        if module.track_running_stats:
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
    for name, child in module.named_children():
        converted.add_module(name, convert_sync_batchnorm(child))
    return converted
