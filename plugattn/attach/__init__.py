"""Plug an attention module into a model you already have: torchvision and timm CNNs and transformers, with weights.

``plugattn.attach(model, 'bav2')`` inserts one registered attention (``se, eca, cbam, ca, ela_t/b/s/l, bav1, bav2,
dia``) into an existing model, in place, at the paper's position for its family and at the module's own plug level
(gate / block / stage, see :mod:`plugattn.layers.base`), and returns the model. Every key of the original
state_dict stays as it is (except a native SE that the attention replaces, see ``keep_se``); the attention's keys
are added (``layerS.B.attn`` in a ResNet block, ``layerS.attn`` for DIA, ``blocks.i.ba`` in a transformer block), so
the original (pretrained) weights load with ``strict=False`` and only attention keys missing.

Where plugattn builds the same network the result *is* plugattn's model: ``attach(torchvision.models.resnet50(),
'bav2')`` has the parameter count, the state_dict keys and, with the same weights, the outputs of
``plugattn.create_model('bav2_resnet50')`` (likewise ResNet-18/34/101/152, ResNeXt, MobileNetV2 and every attention),
so checkpoints move freely between the two. The placement of each family is written in
:mod:`plugattn.attach.torchvision`, :mod:`plugattn.attach.vgg` (VGG and SSD300, ours) and :mod:`plugattn.attach.timm`.

``warm_start=True`` (ours, not from any paper) makes every attached module compute
``y = x * (1 + blend * (gate - 1))`` with one learned scalar ``blend`` per module, initialised at 0: at
initialisation the attached model computes exactly the original function, so fine-tuning starts from the pretrained
accuracy, and training moves ``blend`` towards 1, the paper's ``x * gate``. A native SE that the attention would
replace is kept under warm start (removing it would change the function). ``warm_start=False`` gives exactly the
paper's module.

Modules attached, with their papers and official code (details and differences in :mod:`plugattn.layers`): SE
(arXiv:1709.01507, hujie-frank/SENet), ECA (arXiv:1910.03151, BangguWu/ECANet), CBAM (arXiv:1807.06521,
Jongchan/attention-module), CA (arXiv:2103.02907, houqb/CoordAttention), ELA (arXiv:2403.01123), BAv1
(arXiv:2112.04150, zhaoy376/Bridge-Attention, whose MobileNetV3 / EfficientNet placements are followed), BAv2
(arXiv:2410.07860, ZOUrz/BA-Net-Bridge-Attention-in-Deep-Neural-Networks) and DIA (arXiv:1905.10671 /
2210.16101, gbup-group/DIANet). On MobileNetV3 / EfficientNet the BA module has the BAv1 repository's activations
(h-sigmoid gate / swish hidden activation). Differences from the references: the ConvNeXt and transformer placements
and the warm start are ours.

A new family is a :class:`Family`: the model and block classes, a ``plan`` function naming, for a block, the
submodule whose output is gated and the inner outputs that bridge attention pools, and the stage containers::

    from plugattn.attach import BlockPlan, Family, Tap, register_family

    def plan(block, level, options):                # level: 'gate', 'block' or 'stage'
        return BlockPlan(Tap('bn2'), block.bn2.num_features,
                         bridge=(Tap('act1'),), inner_channels=(block.bn1.num_features,))

    register_family(Family('mynet', (MyNet,), plan, (MyBlock,),
                           stages=lambda m: [(f'stage{i}', s) for i, s in enumerate(m.stages)]))
"""
from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import PlugattnError
from ..layers import attn_level, list_attn
from ._core import (
    _LOADERS,
    _WHEN_IMPORTED,
    BlockPlan,
    Family,
    Tap,
    _blocks_of,
    attach_module,
    buildable,
    families,
    find_family,
    register_family,
)
from .build import FOREIGN_PREFIXES, load_weights

__all__ = [
    'FOREIGN_PREFIXES', 'BlockPlan', 'Family', 'Tap', 'attach', 'attachable', 'families', 'found_blocks',
    'load_weights', 'register_family',
]


def _load_torchvision() -> None:
    from . import torchvision as tv

    tv.register()


def _load_timm() -> None:
    from . import timm as tm

    tm.register()


def _load_ultralytics() -> None:
    from . import ultralytics as ul

    ul.register()


_LOADERS.extend([_load_timm, _load_torchvision])
_WHEN_IMPORTED['ultralytics'] = _load_ultralytics


def _is_plugattn(model: nn.Module) -> bool:
    from ..models._base import AttnNet

    return isinstance(model, AttnNet)


