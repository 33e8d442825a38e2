"""Diffusion UNet with one DIA unit per resolution level, the DDPM/DDIM maths, and ``plugattn diffusion-demo``."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from plugattn.cli import main
from plugattn.demos.diffusion.ddpm import GaussianDiffusion, train_diffusion
from plugattn.demos.diffusion.unet import DiffusionUNet, timestep_embedding


def dia_params(c: int, r: int = 4) -> int:
    m = c // r
    return 2 * (c * m + m + m * 4 * c + 4 * c)


# --------------------------------------------------------------------------------------------- the UNet


def test_unet_shapes_and_dia_parameters():
    torch.manual_seed(0)
    plain, dia = DiffusionUNet(), DiffusionUNet(attn='dia')
    n_plain = sum(p.numel() for p in plain.parameters())
    n_dia = sum(p.numel() for p in dia.parameters())
    assert plain.attention_modules() == {} and plain.level_attn is None
    assert list(dia.attention_modules()) == ['level_attn.0', 'level_attn.1', 'level_attn.2']
    assert [u.channels for u in dia.level_attn] == [32, 64, 64] and all(u.reduction == 4 for u in dia.level_attn)
    assert n_dia - n_plain == dia_params(32) + 2 * dia_params(64) == 24_400
    assert n_plain == 1_623_169
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 500, 999])
    for model in (plain, dia):
        out = model(x, t)
        assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.count_nonzero(plain(x, t)) == 0  # DDPM zero-initialises the output conv


def test_dia_unit_per_level_state_carried_within_level():
    torch.manual_seed(0)
    model = DiffusionUNet(attn='dia').eval()
    calls = []
    for k, unit in enumerate(model.level_attn):
        unit.register_forward_pre_hook(lambda m, args, k=k: calls.append((k, args[1] is None, args[0].shape[-1])))
    with torch.no_grad():
        ref = model(torch.randn(2, 1, 28, 28), torch.tensor([10, 900]))
    # encoder (2 ResBlocks per level), middle (2, lowest level), decoder (3 per level); state zero at each first call
    order = [0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 0, 0, 0]
    first = {k: order.index(k) for k in range(3)}
    size = {0: 28, 1: 14, 2: 7}
    assert calls == [(k, i == first[k], size[k]) for i, k in enumerate(order)]
    assert torch.isfinite(ref).all()


def test_dia_changes_the_function():
    """Same weights apart from the units: the DIA gates (in (0, 1)) change the output once the branches are non-zero."""
    torch.manual_seed(0)
    plain, dia = DiffusionUNet(dropout=0.0), DiffusionUNet(dropout=0.0, attn='dia')
    result = dia.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys and all(k.startswith('level_attn.') for k in result.missing_keys)
    for model in (plain, dia):
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                torch.manual_seed(1)
                nn.init.normal_(m.weight, std=0.05)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 700])
    with torch.no_grad():
        a, b = plain.eval()(x, t), dia.eval()(x, t)
    assert torch.isfinite(b).all() and not torch.allclose(a, b)


def test_errors():
    with pytest.raises(ValueError, match='stage-level attention'):
        DiffusionUNet(attn='bav2')
    with pytest.raises(ValueError, match='attn_levels'):
        DiffusionUNet(attn_levels=(3,))
    with pytest.raises(ValueError, match='GroupNorm with 8 groups cannot take 12 channels'):
        DiffusionUNet(base_channels=12)


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 32)
    assert emb.shape == (3, 32)
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(16), torch.ones(16)]))
    torch.testing.assert_close(emb[1, 0], torch.tensor(math.sin(1.0)))  # the first frequency is 1
    torch.testing.assert_close(emb[2, 15], torch.tensor(math.sin(999 * 1e-4)), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------- DDPM / DDIM


def test_schedule_and_forward_process():
    d = GaussianDiffusion()
    assert d.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4)
    assert d.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)  # DDPM's linear schedule
    x0 = torch.full((4000, 1, 1, 1), 0.5)
    noise = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    xt = d.q_sample(x0, torch.full((4000,), 300), noise)
    a = d.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(0.5 * math.sqrt(a), abs=0.03)
    assert xt.var().item() == pytest.approx(1 - a, rel=0.06)


def test_ddim_with_an_oracle_recovers_the_data():
    """With the true noise predicted (x0 known), deterministic DDIM lands on x0 from any start."""
    d = GaussianDiffusion()
    target = torch.linspace(-0.9, 0.9, 16).reshape(1, 1, 4, 4)

    class Oracle(nn.Module):
        def forward(self, x, t):
            a = d.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
            return (x - a.sqrt() * target) / (1 - a).sqrt()

    out = d.ddim_sample(Oracle(), (3, 1, 4, 4), steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, target.expand(3, -1, -1, -1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match='sampling steps'):
        d.ddim_sample(Oracle(), (1, 1, 4, 4), steps=0)


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    model = DiffusionUNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_levels=(1,), dropout=0.0,
                          attn='dia')
    base = torch.zeros(1, 1, 8, 8)
    base[..., 2:6, 2:6] = 1.0
    batches = iter(lambda: base.expand(16, -1, -1, -1) * 2 - 1, None)
    history = train_diffusion(model, batches, 60, lr=3e-3, warmup=5, ema_decay=0.9, log=None)
    first, last = sum(history.losses[:10]) / 10, sum(history.losses[-10:]) / 10
    assert len(history.losses) == 60 and first > 0.5 and last < 0.5 * first
    assert history.window_means(25) == [(25, pytest.approx(sum(history.losses[:25]) / 25)),
                                        (50, pytest.approx(sum(history.losses[25:50]) / 25)),
                                        (60, pytest.approx(sum(history.losses[50:]) / 10))]
    ema_w, w = history.ema.conv_in.weight, model.conv_in.weight
    assert not torch.equal(ema_w, w) and not ema_w.requires_grad


# --------------------------------------------------------------------------------------------- the CLI


def test_diffusion_demo_cli(tmp_path: Path, capsys):
    out = tmp_path / 'dd'
    code = main(['diffusion-demo', '--data', 'fashion-mnist', '--steps', '6', '--batch-size', '8', '--base-channels',
                 '8', '--res-blocks', '1', '--sample-steps', '3', '--num-samples', '4', '--log-every', '3',
                 '--threads', '1', '--output', str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert 'DIA-UNet' in text and 'step     3/6' in text and 'step     6/6' in text
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['steps'] == 6 and summary['dia'] is True
    assert summary['dia_params'] == dia_params(8) + 2 * dia_params(16)
    assert len(summary['loss_windows']) == 2
    rows = (out / 'losses.csv').read_text().splitlines()
    assert rows[0] == 'step,loss' and len(rows) == 7 and all(float(r.split(',')[1]) > 0 for r in rows[1:])
    from PIL import Image

    assert Image.open(out / 'samples.png').size == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)
    assert Image.open(out / 'loss.png').size[0] > 100
    from safetensors.torch import load_file

    assert any(k.startswith('level_attn.0.') for k in load_file(out / 'model.safetensors'))


def test_diffusion_demo_cli_no_dia_and_errors(tmp_path: Path, capsys):
    code = main(['diffusion-demo', '--no-dia', '--steps', '2', '--batch-size', '4', '--base-channels', '8',
                 '--res-blocks', '1', '--sample-steps', '2', '--num-samples', '1', '--threads', '1', '--json',
                 '--output', str(tmp_path / 'plain')])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary['dia'] is False and summary['dia_params'] == 0 and summary['model'] == 'UNet (no DIA)'
    code = main(['diffusion-demo', '--sample-steps', '2000', '--output', str(tmp_path / 'x')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count('\n') == 0
    assert err.startswith('plugattn: error: --sample-steps 2000 exceeds the 1000 diffusion steps; pass at most 1000')
