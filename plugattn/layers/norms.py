"""Frozen BatchNorm for small per-device batches (detection, segmentation): :func:`freeze_bn`.

Detectors train at one or two images per device, where batch statistics are noise. torchvision builds its detection
backbones with ``FrozenBatchNorm2d`` but has no converter, so the norms of attached attention modules (CA's
``bn1``, CBAM's spatial ``bn``, bridge attention's ``BatchNorm1d``) stay live; and ``FrozenBatchNorm2d`` applied to
a pooled ``(N, C)`` vector silently broadcasts to ``(1, C, N, C)``. :func:`freeze_bn` replaces every
``nn.BatchNorm2d`` by torchvision's ``FrozenBatchNorm2d`` and every ``nn.BatchNorm1d`` by :class:`FrozenBatchNorm1d`
(both: fixed statistics and affine, stored as buffers, so nothing of them trains and ``model.train()`` changes
nothing). With the attention's norms frozen too, bridge attention trains at batch 1.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d as _TvFrozenBatchNorm2d

from .base import BlockAttention, GateAttention, StageAttention

__all__ = ['FrozenBatchNorm1d', 'FrozenBatchNorm2d', 'freeze_bn']


class FrozenBatchNorm1d(nn.Module):
    """BatchNorm1d with fixed statistics and affine, for ``(N, C)`` and ``(N, C, L)`` inputs.

    The keys are those of ``nn.BatchNorm1d`` (``weight``, ``bias``, ``running_mean``, ``running_var``; a
    ``num_batches_tracked`` in a loaded state_dict is ignored), all buffers, as torchvision's ``FrozenBatchNorm2d``.

    Args:
        num_features: channels C.
        eps: added to the variance.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.eps = eps
        self.register_buffer('weight', torch.ones(num_features, **dd))
        self.register_buffer('bias', torch.zeros(num_features, **dd))
        self.register_buffer('running_mean', torch.zeros(num_features, **dd))
        self.register_buffer('running_var', torch.ones(num_features, **dd))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        state_dict.pop(prefix + 'num_batches_tracked', None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (2, 3):
            raise ValueError(f'FrozenBatchNorm1d expects (N, C) or (N, C, L) input, got {tuple(x.shape)}')
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        if x.dim() == 3:
            scale, shift = scale[:, None], shift[:, None]
        return x * scale + shift

    def extra_repr(self) -> str:
        return f'{self.weight.shape[0]}, eps={self.eps}'


class FrozenBatchNorm2d(_TvFrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` whose ``forward`` names its argument as ``nn.BatchNorm2d`` does: a
    scripted block passes it to its gated merge as the norm it replaces (TorchScript interfaces match names)."""

    def forward(self, input: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return input * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def _frozen(bn: nn.Module) -> nn.Module:
    """The frozen copy of one BatchNorm (its current statistics and affine)."""
    c = bn.num_features
    ref = bn.running_mean if bn.running_mean is not None else bn.weight
    dd = {'device': ref.device if ref is not None else None}
    frozen = FrozenBatchNorm2d(c, eps=bn.eps) if isinstance(bn, nn.BatchNorm2d) else FrozenBatchNorm1d(c, bn.eps)
    frozen.to(**dd)
    with torch.no_grad():
        if bn.affine:
            frozen.weight.copy_(bn.weight)
            frozen.bias.copy_(bn.bias)
        if bn.track_running_stats:
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
    return frozen


def freeze_bn(model: nn.Module, *, attention: bool = True) -> nn.Module:
    """Freeze every ``BatchNorm2d`` and ``BatchNorm1d`` of ``model`` in place and return ``model``.

    Each is replaced by a frozen norm with its current statistics and affine: torchvision's ``FrozenBatchNorm2d``
    for ``BatchNorm2d`` (and subclasses), :class:`FrozenBatchNorm1d` for ``BatchNorm1d``; the keys stay (less
    ``num_batches_tracked``), nothing of them trains, and their output no longer depends on the batch. Other norms
    (``SyncBatchNorm``, ``GroupNorm``, ``LayerNorm``, frozen ones) are left as they are; freeze before converting
    to ``SyncBatchNorm`` (which leaves frozen norms alone). Attached models keep their attention: the hooks find
    submodules by name at every call.

    Args:
        model: any module (an attached torchvision / timm model, a plugattn model, a detector).
        attention: also freeze the norms inside the attention modules (every
            :class:`~plugattn.layers.base.GateAttention` / ``BlockAttention`` / ``StageAttention``: CA, CBAM, BA,
            ...), which lets bridge attention train at batch 1. ``attention=False`` keeps their norms trainable
            with batch statistics (the paper's modules; BA then needs at least 2 samples per device, or a
            batch-size-free ``norm_layer`` of its own).

    Returns:
        ``model``.
    """
    if attention:
        skip: set[int] = set()
    else:
        skip = {id(m) for a in model.modules() if isinstance(a, (GateAttention, BlockAttention, StageAttention))
                for m in a.modules()}
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for name, bn in targets:
        if id(bn) in skip:
            continue
        if not name:  # the model itself is a norm
            raise ValueError('freeze_bn takes a model that contains BatchNorm layers, not a BatchNorm layer')
        model.set_submodule(name, _frozen(bn))
    return model
