"""Machinery shared by every backbone: timm's model API, attention slots and shared-attention stages.

No ``from __future__ import annotations`` here: TorchScript reads class and signature annotations as real types.
"""
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import PlugattnError, check_out_indices
from ..layers import BlockAttention, GateAttention, StageAttention, attn_level, create_attn
from ..layers._typecheck import checked_init
from ..layers.base import AttnState
from ..layers.gating import module_call, staged_merge
from ..layers.registry import AttnSpec

__all__ = [
    'AttnNet', 'AttnStage', 'FeatureInfo', 'GatedBlock', 'block_attn', 'check_input', 'checkpoint_seq',
    'feature_take_indices', 'gated_norm', 'init_attn_modules', 'is_fx_proxy', 'module_call', 'run_stage',
    'stage_attn_kwargs', 'stage_blocks', 'stage_step',
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
        raise PlugattnError(
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


class GatedBlock(nn.Module):
    """A residual block whose branch ends in one gated merge (:func:`~plugattn.layers.gating.gated_merge`).

    ``body(x) -> (z, shortcut, inner)`` is the block up to the layer its attention gates: that layer's input, the
    shortcut and the pooled inner features bridge attention takes. ``forward`` ends in one ``gated_merge`` with the
    block's own attention; in a stage with a shared unit (DIA) :func:`stage_step` runs ``body`` and merges with the
    stage's unit. Class constants: ``gate_norm`` names the gated norm (``''`` or a ``None`` attribute: the branch
    output itself is gated), ``merge_relu`` says whether the merge ends with a ReLU (post-activation blocks).
    """

    __constants__ = ['bridge', 'gate_norm', 'merge_relu']
    gate_norm = ''
    merge_relu = True


def gated_norm(block: Any) -> Any:
    """The layer a :class:`GatedBlock` gates (``None``: the branch output), found by ``block.gate_norm``, also on
    the raw ScriptModule a Python call inside a scripted model receives."""
    m = block
    for name in filter(None, block.gate_norm.split('.')):
        m = getattr(m, name)
    return None if m is block else m


class AttnStage(nn.Module):
    """A stage of blocks that share one stage-level attention unit (DIA), or none (``attn=None``: the blocks in order).

    Blocks are registered as ``0, 1, ...`` so state_dict keys match an ``nn.Sequential`` stage
    (``layer1.0.conv1.weight``); the shared unit sits at ``attn``. Every block is a :class:`GatedBlock`;
    :func:`run_stage` runs them (as it runs every stage with a shared unit: Swin, PVT, CSWin, ViT, the diffusion
    UNet's levels).

    TorchScript cannot iterate a custom container, so a scripted model runs this stage as a Python call
    (``torch.jit.ignore``): ``torch.jit.script`` works and gives the eager outputs, but ``torch.jit.save`` of a DIA
    model fails; save it with ``torch.jit.trace`` (``plugattn export --format torchscript``) or ``torch.export``.
    """

    def __init__(self, blocks: list[nn.Module], attn: StageAttention | None = None) -> None:
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

    @torch.jit.ignore  # TorchScript cannot iterate a custom container; the scripted model calls this in Python
    def forward(self, x: Tensor) -> Tensor:
        return run_stage(stage_blocks(self), self.attn, x)

    def forward_checkpointed(self, x: Tensor) -> Tensor:
        """:meth:`forward` with every block (and its use of the shared unit) under activation checkpointing."""
        return run_stage(stage_blocks(self), self.attn, x, checkpointing=True)


def stage_blocks(stage: Any, depth: int | None = None) -> list[Any]:
    """The blocks of a stage registered as children ``0, 1, ...`` (``depth`` of them, default ``stage.depth``),
    fetched by name: inside a scripted model the stage is a raw ScriptModule, which cannot be iterated."""
    return [getattr(stage, str(i)) for i in range(stage.depth if depth is None else depth)]


def stage_step(
        block: Any, attn: Any, x: Tensor, state: AttnState | None, *args: Any, fused: bool = True,
) -> tuple[Tensor, AttnState | None]:
    """One block of a stage whose blocks share the stage-level unit ``attn`` (``None``: the plain block call).

    A :class:`GatedBlock` runs its ``body`` and merges through :func:`~plugattn.layers.gating.staged_merge` (the
    lean merge where it applies); a transformer block (or the diffusion UNet's) gates its ``forward_branch`` output
    with the unit's module call before its ``merge``. ``args`` are the block's extra inputs (PVT's token grid size,
    the diffusion UNet's time embedding).
    """
    if attn is None:
        return module_call(block)(x, *args), state
    # a raw ScriptModule unit: this runs as a Python call inside a scripted model (module calls, no hooks there)
    fused = fused and isinstance(attn, nn.Module)
    if hasattr(block, 'body'):
        z, shortcut, _ = block.body(x, *args)
        return staged_merge(gated_norm(block), z, shortcut, attn, state, relu=block.merge_relu, fused=fused)
    branch, shortcut = block.forward_branch(x, *args)
    branch, state = staged_merge(None, branch, None, attn, state, fused=False)
    return block.merge(branch, shortcut), state


def run_stage(
        blocks: Sequence[Any], attn: Any, x: Tensor, *args: Any, checkpointing: bool = False,
        outputs: list[Tensor] | None = None,
) -> Tensor:
    """Run a stage's blocks in order, the stage-level unit ``attn`` (or ``None``) shared by all of them.

    The unit's recurrent state starts at ``None`` (zeros) on every call, so nothing leaks between stages or between
    forward passes. With ``checkpointing`` every block runs under activation checkpointing with the state it
    received passed in, so a block re-run in backward sees its original state; it keeps the plain module calls
    (recomputation already drops what the fused lean merge saves).

    Args:
        blocks: the stage's blocks, in order.
        attn: the shared stage-level unit, or ``None``.
        x: the stage input.
        *args: extra inputs every block takes after ``x``.
        checkpointing: run each block under ``torch.utils.checkpoint`` (``use_reentrant=False``).
        outputs: if given, every block's output is appended to it.
    """
    state = None
    for block in blocks:
        if checkpointing:
            x, state = checkpoint(stage_step, block, attn, x, state, *args, fused=False, use_reentrant=False)
        else:
            x, state = stage_step(block, attn, x, state, *args)
        if outputs is not None:
            outputs.append(x)
    return x


def check_input(x: Tensor, in_chans: int, model_name: str) -> Tensor:
    """Reject inputs of the wrong rank or channel count with the numbers in the message; returns ``x``.

    Registered with :func:`torch.fx.wrap`, so FX graphs keep the check as one call (symbolic shapes cannot drive a
    Python ``if``), and written in TorchScript's subset so scripted FX graphs keep it too. A model scripted
    directly skips it (the message names the class, which TorchScript cannot).
    """
    if torch.jit.is_tracing():  # shapes are symbolic-by-example while tracing; the check would only warn
        return x
    if x.dim() != 4:
        raise PlugattnError(
            f'{model_name} expects a 4-D (batch, channels, height, width) input, got shape {list(x.shape)}'
        )
    if x.shape[1] != in_chans:
        raise PlugattnError(
            f'{model_name} was built for {in_chans} input channels, got {x.shape[1]} (input shape '
            f'{list(x.shape)}): build it with in_chans={x.shape[1]} or convert the images'
        )
    return x


torch.fx.wrap('check_input')


@torch.jit.unused  # only reached outside TorchScript (callers test torch.jit.is_scripting() first)
def is_fx_proxy(x: Any) -> bool:
    """Whether ``x`` is a value being traced by ``torch.fx`` (shapes are then symbolic: no Python ``if`` on them)."""
    return isinstance(x, torch.fx.Proxy)


def feature_take_indices(num_levels: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """timm's ``indices`` convention: ``None`` all levels, an int ``n`` the last ``n``, a sequence those levels
    (negative from the end). Returns the sorted-as-given absolute indices and the largest."""
    if indices is None:
        indices = num_levels
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise PlugattnError(f'indices={indices} must select 1..{num_levels} of the {num_levels} feature levels')
        take = list(range(num_levels - indices, num_levels))
    else:
        bad = [i for i in indices if not -num_levels <= i < num_levels]
        if bad:
            raise PlugattnError(f'indices {bad} out of range for {num_levels} feature levels (0..{num_levels - 1})')
        take = [i % num_levels for i in indices]
    return take, max(take)


def checkpoint_seq(blocks: nn.Module, x: Tensor) -> Tensor:
    """Run the blocks of a stage one by one under activation checkpointing (stage-level units per block)."""
    if hasattr(blocks, 'forward_checkpointed'):  # stages with a shared unit or a downsampling step
        return blocks.forward_checkpointed(x)
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False)
    return x


class AttnNet(nn.Module):
    """timm's model API for the CNN backbones.

    Subclasses define ``forward_stem``, ``stage_names`` (attribute names of the stages, in order), ``fc`` and,
    optionally, ``forward_final`` (e.g. the last norm of pre-activation networks), and fill ``feature_info``,
    ``num_classes``, ``num_features`` and ``in_chans``; they call :meth:`set_global_pool` in ``__init__``.

    Class attributes (read by timm's tools): ``first_conv_key`` / ``classifier_key`` (the pretrained cfg's
    ``first_conv`` / ``classifier``), ``output_fmt`` (layout of ``forward_features``), ``global_pool``
    (``'avg'`` or ``''``: unpooled maps) and ``grad_checkpointing``.
    """

    __constants__ = ['global_pool', 'grad_checkpointing']
    __jit_unused_properties__ = ['head_hidden_size']
    global_pool_types = ('avg', '')
    out_indices = None
    first_conv_key = 'conv1'
    classifier_key = 'fc'
    output_fmt = 'NCHW'
    global_pool = 'avg'
    grad_checkpointing = False

    # --------------------------------------------------------------------------------- pieces subclasses provide

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        checked_init(cls)  # constructor arguments are type-checked, with messages naming the parameter

    def forward_stem(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_final(self, x: Tensor) -> Tensor:
        return x

    def forward_stem_feature(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The stem's feature level (``feature_info[0]``) and the stem output the first stage takes."""
        x = self.forward_stem(x)
        return x, x

    def norm_intermediate(self, x: Tensor) -> Tensor:
        """What ``forward_intermediates(norm=True)`` applies to the last stage's output (default: nothing)."""
        return x

    def stages(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.stage_names]

    @torch.jit.unused
    def _script_stages(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    # --------------------------------------------------------------------------------- forward

    def check_input(self, x: Tensor) -> Tensor:
        """Reject inputs of the wrong rank or channel count (see :func:`check_input`)."""
        return check_input(x, self.in_chans, self._model_label())

    @torch.jit.unused
    def _model_label(self) -> str:
        return type(self).__name__

    def forward_stages(self, x: Tensor) -> Tensor:
        """The stages in order; each block under activation checkpointing after :meth:`set_grad_checkpointing`."""
        if torch.jit.is_scripting():
            return self._script_stages(x)
        for stage in self.stages():
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and torch.is_grad_enabled() else stage(x)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            x = self.check_input(x)
        return self.forward_final(self.forward_stages(self.forward_stem(x)))

    def pool(self, x: Tensor) -> Tensor:
        """Global average pool of NCHW maps, or nothing with ``global_pool=''``."""
        return x.mean((2, 3)) if self.global_pool == 'avg' else x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():  # noqa: SIM102  (TorchScript must not see out_indices)
            if self.out_indices is not None:
                return self._forward_feature_list(x)
        return self.forward_head(self.forward_features(x))

    @torch.jit.unused
    def _forward_feature_list(self, x: Tensor) -> list[Tensor]:
        return self.forward_intermediates(x, list(self.out_indices), intermediates_only=True)

    # --------------------------------------------------------------------------------- timm's intermediate API

    @torch.jit.ignore
    def forward_intermediates(
            self,
            x: Tensor,
            indices: int | Sequence[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Feature levels of ``feature_info`` (stem, then every stage) as timm returns them.

        Args:
            x: input images.
            indices: ``None`` every level, an int ``n`` the last ``n`` levels, or a list of levels.
            norm: apply the model's final norm to the last stage's feature (pre-activation networks, Swin).
            stop_early: stop after the last selected level (the final output is then that level's).
            output_fmt: ``'NCHW'`` (Swin also ``'NHWC'``).
            intermediates_only: return only the list of features.

        Returns:
            The features, or ``(final, features)`` where ``final`` equals :meth:`forward_features`.
        """
        if output_fmt not in ('NCHW',):
            raise PlugattnError(f"output_fmt must be 'NCHW' for {type(self).__name__}, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stage_names) + 1, indices)
        feat, x = self.forward_stem_feature(self.check_input(x))
        feats = [feat] if 0 in take else []
        stages = self.stages()
        if intermediates_only or stop_early:
            stages = stages[:last]
        for i, stage in enumerate(stages, 1):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and torch.is_grad_enabled() else stage(x)
            if i in take:
                feats.append(self.norm_intermediate(x) if norm and i == len(self.stage_names) else x)
        if intermediates_only:
            return feats
        return (self.forward_final(x) if len(stages) == len(self.stage_names) else x), feats

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: int | Sequence[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last selected level (and the head) for feature extraction; returns the
        absolute indices, as timm does. ``prune_norm`` also drops the final norm/activation."""
        take, last = feature_take_indices(len(self.stage_names) + 1, indices)
        for name in self.stage_names[last:]:
            self.set_submodule(name, nn.Identity())
        if prune_norm:
            self._prune_final()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def _prune_final(self) -> None:
        """Replace the final norm/activation/conv (``forward_final``) with identities (nothing by default)."""

    # --------------------------------------------------------------------------------- head

    @property
    def head_hidden_size(self) -> int:
        """Width of the pre-logits features (no pre-logits layer in these models: ``num_features``)."""
        return self.num_features

    def set_features_only(self, out_indices: tuple[int, ...] | None = None) -> None:
        """Turn the model into a feature extractor (``features_only=True``): ``forward`` returns the selected
        stem/stage outputs as a list, the classifier is removed and ``feature_info`` lists the selected levels."""
        n = len(self.feature_info)
        out_indices = check_out_indices(out_indices, n, getattr(self, 'model_name', type(self).__name__))
        self.reset_classifier(0)
        self.out_indices = tuple(i % n for i in out_indices)
        self.feature_info = FeatureInfo(self.feature_info[i] for i in self.out_indices)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_key)

    def set_global_pool(self, global_pool: str, num_classes: int | None = None) -> None:
        """Set the head's pooling; ``''`` (unpooled maps from ``forward``) needs ``num_classes == 0``."""
        if global_pool not in self.global_pool_types:
            choices = ', '.join(repr(g) for g in self.global_pool_types)
            raise PlugattnError(f'global_pool must be one of {choices}, got {global_pool!r}')
        num_classes = self.num_classes if num_classes is None else num_classes
        if global_pool == '' and num_classes > 0:
            raise PlugattnError(
                f"global_pool='' gives unpooled features, which a classifier cannot take: use num_classes=0 "
                f'(got {num_classes}) or global_pool={self.global_pool_types[0]!r}'
            )
        self.global_pool = global_pool

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 removes it); ``global_pool`` ``''``
        (with 0 classes) makes ``forward`` return unpooled features, ``None`` keeps the current pooling."""
        if self.out_indices is not None:
            raise PlugattnError('a features_only model has no classifier to reset')
        if global_pool is None and num_classes > 0 and self.global_pool == '':
            global_pool = self.global_pool_types[0]
        self.set_global_pool(self.global_pool if global_pool is None else global_pool, num_classes)
        self.num_classes = num_classes
        ref = next(self.parameters())
        head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0 \
            else nn.Identity()
        self.set_submodule(self.classifier_key, head)

    # --------------------------------------------------------------------------------- training helpers

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block in training (recomputed in backward: less memory)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer-wise grouping (layer decay, freezing): the stem, then stage by stage (block by block
        unless ``coarse``); a stage-level attention unit joins the group of its stage's blocks. The head is left
        unmatched, which timm puts last."""
        first = self.stage_names[0].split('.')[0]
        names = [n for n, _ in self.named_children()]
        stem = [n for n in names[:names.index(first)]]
        matcher = {'stem': r'^(?:' + '|'.join(stem) + r')\.' if stem else None}
        matcher['blocks'] = self._block_matcher(coarse)
        return matcher

    def _block_matcher(self, coarse: bool) -> Any:
        # stage attributes are named <prefix><number> (layer1, s1); blocks <number> or b<number>; (99999,) is timm's
        # "same group as the previous one", which puts a shared stage unit with its stage's last block
        prefix = self.stage_names[0].rstrip('0123456789')
        if coarse:
            return rf'^{prefix}(\d+)\.'
        return [(rf'^{prefix}(\d+)\.b?(\d+)\.', None), (rf'^{prefix}(\d+)\.attn\.', (99999,))]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names that must not be weight-decayed (position embeddings, tokens, bias tables): none here."""
        return set()

    def attention_modules(self) -> dict[str, nn.Module]:
        """Every attention module by qualified name (gate, block and stage level), for analysis."""
        return {
            name: m for name, m in self.named_modules()
            if isinstance(m, (GateAttention, BlockAttention, StageAttention))
        }
