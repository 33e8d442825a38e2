"""Exponential moving average (EMA) of model weights, on ``torch.optim.swa_utils.AveragedModel``."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ['ModelEma']


class ModelEma:
    """A frozen copy of a model whose floating-point parameters and buffers track an EMA of the model's.

    After each optimizer step, ``ema = decay * ema + (1 - decay) * model`` for every floating-point parameter and
    buffer (BatchNorm running statistics included, as timm's ``ModelEmaV2``); integer buffers such as
    ``num_batches_tracked`` are copied. With ``warmup`` the decay used at update ``n`` (0-based) is
    ``min(decay, (1 + n) / (10 + n))``, so early weights are not over-weighted.

    The averaging is ``torch.optim.swa_utils.AveragedModel`` (``use_buffers=True``) with this decay as its
    ``avg_fn``. It starts as a copy of the model, counted as one average already, so the first update averages
    instead of copying (AveragedModel's default for an empty average).

    Args:
        model: The model to track (unwrapped; not modified).
        decay: EMA decay per update.
        warmup: Ramp the decay up early in training.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = False) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f'EMA decay must be in [0, 1], got {decay}')
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.averaged = AveragedModel(model, avg_fn=self._average, use_buffers=True)
        self.averaged.n_averaged.fill_(1)  # the copy is the first average
        self.module = self.averaged.module.eval()
        self.module.requires_grad_(False)

    @property
    def updates(self) -> int:
        """Number of :meth:`update` calls so far."""
        return int(self.averaged.n_averaged) - 1

    def _decay_at(self, updates: int) -> float:
        if self.warmup:
            return min(self.decay, (1.0 + updates) / (10.0 + updates))
        return self.decay

    def current_decay(self) -> float:
        """Decay the next :meth:`update` uses."""
        return self._decay_at(self.updates)

    def _average(self, ema: torch.Tensor, value: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        if not ema.is_floating_point():
            return value
        return ema.lerp(value.to(ema.dtype), 1.0 - self._decay_at(int(num_averaged) - 1))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the EMA towards ``model``'s current weights."""
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights (the model's keys)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int = 0) -> None:
        """Restore EMA weights (strict) and the update counter."""
        self.module.load_state_dict(state)
        self.averaged.n_averaged.fill_(int(updates) + 1)
