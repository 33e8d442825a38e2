"""Machinery of :func:`plugattn.attach`: family descriptions, taps, shared stages and the warm-start blend.

A *family* says, for one kind of block, which submodule's output is gated, which inner outputs are bridged and which
containers are the stages. Attaching registers the attention module on the block (``<block>.attn``, or
``<block>.ba`` in transformer blocks, whose ``attn`` is the self-attention) and swaps the block's class for a
subclass of it whose ``forward`` is the original one with forward hooks installed for the duration of the call: a
hook on every bridged submodule pools its output, and a hook on the gated submodule replaces its output by the
gated one. Hooks are looked up by name at every call, so the attachment survives ``copy.deepcopy`` (EMA),
``SyncBatchNorm`` conversion and DDP; no parameter of the original model is touched. Stage-level attention (DIA) is
registered on the stage container (``<stage>.attn``), whose class is swapped for one that skips ``attn`` when it
runs its blocks and resets the recurrent state at the start of every stage.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from ..errors import PlugattnError
from ..layers import attn_level, create_attn, list_attn
from ..layers.base import StageAttention
from ..layers.fused import (
    batch_norm_with_recompute,
    gated_conv,
    gated_residual,
    is_hooked,
    relu_mean_hw,
    use_fused_path,
)

__all__ = ['BlockPlan', 'Family', 'Tap', 'attach_module', 'blend_forward', 'register_family']

LAYOUTS = ('nchw', 'nhwc', 'nlc')
_ACTS: dict[str, Callable[[Tensor], Tensor]] = {'relu': F.relu, 'relu6': F.relu6, 'silu': F.silu, 'gelu': F.gelu}


@dataclass(frozen=True)
class Tap:
    """One submodule output a block hands to its attention.

    Attributes:
        name: qualified submodule name inside the block (``'bn1'``, ``'conv.1.1'``, ``'mlp.act'``).
        act: activation applied before pooling (``'relu'``, ...), for blocks that run one shared activation module
            several times (torchvision's ResNet blocks) so that the activation itself cannot be tapped.
        layout: ``'nchw'`` (CNN maps), ``'nhwc'`` (channels-last maps, ConvNeXt MLPs, Swin) or ``'nlc'`` (tokens).
    """

    name: str
    act: str | None = None
    layout: str = 'nchw'


@dataclass(frozen=True)
class BlockPlan:
    """Where one block gets its attention.

    Attributes:
        gate: the submodule whose output is gated.
        channels: channels of the gated output.
        bridge: bridged inner outputs, in block order (block-level attention only).
        inner_channels: their channels.
        attn_kwargs: extra options of the attention module of this block (e.g. MobileNetV2's ECA kernel size).
        consumer: the submodule that takes the gated output as its only input (MobileNetV2's projection conv after
            the hidden-width gate); where it is a bias-free ``Conv2d``, a gate-level attention is applied inside its
            call in training, so the gated map is not kept next to the ungated one.
    """

    gate: Tap
    channels: int
    bridge: tuple[Tap, ...] = ()
    inner_channels: tuple[int, ...] = ()
    attn_kwargs: dict[str, Any] = field(default_factory=dict)
    consumer: str | None = None


PlanFn = Callable[[nn.Module, str, dict[str, Any]], BlockPlan | None]


@dataclass
class Family:
    """Description of a model family for :func:`plugattn.attach`.

    Attributes:
        name: family name, shown in messages and by :func:`plugattn.attachable`.
        model_types: model classes of the family (an instance of one of them selects the family).
        plan: ``plan(block, level, options) -> BlockPlan | None`` for every block of the family's block types;
            ``level`` is ``'gate'``, ``'block'`` or ``'stage'``, ``options`` the attach options (``keep_se``, ...).
            ``None`` leaves the block without attention.
        block_types: the block classes (blocks are found in the stages, or anywhere in the model without stages).
        stages: ``stages(model) -> [(name, container), ...]``: the stage containers (their children are run in
            order; stage-level attention is one unit per container). ``None``: no stage-level attention.
        levels: the plug levels the family takes (``'gate'``, ``'block'``, ``'stage'``).
        attn_key: attribute name of a block's own attention (``'ba'`` where ``attn`` is taken).
        replace: ``replace(block, level, options) -> [names]``: native attention submodules (SE) that the attached
            module replaces (set to ``nn.Identity``, their keys disappear); ``keep_se=True`` and ``warm_start=True``
            keep them.
        defaults: default attention options per attention name on this family (DIA reduction, BA reduction, ...).
        match: optional extra test on the model (``match(model) -> bool``).
        cam: ``cam(model) -> (layer name, reshape)``: the Grad-CAM target layer of a token model and the transform
            of its output to ``(B, C, h, w)`` maps (``None``: the last block of the last stage, no reshape).
        note: one line on where the attention goes, for messages and docs.
        blocks: ``blocks(model) -> [(qualified name, block, stage name, index in stage, stage length), ...]`` for a
            family whose blocks are not modules of their own (VGG's conv layers are runs of children of a flat
            ``Sequential``): replaces the search by ``block_types``, which then names the modules that hold them;
            ``plan`` receives the family's own block descriptions, and ``stages`` too searches the whole tree.
        attach: ``attach(model, attn, *, attn_kwargs, stages, warm_start, **options) -> model`` for a family that
            inserts its attention itself instead of through block hooks (VGG, see :mod:`plugattn.attach.vgg`).
        prepare: ``prepare(model, options) -> Family``: the family specialised to one model and the attach options
            (a placement option such as ultralytics' ``where=``), called once per :func:`attach_module`; it also
            rejects options the family does not know.
    """

    name: str
    model_types: tuple[type, ...]
    plan: PlanFn
    block_types: tuple[type, ...]
    stages: Callable[[nn.Module], list[tuple[str, nn.Module]]] | None = None
    levels: tuple[str, ...] = ('gate', 'block', 'stage')
    attn_key: str = 'attn'
    replace: Callable[[nn.Module, str, dict[str, Any]], list[str]] | None = None
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    match: Callable[[nn.Module], bool] | None = None
    cam: Callable[[nn.Module], tuple[str, Callable[[Tensor], Tensor] | None]] | None = None
    note: str = ''
    blocks: Callable[[nn.Module], list[tuple[str, Any, str | None, int, int]]] | None = None
    attach: Callable[..., nn.Module] | None = None
    prepare: Callable[[nn.Module, dict[str, Any]], Family] | None = None

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, self.model_types) and (self.match is None or self.match(model))


_FAMILIES: list[Family] = []
_LOADERS: list[Callable[[], None]] = []
# host library -> loader of its families, run once the library has been imported by the user (a model of it can
# only exist then), so that plugattn itself never imports it
_WHEN_IMPORTED: dict[str, Callable[[], None]] = {}


def register_family(family: Family) -> Family:
    """Register a family description (later registrations take precedence over earlier ones)."""
    _FAMILIES.insert(0, family)
    return family


def families() -> list[Family]:
    """Every registered family, built-in host libraries loaded on first use."""
    while _LOADERS:
        _LOADERS.pop(0)()
    for name in [n for n in _WHEN_IMPORTED if n in sys.modules]:
        _WHEN_IMPORTED.pop(name)()
    return list(_FAMILIES)


# --------------------------------------------------------------------------------------------- tensors


def to_map(x: Tensor, layout: str) -> Tensor:
    """A view of ``x`` as ``(B, C, H, W)`` (``(B, C, N, 1)`` for tokens), so the attention modules run unchanged."""
    if layout == 'nchw':
        return x
    if layout == 'nhwc':
        return x.permute(0, 3, 1, 2)
    return x.transpose(1, 2).unsqueeze(-1)


def from_map(x: Tensor, layout: str) -> Tensor:
    """Inverse of :func:`to_map`."""
    if layout == 'nchw':
        return x
    if layout == 'nhwc':
        return x.permute(0, 2, 3, 1)
    return x.squeeze(-1).transpose(1, 2)


def token_cam(num_prefix_tokens: int) -> Callable[[Tensor], Tensor]:
    """Grad-CAM reshape of ``(B, P + N, C)`` tokens (the ``P`` prefix tokens dropped) to ``(B, C, h, w)`` maps."""
    from ..models.vit import tokens_to_nchw

    return functools.partial(tokens_to_nchw, num_prefix_tokens=num_prefix_tokens)


def nhwc_to_nchw(x: Tensor) -> Tensor:
    """Grad-CAM reshape of channels-last ``(B, H, W, C)`` maps (Swin)."""
    return x.permute(0, 3, 1, 2)


def pool(x: Tensor, tap: Tap) -> Tensor:
    """Global average of a tapped output, ``(B, C)``."""
    if tap.act == 'relu' and tap.layout == 'nchw':  # the host's ReLU follows: nothing full-size kept for backward
        return relu_mean_hw(x)
    if tap.act is not None:
        x = _ACTS[tap.act](x)
    if tap.layout == 'nchw':
        return x.mean((2, 3))
    if tap.layout == 'nhwc':
        return x.mean((1, 2))
    return x.mean(1)


# --------------------------------------------------------------------------------------------- warm start


class _WarmStart:
    """Mixin of a warm-started attention module: ``y = x * (1 + blend * (gate - 1))`` with ``blend`` learned, 0 at init.

    At ``blend = 0`` the module is the identity, so the attached model computes exactly the original function; the
    gradient with respect to ``blend`` is ``x * (gate - 1)``, so training moves it away from 0 and the module towards
    the paper's ``x * gate`` (``blend = 1``). This is our design, not from any of the papers.
    """

    blend: nn.Parameter

    def forward(self, *args: Any) -> Any:
        return blend_forward(self, *args)


def blend_forward(module: nn.Module, *args: Any) -> Any:
    """Forward of a warm-started module at any plug level (gate ``(x)``, block ``(inner, x)``, stage ``(x, state)``)."""
    if isinstance(module, StageAttention):
        x, state = args if len(args) == 2 else (args[0], None)
        a, state = module.gate(x, state)
        return x * (1 + module.blend * (a - 1)), state
    x = args[-1]
    a = module.gate(*args)
    return x * (1 + module.blend * (a - 1))


# what a stage keeps between its blocks' calls: not part of the model
_PER_CALL = ('_plugattn_state', '_plugattn_received')
# attached class -> (the class it was made from, the mixin added): what pickling rebuilds the class from
_SWAPPED: dict[type, tuple[type, type]] = {}


@functools.cache
def _subclass(cls: type, mixin: type) -> type:
    """``cls`` with ``mixin`` in front, under ``cls``'s name (reprs, ``type(m).__name__`` stay the host's)."""
    namespace = {'__module__': cls.__module__, '__qualname__': cls.__qualname__, '__reduce_ex__': _reduce_attached}
    sub = type(cls.__name__, (mixin, cls), namespace)
    _SWAPPED[sub] = (cls, mixin)
    return sub


def _reduce_attached(self: nn.Module, protocol: int) -> tuple[Any, ...]:
    """Pickle (and ``copy.deepcopy``) an attached module as its original class plus the mixins added to it.

    Pickle stores classes by name, and an attached class carries its host's name (``torchvision...ResNet``), which
    is a different object: pickling would fail. The original class and the mixins (all importable by name) are
    stored instead, and :func:`rebuild_attached` makes the same class again when ``import plugattn`` has run.
    """
    cls, mixins = type(self), []
    while cls in _SWAPPED:
        cls, mixin = _SWAPPED[cls]
        mixins.append(mixin)
    state = {k: v for k, v in self.__dict__.items() if k not in _PER_CALL}
    return rebuild_attached, (cls, tuple(reversed(mixins))), state


def rebuild_attached(cls: type, mixins: tuple[type, ...]) -> nn.Module:
    """An empty instance of ``cls`` with ``mixins`` added in order; pickle then restores its state."""
    for mixin in mixins:
        cls = _subclass(cls, mixin)
    return cls.__new__(cls)


def make_warm(module: nn.Module) -> nn.Module:
    """Turn an attention module into its warm-started version in place (adds the parameter ``blend``, 0)."""
    ref = next(module.parameters(), None)
    module.register_parameter('blend', nn.Parameter(torch.zeros((), device=None if ref is None else ref.device)))
    module.__class__ = _subclass(type(module), _WarmStart)
    return module


# --------------------------------------------------------------------------------------------- taps


@dataclass(frozen=True)
class _TapCtx:
    plan: BlockPlan
    key: str
    level: str
    stage: nn.Module | None
    index: int
    last: bool


class _TappedBlock:
    """Mixin of an attached block: the original forward, with the plan's hooks installed for the call."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        ctx: _TapCtx = self.__dict__['_plugattn_tap']
        inner: list[Tensor] = []
        applied: list[bool] = []
        handles = []
        names = [tap.name for tap in (*ctx.plan.bridge, ctx.plan.gate)]
        tapped = [self.get_submodule(n) for n in names]
        tracer = _fx_tracer(args, kwargs)
        undo = norm = conv = None
        if tracer is not None:  # the containers on the way to a tapped module must be traced into as well
            inside = [self.get_submodule(n.rsplit('.', i)[0]) for n in names for i in range(1, n.count('.') + 1)]
            undo = _call_tapped_leaves(tracer, tapped, inside)
        try:
            for tap, module in zip(ctx.plan.bridge, tapped):
                handles.append(module.register_forward_hook(_bridge_hook(inner, tap)))
            state_in = _stage_state_in(ctx, args[0] if args else None) if ctx.level == 'stage' else None
            attn = _attention_of(self, ctx)
            # eager, no hooks on the attention (they would see other tensors than its module call gives) and no
            # warm start (its blend is applied by its own forward)
            lean = tracer is None and ctx.plan.gate.layout == 'nchw' and not isinstance(attn, _WarmStart) \
                and use_fused_path(attn)
            norm = _lean_norm(tapped[-1]) if lean else None
            conv = _lean_consumer(self, ctx) if lean and norm is None else None
            if norm is not None:  # the norm's call computes the gated output (lean_gated_norm)
                norm.__dict__['forward'] = functools.partial(
                    _lean_gated_norm, norm, attn, ctx, inner, state_in, applied)
            elif conv is not None:  # the gate is computed on the tapped output and applied inside the conv's call
                gated: list[Any] = []
                handles.append(tapped[-1].register_forward_hook(_gate_factors_hook(attn, gated, applied)))
                conv.__dict__['forward'] = functools.partial(_lean_gated_conv, conv, gated)
            else:
                handles.append(tapped[-1].register_forward_hook(_gate_hook(self, ctx, inner, state_in, applied)))
            out = super().forward(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
            for m in (norm, conv):
                if m is not None:
                    del m.__dict__['forward']
            if undo is not None:
                undo()
        if not applied:
            raise PlugattnError(
                f'the attention of this {type(self).__name__} was not applied: its gated submodule '
                f'{ctx.plan.gate.name!r} did not run through its __call__ (a tracer kept it as a leaf module?)',
                'trace the model without that leaf module, or use torch.jit.trace / torch.export')
        return out


class _FxLeaf:
    """Mixin put on a tapped leaf module while torch.fx traces its block: the tracer calls it (see
    :func:`_call_tapped_leaves`), so the block's hooks run on its output proxy, and it records itself as the same
    single ``call_module`` node the tracer would have made."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        tracer = _fx_tracer(args, kwargs)
        return tracer.create_proxy('call_module', tracer.path_of_module(self), args, kwargs)


@functools.cache
def _fx_leaf_class(cls: type) -> type:
    return type(cls.__name__, (_FxLeaf, cls), {'__module__': cls.__module__, '__qualname__': cls.__qualname__})


def _fx_tracer(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """The torch.fx tracer tracing this call (from a proxy argument), or ``None`` outside FX tracing."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.fx.Proxy):
            return a.tracer
    return None


def _call_tapped_leaves(tracer: Any, modules: Sequence[nn.Module], containers: Sequence[nn.Module]
                        ) -> Callable[[], None]:
    """Make ``tracer`` call the tapped ``modules`` (and trace into the ``containers`` that hold them) where it would
    keep them as leaves; returns the undo.

    A tracer records a leaf module (every ``torch.nn`` layer, and whatever its own list names, e.g. torchvision's
    ops modules) as one ``call_module`` node without calling it, so forward hooks on it never run and the graph would
    lack the attention. For this block's call the tracer treats those as non-leaves; the tapped ones (through
    :class:`_FxLeaf`) record themselves as the node they would have been.
    """
    def is_leaf(m: nn.Module) -> bool:
        return tracer.is_leaf_module(m, tracer.path_of_module(m))

    leaves = {id(m): m for m in modules if is_leaf(m)}
    opened = leaves.keys() | {id(m) for m in containers if is_leaf(m)}
    if not opened:
        return lambda: None
    had_own = 'is_leaf_module' in vars(tracer)
    original = tracer.is_leaf_module
    tracer.is_leaf_module = lambda m, qualname: id(m) not in opened and original(m, qualname)
    classes = {i: type(m) for i, m in leaves.items()}
    for i, m in leaves.items():
        m.__class__ = _fx_leaf_class(classes[i])

    def undo() -> None:
        for i, m in leaves.items():
            m.__class__ = classes[i]
        if had_own:
            tracer.is_leaf_module = original
        else:
            del tracer.is_leaf_module

    return undo


def _stage_state_in(ctx: _TapCtx, block_input: Any) -> Any:
    """The recurrent state a stage-level unit receives in this block.

    Normally the state the previous block left on the stage. Every block also records the state it received, keyed
    (weakly) by its input tensor: when gradient checkpointing re-runs a block in backward with the same input, the
    block gets the state of the original forward again, not the state the later blocks have left since.
    """
    stage = ctx.stage
    if ctx.index == 0:
        return None
    received = stage.__dict__.setdefault('_plugattn_received', WeakIdKeyDictionary())
    if isinstance(block_input, Tensor):
        if block_input in received:
            return received[block_input]
        received[block_input] = stage.__dict__.get('_plugattn_state')
    return stage.__dict__.get('_plugattn_state')


def _bridge_hook(inner: list[Tensor], tap: Tap) -> Callable:
    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        inner.append(pool(output, tap))

    return hook


def _attention_of(block: nn.Module, ctx: _TapCtx) -> nn.Module:
    return ctx.stage.attn if ctx.level == 'stage' else getattr(block, ctx.key)


def _lean_norm(gated: nn.Module) -> nn.BatchNorm2d | None:
    """The plain, unhooked BatchNorm2d whose output the block's attention gates: the gated submodule itself or, for
    a ``Sequential`` (conv + norm), its last child."""
    if isinstance(gated, nn.Sequential) and len(gated) and not is_hooked(gated):
        gated = gated[-1]
    return gated if type(gated) is nn.BatchNorm2d and not is_hooked(gated) else None


def _lean_gated_norm(norm: nn.BatchNorm2d, attn: nn.Module, ctx: _TapCtx, inner: list[Tensor], state_in: Any,
                     applied: list[bool], z: Tensor) -> Tensor:
    """The gated norm output ``norm(z) * gate``, computed as plugattn's own blocks compute it before their residual
    merge: in training the result overwrites the norm output and backward recomputes that output from ``z`` (which
    the norm keeps anyway), so the attached block keeps as many full-size tensors as the host's block; without a
    gradient the gate is applied in the norm output's memory."""
    applied.append(True)
    if torch.is_grad_enabled() and z.requires_grad:
        y, rec = batch_norm_with_recompute(norm, z)
    else:
        y, rec = nn.BatchNorm2d.forward(norm, z), None
    if ctx.level == 'stage':
        a, state = attn.gate(y, state_in)
        ctx.stage.__dict__['_plugattn_state'] = None if ctx.last else state
        gates: tuple[Tensor, ...] = (a,)
    elif ctx.level == 'block':
        gates = (attn.gate(list(inner), y),)
    else:
        gates = attn.gate_factors(y, rec)
    return gated_residual(y, gates, recompute=rec, inplace=attn.merge_in_place)


def _lean_consumer(block: nn.Module, ctx: _TapCtx) -> nn.Conv2d | None:
    """The plan's consumer conv, where a gate-level attention can be applied inside its call (see
    :class:`BlockPlan`): an unhooked, bias-free, undilated, zero-padded ``Conv2d``."""
    if ctx.plan.consumer is None or ctx.level != 'gate':
        return None
    conv = block.get_submodule(ctx.plan.consumer)
    if type(conv) is not nn.Conv2d or is_hooked(conv):
        return None
    if conv.bias is not None or conv.dilation != (1, 1) or conv.padding_mode != 'zeros' \
            or isinstance(conv.padding, str):
        return None  # what gated_conv computes itself
    return conv


def _gate_factors_hook(attn: nn.Module, gated: list[Any], applied: list[bool]) -> Callable:
    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        applied.append(True)
        gated[:] = [output, attn.gate_factors(output)]

    return hook


def _lean_gated_conv(conv: nn.Conv2d, gated: list[Any], x: Tensor) -> Tensor:
    """``conv(x * gate)`` for the tapped output ``x``, through :func:`~plugattn.layers.fused.gated_conv`, which keeps
    ``x`` (kept by the host's activation anyway) and the small gates instead of the gated map."""
    y, gates = gated
    if x is not y:  # not the tapped output: the block does something the plan does not describe
        raise RuntimeError(f'the attached {type(conv).__name__} received another tensor than the gated output')
    if torch.is_grad_enabled() and any(t.requires_grad for t in (y, *gates, conv.weight)):
        return gated_conv(y, gates, conv)
    for a in gates:  # no autograd: in the tapped output's memory, which only this conv reads
        y = y.mul_(a) if not torch.is_grad_enabled() else y * a
    return nn.Conv2d.forward(conv, y)  # not conv(...): its forward is this function during the block's call


def _gate_hook(block: nn.Module, ctx: _TapCtx, inner: list[Tensor], state_in: Any, applied: list[bool]) -> Callable:
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        applied.append(True)
        x = to_map(output, ctx.plan.gate.layout)
        attn = _attention_of(block, ctx)
        if ctx.level == 'stage':
            y, state = attn(x, state_in)
            ctx.stage.__dict__['_plugattn_state'] = None if ctx.last else state
        elif ctx.level == 'block':
            y = attn(list(inner), x)
        else:
            y = attn(x)
        return from_map(y, ctx.plan.gate.layout)

    return hook


class _SharedStage:
    """Mixin of a stage container that owns a stage-level unit at ``attn``: runs its blocks in order, skipping it."""

    def _blocks(self) -> list[nn.Module]:
        return [m for name, m in self._modules.items() if name != 'attn']

    def forward(self, x: Tensor) -> Tensor:
        self.__dict__['_plugattn_state'] = None
        for m in self._blocks():
            x = m(x)
        self.__dict__['_plugattn_state'] = None
        return x

    def __iter__(self):
        return iter(self._blocks())

    def __len__(self) -> int:
        return len(self._blocks())

    def __getitem__(self, idx: int) -> nn.Module:
        return self._blocks()[idx]


class _StageUnit:
    """Mixin of a stage-level unit inside its stage container. The blocks' hooks call it as ``unit(x, state)``; a
    host that runs the container's children itself (timm's gradient checkpointing: ``checkpoint_seq(blocks)``)
    reaches it after the last block as ``unit(x)``, and it passes ``x`` through, as if it were not there."""

    def forward(self, x: Tensor, *state: Any) -> Any:
        if not state:
            return x
        return super().forward(x, *state)


class _AttachedModel:
    """Mixin of an attached foreign model: ``attention_modules()``, the analysis API of plugattn models."""

    def attention_modules(self) -> dict[str, nn.Module]:
        """Every attached attention module by qualified name."""
        keys = set(self.__dict__.get('_plugattn_attn_names', ()))
        return {name: m for name, m in self.named_modules() if name in keys}

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this first: the attention runs through hooks installed per call, which TorchScript
        # cannot compile, so say so instead of failing deep inside the compiler
        raise PlugattnError(
            f'an attached {type(self).__name__} cannot be scripted with TorchScript (its attention runs through '
            'forward hooks)', 'use torch.jit.trace, torch.export or ONNX export (plugattn export) instead')


class _AttachedStagedModel(_AttachedModel):
    """An attached model that also lists its stage containers (``stages()``) for ``attn-corr`` and ``cam``."""

    def stages(self) -> list[nn.Module]:
        """The stage containers, in order."""
        return [self.get_submodule(name) for name in self.stage_names]


def tap_block(block: nn.Module, ctx: _TapCtx) -> None:
    block.__dict__['_plugattn_tap'] = ctx
    if not isinstance(block, _TappedBlock):
        block.__class__ = _subclass(type(block), _TappedBlock)


def share_stage(container: nn.Module, unit: nn.Module) -> None:
    unit.__class__ = _subclass(type(unit), _StageUnit)
    container.add_module('attn', unit)
    if not isinstance(container, _SharedStage):
        container.__class__ = _subclass(type(container), _SharedStage)


def mark_model(model: nn.Module, stage_names: Sequence[str], attn_names: Sequence[str]) -> None:
    model.__dict__['_plugattn_stage_names'] = tuple(stage_names)
    if not hasattr(model, 'attention_modules'):
        # a model with a ``stages`` submodule (timm ConvNeXt, ...) keeps it: no stages() method then
        staged = stage_names and not hasattr(model, 'stages') and not hasattr(model, 'stage_names')
        model.__class__ = _subclass(type(model), _AttachedStagedModel if staged else _AttachedModel)
        if staged:
            model.stage_names = tuple(stage_names)
    model.__dict__['_plugattn_attn_names'] = tuple(attn_names)


def _family_or_none(model: nn.Module) -> Family | None:
    try:
        return find_family(model)
    except ValueError:
        return None


def model_stages(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """``[(name, container), ...]``: the stages of a torchvision / timm model (attached or not) as its family names
    them (``[]`` for a family without stages), or ``None`` for a model of no family."""
    names = model.__dict__.get('_plugattn_stage_names')
    if names is not None:
        return [(n, model.get_submodule(n)) for n in names]
    fam = _family_or_none(model)
    if fam is None:
        return None
    return fam.stages(model) if fam.stages is not None else []


def cam_layer(model: nn.Module) -> tuple[str, Callable[[Tensor], Tensor] | None] | None:
    """The Grad-CAM target layer and output reshape of a torchvision / timm token model (ViT, Swin), else ``None``."""
    fam = _family_or_none(model)
    return fam.cam(model) if fam is not None and fam.cam is not None else None


# --------------------------------------------------------------------------------------------- attach


def find_family(model: nn.Module) -> Family:
    """The family of ``model``: the one whose model class it is, else the family of the blocks it contains (a
    detector, a feature extractor, a user's module), see :func:`_family_of_blocks`."""
    for fam in families():
        if fam.matches(model):
            return fam
    found = _family_of_blocks(model)
    if found is not None:
        return found
    names = ', '.join(sorted({f.name for f in families()}))
    raise PlugattnError(
        f'plugattn.attach found no block of a supported family in this {type(model).__module__}.'
        f'{type(model).__name__}: supported families are {names}; describe a new one with '
        'plugattn.attach.register_family(Family(...)) (see its docstring)'
    )


def _family_of_blocks(root: nn.Module) -> Family | None:
    """The family of the blocks inside ``root``, a module that is no model of a family (a torchvision
    ``IntermediateLayerGetter`` or detector, a timm feature wrapper, a user's module), or ``None``.

    Blocks keep their qualified names, so the keys are those of the classification model under the host's prefix
    (``backbone.body.layer1.0.attn``). The stages are the ``nn.Sequential`` containers that hold the family's blocks
    (ResNet's ``layerS``, ConvNeXt's ``features.i``, ...), as the family names them on its own model. Where the tree
    holds blocks of several families, the family with the most blocks is attached. A block type shared by two
    families (timm's inverted residuals: MobileNetV3 and EfficientNet) goes to the family whose model class comes
    from a module that a class in the tree also comes from (timm's ``MobileNetV3Features``).
    """
    fams = families()
    tree_modules = {type(m).__module__ for m in root.modules()}
    counts: dict[int, int] = {}
    for m in root.modules():
        candidates = [f for f in fams if f.block_types and isinstance(m, f.block_types)]
        if not candidates:
            continue
        near = [f for f in candidates if any(t.__module__ in tree_modules for t in f.model_types)]
        fam = (near or candidates)[0]
        counts[id(fam)] = counts.get(id(fam), 0) + 1
    if not counts:
        return None
    best = max(fams, key=lambda f: counts.get(id(f), 0))
    types = best.block_types

    def stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
        out: dict[str, nn.Module] = {}
        for name, m in model.named_modules():
            parent = name.rpartition('.')[0]
            if name and parent and isinstance(m, types) and parent not in out:
                container = model.get_submodule(parent)
                if isinstance(container, nn.Sequential):
                    out[parent] = container
        return list(out.items())

    own = best.blocks is not None  # the family finds its blocks and stages anywhere in a tree itself
    return dataclasses.replace(best, model_types=(), match=None, cam=None,
                               stages=stages if best.stages is not None and not own else best.stages)


def _blocks_of(fam: Family, model: nn.Module) -> list[tuple[str, nn.Module, str | None, int, int]]:
    """``(qualified name, block, stage name, index in stage, stage length)`` of every block of the family."""
    if fam.blocks is not None:
        return fam.blocks(model)
    out = []
    if fam.stages is not None:
        seen = set()
        for sname, stage in fam.stages(model):
            blocks = [(n, m) for n, m in stage.named_children() if isinstance(m, fam.block_types)]
            for i, (n, m) in enumerate(blocks):
                out.append((f'{sname}.{n}', m, sname, i, len(blocks)))
                seen.add(id(m))
        for n, m in model.named_modules():
            if isinstance(m, fam.block_types) and id(m) not in seen:
                out.append((n, m, None, 0, 1))
        return out
    return [(n, m, None, 0, 1) for n, m in model.named_modules() if isinstance(m, fam.block_types)]


def _select(stages: Sequence[int] | None, num: int, names: list[str]) -> set[str]:
    if stages is None:
        return set(names)
    bad = [s for s in stages if not -num <= s < num]
    if bad:
        raise PlugattnError(f'stages {bad} out of range: the model has {num} stages (0..{num - 1})')
    return {names[s % num] for s in stages}


def attach_module(
        model: nn.Module,
        attn: str,
        *,
        attn_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        stages: Sequence[int] | None = None,
        warm_start: bool = False,
        **options: Any,
) -> nn.Module:
    """Implementation of :func:`plugattn.attach` for foreign models (see there)."""
    fam = find_family(model)
    level = attn_level(attn)
    if level is None:
        raise PlugattnError(f'attention {attn!r} is empty; choose one of {", ".join(list_attn())}')
    if level not in fam.levels:
        ok = [a for a in list_attn() if attn_level(a) in fam.levels]
        raise PlugattnError(f'{fam.name} takes no {level}-level attention ({attn}); it takes {", ".join(ok)}')
    if any(k in m.__dict__ for m in model.modules() for k in ('_plugattn_tap',)) or \
            '_plugattn_attn_names' in model.__dict__:
        raise PlugattnError('this model already has attention attached; attach to a fresh copy of the original model')
    if level == 'stage' and fam.stages is None:
        raise PlugattnError(f'{fam.name} has no stages for stage-level attention ({attn})')
    if fam.attach is not None:
        return fam.attach(model, attn, attn_kwargs=attn_kwargs, stages=stages, warm_start=warm_start, **options)
    options = {'keep_se': False, **options, '_attn': attn}
    if warm_start:
        options['keep_se'] = True  # removing the native SE would change the function
    if fam.prepare is not None:
        fam = fam.prepare(model, options)
    key = attn if isinstance(attn, str) else None
    defaults = dict(fam.defaults.get(key, {})) if key else {}
    stage_list = fam.stages(model) if fam.stages is not None else []
    stage_names = [n for n, _ in stage_list]
    per_stage = _per_stage_kwargs(attn_kwargs, len(stage_names))
    chosen = _select(stages, len(stage_names), stage_names) if stage_names else None
    if stages is not None and not stage_names:
        raise PlugattnError(f'{fam.name} has no stages to select from; drop stages=')
    attn_names: list[str] = []
    plans = []
    for qname, block, sname, index, length in _blocks_of(fam, model):
        if (chosen is not None and sname not in chosen) or (level == 'stage' and sname is None):
            continue  # a stage-level unit lives in a stage container
        plan = fam.plan(block, level, options)
        if plan is None:
            continue
        kwargs = {**defaults, **plan.attn_kwargs,
                  **(per_stage[stage_names.index(sname)] if sname in stage_names else per_stage[0])}
        plans.append((qname, block, sname, index, length, plan, kwargs))
    if not plans:
        raise PlugattnError(f'no block of this {fam.name} model takes {attn}')
    ref = next(model.parameters())
    dd = {'device': ref.device}
    units: dict[str, nn.Module] = {}
    replaced: list[str] = []
    dropped = 0  # parameters of the host's own modules that the attention replaces
    for qname, block, sname, index, length, plan, kwargs in plans:
        if fam.replace is not None:
            for name in fam.replace(block, level, options):
                dropped += sum(p.numel() for p in block.get_submodule(name).parameters())
                block.set_submodule(name, nn.Identity())
                replaced.append(f'{qname}.{name}')
        stage = None
        if level == 'stage':
            stage = dict(stage_list)[sname]
            if sname not in units:
                units[sname] = _build(attn, plan.channels, {**kwargs}, warm_start, dd, model.training)
                share_stage(stage, units[sname])
                attn_names.append(f'{sname}.attn')
        elif level == 'block':
            block.add_module(fam.attn_key, _build(
                attn, plan.channels, {**kwargs, 'inner_channels': plan.inner_channels}, warm_start, dd, model.training))
            attn_names.append(f'{qname}.{fam.attn_key}')
        else:
            block.add_module(fam.attn_key, _build(attn, plan.channels, kwargs, warm_start, dd, model.training))
            attn_names.append(f'{qname}.{fam.attn_key}')
        tap_block(block, _TapCtx(plan, fam.attn_key, level, stage, index, index == length - 1))
    if dropped:
        warnings.warn(
            f'plugattn.attach: {attn} replaces {len(replaced)} native modules of this {fam.name} model '
            f'({replaced[0]}, ...), dropping their {dropped:,} parameters and any pretrained weights in them; keep '
            'them with keep_se=True or warm_start=True', UserWarning, stacklevel=_stacklevel_outside_attach())
    mark_model(model, stage_names, attn_names)
    model.__dict__['_plugattn_family'] = fam.name
    model.__dict__['_plugattn_replaced'] = tuple(replaced)
    return model


def _stacklevel_outside_attach() -> int:
    """The ``warnings.warn`` stack level of the first caller outside :mod:`plugattn.attach` (the user's line)."""
    level, frame = 2, sys._getframe(2)
    while frame is not None and frame.f_globals.get('__name__', '').startswith('plugattn.attach'):
        level, frame = level + 1, frame.f_back
    return level


def _per_stage_kwargs(attn_kwargs: Any, num: int) -> list[dict[str, Any]]:
    if attn_kwargs is None:
        return [{} for _ in range(max(num, 1))]
    if isinstance(attn_kwargs, dict):
        return [dict(attn_kwargs) for _ in range(max(num, 1))]
    per = list(attn_kwargs)
    if len(per) != num or not all(isinstance(d, dict) for d in per):
        raise PlugattnError(f'attn_kwargs must be a dict or a list of {num} dicts (one per stage), got {attn_kwargs!r}')
    return [dict(d) for d in per]


def _build(attn: str, channels: int, kwargs: dict[str, Any], warm: bool, dd: dict[str, Any],
           training: bool = True) -> nn.Module:
    m = create_attn(attn, channels, **kwargs).to(**dd).train(training)
    return make_warm(m) if warm else m


def buildable(fam: Family, model: nn.Module, attn: str) -> bool:
    """Whether ``attn`` can be attached to ``model`` (right level, and every module buildable at its width)."""
    level = attn_level(attn)
    if level not in fam.levels or (level == 'stage' and fam.stages is None):
        return False
    options = {'keep_se': False, '_attn': attn}
    defaults = fam.defaults.get(attn, {})
    found = False
    for _, block, _, _, _ in _blocks_of(fam, model):
        plan = fam.plan(block, level, options)
        if plan is None:
            continue
        found = True
        if level == 'gate':
            try:
                create_attn(attn, plan.channels, device=torch.device('meta'), **{**defaults, **plan.attn_kwargs})
            except ValueError:
                return False
    return found
