"""The diffusion demo run: train a small DDPM UNet (with or without DIA) on a data set, sample, write the results.

:func:`run_demo` is what ``plugattn diffusion-demo`` runs: images of a plugattn data set rescaled to [-1, 1], a
:class:`~.unet.DiffusionUNet` trained with :func:`~.ddpm.train_diffusion`, DDIM samples, and the files
``losses.csv``, ``loss.png``, ``samples.png``, ``model.safetensors`` and ``summary.json``.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...engine.metrics import count_params
from ...errors import PlugattnError
from .ddpm import GaussianDiffusion, infinite_batches, train_diffusion
from .unet import DiffusionUNet

__all__ = ['run_demo']


def run_demo(
        *,
        data: str = 'fashion-mnist',
        data_dir: str | Path | None = None,
        steps: int = 300,
        dia: bool = True,
        output: str | Path = 'diffusion-demo',
        batch_size: int = 32,
        seed: int = 0,
        lr: float = 1e-3,
        base_channels: int = 16,
        res_blocks: int = 2,
        dropout: float = 0.0,
        sample_steps: int = 25,
        num_samples: int = 64,
        log_every: int = 25,
        diffusion: GaussianDiffusion | None = None,
        log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, sample and write the demo's files; returns the summary (also written as ``summary.json``).

    Args:
        data: plugattn data set name.
        data_dir: Folder searched first for the data files.
        steps: Training steps.
        dia: One DIA unit per resolution level; False trains the plain UNet baseline.
        output: Output folder (created).
        batch_size: Training batch size.
        seed: Seed of the weights, the data order and every draw.
        lr: AdamW learning rate.
        base_channels: UNet width of the first level.
        res_blocks: ResBlocks per encoder level.
        dropout: ResBlock dropout.
        sample_steps: DDIM sampling steps.
        num_samples: Images in the sample grid.
        log_every: Log the mean loss every this many steps.
        diffusion: The forward process (default: DDPM's, T = 1000).
        log: Where the progress lines go.

    Raises:
        PlugattnError: Image sides that the UNet cannot halve twice (and the data layer's errors).
    """
    from ...data import build_loader

    diffusion = diffusion or GaussianDiffusion()
    torch.manual_seed(seed)
    loader = build_loader(data, 'train', batch_size=batch_size, train=True, data_dir=data_dir, seed=seed)
    info = loader.info
    h, w = info.image_size
    if h % 4 or w % 4:
        raise PlugattnError(f'{info.name} images are {h}x{w}; the UNet halves the resolution twice',
                            'use a data set whose image sides are multiples of 4')
    mean = torch.tensor(info.mean).reshape(1, -1, 1, 1)
    std = torch.tensor(info.std).reshape(1, -1, 1, 1)

    def to_unit_range(images: Tensor) -> Tensor:
        return (images * std + mean) * 2.0 - 1.0  # the loader normalises; DDPM wants [-1, 1]

    model = DiffusionUNet(in_chans=info.in_chans, base_channels=base_channels, num_res_blocks=res_blocks,
                          dropout=dropout, attn='dia' if dia else None)
    params, attn_params = count_params(model), count_params(model, attention_only=True)
    label = 'DIA-UNet' if dia else 'UNet (no DIA)'
    log(f'{label}: {params:,} parameters ({attn_params:,} in DIA units); {info.name} {h}x{w}, '
        f'{steps} steps of batch {batch_size}, {torch.get_num_threads()} CPU threads')
    history = train_diffusion(model, infinite_batches(loader, to_unit_range), steps, diffusion=diffusion, lr=lr,
                              seed=seed, log_every=log_every, log=log)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed + 1)
    samples = diffusion.ddim_sample(model, (num_samples, info.in_chans, h, w), sample_steps, gen)
    sample_seconds = time.perf_counter() - t0

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = _write_outputs(out, history.losses, samples, model, log_every, label, dia, log)
    window = min(log_every, len(history.losses))
    summary = dict(
        model=label, dia=dia, params=params, dia_params=attn_params, data=info.name, steps=steps,
        batch_size=batch_size, seed=seed, threads=torch.get_num_threads(),
        train_seconds=round(history.seconds, 1), sample_seconds=round(sample_seconds, 1),
        loss_first=sum(history.losses[:window]) / window, loss_last=sum(history.losses[-window:]) / window,
        loss_window=window, loss_windows=history.window_means(log_every), files=files,
    )
    (out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    return summary


def _write_outputs(
        out: Path,
        losses: list[float],
        samples: Tensor,
        model: nn.Module,
        window: int,
        label: str,
        dia: bool,
        log: Callable[[str], None],
) -> dict[str, str]:
    """Loss CSV and curve, sample grid and weights; returns the paths written by kind."""
    from safetensors.torch import save_file
    from torchvision.utils import save_image

    files = {}
    csv = out / 'losses.csv'
    csv.write_text('step,loss\n' + ''.join(f'{i + 1},{v:.6f}\n' for i, v in enumerate(losses)))
    files['losses'] = str(csv)
    grid = out / 'samples.png'
    save_image((samples + 1.0) / 2.0, grid, nrow=math.ceil(math.sqrt(samples.shape[0])), padding=2, pad_value=1.0)
    files['samples'] = str(grid)
    curve = _plot_loss(out / 'loss.png', losses, window, label, dia, log)
    if curve is not None:
        files['loss_curve'] = curve
    weights = out / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    files['weights'] = str(weights)
    return files


def _plot_loss(path: Path, losses: list[float], window: int, label: str, dia: bool,
               log: Callable[[str], None]) -> str | None:
    """Per-step loss and its running mean on a log axis; ``None`` (and a note) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log("matplotlib is not installed: no loss.png (pip install 'plugattn[viz]'); losses.csv has the numbers")
        return None
    steps = list(range(1, len(losses) + 1))
    running = [sum(losses[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(losses))]
    fig = Figure(figsize=(6, 3.5), dpi=100, layout='constrained')
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(steps, losses, color='#9da5b4', linewidth=0.8, label='per step')
    ax.plot(steps, running, color='#000000' if dia else '#7f7f7f', linewidth=1.8,
            label=f'running mean ({window} steps)')
    ax.set_yscale('log')
    ax.set_xlabel('training step')
    ax.set_ylabel('noise-prediction MSE')
    ax.set_title(f'{label}: DDPM training loss')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    fig.savefig(path)
    return str(path)
