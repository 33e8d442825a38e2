"""The one place that decides how a block's gate is applied: plain module calls, fused inference or lean training.

Every gated block of plugattn's CNNs ends in one call to :func:`gated_merge` (a DIA stage's blocks in one call to
:func:`staged_merge`, made by the stage runner): the block hands over the input ``z`` of the layer whose output is
gated (a BatchNorm, or a conv-norm-activation), its shortcut, its attention and the pooled inner features bridge
attention takes. The decision is made here, once per call:

* **plain** (TorchScript, tracing, FX, ONNX, ``torch.export``, hooks on the attention or on the layer that consumes
  the gated map): the layer, the attention and the consumer are called as modules, then ``(+ shortcut, ReLU)``;
* **fused inference** (no autograd, a gate that only pools its input): the gate is applied in the gated map's memory;
* **lean training**: the BatchNorm runs through :func:`~plugattn.layers.fused.batch_norm_for_gating` and the gate and
  merge through :func:`~plugattn.layers.fused.gated_residual` (or, when a conv consumes the gated map,
  :func:`~plugattn.layers.fused.gated_conv`), which keep the norm's input instead of its output for backward.

The outputs are the same in every mode (up to the rounding of one fused multiply-add in training).

No ``from __future__ import annotations`` here: TorchScript reads the signature annotations as real types.
"""
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .base import AttnState
from .fused import batch_norm_for_gating, gated_conv, gated_residual, hook_safe, use_fused_path

__all__ = ['BridgeModule', 'GateModule', 'LayerModule', 'gated_merge', 'module_call', 'staged_merge']


class _LayerModule(nn.Module):
    """The gated layer and the consumer conv as TorchScript sees them: ``forward`` as ``nn.BatchNorm2d`` and
    ``nn.Conv2d`` declare it (TorchScript passes a module to a function only through an interface)."""

    def forward(self, input: Tensor) -> Tensor:
        pass


class _GateModule(nn.Module):
    """A gate-level attention module as TorchScript sees it."""

    def forward(self, x: Tensor) -> Tensor:
        pass


class _BridgeModule(nn.Module):
    """A block-level (bridge) attention module as TorchScript sees it."""

    def forward(self, inner: list[Tensor], x: Tensor) -> Tensor:
        pass


with warnings.catch_warnings():  # torch.jit.interface announces its deprecation at every use, import time here
    warnings.simplefilter('ignore', FutureWarning)
    LayerModule = torch.jit.interface(_LayerModule)
    GateModule = torch.jit.interface(_GateModule)
    BridgeModule = torch.jit.interface(_BridgeModule)


def gated_merge(
        norm: LayerModule | None,
        z: Tensor,
        shortcut: Tensor | None = None,
        attn: GateModule | None = None,
        bridge: BridgeModule | None = None,
        inner: list[Tensor] | None = None,
        relu: bool = False,
        consumer: LayerModule | None = None,
) -> Tensor:
    """``relu?(gate(norm(z)) + shortcut)``, or ``consumer(gate(norm(z)))``: the tail of every gated block.

    A block passes its attention as ``attn`` (gate level) or ``bridge`` (block level; TorchScript types the two
    calls apart), the other one ``None``.

    Args:
        norm: the layer whose output is gated (a BatchNorm2d gets the lean recomputation), called on ``z``;
            ``None``: ``z`` itself is gated.
        z: the input of ``norm``.
        shortcut: added after gating (in place, as torchvision's blocks), or ``None``.
        attn: gate-level attention, ``attn(y)``, or ``None``.
        bridge: block-level attention, ``bridge(inner, y)``, or ``None``.
        inner: the pooled inner features ``bridge`` takes.
        relu: end with a ReLU (post-activation blocks).
        consumer: a conv that takes the gated map instead of a residual merge (MobileNetV2's hidden-width gate,
            RegNet-Y's gate before conv3): the result is ``consumer(gated map)``; ``shortcut`` and ``relu`` unused.
    """
    if torch.jit.is_scripting():  # the plain module calls
        y = z if norm is None else norm.forward(z)
        if attn is not None:
            y = attn.forward(y)
        if bridge is not None:
            y = bridge.forward(torch.jit.annotate(list[Tensor], []) if inner is None else inner, y)
        if consumer is not None:
            return consumer.forward(y)
        return _merge(y, shortcut, relu)
    if bridge is not None:
        return _gate(norm, z, shortcut, bridge, 'block', inner, None, relu, consumer, True)[0]
    return _gate(norm, z, shortcut, attn, 'gate', None, None, relu, consumer, True)[0]


def staged_merge(
        norm: Any, z: Tensor, shortcut: Tensor | None, attn: Any, state: AttnState | None, *,
        relu: bool = False, fused: bool = True,
) -> tuple[Tensor, AttnState]:
    """:func:`gated_merge` with a stage-level unit shared by a stage's blocks: ``attn(norm(z), state)`` gates, and
    the unit's next state comes back with the merged output. ``fused=False`` keeps the module calls (activation
    checkpointing; raw ScriptModules of a scripted model, which this Python call then receives)."""
    return _gate(norm, z, shortcut, attn, 'stage', None, state, relu, None, fused)


def module_call(module: Any) -> Any:
    """``module`` itself (hooks run), or its ``forward`` when a Python call inside a scripted model receives the raw
    ``torch._C.ScriptModule``, which is not callable."""
    return module if isinstance(module, nn.Module) else module.forward


def _merge(y: Tensor, shortcut: Tensor | None, relu: bool) -> Tensor:
    if shortcut is not None:
        y += shortcut  # in place, as torchvision: nothing keeps the branch output for backward
    return y.relu_() if relu else y


def _gate(norm: Any, z: Tensor, shortcut: Tensor | None, attn: Any, level: str, inner: list[Tensor] | None,
          state: AttnState | None, relu: bool, consumer: Any, fused: bool) -> tuple[Tensor, AttnState | None]:
    """The eager gated merge for an attention of ``level`` (see the module docstring); the decision is taken once,
    here."""
    if attn is None:
        y = z if norm is None else module_call(norm)(z)
        return (_merge(y, shortcut, relu) if consumer is None else consumer(y)), state
    if not (fused and use_fused_path(attn, consumer)):  # the module calls: tracing, export, hooks see them
        y = z if norm is None else module_call(norm)(z)
        if level == 'stage':
            y, state = module_call(attn)(y, state)
        else:
            y = attn(inner, y) if level == 'block' else attn(y)
        if consumer is not None:
            return consumer(y), state
        if shortcut is not None or relu:  # the in-place merge would change the output the hooks have just seen
            y = hook_safe(y, attn)
        return _merge(y, shortcut, relu), state
    y, rec = (z, None) if norm is None else batch_norm_for_gating(norm, z)
    if level == 'stage':
        a, state = attn.gate(y, state)
        gates: tuple[Tensor, ...] = (a,)
    elif level == 'block':
        gates = (attn.gate(inner, y),)
    elif attn.merge_in_place and not torch.is_grad_enabled() and (consumer is None or norm is not None):
        # inference: the gate applied in y's memory (CBAM also reuses y * a_c); a hook on norm keeps its own copy
        y = attn.forward_inplace(y if norm is None else hook_safe(y, norm))
        return (_merge(y, shortcut, relu) if consumer is None else consumer(y)), state
    else:
        gates = attn.gate_factors(y, rec)
    if consumer is not None:  # the gated map is not kept: the conv's backward recomputes it from y
        return gated_conv(y, gates, consumer), state
    return gated_residual(y, gates, shortcut, relu=relu, recompute=rec, inplace=attn.merge_in_place), state
