"""``plugattn diffusion-demo``: the command line of :mod:`plugattn.demos.diffusion` (DDPM UNet, with or without DIA)."""
from __future__ import annotations

import argparse
import json

from ._common import ArgumentParser, CliError, add_command, non_negative_int, positive_int

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
    import torch

    from ..demos.diffusion.ddpm import GaussianDiffusion
    from ..demos.diffusion.demo import run_demo

    if not args.lr > 0:
        raise CliError(f'--lr must be positive, got {args.lr}', 'pass e.g. --lr 1e-3')
    if not 0.0 <= args.dropout < 1.0:
        raise CliError(f'--dropout must be in [0, 1), got {args.dropout}', 'pass e.g. --dropout 0.1')
    diffusion = GaussianDiffusion()
    if args.sample_steps > diffusion.num_steps:
        raise CliError(f'--sample-steps {args.sample_steps} exceeds the {diffusion.num_steps} diffusion steps',
                       f'pass at most {diffusion.num_steps}')
    torch.set_num_threads(args.threads)
    summary = run_demo(
        data=args.data, data_dir=args.data_dir, steps=args.steps, dia=args.dia, output=args.output,
        batch_size=args.batch_size, seed=args.seed, lr=args.lr, base_channels=args.base_channels,
        res_blocks=args.res_blocks, dropout=args.dropout, sample_steps=args.sample_steps,
        num_samples=args.num_samples, log_every=args.log_every, diffusion=diffusion,
        log=lambda line: print(line, flush=True),
    )
    if args.json:
        print(json.dumps(summary))
        return 0
    window = summary['loss_window']
    print(f'loss {summary["loss_first"]:.4f} (mean of the first {window} steps) -> {summary["loss_last"]:.4f} '
          f'(last {window}); training {summary["train_seconds"]:.1f} s, sampling {args.num_samples} images with '
          f'{args.sample_steps} DDIM steps {summary["sample_seconds"]:.1f} s')
    for name, path in summary['files'].items():
        print(f'{name}: {path}')
    return 0
