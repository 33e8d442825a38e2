"""Transformers run F.scaled_dot_product_attention; explicit matmuls only where MACs are counted, same outputs."""
from __future__ import annotations

import pytest
import torch

import plugattn
from plugattn.engine.metrics import count_macs
from plugattn.layers.token import dot_product_attention, explicit_attention

CASES = [  # name, kwargs, side: Swin at 96 px has shifted, padded windows (the mask path)
    ('swin_t', dict(img_size=96), 96),
    ('bav2_swin_t', dict(img_size=64, window_size=4), 64),
    ('deit_tiny', dict(img_size=32), 32),
    ('dia_deit_tiny', dict(img_size=32), 32),
    ('pvt_v1_tiny', dict(img_size=64), 64),
]


@pytest.mark.parametrize(('name', 'kwargs', 'side'), CASES)
def test_fused_and_explicit_attention_agree(name, kwargs, side):
    torch.manual_seed(0)
    model = plugattn.create_model(name, num_classes=7, **kwargs).eval()
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        fused = model(x)
        with explicit_attention():
            explicit = model(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-5)
    assert not torch.equal(fused, torch.zeros_like(fused))


def test_the_fused_kernel_runs_outside_the_switch(monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model = plugattn.create_model('deit_tiny', img_size=32, num_classes=3).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
        assert len(calls) == 12  # one per block
        with explicit_attention():
            model(torch.randn(1, 3, 32, 32))
    assert len(calls) == 12


def test_macs_count_the_attention_matmuls():
    """DeiT-Tiny at 224 px: 1.25 GMACs with the attention matmuls (2 * N^2 * C per block at N = 197, C = 192)."""
    model = plugattn.create_model('deit_tiny')
    macs = count_macs(model, (3, 224, 224))
    assert macs == 1_253_683_200  # unchanged by the fused path (README: 1.25)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    fused = int(counter.get_total_flops()) // 2
    assert macs - fused == 12 * 2 * 197 * 197 * 192  # what the counter misses when the kernel is fused


def test_dropout_on_the_weights_in_training_only():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    ref = dot_product_attention(q, k, v, scale=0.5)
    with explicit_attention():
        torch.testing.assert_close(dot_product_attention(q, k, v, scale=0.5), ref)
    torch.manual_seed(1)
    a = dot_product_attention(q, k, v, scale=0.5, dropout_p=0.5)
    assert not torch.allclose(a, ref)  # weights dropped (and rescaled) in training
