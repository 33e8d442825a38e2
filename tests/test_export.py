"""ONNX and TorchScript export: one model per attention type with dynamic batch and spatial size, outputs equal to
PyTorch at two input sizes, frozen-branch detection, and the ``plugattn export`` command."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

import plugattn
from plugattn.cli import main
from plugattn.export import export_model, verify_export
from plugattn.models import ResNet
from plugattn.models.resnet import BasicBlock

HAS_ONNX = all(importlib.util.find_spec(m) for m in ('onnx', 'onnxruntime'))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason='needs the optional onnx and onnxruntime packages')
pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated:FutureWarning')


def randomize_(model: nn.Module) -> nn.Module:
    """Random weights and BN statistics with O(1) outputs, so export errors are not hidden by tiny activations."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dtype.is_floating_point:
                scale = 1 / math.sqrt(t[0].numel()) if t.ndim > 1 else 0.2
                t.copy_(torch.randn(t.shape, generator=g) * scale + (1.0 if t.ndim == 1 and name.endswith('weight')
                                                                     else 0.0))
    return model.eval()


def tiny(attn: str | None) -> ResNet:
    widths = (32, 64) if attn == 'ela_t' else (16, 32)  # ELA-T's 32 GroupNorm groups need 32-wide stages
    return randomize_(ResNet(BasicBlock, (1, 1), widths=widths, stem='cifar', attn=attn, num_classes=10))


ATTNS = [None, *plugattn.list_attn()]


@needs_onnx
@pytest.mark.parametrize('attn', ATTNS, ids=str)
def test_onnx_dynamic_matches_pytorch_at_two_sizes(attn, tmp_path):
    import onnx

    result = export_model(tiny(attn), tmp_path / 'm.onnx', fmt='onnx', input_size=(3, 32, 32), exporter='legacy')
    assert [shape for shape, _ in result.checks] == [(2, 3, 32, 32), (3, 3, 48, 40)]
    assert all(err < 1e-4 for _, err in result.checks)
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 3, 'height', 'width']


@pytest.mark.parametrize('attn', ATTNS, ids=str)
def test_torchscript_trace_matches_pytorch_at_two_sizes(attn, tmp_path):
    model = tiny(attn)
    result = export_model(model, tmp_path / 'm.pt', fmt='torchscript', input_size=(3, 32, 32))
    assert result.method == 'trace' and [s for s, _ in result.checks] == [(2, 3, 32, 32), (3, 3, 48, 40)]
    loaded = torch.jit.load(str(result.path))
    x = torch.randn(1, 3, 40, 24)  # a third size and batch 1
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)


@needs_onnx
@pytest.mark.parametrize('name', ['ca_mobilenetv2', 'bav2_regnety_400mf'])
def test_mobile_and_regnet_export(name, tmp_path):
    model = randomize_(plugattn.create_model(name))
    result = export_model(model, tmp_path / 'm.onnx', fmt='onnx', input_size=(3, 64, 64), exporter='legacy')
    assert len(result.checks) == 2 and all(err < 1e-4 for _, err in result.checks)


@needs_onnx
def test_dynamo_exporter(tmp_path):
    pytest.importorskip('onnxscript')
    import onnx

    result = export_model(tiny('ca'), tmp_path / 'm.onnx', fmt='onnx', input_size=(3, 32, 32), exporter='dynamo',
                          metadata={'classes': '["a"]'})
    assert result.method == 'dynamo' and len(result.checks) == 2 and all(err < 1e-4 for _, err in result.checks)
    proto = onnx.load(str(result.path))
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*proto.graph.input,
                                                                                          *proto.graph.output)]
    assert dims == [['batch', 3, 'height', 'width'], ['batch', 10]]  # named axes, not s0, s77, ...
    assert {p.key: p.value for p in proto.metadata_props}['classes'] == '["a"]'


@needs_onnx
def test_static_onnx_rejects_other_sizes(tmp_path):
    model = tiny('se')
    result = export_model(model, tmp_path / 'm.onnx', fmt='onnx', input_size=(3, 32, 32), dynamic=False,
                          batch_size=1, exporter='legacy')
    assert [s for s, _ in result.checks] == [(1, 3, 32, 32)]
    with pytest.raises(ValueError, match=r'fails on input \(1, 3, 48, 48\)'):
        verify_export(result.path, model, [(1, 3, 48, 48)], fmt='onnx')


class _ShapeBranch(nn.Module):
    """A Python branch on the input size: a trace freezes it at the export size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[-2] > 40 else x


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')
def test_frozen_trace_branch_is_detected(tmp_path):
    with pytest.raises(ValueError, match=r'differs from PyTorch on input \(3, 3, 48, 40\)'):
        export_model(_ShapeBranch(), tmp_path / 'm.pt', fmt='torchscript', input_size=(3, 32, 32))


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="format must be 'onnx' or 'torchscript'"):
        export_model(tiny(None), tmp_path / 'm.x', fmt='tflite')
    with pytest.raises(ValueError, match='batch_size must be >= 2'):
        export_model(tiny(None), tmp_path / 'm.pt', fmt='torchscript', input_size=(3, 32, 32), batch_size=1)


def test_cli_export_model_and_checkpoint(tmp_path, capsys):
    out = tmp_path / 'r20.pt'
    assert main(['export', '--model', 'bav2_resnet20', '--format', 'torchscript', '--output', str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and 'bav2_resnet20, torchscript via trace' in text and text.count('check  input') == 2

    from plugattn.engine import save_weights

    model = randomize_(plugattn.create_model('eca_resnet20', num_classes=5, in_chans=1))
    meta = {'model': 'eca_resnet20', 'model_kwargs': {'num_classes': 5, 'in_chans': 1}, 'data': {'image_size': 28}}
    save_weights(tmp_path / 'best.safetensors', model.state_dict(), meta)
    onnx_out = tmp_path / 'eca.onnx'
    args = ['export', '--checkpoint', str(tmp_path / 'best.safetensors'), '--format', 'onnx', '--dynamic',
            '--exporter', 'legacy', '--output', str(onnx_out)]
    if HAS_ONNX:
        assert main(args) == 0
        text = capsys.readouterr().out
        assert 'dynamic batch/height/width' in text
        assert 'input (2, 1, 28, 28)' in text and 'input (3, 1, 42, 36)' in text
        import onnxruntime as ort

        x = torch.randn(4, 1, 28, 28)
        got = ort.InferenceSession(str(onnx_out)).run(None, {'input': x.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-4)

    assert main(['export', '--model', 'resnet20', '--checkpoint', 'x', '--format', 'onnx']) == 2
    assert main(['export', '--model', 'no_such_model', '--format', 'torchscript']) == 2
    err = capsys.readouterr().err
    assert 'not allowed with argument --model' in err and "unknown model 'no_such_model'" in err
