"""The three plug levels of plugattn's attention modules.

Every module in :mod:`plugattn.layers` belongs to exactly one level, and a backbone plugs it in at that level:

* **gate** (:class:`GateAttention`): ``module(channels, **kw)(x) -> x * gate(x)``. The module sees one tensor and
  returns a tensor of the same shape (SE, ECA, CBAM, CA, ELA). Backbones put it on the residual-branch output,
  before the residual addition.
* **block** (:class:`BlockAttention`): bridge attention (BAv1, BAv2). The block pools the output of every conv it
  runs and hands the pooled inner features plus its last conv output ``x`` to the module, which returns
  ``x * gate(inner, x)``, again before the residual addition.
* **stage** (:class:`StageAttention`): dense-and-implicit attention (DIA). One unit is shared by every block of a
  stage and carries a recurrent state from block to block; the stage resets the state to zero when it starts.

All three expose their gate values without applying them (``gate``), so analysis code can read what a module
computes without hooking into its internals.
"""

import torch
from torch import Tensor, nn

from ..errors import PlugattnError
from ._typecheck import checked_init
from .fused import BNRecompute, gated_residual, mean_hw

__all__ = ['BlockAttention', 'GateAttention', 'StageAttention', 'StripGateAttention', 'check_train_batch']

AttnState = tuple[Tensor, Tensor]


def check_train_batch(module: nn.Module, batch_size: int) -> None:
    """Raise if a module with BatchNorm1d on pooled vectors would train on a single sample.

    BatchNorm1d computes per-channel statistics over the batch; with one sample PyTorch fails deep inside the
    norm with an unhelpful message, so the attention modules that contain one check first (specs D10).
    """
    if not isinstance(batch_size, int):  # a symbolic size (torch.fx tracing): nothing to check
        return
    # frozen (plugattn.freeze_bn) or batch-size-free norms train at batch 1
    if batch_size == 1 and any(isinstance(m, nn.BatchNorm1d) and m.training for m in module.modules()):
        raise PlugattnError(
            f'{type(module).__name__} contains BatchNorm1d over pooled vectors and cannot train at batch size 1: '
            'use a batch size of at least 2 per device in train mode, call model.eval() for inference, or freeze '
            "the norms for one sample per device (plugattn.freeze_bn(model); or norm_layer='layernorm', ours)."
        )


