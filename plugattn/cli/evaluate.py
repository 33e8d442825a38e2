"""``plugattn eval``: evaluate a checkpoint on a test split."""
from __future__ import annotations

import argparse
import json

from ._common import ArgumentParser, add_command, positive_int, stdout_is_tty

NAME = 'eval'
HELP = ('evaluate a checkpoint (run directory or .safetensors file): top-1, top-5, loss; COCO AP (detection) or '
        'mIoU (segmentation)')


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``eval`` parser."""
    parser = add_command(
        subparsers, NAME, HELP,
        details='The model is rebuilt from the checkpoint metadata (name, classes, channels); the '
                'dataset, image size and batch size default\nto those of the training run. A dataset whose classes '
                'differ from the checkpoint\'s is refused (--allow-class-mismatch\nevaluates anyway).',
    )
    parser.add_argument('--checkpoint', required=True, metavar='PATH',
                        help='run directory (uses --which) or .safetensors file (required)')
    parser.add_argument('--which', choices=('best', 'last'), default='best',
                        help='checkpoint of a run directory')
    parser.add_argument('--model', default=None, metavar='NAME',
                        help='expected model; an error if the checkpoint holds another (default: from the checkpoint)')
    parser.add_argument('--data', default=None, metavar='NAME', help='dataset (default: the training dataset)')
    parser.add_argument('--data-dir', default=None, metavar='DIR', help='dataset folder (default: the training one)')
    parser.add_argument('--batch-size', type=positive_int, default=None, metavar='N',
                        help='evaluation batch size (default: the training run\'s evaluation batch size)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--threads', type=positive_int, default=None, metavar='N',
                        help='torch CPU threads (default: torch default)')
    parser.add_argument('--amp', action='store_true', help='bfloat16 (CPU) / float16 (CUDA) autocast')
    parser.add_argument('--channels-last', action='store_true', help='channels_last memory format')
    parser.add_argument('--allow-class-mismatch', action='store_true',
                        help="evaluate even on a dataset whose classes differ from the checkpoint's (refused by "
                             'default: the accuracy would be meaningless)')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of text')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn eval``."""
    from ..engine import evaluate_checkpoint
    from ..engine.dense_inference import checkpoint_task

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if checkpoint_task(args.checkpoint, args.which) != 'classification':
        return _run_dense(args)
    result = evaluate_checkpoint(
        args.checkpoint, which=args.which, model=args.model, data=args.data, data_dir=args.data_dir,
        batch_size=args.batch_size, device=args.device, amp=args.amp, channels_last=args.channels_last,
        progress=stdout_is_tty() and not args.json, allow_class_mismatch=args.allow_class_mismatch,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f'checkpoint  {result["checkpoint"]} ({result["weights"]} weights, epoch {result["epoch"]})')
    print(f'model       {result["model"]}')
    print(f'data        {result["data"]} test split ({result["samples"]} samples)')
    print(f'top-1       {result["top1"]:.2f} %')
    print(f'top-5       {result["top5"]:.2f} %')
    print(f'loss        {result["test_loss"]:.4f}')
    return 0


def _run_dense(args: argparse.Namespace) -> int:
    """``plugattn eval`` of a detection or segmentation checkpoint."""
    from ..engine.dense_inference import evaluate_dense_checkpoint
    from ..engine.errors import EngineError

    if args.model is not None:
        raise EngineError('--model applies to classification checkpoints', 'drop --model')
    result = evaluate_dense_checkpoint(args.checkpoint, which=args.which, data=args.data, data_dir=args.data_dir,
                                       batch_size=args.batch_size, device=args.device, amp=args.amp,
                                       progress=stdout_is_tty() and not args.json)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f'checkpoint  {result["checkpoint"]} ({result["weights"]} weights, epoch {result["epoch"]})')
    print(f'model       {result["model"]} ({result["task"]}, backbone {result["backbone"] or "its own"}, attention '
          f'{result["attn"] or "none"})')
    print(f'data        {result["data"]} validation split ({result["images"]} images)')
    keys = (('map', 'AP'), ('map_50', 'AP50'), ('map_75', 'AP75'), ('map_small', 'AP small'),
            ('map_medium', 'AP medium'), ('map_large', 'AP large'), ('mar_100', 'AR100')) \
        if result['task'] == 'detection' else (('miou', 'mIoU'), ('pixel_acc', 'pixel acc'), ('test_loss', 'loss'))
    for key, label in keys:
        if key in result:
            print(f'{label:<12}{result[key]:.4f}')
    return 0
