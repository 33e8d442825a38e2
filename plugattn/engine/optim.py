"""Optimizers: SGD (optionally Nesterov) and AdamW, with weight decay kept off 1-D parameters."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import EngineError

__all__ = ['create_optimizer', 'param_groups_weight_decay']


def param_groups_weight_decay(
        model: nn.Module,
        weight_decay: float,
        no_wd_1d: bool = True,
) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group.

    With ``no_wd_1d`` every parameter with fewer than two dimensions (norm weights and biases, BN1d inside
    attention, the BAv2 selection bias, ...) gets no weight decay, as in timm and the BAv2 recipe. Parameters the
    model names in ``model.no_weight_decay()`` (timm's convention: the transformers' position embeddings, class
    tokens and Swin's relative-position bias tables) get none either, whatever ``no_wd_1d`` says.

    Args:
        model: The model.
        weight_decay: Decay of the decayed group.
        no_wd_1d: Exclude 1-D (and 0-D) parameters from weight decay.

    Returns:
        Parameter groups for a ``torch.optim`` optimizer; empty groups are left out.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name in skip or (no_wd_1d and param.ndim <= 1) else decay).append(param)
    groups = []
    if decay:
        groups.append({'params': decay, 'weight_decay': weight_decay})
    if no_decay:
        groups.append({'params': no_decay, 'weight_decay': 0.0})
    return groups


def create_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Build the optimizer of a config's ``optim`` section.

    Args:
        model: The model (unwrapped).
        cfg: The ``optim`` section: ``name`` (sgd/adamw), ``lr``, ``momentum``, ``nesterov``, ``weight_decay``,
            ``no_wd_1d``, ``betas``, ``eps``.

    Returns:
        The optimizer; every group starts at ``lr`` (the schedule sets it from the first step on).

    Raises:
        EngineError: Unknown optimizer, or Nesterov without momentum.
    """
    groups = param_groups_weight_decay(model, cfg['weight_decay'], cfg.get('no_wd_1d', True))
    if not groups:
        raise EngineError('the model has no trainable parameters', 'check model.kwargs')
    name = cfg['name']
    if name == 'sgd':
        if cfg.get('nesterov', False) and cfg['momentum'] <= 0:
            raise EngineError('optim.nesterov needs optim.momentum > 0', 'set --set optim.momentum=0.9')
        return torch.optim.SGD(groups, lr=cfg['lr'], momentum=cfg['momentum'], nesterov=cfg.get('nesterov', False))
    if name == 'adamw':
        return torch.optim.AdamW(groups, lr=cfg['lr'], betas=tuple(cfg['betas']), eps=cfg['eps'])
    raise EngineError(f'unknown optimizer {name!r}', 'use optim.name sgd or adamw')
