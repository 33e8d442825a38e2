"""Mixed precision on the CPU: bfloat16 autocast training passes of the lean path against the plain formulation for
every attention on each CNN family, and the trainer's GradScaler path.

The families and the comparison are those of ``benchmarks/gpu_check.py`` (part a), which runs the same checks on CUDA
in float16 too. Tolerance: in bfloat16 (8 significant bits) the gradients of a train-mode BatchNorm network are
1e-2 to 3e-1 (norm-wise, relative) from the float32 ones, for the plain formulation as much as for the lean one, so
a fixed bound would either fail on rounding or pass anything; the lean pass must instead be at most twice as far
from float32 as the plain formulation under the same autocast, plus 1e-3, for the output, the input gradient and the
gradients of all parameters together. A wrong gradient formula is off by 100 % or more.
"""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    if 'gpu_check' not in sys.modules:
        spec = importlib.util.spec_from_file_location('gpu_check', ROOT / 'benchmarks' / 'gpu_check.py')
        module = importlib.util.module_from_spec(spec)
        sys.modules['gpu_check'] = module
        spec.loader.exec_module(module)
    return sys.modules['gpu_check']


gpu_check = _gpu_check()


@pytest.mark.parametrize('family', gpu_check.FAMILIES, ids=[f.name for f in gpu_check.FAMILIES])
def test_bfloat16_autocast_training_pass_matches_plain(family):
    checked = []
    for attn in gpu_check.ATTNS:
        torch.manual_seed(0)
        try:
            model = family.build(attn, True).train()
        except ValueError:  # not offered on this family (e.g. DIA on MobileNetV2, ELA-T's groups on narrow stages)
            continue
        x = torch.randn(8, 3, family.quick_px, family.quick_px, generator=torch.Generator().manual_seed(1))
        # float32 lean is the plain formulation up to summation order (tests/test_lean.py, float64), so it serves as
        # the precise reference here: bfloat16 errors are four orders of magnitude larger
        want = gpu_check.forward_backward(copy.deepcopy(model), x)
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        plain_model = gpu_check.plain_reference(model, x, torch.bfloat16)
        plain = gpu_check.relative_errors(gpu_check.forward_backward(plain_model, x), want)
        lean = gpu_check.relative_errors(gpu_check.forward_backward(copy.deepcopy(model), x, amp=torch.bfloat16), want)
        assert max(plain.values()) < 0.6, (attn, plain)  # the comparison itself is meaningful
        assert gpu_check.as_accurate(lean, plain, torch.bfloat16), (attn, lean, plain)
        checked.append(attn)
    assert len(checked) >= 7, checked


def test_plain_reference_runs_the_plain_formulation_under_autocast():
    """The adapter's bfloat16 copy gives bitwise what the patched plain forwards of tests/test_lean.py give."""
    from test_lean import reference_copy

    torch.manual_seed(0)
    model = gpu_check.FAMILIES[1].build('ca', True).train()
    x = torch.randn(8, 3, 32, 32)
    traced = gpu_check.forward_backward(gpu_check.plain_reference(model, x, torch.bfloat16), x)
    patched = gpu_check.forward_backward(reference_copy(model), x, amp=torch.bfloat16)
    lean = gpu_check.forward_backward(copy.deepcopy(model), x, amp=torch.bfloat16)
    for key in traced:
        assert torch.equal(traced[key], patched[key]), key
    assert not torch.equal(lean['input grad'], traced['input grad'])  # two formulations, not one path twice


def test_trainer_grad_scaler_path_runs_on_cpu(tmp_path, monkeypatch):
    """The trainer's scaled backward, unscale (gradient clipping), step and update, which float16 AMP uses on CUDA,
    run on the CPU with a GradScaler enabled over bfloat16 autocast; the scaler's state is saved for resume."""
    pytest.importorskip('sklearn')  # the digits dataset
    from plugattn.engine import load_state, resolve_config, train
    from plugattn.engine import trainer as trainer_module

    monkeypatch.setattr(trainer_module, 'amp_settings', lambda cfg, device: (True, torch.bfloat16, True))
    cfg = resolve_config('fashion-mnist', [
        ('data.name', 'digits'), ('model.name', 'se_resnet20'), ('train.batch_size', 128), ('train.epochs', 1),
        ('train.eval_batch_size', 360), ('train.threads', 1), ('train.amp', True), ('train.grad_clip', 1.0),
        ('train.log_interval', 10_000), ('output.dir', str(tmp_path)),
    ])
    result = train(cfg, progress=False, echo=lambda _line: None)
    assert result.finished and result.history[0]['top1'] > 20.0  # digits: 10 % at chance
    state = load_state(result.run_dir / 'last_state.pt')
    # no overflow at the initial scale, so every step's update grew the tracker by one
    assert state['step'] == 1437 // 128  # the last partial batch is dropped
    assert state['scaler']['scale'] == 2.0**16 and state['scaler']['_growth_tracker'] == state['step'], state['scaler']


@pytest.mark.parametrize('attn', ['ca', 'se', 'cbam', 'ela_b'])
def test_float16_autocast_hidden_width_gate_matches_plain(attn):
    """MobileNetV2's hidden-width gates run inside the projection conv's autograd node (gated_conv), whose backward
    gets float16 gradients for a float32 weight under autocast; float16 is CUDA's default AMP dtype."""
    torch.manual_seed(0)
    model = gpu_check.FAMILIES[-1].build(attn, True).train()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    want = gpu_check.forward_backward(copy.deepcopy(model), x)
    plain = gpu_check.relative_errors(
        gpu_check.forward_backward(gpu_check.plain_reference(model, x, torch.float16), x), want)
    lean = gpu_check.relative_errors(gpu_check.forward_backward(copy.deepcopy(model), x, amp=torch.float16), want)
    assert max(plain.values()) < 0.3, plain
    assert gpu_check.as_accurate(lean, plain, torch.float16), (lean, plain)
