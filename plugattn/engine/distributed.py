"""Process-group setup for torchrun, metric reduction, and BatchNorm synchronisation (also on CPU/gloo).

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` reads them, picks the device
(``cuda:LOCAL_RANK`` on GPUs, else the CPU) and initialises NCCL on CUDA or gloo on the CPU. Without these variables
it returns a single-process context and initialises nothing.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .errors import EngineError

__all__ = [
    'DistBatchNorm',
    'DistContext',
    'all_reduce_sum',
    'cleanup_distributed',
    'convert_sync_batchnorm',
    'init_distributed',
    'resolve_device',
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank: Global rank.
        local_rank: Rank on this node.
        world_size: Number of processes.
        device: Device of this process.
        backend: ``'nccl'``, ``'gloo'`` or ``None`` when not distributed.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """Whether a process group with more than one process is active."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs and checkpoints."""
        return self.rank == 0


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``'auto'`` → ``cuda:LOCAL_RANK`` if CUDA is available else ``cpu``; explicit specs are checked.

    Raises:
        EngineError: CUDA requested but not available, or an invalid device index.
    """
    if spec == 'auto':
        return torch.device('cuda', local_rank) if torch.cuda.is_available() else torch.device('cpu')
    if spec == 'cpu':
        return torch.device('cpu')
    if spec.startswith('cuda'):
        if not torch.cuda.is_available():
            raise EngineError(f'device {spec!r} requested but CUDA is not available', 'use --device cpu')
        index = int(spec.split(':')[1]) if ':' in spec else local_rank
        if index >= torch.cuda.device_count():
            raise EngineError(f'device {spec!r} does not exist ({torch.cuda.device_count()} GPUs)',
                              'use --device cuda or a valid index')
        return torch.device('cuda', index)
    raise EngineError(f'unknown device {spec!r}', "use --device auto, cpu, cuda or cuda:N")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == '':
        return default
    try:
        return int(raw)
    except ValueError:
        raise EngineError(f'environment variable {name}={raw!r} is not an integer',
                          'launch with torchrun, which sets it') from None


def init_distributed(device: str = 'auto', timeout_s: float = 1800.0) -> DistContext:
    """Initialise the default process group from torchrun's environment variables.

    Args:
        device: Device spec (see :func:`resolve_device`); each process uses ``cuda:LOCAL_RANK`` under ``'auto'``.
        timeout_s: Collective timeout.

    Returns:
        The process context; single-process when ``WORLD_SIZE`` is unset or 1.
    """
    world_size = _env_int('WORLD_SIZE', 1)
    _env_int('RANK', 0)  # validated here; the process group reads it
    local_rank = _env_int('LOCAL_RANK', 0)
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        if dev.type == 'cuda':
            torch.cuda.set_device(dev)
        return DistContext(0, 0, 1, dev, None)
    if dev.type == 'cuda':
        torch.cuda.set_device(dev)
    backend = 'nccl' if dev.type == 'cuda' else 'gloo'
    if not dist.is_initialized():
        kwargs = {'device_id': dev} if dev.type == 'cuda' else {}
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistContext(dist.get_rank(), local_rank, dist.get_world_size(), dev, backend)


def cleanup_distributed() -> None:
    """Destroy the default process group if one is active."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a list of numbers over all processes (float64 on the process device)."""
    if not ctx.distributed:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    """Wait for all processes (no-op when single-process)."""
    if ctx.distributed:
        dist.barrier()


# --------------------------------------------------------------------------------------------- sync BN


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over processes (``torch.distributed.nn.functional.all_reduce``).

    torch marks that function deprecated in favour of ``torch.distributed._functional_collectives.all_reduce``, which
    has no autograd formula; its warning is silenced here, where the eager, differentiable version is what is needed.
    """
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'torch\.distributed\.nn\.functional\.all_reduce is deprecated',
                                category=FutureWarning)
        return all_reduce(x, op=dist.ReduceOp.SUM)


class DistBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are computed over all processes, on any device and backend.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators; this version uses torch's differentiable all-reduce
    (``torch.distributed.nn.functional.all_reduce``) and therefore also works with gloo on the CPU. The batch
    mean and (biased) variance come from two all-reduces of per-channel sums over every process' batch; running
    statistics use the unbiased variance as ``torch.nn.BatchNorm``. In eval mode, or without a process group,
    it is exactly ``F.batch_norm``. Accepts ``(N, C)`` and ``(N, C, *)`` inputs (BatchNorm1d/2d/3d). State-dict
    keys are those of ``nn.BatchNorm2d``, so checkpoints load into the unconverted model.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f'expected at least 2D input (got {input.dim()}D input)')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        sync = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not sync:
            return super().forward(x)
        all_reduce = _all_reduce_sum
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()  # AMP: statistics in float32
        count = torch.tensor([xf.numel() // xf.shape[1]], dtype=xf.dtype, device=xf.device)
        packed = all_reduce(torch.cat([xf.sum(dims), count]))
        total = packed[-1]
        mean = packed[:-1] / total
        centered = xf - mean.reshape(shape)
        var = all_reduce((centered * centered).sum(dims)) / total
        y = centered * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = float(total.item())
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm layer by a synchronised one.

    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`DistBatchNorm` elsewhere (CPU/gloo). Parameters and buffers are
    carried over; returns the converted module (a new object when ``module`` itself is a BatchNorm).
    """
    if device.type == 'cuda':
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_dist_bn(module)


def _convert_dist_bn(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, DistBatchNorm):
        out = DistBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_dist_bn(child))
    return out