def attach(
        model: nn.Module,
        attn: str,
        *,
        attn_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        stages: Sequence[int] | None = None,
        warm_start: bool = False,
        **options: Any,
) -> nn.Module:
    """Insert the attention ``attn`` into ``model`` in place and return ``model``.

    Args:
        model: a torchvision or timm model of a supported family, or a plain plugattn model built by
            :func:`plugattn.create_model` (any family: it becomes ``create_model("<attn>_<name>")`` with its weights),
            or any module that contains blocks of a supported family or plugattn models: a torchvision detector
            or segmenter, an ``IntermediateLayerGetter`` / ``BackboneWithFPN``, a timm ``features_only`` model, a
            user's module. The blocks keep their qualified names, so keys are the classification model's under the
            host's prefix (``backbone.body.layer1.0.attn``); DIA gets one unit per ``nn.Sequential`` holding the
            blocks (:func:`found_blocks` lists them).
        attn: registered attention name (``plugattn.list_attn()``).
        attn_kwargs: options of the attention modules: one dict, or one dict per stage. The family's defaults
            (DIA reduction 16 on ImageNet widths, BA reduction 6 on mobile networks, ...) apply underneath.
        stages: indices of the stages that get attention (default: all).
        warm_start: start from exactly the original function (a learned blend at 0, see the module docstring).
        **options: family options: ``keep_se=True`` keeps a native SE that the attention would replace (RegNet-Y,
            SE-ResNets, MobileNetV3, EfficientNet); ``attn_position='hidden'|'output'`` on MobileNetV2;
            ``where=`` on ultralytics YOLO models (:mod:`plugattn.attach.ultralytics`).

    Raises:
        ValueError: an unsupported model (the message names the supported families), an attention the family does
            not take, or a model that already has attention.
    """
    if attn_level(attn) is None:
        raise PlugattnError(f'attn must name an attention module, one of {", ".join(list_attn())}')
    if _is_plugattn(model):
        from ._plugattn import attach_plugattn

        return attach_plugattn(model, attn, attn_kwargs=attn_kwargs, stages=stages, warm_start=warm_start,
                               **options)
    inner = _plugattn_submodels(model)
    if inner:  # plugattn models inside a user's module: each becomes its attention-bearing twin, in place
        from ._plugattn import attach_plugattn

        for sub in inner:
            attach_plugattn(sub, attn, attn_kwargs=attn_kwargs, stages=stages, warm_start=warm_start, **options)
        return model
    return attach_module(model, attn, attn_kwargs=attn_kwargs, stages=stages, warm_start=warm_start, **options)


def _plugattn_submodels(model: nn.Module) -> list[nn.Module]:
    """The outermost plugattn models (built by ``create_model``) inside ``model``, unless it holds blocks of a
    supported family too (those are attached by the family)."""
    from ._core import _family_of_blocks

    if any(f.matches(model) for f in families()):
        return []
    out: list[nn.Module] = []
    inside: set[int] = set()  # the modules of the models found so far
    for _, m in model.named_modules():
        if _is_plugattn(m) and id(m) not in inside:
            out.append(m)
            inside.update(id(sub) for sub in m.modules())
    return out if out and _family_of_blocks(model) is None else []


def attachable(model: nn.Module) -> list[str]:
    """The attention names :func:`attach` accepts for ``model`` (its family, levels and widths); raises
    ``ValueError`` naming the supported families for a module without a supported block. What was found (family,
    blocks, stages): :func:`found_blocks`."""
    if _is_plugattn(model):
        from ._plugattn import attachable_plugattn

        return attachable_plugattn(model)
    inner = _plugattn_submodels(model)
    if inner:
        from ._plugattn import attachable_plugattn

        return sorted(set.intersection(*(set(attachable_plugattn(m)) for m in inner)))
    fam = find_family(model)
    return [a for a in list_attn() if buildable(fam, model, a)]


def found_blocks(model: nn.Module) -> dict[str, Any]:
    """What :func:`attach` finds in a torchvision / timm model or any module holding their blocks (a detector, a
    feature wrapper, a user's module): ``{'family': name, 'blocks': [qualified names], 'stages': [qualified
    names]}`` (the stages are the containers a stage-level attention such as DIA gets one unit in). Raises
    ``ValueError`` for a module without a supported block."""
    fam = find_family(model)
    return {'family': fam.name, 'blocks': [name for name, *_ in _blocks_of(fam, model)],
            'stages': [name for name, _ in fam.stages(model)] if fam.stages is not None else []}


class _CallableModule(types.ModuleType):
    """``plugattn.attach`` is this package and the function: ``plugattn.attach(model, 'bav2')`` calls :func:`attach`."""

    def __call__(self, model: nn.Module, attn: str, **kwargs: Any) -> nn.Module:
        return attach(model, attn, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
