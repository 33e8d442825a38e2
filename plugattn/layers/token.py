"""Token-layout building blocks shared by the transformer backbones (ViT/DeiT, Swin, PVT).

* :class:`Mlp` as timm builds it (same parameter names: ``fc1``, ``fc2``), with :meth:`Mlp.forward_with_hidden`
  exposing the post-activation hidden tokens that bridge attention bridges. Stochastic depth is torchvision's
  ``torchvision.ops.StochasticDepth(p, 'row')`` (timm's ``DropPath``: per-sample drop, survivors scaled by 1 / (1 - p)).
* :func:`tokens_to_map` / :func:`map_to_tokens`: ``(B, N, C) <-> (B, C, N, 1)`` views, so that every channel
  attention module of :mod:`plugattn.layers` (BAv1/BAv2, DIA, ...) runs on token sequences unchanged: the modules pool
  with a spatial mean over dims (2, 3), which on the ``(B, C, N, 1)`` view is the token mean, and their ``(B, C, 1, 1)``
  gate scales every token channel-wise. The same module classes therefore serve CNNs and transformers, with the same
  parameter names and counts and the same ``gate`` method for analysis.

The two maps are a ``transpose`` plus ``unsqueeze``/``squeeze``: no copy and no ``.view`` (export-safe).

* :func:`dot_product_attention`: the transformers' attention core, ``F.scaled_dot_product_attention`` (fused
  kernels where the device has them, as timm's ``fused_attn``), or explicit matmuls inside
  :func:`explicit_attention`, which MAC counting turns on: ``FlopCounterMode`` does not see fused attention on the
  CPU, while it counts the two matmuls of the explicit form.
"""
import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['Mlp', 'dot_product_attention', 'explicit_attention', 'map_to_tokens', 'tokens_to_map']

_explicit_depth = 0


@contextlib.contextmanager
def explicit_attention() -> Iterator[None]:
    """Run :func:`dot_product_attention` as explicit matmuls inside the block (e.g. to count its MACs)."""
    global _explicit_depth
    _explicit_depth += 1
    try:
        yield
    finally:
        _explicit_depth -= 1


def dot_product_attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        bias: Tensor | None = None,
        scale: float = 1.0,
        dropout_p: float = 0.0,
) -> Tensor:
    """``softmax(q k^T * scale + bias) v`` over heads ``(B, heads, N, d)``, with dropout ``dropout_p`` on the weights.

    Fused (``F.scaled_dot_product_attention``) unless inside :func:`explicit_attention`; the two agree to float
    rounding (tested). Callers pass their ``attn_drop.p`` in training and 0 in eval.
    """
    if not torch.jit.is_scripting() and _explicit():
        attn = (q * scale) @ k.transpose(-2, -1)
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(-1)
        return (F.dropout(attn, dropout_p) if dropout_p > 0.0 else attn) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


@torch.jit.unused
def _explicit() -> bool:
    return _explicit_depth > 0


def tokens_to_map(x: Tensor) -> Tensor:
    """``(B, N, C)`` tokens -> ``(B, C, N, 1)`` view whose mean over dims (2, 3) is the token mean."""
    return x.transpose(1, 2).unsqueeze(-1)


def map_to_tokens(x: Tensor) -> Tensor:
    """Inverse of :func:`tokens_to_map`: ``(B, C, N, 1)`` -> ``(B, N, C)``."""
    return x.squeeze(-1).transpose(1, 2)


class Mlp(nn.Module):
    """Transformer MLP: ``fc2(drop(act(fc1(x))))`` followed by dropout (timm's ``Mlp``, same keys).

    Args:
        in_features: input and output width.
        hidden_features: hidden width (``mlp_ratio * in_features``).
        act_layer: activation class.
        drop: dropout after the activation and after ``fc2``.
    """

    def __init__(
            self,
            in_features: int,
            hidden_features: int,
            act_layer: type[nn.Module] = nn.GELU,
            drop: float = 0.0,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Linear(in_features, hidden_features, **dd)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features, **dd)
        self.drop2 = nn.Dropout(drop)

    def forward_with_hidden(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The output and the post-activation hidden tokens (before dropout)."""
        hidden = self.act(self.fc1(x))
        return self.drop2(self.fc2(self.drop1(hidden))), hidden

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_hidden(x)[0]
