"""Learning-rate schedules evaluated per optimizer step: linear warmup, then cosine, step decay or constant.

The learning rate is a pure function of the global step, so resuming only needs the step counter.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ['LRSchedule']


class LRSchedule:
    """Per-iteration schedule with linear warmup.

    With ``T`` total steps, ``W`` warmup steps, base ``lr`` and step ``s`` (0-based, the lr used by update ``s``):

    * warmup (``s < W``): ``warmup_lr + (lr - warmup_lr) * s / W`` (timm's convention);
    * ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * (s - W) / (T - W))) / 2``, reaching ``min_lr`` at ``T``;
    * ``step``: ``lr * gamma ** k``, ``k`` = number of milestones (in epochs) ``<= s // steps_per_epoch``;
    * ``constant``: ``lr``.

    With ``per_iteration=False`` the step is rounded down to the start of its epoch, so the lr changes once per
    epoch (the warmup too).

    Args:
        name: ``'cosine'``, ``'step'`` or ``'constant'``.
        lr: Base learning rate.
        epochs: Training length in epochs.
        steps_per_epoch: Optimizer steps per epoch.
        warmup_epochs: Warmup length in epochs (fractions allowed).
        warmup_lr: Learning rate at step 0 of the warmup.
        min_lr: Final learning rate of the cosine schedule.
        milestones: Epochs of the step decays.
        gamma: Step-decay factor.
        per_iteration: Update every step (else every epoch).
    """

    def __init__(
            self,
            name: str,
            lr: float,
            epochs: int,
            steps_per_epoch: int,
            *,
            warmup_epochs: float = 0.0,
            warmup_lr: float = 0.0,
            min_lr: float = 0.0,
            milestones: tuple[int, ...] | list[int] = (),
            gamma: float = 0.1,
            per_iteration: bool = True,
    ) -> None:
        if name not in ('cosine', 'step', 'constant'):
            raise ValueError(f'unknown schedule {name!r}; use cosine, step or constant')
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(f'epochs ({epochs}) and steps_per_epoch ({steps_per_epoch}) must be >= 1')
        self.name = name
        self.lr = float(lr)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.warmup_steps = round(warmup_epochs * self.steps_per_epoch)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.per_iteration = bool(per_iteration)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], lr: float, epochs: int, steps_per_epoch: int) -> LRSchedule:
        """Build from a config's ``schedule`` section."""
        return cls(
            cfg['name'], lr, epochs, steps_per_epoch,
            warmup_epochs=cfg['warmup_epochs'], warmup_lr=cfg['warmup_lr'], min_lr=cfg['min_lr'],
            milestones=cfg['milestones'], gamma=cfg['gamma'], per_iteration=cfg['per_iteration'],
        )

    def __call__(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based)."""
        if not self.per_iteration:
            step = (step // self.steps_per_epoch) * self.steps_per_epoch
        if step < self.warmup_steps:
            return self.warmup_lr + (self.lr - self.warmup_lr) * step / self.warmup_steps
        if self.name == 'cosine':
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t))
        if self.name == 'step':
            epoch = step // self.steps_per_epoch
            return self.lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        return self.lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's lr for step ``step`` and return it."""
        lr = self(step)
        for group in optimizer.param_groups:
            group['lr'] = lr * group.get('lr_scale', 1.0)
        return lr

    def state_dict(self) -> dict[str, Any]:
        """The schedule's settings (it has no other state: the lr depends on the step only)."""
        return {
            'name': self.name, 'lr': self.lr, 'epochs': self.epochs, 'steps_per_epoch': self.steps_per_epoch,
            'warmup_steps': self.warmup_steps, 'warmup_lr': self.warmup_lr, 'min_lr': self.min_lr,
            'milestones': list(self.milestones), 'gamma': self.gamma, 'per_iteration': self.per_iteration,
        }
