"""``plugattn diffusion-demo``: train a small DDPM UNet, with or without DIA, on the CPU; loss curve and samples."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ._common import ArgumentParser, CliError, add_command, non_negative_int, positive_int

if TYPE_CHECKING:
    from torch import Tensor, nn

NAME = 'diffusion-demo'
HELP = 'train a small DDPM UNet (one DIA unit per resolution level, or none) on the CPU; loss curve and samples'


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``diffusion-demo`` parser."""
    parser = add_command(
        subparsers, NAME, HELP,
        details=(
            'Images are rescaled to [-1, 1]; the UNet predicts the noise of the DDPM forward process (T = 1000,\n'
            'linear betas) and is trained with AdamW for --steps steps, printing the mean loss every --log-every\n'
            'steps. It then draws --num-samples images with deterministic DDIM. Writes OUTPUT/loss.png,\n'
            'losses.csv, samples.png, summary.json and model.safetensors (the trained weights).\n'
            'The defaults take about 3 minutes on one CPU core.'
        ),
        epilog='examples:\n'
               '  plugattn diffusion-demo --data fashion-mnist --steps 300\n'
               '  plugattn diffusion-demo --data fashion-mnist --steps 300 --no-dia --output runs/ddpm-plain',
    )
    parser.add_argument('--data', default='fashion-mnist', metavar='NAME', help='data set (plugattn.data name)')
    parser.add_argument('--data-dir', default=None, metavar='DIR', help='folder searched first for the data files')
    parser.add_argument('--steps', type=positive_int, default=300, metavar='N', help='training steps')
    parser.add_argument('--dia', action=argparse.BooleanOptionalAction, default=True,
                        help='one DIA unit per resolution level; --no-dia trains the plain UNet baseline')
    parser.add_argument('--output', default='diffusion-demo', metavar='DIR', help='output folder')
    parser.add_argument('--batch-size', type=positive_int, default=32, metavar='N', help='training batch size')
    parser.add_argument('--seed', type=non_negative_int, default=0, metavar='N', help='seed of weights and draws')
    parser.add_argument('--lr', type=float, default=1e-3, metavar='LR', help='AdamW learning rate')
    parser.add_argument('--base-channels', type=positive_int, default=16, metavar='N',
                        help='UNet width of the first level (levels: x1, x2, x2)')
    parser.add_argument('--res-blocks', type=positive_int, default=2, metavar='N',
                        help='ResBlocks per encoder level (the decoder has one more)')
    parser.add_argument('--dropout', type=float, default=0.0, metavar='P',
                        help='ResBlock dropout (DDPM: 0.1; off for a short run)')
    parser.add_argument('--sample-steps', type=positive_int, default=25, metavar='N', help='DDIM sampling steps')
    parser.add_argument('--num-samples', type=positive_int, default=64, metavar='N', help='images in the grid')
    parser.add_argument('--log-every', type=positive_int, default=25, metavar='N', help='print the loss every N steps')
    parser.add_argument('--threads', type=positive_int, default=1, metavar='N',
                        help='torch CPU threads (one by default: on shared cores more threads can be far slower)')
    parser.add_argument('--json', action='store_true', help='print the summary as one JSON object at the end')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn diffusion-demo``."""
    import time

    import torch

    from ..data import build_loader
    from ..engine.diffusion import GaussianDiffusion, infinite_batches, train_diffusion
    from ..models.unet import DiffusionUNet

    if not args.lr > 0:
        raise CliError(f'--lr must be positive, got {args.lr}', 'pass e.g. --lr 1e-3')
    if not 0.0 <= args.dropout < 1.0:
        raise CliError(f'--dropout must be in [0, 1), got {args.dropout}', 'pass e.g. --dropout 0.1')
    diffusion = GaussianDiffusion()
    if args.sample_steps > diffusion.num_steps:
        raise CliError(f'--sample-steps {args.sample_steps} exceeds the {diffusion.num_steps} diffusion steps',
                       f'pass at most {diffusion.num_steps}')
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    loader = build_loader(args.data, 'train', batch_size=args.batch_size, train=True, data_dir=args.data_dir,
                          seed=args.seed)
    info = loader.info
    h, w = info.image_size
    if h % 4 or w % 4:
        raise CliError(f'{info.name} images are {h}x{w}; the UNet halves the resolution twice',
                       'use a data set whose image sides are multiples of 4')
    mean = torch.tensor(info.mean).reshape(1, -1, 1, 1)
    std = torch.tensor(info.std).reshape(1, -1, 1, 1)

    def to_unit_range(images: torch.Tensor) -> torch.Tensor:
        return (images * std + mean) * 2.0 - 1.0  # the loader normalises; DDPM wants [-1, 1]

    model = DiffusionUNet(in_chans=info.in_chans, base_channels=args.base_channels,
                          num_res_blocks=args.res_blocks, dropout=args.dropout, attn='dia' if args.dia else None)
    params = sum(p.numel() for p in model.parameters())
    attn_params = sum(p.numel() for m in model.attention_modules().values() for p in m.parameters())
    label = 'DIA-UNet' if args.dia else 'UNet (no DIA)'
    print(f'{label}: {params:,} parameters ({attn_params:,} in DIA units); {info.name} {h}x{w}, '
          f'{args.steps} steps of batch {args.batch_size}, {torch.get_num_threads()} CPU threads', flush=True)
    history = train_diffusion(model, infinite_batches(loader, to_unit_range), args.steps, diffusion=diffusion,
                              lr=args.lr, seed=args.seed, log_every=args.log_every,
                              log=lambda line: print(line, flush=True))
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed + 1)
    samples = diffusion.ddim_sample(model, (args.num_samples, info.in_chans, h, w), args.sample_steps, gen)
    sample_seconds = time.perf_counter() - t0

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    files = _write_outputs(out, history.losses, samples, model, args.log_every, label, args.dia)
    window = min(args.log_every, len(history.losses))
    first = sum(history.losses[:window]) / window
    last = sum(history.losses[-window:]) / window
    summary = dict(
        model=label, dia=args.dia, params=params, dia_params=attn_params, data=info.name, steps=args.steps,
        batch_size=args.batch_size, seed=args.seed, threads=torch.get_num_threads(),
        train_seconds=round(history.seconds, 1), sample_seconds=round(sample_seconds, 1),
        loss_first=first, loss_last=last, loss_windows=history.window_means(args.log_every), files=files,
    )
    (out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f'loss {first:.4f} (mean of the first {window} steps) -> {last:.4f} (last {window}); '
          f'training {history.seconds:.1f} s, sampling {args.num_samples} images with {args.sample_steps} DDIM '
          f'steps {sample_seconds:.1f} s')
    for name, path in files.items():
        print(f'{name}: {path}')
    return 0


def _write_outputs(
        out: Path,
        losses: list[float],
        samples: Tensor,
        model: nn.Module,
        window: int,
        label: str,
        dia: bool,
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
    curve = _plot_loss(out / 'loss.png', losses, window, label, dia)
    if curve is not None:
        files['loss_curve'] = curve
    weights = out / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    files['weights'] = str(weights)
    return files


def _plot_loss(path: Path, losses: list[float], window: int, label: str, dia: bool) -> str | None:
    """Per-step loss and its running mean on a log axis; ``None`` (and a note) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no loss.png (pip install 'plugattn[viz]'); losses.csv has the numbers")
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
