"""Accuracy, parameter and MAC counting."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ['count_macs', 'count_params', 'topk_correct']


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at the class count)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target.reshape(-1, 1))
    return [int(hit[:, :min(k, maxk)].any(dim=1).sum()) for k in ks]


def count_params(model: nn.Module, trainable_only: bool = False, attention_only: bool = False) -> int:
    """Number of parameters, each shared parameter counted once.

    Args:
        model: The model.
        trainable_only: Count only parameters with ``requires_grad``.
        attention_only: Count only the parameters inside the model's attention modules
            (``model.attention_modules()``; 0 for a model without that method).

    Returns:
        The count.
    """
    if attention_only:
        modules = model.attention_modules().values() if hasattr(model, 'attention_modules') else ()
        params = {id(p): p for m in modules for p in m.parameters()}.values()
    else:
        params = model.parameters()
    return sum(p.numel() for p in params if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int], device: torch.device | str = 'cpu') -> int:
    """Multiply-accumulates of one forward pass at batch 1 in eval mode (``FlopCounterMode`` FLOPs / 2).

    Only convolutions, linear layers and matrix products are counted (what the papers call FLOPs); norms, pooling,
    activations and the attention gating multiplies are not. Transformer attention runs as explicit matmuls here
    (:func:`~plugattn.layers.token.explicit_attention`): the counter does not see the fused kernel. The model's
    train/eval mode is restored afterwards.

    Args:
        model: The model (unwrapped).
        input_size: ``(C, H, W)``.
        device: Device of the dummy input (the model's).

    Returns:
        MACs as an integer.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ..layers.token import explicit_attention

    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_size, device=device)
        with FlopCounterMode(display=False) as counter, explicit_attention():  # fused attention is not counted
            model(x)
        return int(counter.get_total_flops()) // 2
    finally:
        model.train(was_training)
