"""Mixup / CutMix on batches, timm's batch mode, driven by an explicit generator.

Applied to already-normalised images and integer labels; returns mixed images and soft targets.
One mixing coefficient is drawn per batch and each image is mixed with the image at the mirrored
position of the batch (``images.flip(0)``), as in ``timm.data.Mixup(mode='batch')``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from .augment import invalid
from .errors import DataError

__all__ = ["MixupConfig", "MixupCutmix", "smooth_one_hot"]


@dataclass(frozen=True)
class MixupConfig:
    """Mixup / CutMix settings, the ``mixup:`` section of a recipe; the defaults mix nothing.

    The config schema is derived from these fields (type, default, ``metadata['help']``) and the ranges are
    checked here only. Label smoothing and the class count come from the ``loss`` section and the data.

    Attributes:
        mixup_alpha: Beta parameter of Mixup; 0 disables Mixup.
        cutmix_alpha: Beta parameter of CutMix; 0 disables CutMix.
        prob: Probability of mixing a batch.
        switch_prob: Probability of CutMix instead of Mixup when both are enabled.
    """

    mixup_alpha: float = field(default=0.0, metadata={"help": "Beta alpha of Mixup (0: off)"})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "Beta alpha of CutMix (0: off)"})
    prob: float = field(default=1.0, metadata={"help": "probability of mixing a batch"})
    switch_prob: float = field(default=0.5, metadata={"help": "probability of CutMix when both are on"})

    def __post_init__(self) -> None:
        for key, hi in (("mixup_alpha", math.inf), ("cutmix_alpha", math.inf), ("prob", 1.0), ("switch_prob", 1.0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= hi:
                raise invalid("mixup", key, value, f"use a number in [0, {hi}]")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MixupConfig:
        """Build from a mapping (a recipe's ``mixup:`` section); unknown keys raise :class:`DataError`."""
        data = dict(data or {})
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            raise DataError(f"unknown mixup key {unknown[0]!r}: valid keys are {', '.join(valid)}")
        return cls(**data)

    @property
    def enabled(self) -> bool:
        """Whether any mixing can happen."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with label smoothing.

    Args:
        labels: int64 class indices ``(B,)``.
        num_classes: Number of classes.
        smoothing: Probability mass spread uniformly over all classes: the true class gets
            ``1 - smoothing + smoothing / num_classes``, the others ``smoothing / num_classes``.

    Returns:
        float32 ``(B, num_classes)`` on the device of ``labels``; rows sum to 1.
    """
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


class MixupCutmix:
    """Batch-wise Mixup or CutMix with label smoothing (timm semantics, batch mode).

    With probability ``prob`` a batch is mixed: if both alphas are positive CutMix is chosen with
    probability ``switch_prob``, else Mixup; the coefficient ``lam`` is drawn from
    ``Beta(alpha, alpha)``. CutMix pastes a box of area ``(1 - lam)`` (clipped at the border, then
    ``lam`` corrected to the pasted area) from the mirrored image. Targets are
    ``lam * y + (1 - lam) * y.flip(0)`` of the smoothed one-hot labels.

    Args:
        mixup_alpha: Beta parameter of Mixup; 0 disables Mixup.
        cutmix_alpha: Beta parameter of CutMix; 0 disables CutMix.
        prob: Probability of mixing a batch.
        switch_prob: Probability of CutMix instead of Mixup when both are enabled.
        label_smoothing: Label smoothing of the targets.
        num_classes: Number of classes.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
    ) -> None:
        MixupConfig(mixup_alpha, cutmix_alpha, prob, switch_prob)  # the one place the ranges are checked
        if isinstance(label_smoothing, bool) or not 0.0 <= float(label_smoothing) <= 1.0:
            raise invalid("mixup", "label_smoothing", label_smoothing, "use a number in [0, 1]")
        if int(num_classes) < 1:
            raise DataError(f"mixup num_classes={num_classes!r} is invalid: use a positive integer")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.label_smoothing = float(label_smoothing)
        self.num_classes = int(num_classes)

    @property
    def enabled(self) -> bool:
        """Whether any mixing can happen."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def sample(self, generator: torch.Generator) -> tuple[float, bool]:
        """Draw ``(lam, use_cutmix)`` for one batch; ``lam == 1`` means no mixing."""
        if not self.enabled or float(torch.rand((), generator=generator)) >= self.prob:
            return 1.0, False
        use_cutmix = self.mixup_alpha <= 0 or (
            self.cutmix_alpha > 0 and float(torch.rand((), generator=generator)) < self.switch_prob
        )
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        beta_seed = int(torch.randint(0, 2**62, (), generator=generator))
        return float(np.random.default_rng(beta_seed).beta(alpha, alpha)), use_cutmix

    @staticmethod
    def cutmix_box(
        height: int, width: int, lam: float, generator: torch.Generator
    ) -> tuple[tuple[int, int, int, int], float]:
        """timm's ``rand_bbox`` plus area correction.

        Args:
            height: Image height.
            width: Image width.
            lam: Drawn coefficient; the box's nominal area is ``(1 - lam)`` of the image.
            generator: Source of randomness for the box centre.

        Returns:
            ``((y0, y1, x0, x1), corrected lam = 1 - box area / image area)``.
        """
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy = int(torch.randint(0, height, (), generator=generator))
        cx = int(torch.randint(0, width, (), generator=generator))
        y0, y1 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
        x0, x1 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
        return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch.

        Args:
            images: float ``(B, C, H, W)``; not modified.
            labels: int64 ``(B,)``.
            generator: CPU generator that drives every random draw (pass one seeded from
                ``(seed, epoch, step)`` for reproducible runs).

        Returns:
            ``(mixed images, soft targets float32 (B, num_classes))``.
        """
        if not isinstance(generator, torch.Generator):
            raise TypeError("MixupCutmix needs an explicit torch.Generator for reproducible draws")
        lam, use_cutmix = self.sample(generator)
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if lam == 1.0:
            return images, targets
        if use_cutmix:
            (y0, y1, x0, x1), lam = self.cutmix_box(images.shape[-2], images.shape[-1], lam, generator)
            mixed = images.clone()
            mixed[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
        else:
            mixed = images * lam + images.flip(0) * (1.0 - lam)
        return mixed, targets * lam + targets.flip(0) * (1.0 - lam)
