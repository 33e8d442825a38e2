"""DDPM training and DDIM sampling for the diffusion demo's :class:`~plugattn.demos.diffusion.unet.DiffusionUNet`.

Papers: "Denoising Diffusion Probabilistic Models", Ho, Jain, Abbeel, NeurIPS 2020, arXiv:2006.11239 (linear beta
schedule 1e-4 .. 0.02 over T = 1000 steps, the simple epsilon-prediction MSE loss); "Denoising Diffusion Implicit
Models", Song, Meng, Ermon, ICLR 2021, arXiv:2010.02502 (deterministic eta = 0 sampling on a strided subset of the
steps, which keeps sampling fast on a CPU).

Differences from the reference: a short run (a few hundred steps, AdamW at 1e-3 after a linear warm-up, gradient
clipping at 1) instead of DDPM's 800k steps at 2e-4; DDPM samples from an EMA of the weights (decay 0.9999), which is
optional here (``ema_decay``) and off by default: over a few hundred steps an EMA lags behind the fast-improving
weights and samples worse. The predicted x0 is clipped to [-1, 1] at every sampling step (as DDPM's sampler).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...engine.ema import ModelEma

__all__ = ['DiffusionHistory', 'GaussianDiffusion', 'infinite_batches', 'train_diffusion']


class GaussianDiffusion:
    """The DDPM forward process and its epsilon-prediction loss, with DDIM sampling.

    Args:
        num_steps: diffusion steps T.
        beta_start: first beta of the linear schedule.
        beta_end: last beta.
    """

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        if num_steps < 2:
            raise ValueError(f'num_steps must be >= 2, got {num_steps}')
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        self.num_steps = num_steps
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    def _coef(self, t: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alphas_cumprod.to(t.device)[t].to(ref.dtype).reshape(-1, *([1] * (ref.ndim - 1)))
        return a.sqrt(), (1.0 - a).sqrt()

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``."""
        s, n = self._coef(t, x0)
        return s * x0 + n * noise

    def loss(self, model: nn.Module, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """DDPM's simple loss: MSE between the true and the predicted noise at uniformly drawn steps."""
        t = torch.randint(0, self.num_steps, (x0.shape[0],), generator=generator, device='cpu').to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device='cpu').to(x0.device)
        return F.mse_loss(model(self.q_sample(x0, t, noise), t), noise)

    @torch.no_grad()
    def ddim_sample(
            self,
            model: nn.Module,
            shape: tuple[int, ...],
            steps: int = 50,
            generator: torch.Generator | None = None,
            device: torch.device | str = 'cpu',
    ) -> Tensor:
        """Deterministic DDIM (eta = 0) samples in [-1, 1] from ``steps`` evenly spaced diffusion steps.

        Args:
            model: noise predictor ``model(x_t, t)`` (put in eval mode here, mode restored afterwards).
            shape: ``(B, C, H, W)`` of the samples.
            steps: sampling steps (<= T).
            generator: source of the initial noise.
            device: device of the samples.
        """
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f'sampling steps must be in [1, {self.num_steps}], got {steps}')
        was_training = model.training
        model.eval()
        ts = torch.linspace(self.num_steps - 1, 0, steps).round().long().tolist()
        ac = self.alphas_cumprod
        x = torch.randn(shape, generator=generator).to(device)
        for i, t in enumerate(ts):
            a_t = float(ac[t])
            a_prev = float(ac[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            eps = model(x, torch.full((shape[0],), t, device=device, dtype=torch.long))
            x0 = ((x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)).clamp(-1.0, 1.0)
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1.0 - a_t)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps
        model.train(was_training)
        return x.clamp(-1.0, 1.0)


@dataclass
class DiffusionHistory:
    """What a training run measured.

    Attributes:
        losses: training loss of every step.
        seconds: wall time of the training loop.
        ema: EMA copy of the model when ``ema_decay`` was given, else ``None``.
    """

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    ema: nn.Module | None = None

    def window_means(self, window: int) -> list[tuple[int, float]]:
        """``(last step, mean loss)`` over consecutive windows of ``window`` steps (the last one may be shorter)."""
        out = []
        for start in range(0, len(self.losses), window):
            chunk = self.losses[start:start + window]
            out.append((start + len(chunk), sum(chunk) / len(chunk)))
        return out


def infinite_batches(loader: Iterable, transform: Callable[[Tensor], Tensor]) -> Iterator[Tensor]:
    """Images of ``loader``'s ``(images, labels)`` batches through ``transform``, epoch after epoch."""
    epoch = 0
    while True:
        if hasattr(loader, 'set_epoch'):
            loader.set_epoch(epoch)
        for images, _ in loader:
            yield transform(images)
        epoch += 1


def train_diffusion(
        model: nn.Module,
        batches: Iterator[Tensor],
        steps: int,
        *,
        diffusion: GaussianDiffusion | None = None,
        lr: float = 1e-3,
        warmup: int = 20,
        ema_decay: float | None = None,
        seed: int = 0,
        log_every: int = 25,
        log: Callable[[str], None] | None = print,
) -> DiffusionHistory:
    """Train a noise predictor for ``steps`` steps with AdamW and return the per-step losses.

    Args:
        model: noise predictor ``model(x_t, t)``.
        batches: iterator of images in [-1, 1].
        steps: optimisation steps.
        diffusion: the forward process (default: DDPM's linear schedule, T = 1000).
        lr: peak learning rate (linear warm-up, then constant).
        warmup: warm-up steps.
        ema_decay: decay of an EMA copy of the weights and buffers (``history.ema``, the engine's
            :class:`~plugattn.engine.ema.ModelEma`); ``None`` keeps none.
        seed: seed of the step and noise draws.
        log_every: print the mean loss of every ``log_every`` steps (0: never).
        log: where the lines go.
    """
    if steps < 1:
        raise ValueError(f'steps must be >= 1, got {steps}')
    diffusion = diffusion or GaussianDiffusion()
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ema = ModelEma(model, ema_decay) if ema_decay is not None else None
    history = DiffusionHistory(ema=ema.module if ema is not None else None)
    model.train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g['lr'] = lr * min(1.0, step / max(1, warmup))
        loss = diffusion.loss(model, next(batches), generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema.update(model)
        history.losses.append(float(loss.detach()))
        if log is not None and log_every and (step % log_every == 0 or step == steps):
            recent = history.losses[-log_every:]
            log(f'step {step:>5}/{steps}  loss {sum(recent) / len(recent):.4f}  '
                f'({time.perf_counter() - start:.1f} s)')
    history.seconds = time.perf_counter() - start
    return history
