"""Exponential moving average (EMA) of model weights."""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ['ModelEma']


class ModelEma:
    """A frozen copy of a model whose floating-point parameters and buffers track an EMA of the model's.

    After each optimizer step, ``ema = decay * ema + (1 - decay) * model`` for every floating-point entry of the
    state dict (BatchNorm running statistics included, as timm's ``ModelEmaV2``); integer buffers such as
    ``num_batches_tracked`` are copied. With ``warmup`` the decay used at update ``n`` (0-based) is
    ``min(decay, (1 + n) / (10 + n))``, so early weights are not over-weighted.

    Args:
        model: The model to track (unwrapped; not modified).
        decay: EMA decay per update.
        warmup: Ramp the decay up early in training.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = False) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f'EMA decay must be in [0, 1], got {decay}')
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0

    def current_decay(self) -> float:
        """Decay the next :meth:`update` uses."""
        if self.warmup:
            return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the EMA towards ``model``'s current weights."""
        decay = self.current_decay()
        model_state = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = model_state[name].detach()
            if ema_value.is_floating_point():
                ema_value.lerp_(value.to(ema_value.dtype), 1.0 - decay)
            else:
                ema_value.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int = 0) -> None:
        """Restore EMA weights (strict) and the update counter."""
        self.module.load_state_dict(state)
        self.updates = int(updates)
