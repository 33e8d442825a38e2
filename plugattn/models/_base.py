"""Machinery shared by every backbone: the timm-style model API, attention slots and shared-attention stages."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import BlockAttention, GateAttention, StageAttention, attn_level, create_attn
from ..layers._typecheck import checked_init
from ..layers.base import AttnState
from ..layers.fused import gated_residual, hook_safe, use_fused_path
from ..layers.registry import AttnSpec

__all__ = [
    'AttnNet',
    'AttnStage',
    'FeatureInfo',
    'block_attn',
    'gated_block_forward',
    'init_attn_modules',
    'stage_attn_kwargs',
    'staged_block_forward',
]


class FeatureInfo(list):
    """``feature_info`` as timm exposes it: a list of dicts (num_chs, reduction, module) with helpers."""

    def channels(self) -> list[int]:
        return [f['num_chs'] for f in self]

    def reduction(self) -> list[int]:
        return [f['reduction'] for f in self]

    def module_name(self) -> list[str]:
        return [f['module'] for f in self]


def stage_attn_kwargs(attn_kwargs: dict[str, Any] | list | tuple | None, num_stages: int) -> list[dict[str, Any]]:
    """Expand ``attn_kwargs`` (one dict for all stages, or one dict per stage) to a list of per-stage dicts."""
    if attn_kwargs is None:
        return [{} for _ in range(num_stages)]
    if isinstance(attn_kwargs, dict):
        return [dict(attn_kwargs) for _ in range(num_stages)]
    per_stage = list(attn_kwargs)
    if len(per_stage) != num_stages or not all(isinstance(d, dict) for d in per_stage):
        raise ValueError(
            f'attn_kwargs must be a dict or a list of {num_stages} dicts (one per stage), got {attn_kwargs!r}'
        )
    return [dict(d) for d in per_stage]


def block_attn(
        attn: AttnSpec,
        channels: int,
        inner_channels: tuple[int, ...],
        attn_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module | None, str | None]:
    """Build the attention a residual block owns, and its level.

    Gate-level modules gate the block's residual-branch output; block-level (bridge) modules also receive the pooled
    inner conv outputs of ``inner_channels``. Stage-level attention is owned by :class:`AttnStage`, so the block
    gets ``None`` and level ``'stage'``.
    """
    level = attn_level(attn)
    kwargs = attn_kwargs or {}
    if level == 'gate':
        return create_attn(attn, channels, **kwargs), level
    if level == 'block':
        return create_attn(attn, channels, inner_channels=inner_channels, **kwargs), level
    return None, level


def init_attn_modules(model: nn.Module) -> None:
    """Re-apply the attention modules' own initialisation after a backbone-wide init loop (e.g. CBAM's zero BN)."""
    for m in model.modules():
        if isinstance(m, (GateAttention, BlockAttention, StageAttention)) and hasattr(m, 'reset_parameters'):
            m.reset_parameters()


def gated_block_forward(block: nn.Module, x: Tensor, *, relu: bool) -> Tensor:
    """A residual block's forward with its own attention's gate fused into the residual merge.

    ``block._pre_gate(x, gated)`` returns the last norm's output ``y``, the shortcut, the pooled inner features
    (bridge attention) and the norm's recomputation recipe (``gated``: an attention will gate ``y``). The result is
    ``relu?(y * gate + shortcut)`` through :func:`~plugattn.layers.fused.gated_residual`, which in training keeps the
    norm's input instead of ``y``; without attention it is the block's in-place ``merge``.
    """
    gated = block.attn is not None and block.attn_level in ('gate', 'block')
    fused = gated and use_fused_path(block.attn)
    y, shortcut, inner, rec = block._pre_gate(x, fused)
    if not fused:
        if gated:  # the module call (tracing, export, hooks): the plain formulation
            y = block.attn(inner, y) if block.attn_level == 'block' else block.attn(y)
            y = hook_safe(y, block.attn)
        return block.merge(y, shortcut)
    gates = block.attn.gate(inner, y) if block.attn_level == 'block' else block.attn.gate_factors(y, rec)
    return gated_residual(y, gates, shortcut, relu=relu, recompute=rec)


def staged_block_forward(
        block: nn.Module, x: Tensor, attn: StageAttention, state: AttnState | None, *, relu: bool,
) -> tuple[Tensor, AttnState]:
    """One block of a shared-attention stage: ``attn.gate(y, state)`` fused into the block's residual merge."""
    y, shortcut, _, rec = block._pre_gate(x, True)
    a, state = attn.gate(y, state)
    return gated_residual(y, a, shortcut, relu=relu, recompute=rec), state


