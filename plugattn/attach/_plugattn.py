"""Attaching to plugattn's own plain ResNets: the attention goes into the blocks' own ``attn`` slots.

The result is the model ``create_model('<attn>_<name>')`` builds (same keys, same computation), with the weights of
the plain model kept; ``warm_start=True`` adds the learned blend of :mod:`plugattn.attach`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import PlugattnError
from ..layers import attn_level, create_attn, list_attn
from ._core import _per_stage_kwargs, _select, make_warm

__all__ = ['attach_plugattn', 'attachable_plugattn']


def _resnet_types() -> tuple[type, type, type]:
    from ..models.resnet import BasicBlock, Bottleneck, ResNet

    return ResNet, BasicBlock, Bottleneck


def _defaults(model: nn.Module, attn: str) -> dict[str, Any]:
    from ..models import get_model_entry

    name = getattr(model, 'model_name', None)
    try:
        return dict(get_model_entry(f'{attn}_{name}').attn_kwargs) if name else {}
    except ValueError:
        return {}


def _check(model: nn.Module) -> None:
    resnet, _, _ = _resnet_types()
    if not isinstance(model, resnet):
        raise PlugattnError(
            f'plugattn.attach takes plugattn ResNets; build a {type(model).__name__} with attention directly: '
            "plugattn.create_model(NAME, attn='...')"
        )
    if model.attention_modules():
        raise PlugattnError('this plugattn model already has attention; attach to the plain backbone')


def _widths(block: nn.Module) -> tuple[int, tuple[int, ...]]:
    _, basic, _ = _resnet_types()
    if isinstance(block, basic):
        return block.bn2.num_features, (block.bn1.num_features,)
    return block.bn3.num_features, (block.bn1.num_features, block.bn2.num_features)


def attach_plugattn(
        model: nn.Module,
        attn: str,
        *,
        attn_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        stages: Sequence[int] | None = None,
        warm_start: bool = False,
        **options: Any,
) -> nn.Module:
    """:func:`plugattn.attach` for a plain plugattn ResNet."""
    from ..models._base import AttnStage

    _check(model)
    if options:
        raise PlugattnError(f'plugattn ResNets take no attach options {sorted(options)}')
    level = attn_level(attn)
    names = list(model.stage_names)
    chosen = _select(stages, len(names), names)
    per_stage = _per_stage_kwargs(attn_kwargs, len(names))
    defaults = _defaults(model, attn)
    ref = next(model.parameters())
    for i, sname in enumerate(names):
        if sname not in chosen:
            continue
        kwargs = {**defaults, **per_stage[i]}
        stage = getattr(model, sname)
        blocks = list(stage)
        if level == 'stage':
            channels, _ = _widths(blocks[0])
            unit = create_attn(attn, channels, **kwargs).to(ref.device).train(model.training)
            setattr(model, sname, AttnStage(blocks, make_warm(unit) if warm_start else unit))
            continue
        for block in blocks:
            channels, inner = _widths(block)
            extra = {'inner_channels': inner} if level == 'block' else {}
            module = create_attn(attn, channels, **kwargs, **extra).to(ref.device).train(model.training)
            block.attn = make_warm(module) if warm_start else module
            block.attn_level = level
    return model


def attachable_plugattn(model: nn.Module) -> list[str]:
    """Attention names a plain plugattn ResNet takes (modules buildable at its widths)."""
    import torch

    _check(model)
    out = []
    widths = {_widths(b)[0] for s in model.stages() for b in s}
    for attn in list_attn():
        if attn_level(attn) == 'gate':
            try:
                for w in widths:
                    create_attn(attn, w, device=torch.device('meta'))
            except ValueError:
                continue
        out.append(attn)
    return out
