"""VGG for :func:`plugattn.attach`: torchvision's ``vgg11`` … ``vgg19_bn`` and SSD's VGG16 feature extractor
(``SSDFeatureExtractorVGG``: ``torchvision.models.detection.ssd300_vgg16``, whole or its ``backbone``).

A VGG has no blocks: its ``features`` is one flat ``Sequential`` of ``Conv2d`` [``BatchNorm2d``] ``ReLU`` layers and
max-pools. A **conv stage** is a run of consecutive conv layers (conv, optional norm, ReLU) between two other modules
(a max-pool, the end of the ``Sequential``, SSD's ``fc`` block): ``conv1_1…conv1_2``, …, ``conv5_1…conv5_3`` of
VGG16; in SSD also ``fc6…fc7`` (``extra.0.7``) and each of the extra blocks ``extra.1`` … ``extra.4`` (a 1x1 conv
that narrows, then a 3x3 conv). Every conv layer of a VGG stage has the stage's width; an SSD extra block's two do
not (256 then 512, 128 then 256).

Placement (ours: none of the papers of the attached modules puts its module in a VGG, and nothing is official):

* **gate** (SE, ECA, CBAM, CA, ELA): the output of each stage's last ReLU, before its max-pool. In a net without
  residual branches the stage is the unit that ends in a change of resolution, which is where BAM (arXiv:1807.06514)
  places its module in any CNN ("at each bottleneck of models where the downsampling of feature maps occurs"). For
  a positive channel gate, gating before or after the pool is the same function (``maxpool(x * g) = maxpool(x) *
  g``); before it, spatial gates (CA, ELA, CBAM) see the full-resolution map. In SSD every feature map the heads
  read (``conv4_3``, ``fc7``, ``conv8_2`` … ``conv11_2``) is such a gated stage output.
* **block** (BAv1, BAv2): the stage is the block. Bridge attention pools the outputs of every ReLU of the stage
  before the last (BA's idea: the attention sees every conv output of the block) and gates the last ReLU's output,
  as ``gate``. A stage of one conv layer (VGG11's first two) has nothing to bridge and gets no bridge attention.
* **stage** (DIA): a conv layer is DIA's block and the conv stage its stage: one unit per stage, shared by its conv
  layers, gates every ReLU output of the stage with the recurrent state passed from layer to layer and reset at the
  stage's start, as DIA shares its unit by the blocks of one resolution. DIA's unit needs one width for all the
  layers it gates, so it goes to the stages whose conv layers share one (every VGG stage, SSD's ``fc6…fc7``), not to
  SSD's extra blocks. Sharing one unit across stages of the same width (VGG16's conv4 and conv5) would gate maps
  of two resolutions with one unit and one state, which DIA never does. Reduction 16 on these ImageNet widths
  (specs D9).

The attention module of a stage is registered on the stage's last ReLU, whose output it gates (``features.29.attn``
for VGG16's conv5, ``backbone.extra.0.7.4.attn`` for SSD's fc7): every original key stays, so ImageNet or COCO
weights load with only attention keys missing. The ``Sequential`` that holds the stages gets a subclass whose
``forward`` is the original one with forward hooks on the stages' ReLUs installed for the call, as the other
families' blocks have (found by their place among the children at every call, so copies, pickles, torch.fx graphs
and slices such as ``features[:23]`` keep their stages' attention); running the children one by one outside the
``Sequential`` bypasses it. ``warm_start=True`` gives exactly the original function, as for every family.
:func:`plugattn.attach.found_blocks` lists the conv layers (by their ReLU) as ``blocks`` and the stages (by their
last ReLU) as ``stages``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..errors import PlugattnError
from ..layers import attn_level, list_attn
from ..layers.base import BlockAttention, StageAttention
from ._core import (
    BlockPlan,
    Family,
    Tap,
    _build,
    _call_tapped_leaves,
    _fx_tracer,
    _per_stage_kwargs,
    _select,
    _subclass,
    mark_model,
    register_family,
)

__all__ = ['ConvLayer', 'conv_stages', 'register']

NAME = 'torchvision vgg (and SSD)'
_DEFAULTS = {'dia': {'reduction': 16}}


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """One conv layer of a VGG stage, the block that :func:`plan` places attention by.

    Attributes:
        container: qualified name of the flat ``Sequential`` that holds the stage.
        relu: child name of the layer's ReLU in it.
        channels: output channels of the layer's conv.
        stage: child names of the ReLUs of the layer's stage, in order.
        stage_channels: their output channels.
    """

    container: str
    relu: str
    channels: int
    stage: tuple[str, ...]
    stage_channels: tuple[int, ...]

    @property
    def last(self) -> bool:
        return self.relu == self.stage[-1]


def _is_norm(m: nn.Module) -> bool:
    # BatchNorm, SyncBatchNorm, GroupNorm, and frozen norms (torchvision's FrozenBatchNorm2d after freeze_bn)
    return isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) or \
        isinstance(getattr(m, 'running_mean', None), Tensor)


def conv_stages(seq: nn.Module) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """The conv stages among the children of a flat ``Sequential``: for each, the child names of its ReLUs and the
    output channels of their convs. A conv layer is a ``Conv2d``, optionally a norm, and a ``ReLU`` as consecutive
    children; a stage is a run of consecutive conv layers."""
    items = list(seq._modules.items())
    stages: list[tuple[tuple[str, ...], tuple[int, ...]]] = []
    relus: list[str] = []
    widths: list[int] = []
    i = 0
    while i < len(items):
        conv = items[i][1]
        if isinstance(conv, nn.Conv2d):
            j = i + 2 if i + 1 < len(items) and _is_norm(items[i + 1][1]) else i + 1
            if j < len(items) and isinstance(items[j][1], nn.ReLU):
                relus.append(items[j][0])
                widths.append(conv.out_channels)
                i = j + 1
                continue
        if relus:
            stages.append((tuple(relus), tuple(widths)))
            relus, widths = [], []
        i += 1
    if relus:
        stages.append((tuple(relus), tuple(widths)))
    return stages


def _body_types() -> tuple[type, ...]:
    from torchvision.models import VGG
    from torchvision.models.detection.ssd import SSDFeatureExtractorVGG

    return VGG, SSDFeatureExtractorVGG


def _containers(model: nn.Module) -> list[tuple[str, nn.Sequential]]:
    """The flat ``Sequential`` containers with conv stages inside the VGG bodies of ``model`` (itself included)."""
    bodies = _body_types()
    out: dict[str, nn.Sequential] = {}
    for name, body in model.named_modules():
        if not isinstance(body, bodies):
            continue
        for sub, m in body.named_modules(prefix=name):
            if isinstance(m, nn.Sequential) and sub not in out and conv_stages(m):
                out[sub] = m
    return list(out.items())


def _join(*names: str) -> str:
    return '.'.join(n for n in names if n)


def _stage_list(model: nn.Module) -> list[tuple[str, str, nn.Sequential, tuple[str, ...], tuple[int, ...]]]:
    """``(stage name, container name, container, ReLU child names, widths)`` of every conv stage, in order; a stage
    is named by its last ReLU (where its attention is registered)."""
    return [(_join(cname, relus[-1]), cname, seq, relus, widths)
            for cname, seq in _containers(model) for relus, widths in conv_stages(seq)]


def blocks(model: nn.Module) -> list[tuple[str, ConvLayer, str, int, int]]:
    """The conv layers of every stage (the family's ``blocks``), named by their ReLU."""
    out = []
    for sname, cname, _, relus, widths in _stage_list(model):
        for i, (relu, width) in enumerate(zip(relus, widths)):
            out.append((_join(cname, relu), ConvLayer(cname, relu, width, relus, widths), sname, i, len(relus)))
    return out


def stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The conv stages as ``(name of the last ReLU, that ReLU)``."""
    return [(sname, seq._modules[relus[-1]]) for sname, _, seq, relus, _ in _stage_list(model)]


def plan(layer: ConvLayer, level: str, options: dict[str, Any]) -> BlockPlan | None:
    """Where a conv layer gets attention (see the module docstring); taps are child names in its container."""
    if level == 'stage':
        if len(set(layer.stage_channels)) != 1:
            return None  # DIA shares one unit: the layers it gates need one width
        return BlockPlan(Tap(layer.relu), layer.channels)
    if not layer.last:
        return None
    if level == 'block':
        if len(layer.stage) < 2:
            return None  # nothing to bridge
        return BlockPlan(Tap(layer.relu), layer.channels, tuple(Tap(r) for r in layer.stage[:-1]),
                         layer.stage_channels[:-1])
    return BlockPlan(Tap(layer.relu), layer.channels)


# --------------------------------------------------------------------------------------------- forward


class _ConvStages:
    """Mixin of a flat ``Sequential`` whose conv stages carry attention (at ``<last ReLU>.attn``): the original
    forward, with forward hooks on the stages' ReLUs installed for the call that pool their outputs (bridge
    attention) and gate them (the last ReLU; every ReLU of the stage for DIA, passing its state along)."""

    def forward(self, x: Tensor) -> Tensor:
        hooks: list[tuple[nn.Module, Callable]] = []
        applied: list[bool] = []
        expected = 0
        for relus, _ in conv_stages(self):
            attn = self._modules[relus[-1]]._modules.get('attn')
            if attn is None:
                continue
            stage_hooks = _stage_hooks([self._modules[r] for r in relus], attn, applied)
            expected += sum(1 for _, _, gates in stage_hooks if gates)
            hooks += [(m, h) for m, h, _ in stage_hooks]
        if not hooks:
            return super().forward(x)
        tracer = _fx_tracer((x,), {})
        undo = _call_tapped_leaves(tracer, [m for m, _ in hooks], ()) if tracer is not None else None
        handles = []
        try:
            handles = [m.register_forward_hook(h) for m, h in hooks]
            out = super().forward(x)
        finally:
            for h in handles:
                h.remove()
            if undo is not None:
                undo()
        if len(applied) != expected:
            raise PlugattnError(
                f'{expected - len(applied)} of the {expected} attention gates of this {type(self).__name__} were not '
                'applied: a ReLU did not run through its __call__ (a tracer kept it as a leaf module?)',
                'trace the model without that leaf module, or use torch.jit.trace / torch.export')
        return out


def _stage_hooks(relus: Sequence[nn.Module], attn: nn.Module, applied: list[bool]
                 ) -> list[tuple[nn.Module, Callable, bool]]:
    """``(ReLU, forward hook, gates)`` for one stage's call: its state (pooled outputs, DIA's recurrent state) lives
    in these closures, so it is reset at every call of the container."""
    if isinstance(attn, StageAttention):
        state: list[Any] = [None]

        def dia(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            applied.append(True)
            y, state[0] = attn(output, state[0])
            return y

        return [(m, dia, True) for m in relus]
    if isinstance(attn, BlockAttention):
        inner: list[Tensor] = []

        def bridge(module: nn.Module, args: tuple, output: Tensor) -> None:
            inner.append(output.mean((2, 3)))  # a ReLU output: pooled as BA pools post-activation conv outputs

        def gate_block(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            applied.append(True)
            return attn(list(inner), output)

        return [(m, bridge, False) for m in relus[:-1]] + [(relus[-1], gate_block, True)]

    def gate(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        applied.append(True)
        return attn(output)

    return [(relus[-1], gate, True)]


# --------------------------------------------------------------------------------------------- attach


def attach_vgg(
        model: nn.Module,
        attn: str,
        *,
        attn_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        stages: Sequence[int] | None = None,
        warm_start: bool = False,
        **options: Any,
) -> nn.Module:
    """:func:`plugattn.attach` for a model holding VGG bodies (the family's ``attach``); ``stages`` index the conv
    stages in order (VGG16: 5; SSD300: 10, the last four its extra blocks)."""
    level = attn_level(attn)
    found = _stage_list(model)
    if any(isinstance(seq, _ConvStages) for _, _, seq, _, _ in found):
        raise PlugattnError('this model already has attention attached; attach to a fresh copy of the original model')
    names = [sname for sname, *_ in found]
    per_stage = _per_stage_kwargs(attn_kwargs, len(names))
    chosen = _select(stages, len(names), names)
    options = {**options, '_attn': attn}
    planned = []
    for i, (sname, cname, seq, relus, widths) in enumerate(found):
        layer = ConvLayer(cname, relus[-1], widths[-1], relus, widths)
        p = plan(layer, level, options) if sname in chosen else None
        if p is not None:
            planned.append((sname, seq, relus, p, {**_DEFAULTS.get(attn, {}), **per_stage[i]}))
    if not planned:
        why = ('a stage-level unit needs one width for all conv layers of its stage' if level == 'stage' else
               'bridge attention needs a stage of two or more conv layers')
        ok = [a for a in list_attn() if attn_level(a) != level]
        raise PlugattnError(f'no selected stage of this {NAME} model takes {attn} ({why}); select other stages or '
                            f'attach one of {", ".join(ok)}')
    dd = {'device': next(model.parameters()).device}
    attn_names = []
    for sname, seq, relus, p, kwargs in planned:
        if level == 'block':
            kwargs = {**kwargs, 'inner_channels': p.inner_channels}
        seq._modules[relus[-1]].add_module('attn', _build(attn, p.channels, kwargs, warm_start, dd, model.training))
        attn_names.append(f'{sname}.attn')
        if not isinstance(seq, _ConvStages):
            seq.__class__ = _subclass(type(seq), _ConvStages)
    mark_model(model, names, attn_names)
    model.__dict__['_plugattn_family'] = NAME
    model.__dict__['_plugattn_replaced'] = ()
    return model


def register() -> None:
    """Register the VGG family (called by :func:`plugattn.attach.torchvision.register`)."""
    bodies = _body_types()
    register_family(Family(
        NAME, bodies, plan, bodies, stages, blocks=blocks, attach=attach_vgg, defaults=_DEFAULTS,
        cam=lambda m: (_stage_list(m)[-1][0], None),  # the last stage's ReLU, gated or not
        note='ours: per conv stage, gates on its last ReLU (before the pool), BA bridging its ReLUs, DIA per stage',
    ))