class GateAttention(nn.Module):
    """Base class of the *gate* level: ``forward(x) = x * gate(x)``.

    Subclasses take the number of channels as their first positional argument and implement :meth:`gate`, which
    returns the multiplicative gate broadcastable to ``x`` (``(B, C, 1, 1)`` for channel gates, ``(B, C, H, W)``
    or ``(B, 1, H, W)`` for the spatial ones).
    """

    channels: int
    # The fused residual merge may write the gated output over the gated tensor: set True only when no autograd node
    # of the gate keeps that tensor (a gate that only pools it; one that convolves it keeps it and must stay False).
    merge_in_place = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        checked_init(cls)  # constructor arguments are type-checked, with messages naming the parameter

    def gate(self, x: Tensor) -> Tensor:
        """Gate values for ``x``, not yet applied."""
        raise NotImplementedError

    def gate_factors(self, x: Tensor, recompute: BNRecompute | None = None) -> tuple[Tensor, ...]:
        """The gate as one or two factors applied in order (``x * a1 * a2``), for the fused residual merge.

        Modules whose gate is a product (CA, ELA: row x column; CBAM: channel x spatial) return the factors, so
        the product is never materialised at full size. ``recompute`` describes ``x`` as a BatchNorm output
        (:func:`~plugattn.layers.fused.batch_norm_for_gating`) for modules whose gate itself needs ``x`` in backward.
        """
        return (self.gate(x),)

    def forward_inplace(self, x: Tensor) -> Tensor:
        """``forward(x)`` computed in ``x``'s memory, for inference (no autograd): the fused merge uses it when
        :attr:`merge_in_place` is set. ``x`` must not be needed afterwards."""
        for a in self.gate_factors(x):
            x = x.mul_(a)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class StripGateAttention(GateAttention):
    """A gate that is the product of a row and a column gate (CA, ELA): ``x * a_h * a_w``.

    Subclasses implement :meth:`gate_hw`, returning ``(B, C, H, 1)`` and ``(B, C, 1, W)`` gates. The two factors
    are applied one after the other (the fused merge and the lean training node never build their full-size
    product), and in place at inference: the gates only pool ``x``.
    """

    merge_in_place = True

    def gate_hw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The row and column gates, ``(B, C, H, 1)`` and ``(B, C, 1, W)``."""
        raise NotImplementedError

    def gate(self, x: Tensor) -> Tensor:
        a_h, a_w = self.gate_hw(x)
        return a_h * a_w

    def gate_factors(self, x: Tensor, recompute: BNRecompute | None = None) -> tuple[Tensor, ...]:
        return self.gate_hw(x)

    def forward(self, x: Tensor) -> Tensor:
        a_h, a_w = self.gate_hw(x)
        if torch.jit.is_scripting():  # TorchScript cannot compile the autograd.Function
            return x * a_h * a_w
        return self._lean_gating(x, a_h, a_w)

    @torch.jit.unused
    def _lean_gating(self, x: Tensor, a_h: Tensor, a_w: Tensor) -> Tensor:
        # x * a_h * a_w, without keeping the full-size x * a_h for backward
        return gated_residual(x, (a_h, a_w))


class BlockAttention(nn.Module):
    """Base class of the *block* level (bridge attention).

    ``forward(inner, x)`` receives ``inner``, the global-average-pooled outputs of the block's earlier convs as
    ``(B, C_i)`` tensors in the order the block computes them, and ``x``, the block's last conv output
    ``(B, C, H, W)`` (pre-addition). The module pools ``x`` itself, so the bridged features are
    ``inner + [GAP(x)]``, the current feature last, and returns ``x * gate``.
    """

    channels: int
    merge_in_place = False  # as GateAttention.merge_in_place
    # ``inner_channels`` (a tuple of ints) is set by subclasses; not annotated here because TorchScript cannot type
    # variable-length tuples.

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        checked_init(cls)  # constructor arguments are type-checked, with messages naming the parameter

    def gate(self, inner: list[Tensor], x: Tensor) -> Tensor:
        """Channel gate ``(B, C, 1, 1)`` for the block, not yet applied."""
        raise NotImplementedError

    def forward(self, inner: list[Tensor], x: Tensor) -> Tensor:
        return x * self.gate(inner, x)


class StageAttention(nn.Module):
    """Base class of the *stage* level (DIA): one unit shared by all blocks of a stage.

    ``forward(x, state)`` gates a block's residual-branch output ``x`` and returns ``(x * gate, new_state)``.
    ``state`` is ``None`` at the first block of a stage; the stage passes the returned state to its next block and
    never across stages.
    """

    channels: int
    merge_in_place = False  # as GateAttention.merge_in_place

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        checked_init(cls)  # constructor arguments are type-checked, with messages naming the parameter

    def gate(self, x: Tensor, state: AttnState | None) -> tuple[Tensor, AttnState]:
        """Gate ``(B, C, 1, 1)`` and the next state, the gate not yet applied."""
        raise NotImplementedError

    def forward(self, x: Tensor, state: AttnState | None = None) -> tuple[Tensor, AttnState]:
        a, state = self.gate(x, state)
        return x * a, state


def pooled(x: Tensor) -> Tensor:
    """Global average pool ``(B, C, H, W) -> (B, C)``: a mean in traced graphs (export-safe), the same numbers as a
    sum over ``H * W`` in eager mode (see :func:`~plugattn.layers.fused.mean_hw`)."""
    return mean_hw(x)


def as_channel_gate(a: Tensor) -> Tensor:
    """``(B, C) -> (B, C, 1, 1)``."""
    return a.reshape(a.shape[0], a.shape[1], 1, 1)


def zeros_state(x: Tensor, channels: int) -> AttnState:
    """A zero ``(h, c)`` state on ``x``'s device and dtype."""
    h = x.new_zeros((x.shape[0], channels))
    return h, torch.zeros_like(h)
