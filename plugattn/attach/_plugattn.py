"""Attaching to plugattn's own models: the model becomes ``create_model('<attn>_<name>')`` with its own weights.

plugattn's blocks have their attention slot built in (the gated merge of every CNN block, the ``ba`` of transformer
blocks, the shared unit of a DIA stage), so attaching does not hook anything: the attention-bearing model is built
from the same registry entry and construction arguments (recorded by :func:`plugattn.models.create_model`), the
plain model's weights are moved into it (only attention keys are new), stages not selected keep their plain blocks,
and the model object takes over the result in place. Keys, placements, defaults and outputs are exactly those of
``create_model('<attn>_<name>', **same_arguments)``; ``warm_start=True`` adds the learned blend of
:mod:`plugattn.attach`.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import PlugattnError
from ..layers import list_attn
from ..models import create_model, get_model_entry
from ._core import _per_stage_kwargs, _select, _stacklevel_outside_attach, make_warm

__all__ = ['attach_plugattn', 'attachable_plugattn']


def _build_record(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """The backbone name and construction arguments :func:`plugattn.models.create_model` recorded."""
    record = model.__dict__.get('_plugattn_build')
    if record is None:
        raise PlugattnError(
            f'plugattn.attach takes plugattn models built by plugattn.create_model; this {type(model).__name__} was '
            'built by its constructor', "pass attn='...' to the constructor, or build it with plugattn.create_model")
    if get_model_entry(getattr(model, 'model_name', record[0])).attn is not None:  # a native SE is no plug-in
        raise PlugattnError('this plugattn model already has attention', 'attach to the plain backbone')
    return record


def _stage_names(model: nn.Module) -> list[str | None]:
    """The qualified name of every stage container (``None`` for a stage that is a view, not a submodule)."""
    names = {id(m): n for n, m in model.named_modules()}
    return [names.get(id(stage)) for stage in model.stages()]


def _plain_keys(model: nn.Module, twin: nn.Module) -> dict[str, str]:
    """Prefix renames from the twin's stage blocks to the plain model's (a DIA stage keys its blocks ``0, 1, ...``
    where some plain stages use other names, e.g. RegNet's ``b1, b2, ...``)."""
    rename = {}
    for name, ours, theirs in zip(_stage_names(twin), model.stages(), twin.stages()):
        if name is None:
            continue
        ours_names = [n for n, _ in ours.named_children() if n != 'attn']
        for a, b in zip(ours_names, [n for n, _ in theirs.named_children() if n != 'attn']):
            if a != b:
                rename[f'{name}.{b}.'] = f'{name}.{a}.'
    return rename


def _move_weights(model: nn.Module, twin: nn.Module, attn: str) -> None:
    """Load ``model``'s weights into ``twin``. Keys of the twin that the plain model lacks are the attention's
    (initialised as ``create_model`` does: the attention modules, PreResNet DIA's extra norm); plain keys the twin
    lacks are native modules the attention replaces (RegNet-Y's SE), which a warning names."""
    rename = _plain_keys(model, twin)

    def plain_name(name: str) -> str:  # a twin key or module name under the plain model's block names
        dotted = name + '.'
        return next(((v + dotted[len(k):])[:-1] for k, v in rename.items() if dotted.startswith(k)), name)

    source = model.state_dict()
    state = {}
    for key, value in twin.state_dict().items():
        plain = plain_name(key)
        if plain in source:
            if source[plain].shape != value.shape:
                raise PlugattnError(
                    f'this {type(model).__name__} was changed after create_model ({plain} has shape '
                    f'{tuple(source[plain].shape)}, {attn} builds {tuple(value.shape)})',
                    f'attach to a model as create_model built it, or build create_model(..., attn={attn!r})')
            state[key] = source.pop(plain)
    twin.load_state_dict(state, strict=False)
    if source:
        dropped = sum(t.numel() for t in source.values())
        kept = {plain_name(n) for n, _ in twin.named_modules()}
        names = sorted({_first_missing(key, kept) for key in source})
        warnings.warn(
            f'plugattn.attach: {attn} replaces {len(names)} native modules of this {type(model).__name__} '
            f'({names[0]}, ...), dropping their {dropped:,} parameters and buffers and any pretrained weights in '
            'them; keep them with keep_se=True or warm_start=True', UserWarning,
            stacklevel=_stacklevel_outside_attach())


def _first_missing(key: str, kept: set[str]) -> str:
    """The outermost module on ``key``'s path that ``kept`` lacks (the replaced module)."""
    parts = key.split('.')
    return next(('.'.join(parts[:i]) for i in range(1, len(parts)) if '.'.join(parts[:i]) not in kept), key)


def attach_plugattn(
        model: nn.Module,
        attn: str,
        *,
        attn_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        stages: Sequence[int] | None = None,
        warm_start: bool = False,
        **options: Any,
) -> nn.Module:
    """:func:`plugattn.attach` for a plain plugattn model (any family ``create_model`` builds)."""
    backbone, kwargs = _build_record(model)
    names = list(model.stage_names)
    chosen = _select(stages, len(names), names)
    _per_stage_kwargs(attn_kwargs, len(names))  # the same message as for foreign models
    if warm_start and hasattr(model, 'keep_se'):  # removing a native SE would change the function
        options.setdefault('keep_se', True)
    build = {**kwargs, **options, 'num_classes': model.num_classes, 'global_pool': model.global_pool}
    if model.out_indices is not None:
        build.update(features_only=True, out_indices=model.out_indices)
        build.pop('global_pool')
    ref = next(model.parameters())
    twin = create_model(backbone, attn=attn, attn_kwargs=attn_kwargs, **build)
    twin.to(device=ref.device, dtype=ref.dtype).train(model.training)
    if ref.dim() == 4 and ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous():
        twin.to(memory_format=torch.channels_last)
    _move_weights(model, twin, attn)
    if stages is not None:
        containers = _stage_names(twin)
        for i, sname in enumerate(names):
            if sname in chosen:
                continue
            if containers[i] is None:
                raise PlugattnError(f'{type(model).__name__} cannot take attention in some stages only',
                                    'attach to every stage (drop stages=)')
            twin.set_submodule(containers[i], model.stages()[i])  # a stage without attention keeps its plain blocks
    if warm_start:
        for module in twin.attention_modules().values():
            make_warm(module)
    twin.grad_checkpointing = model.grad_checkpointing
    state = dict(twin.__dict__)
    model.__dict__.clear()
    model.__dict__.update(state)  # the caller's object is the attached model
    return model


def attachable_plugattn(model: nn.Module) -> list[str]:
    """Attention names a plain plugattn model takes: those registered as ``<attn>_<backbone>``."""
    backbone, _ = _build_record(model)
    out = []
    for attn in list_attn():
        try:
            get_model_entry(f'{attn}_{backbone}')
        except ValueError:
            continue
        out.append(attn)
    return out