class AttnStage(nn.Module):
    """A stage of residual blocks that share one stage-level attention unit (DIA).

    Blocks are registered as ``0, 1, ...`` so state_dict keys match an ``nn.Sequential`` stage
    (``layer1.0.conv1.weight``); the shared unit sits at ``attn``. Every block must provide
    ``forward_branch(x) -> (branch, shortcut)`` and ``merge(branch, shortcut)``. The recurrent state starts at
    ``None`` (zeros) on every call, so nothing leaks between stages or between forward passes.
    """

    def __init__(self, blocks: list[nn.Module], attn: StageAttention) -> None:
        super().__init__()
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)
        self.attn = attn
        self.depth = len(blocks)

    def __len__(self) -> int:
        return self.depth

    def __getitem__(self, idx: int) -> nn.Module:
        return self._modules[str(idx % self.depth)]

    def __iter__(self) -> Iterator[nn.Module]:
        return (self._modules[str(i)] for i in range(self.depth))

    def forward(self, x: Tensor) -> Tensor:
        state = None
        for block in self:
            if hasattr(block, 'forward_staged') and use_fused_path(self.attn):  # gate fused with the merge
                x, state = block.forward_staged(x, self.attn, state)
                continue
            branch, shortcut = block.forward_branch(x)
            branch, state = self.attn(branch, state)
            x = block.merge(hook_safe(branch, self.attn), shortcut)
        return x


class AttnNet(nn.Module):
    """timm's model API for the CNN backbones.

    Subclasses define ``forward_stem``, ``stage_names`` (attribute names of the stages, in order), ``fc`` and,
    optionally, ``forward_final`` (e.g. the last norm of pre-activation networks), and fill ``feature_info``.
    """

    stage_names: tuple[str, ...]
    feature_info: FeatureInfo
    num_classes: int
    num_features: int
    in_chans: int
    out_indices: tuple[int, ...] | None = None
    first_conv_key: str = 'conv1'  # state_dict prefixes of the first conv and the classifier (timm's cfg keys)
    classifier_key: str = 'fc'

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        checked_init(cls)  # constructor arguments are type-checked, with messages naming the parameter

    def forward_stem(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_final(self, x: Tensor) -> Tensor:
        return x

    def check_input(self, x: Tensor) -> None:
        """Reject inputs of the wrong rank or channel count with the numbers in the message."""
        if torch.jit.is_tracing():  # shapes are symbolic-by-example while tracing; the check would only warn
            return
        if x.ndim != 4:
            raise ValueError(
                f'{type(self).__name__} expects a 4-D (batch, channels, height, width) input, '
                f'got shape {tuple(x.shape)}'
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f'{type(self).__name__} was built for {self.in_chans} input channels, got {x.shape[1]} '
                f'(input shape {tuple(x.shape)}): build it with in_chans={x.shape[1]} or convert the images'
            )

    def stages(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.stage_names]

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = self.forward_stem(x)
        for stage in self.stages():
            x = stage(x)
        return self.forward_final(x)

    def forward_intermediates(self, x: Tensor, indices: list[int] | None = None) -> list[Tensor]:
        """Outputs of the stem and every stage (``feature_info`` order), or of the selected ``indices``."""
        self.check_input(x)
        wanted = range(len(self.stage_names) + 1) if indices is None else indices
        last = max(wanted)
        feats = [self.forward_stem(x)]
        for stage in self.stages()[:last]:
            feats.append(stage(feats[-1]))
        return [feats[i] for i in wanted]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if self.out_indices is not None:
            return self.forward_intermediates(x, list(self.out_indices))
        return self.forward_head(self.forward_features(x))

    def set_features_only(self, out_indices: tuple[int, ...] | None = None) -> None:
        """Turn the model into a feature extractor (``features_only=True``): ``forward`` returns the selected
        stem/stage outputs as a list, the classifier is removed and ``feature_info`` lists the selected levels."""
        n = len(self.stage_names) + 1
        out_indices = tuple(range(n)) if out_indices is None else tuple(out_indices)
        bad = [i for i in out_indices if not -n <= i < n]
        if bad:
            raise ValueError(f'out_indices {bad} out of range for {n} feature levels (0..{n - 1})')
        self.reset_classifier(0)
        self.out_indices = tuple(i % n for i in out_indices)
        self.feature_info = FeatureInfo(self.feature_info[i] for i in self.out_indices)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_key)

    def reset_classifier(self, num_classes: int, global_pool: str = 'avg') -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 removes it)."""
        if self.out_indices is not None:
            raise ValueError('a features_only model has no classifier to reset')
        if global_pool not in ('avg', ''):
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        ref = next(self.parameters())
        head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0 \
            else nn.Identity()
        self.set_submodule(self.classifier_key, head)

    def attention_modules(self) -> dict[str, nn.Module]:
        """Every attention module by qualified name (gate, block and stage level), for analysis."""
        return {
            name: m for name, m in self.named_modules()
            if isinstance(m, (GateAttention, BlockAttention, StageAttention))
        }
