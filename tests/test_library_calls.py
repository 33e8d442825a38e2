"""Library calls in place of hand-written code: stochastic depth, soft-target CE, the EMA (buffers too)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation, StochasticDepth

import plugattn
from plugattn.demos.diffusion.ddpm import train_diffusion
from plugattn.engine.ema import ModelEma


def test_transformer_blocks_use_torchvisions_stochastic_depth():
    model = plugattn.create_model('deit_tiny', img_size=32, drop_path_rate=0.5)
    drop = model.blocks[-1].drop_path1
    assert isinstance(drop, StochasticDepth) and drop.p == 0.5 and drop.mode == 'row'
    assert isinstance(model.blocks[0].drop_path1, nn.Identity)  # rate 0 at the first block
    torch.manual_seed(0)
    x = torch.ones(64, 5, 3)
    y = drop.train()(x)
    per_sample = y.flatten(1)
    assert set(per_sample[:, 0].tolist()) == {0.0, 2.0}  # whole samples dropped, survivors scaled by 1 / (1 - p)
    assert torch.equal(per_sample, per_sample[:, :1].expand_as(per_sample))
    assert torch.equal(drop.eval()(x), x)


def test_mobilenetv2_convs_are_conv2d_norm_activation():
    model = plugattn.create_model('mobilenetv2', num_classes=10)
    assert isinstance(model.features[0], Conv2dNormActivation)
    assert isinstance(model.features[0][2], nn.ReLU6) and model.features[0][0].bias is None


def test_soft_target_cross_entropy_is_f_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 5), torch.softmax(torch.randn(6, 5), 1)
    manual = torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
    torch.testing.assert_close(F.cross_entropy(logits, target), manual)


def test_ema_averages_buffers_for_the_diffusion_demo_too():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 3, padding=1))

    class Noise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    torch.manual_seed(0)
    noise = Noise()
    start = noise.net[1].running_mean.clone()
    batches = iter(lambda: torch.randn(8, 1, 8, 8) + 3.0, None)
    history = train_diffusion(noise, batches, 5, lr=1e-2, warmup=1, ema_decay=0.5, log=None)
    ema_bn = history.ema.net[1]
    assert not torch.equal(ema_bn.running_mean, start)  # buffers are averaged (the old demo EMA skipped them)
    assert not torch.equal(ema_bn.running_mean, noise.net[1].running_mean)  # ... as an average, not a copy
    assert int(ema_bn.num_batches_tracked) == int(noise.net[1].num_batches_tracked) == 5


def test_model_ema_resume_counter_and_first_update():
    model = nn.Linear(2, 1)
    ema = ModelEma(model, decay=0.5)
    assert ema.updates == 0
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, model.weight - 1.0)  # averaged, not copied, at the first update
    again = ModelEma(model, decay=0.9, warmup=True)
    again.load_state_dict(ema.state_dict(), updates=7)
    assert again.updates == 7 and again.current_decay() == min(0.9, 8 / 17)
    assert list(ema.state_dict()) == ['weight', 'bias']  # the model's keys, no AveragedModel wrapper keys
