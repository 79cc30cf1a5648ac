"""Thin helpers over :mod:`torch.distributed` that are no-ops in a single process.

Also :class:`SyncBatchNorm` and :func:`sync_batchnorm`: BatchNorm whose batch statistics are
those of the global batch (all ranks), as one process would compute them, on CPU (gloo) as well
as on accelerators.

Example:
    >>> from calibrant.distributed import rank, world_size
    >>> rank(), world_size()
    (0, 1)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "all_reduce_sum",
    "barrier",
    "SyncBatchNorm",
    "sync_batchnorm",
]


def is_distributed() -> bool:
    """True when a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (one collective) and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Synchronise all processes (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


class SyncBatchNorm(_BatchNorm):
    r"""BatchNorm over the global batch of all ranks, on CPU (gloo); see :func:`sync_batchnorm`.

    In training, with more than one process, the batch mean and the biased variance are those
    of the global batch (every rank's elements), the running statistics get the unbiased
    variance, and the gradient flows across ranks (differentiable all-reduces), so ``W``
    processes with ``B`` samples each train as one process with ``W·B``, to float rounding:

    .. math::
        \mu = \frac{\sum_r \sum_i x_{ri}}{\sum_r n_r},\qquad
        \sigma^2 = \frac{\sum_r \sum_i (x_{ri} - \mu)^2}{\sum_r n_r},\qquad
        y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    (sums and counts reduced in float64). Out of training, or in one process, it is plain batch
    norm. torch's :class:`~torch.nn.SyncBatchNorm` does the same with fused kernels that exist
    only for accelerators, and DDP refuses it on CPU; :func:`sync_batchnorm` uses torch's on
    accelerators and this one on CPU.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise ``(N, C, *)``; see the class docstring."""
        if not (self.training and is_distributed()):
            return super().forward(input)
        # differentiable (the backward all-reduces the gradient); torch.distributed.nn's copy
        # is deprecated in favour of this one
        from torch.distributed._functional_collectives import all_reduce

        group = dist.group.WORLD
        self._check_input_dim(input)
        f64, dims = torch.float64, [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        local = torch.full((1,), input.numel() // max(input.shape[1], 1), dtype=f64)
        sums = torch.cat([input.sum(dims, dtype=f64), local.to(input.device)])
        sums = all_reduce(sums, "sum", group)
        n = sums[-1]
        mean = sums[:-1] / n
        centred = input - mean.to(input.dtype).view(shape)
        var = all_reduce(centred.square().sum(dims, dtype=f64), "sum", group) / n
        out = centred * torch.rsqrt(var + self.eps).to(input.dtype).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum
                if factor is None:  # cumulative moving average
                    factor = 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by one over the global batch of all ranks.

    :class:`torch.nn.SyncBatchNorm` when the module's parameters are on an accelerator, else
    :class:`SyncBatchNorm`. Parameters and buffers are shared with the old layers, so the state
    dict keeps its keys and values. Returns the module (a new one if ``module`` itself is a
    BatchNorm layer).

    Example:
        >>> net = sync_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
        >>> type(net[1]).__name__, list(net.state_dict()) == ['0.weight', '0.bias',
        ...     '1.weight', '1.bias', '1.running_mean', '1.running_var', '1.num_batches_tracked']
        ('SyncBatchNorm', True)
    """
    if any(p.device.type != "cpu" for p in module.parameters()):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, sync_batchnorm(child))
    return out
