"""``plugattn predict``: classify image files with a trained checkpoint."""
from __future__ import annotations

import argparse
import json
import sys

from ._common import PROG, ArgumentParser, add_command, positive_int

NAME = 'predict'
HELP = ('classify image files or folders with a trained checkpoint: top-k class names with probabilities; boxes or '
        'class maps for detection and segmentation checkpoints')


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``predict`` parser."""
    parser = add_command(
        subparsers, NAME, HELP,
        details=(
            'Images are prepared exactly as the test split was evaluated (the checkpoint records its input size,\n'
            'channels, mean/std, interpolation and crop) and classified in batches. Folders are searched\n'
            'recursively for image files. A file that cannot be read gives one error line on stderr naming it and\n'
            'the others are still classified; the exit status is then 2 (0 when every image was classified).'
        ),
        epilog='examples:\n'
               '  plugattn predict --checkpoint runs/fashion-mnist-bav2_resnet20-... shoe.png bag.jpg\n'
               '  plugattn predict --checkpoint runs/flowers/best.safetensors photos/ --topk 3 --json > preds.jsonl',
    )
    parser.add_argument('--checkpoint', required=True, metavar='RUN_OR_FILE',
                        help='run directory (uses --which) or .safetensors file (required)')
    parser.add_argument('images', nargs='+', metavar='IMAGE_OR_FOLDER', help='image files and/or folders')
    parser.add_argument('--which', choices=('best', 'last'), default='best', help='checkpoint of a run directory')
    parser.add_argument('--topk', type=positive_int, default=5, metavar='K',
                        help='classes shown per image (at most the number of classes)')
    parser.add_argument('--batch-size', type=positive_int, default=32, metavar='N', help='images per forward pass')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--threads', type=positive_int, default=None, metavar='N',
                        help='torch CPU threads (default: torch default)')
    parser.add_argument('--json', action='store_true',
                        help='one JSON object per image: {"path", "topk": [{"class", "index", "prob"}, ...]}; '
                             'detection: {"path", "detections": [{"class", "label", "score", "box"}, ...]}; '
                             'segmentation: {"path", "classes": {name: pixel share}}')
    parser.add_argument('--draw', default=None, metavar='DIR',
                        help='detection/segmentation checkpoints: write DIR/<image>.png with the labelled boxes, or '
                             'the coloured class map with a legend')
    parser.add_argument('--score-thresh', type=float, default=0.3, metavar='S',
                        help='detection: lowest score reported')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn predict``."""
    from ..engine.dense_inference import checkpoint_task
    from ..engine.inference import ImageFailure, predict

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if checkpoint_task(args.checkpoint, args.which) != 'classification':
        return _run_dense(args)
    if args.draw is not None:
        from ..engine.errors import EngineError

        raise EngineError('--draw applies to detection and segmentation checkpoints', 'drop --draw')
    failed = 0
    for item in predict(args.checkpoint, args.images, topk=args.topk, batch_size=args.batch_size,
                        device=args.device, which=args.which):
        if isinstance(item, ImageFailure):
            failed += 1
            print(f'{PROG}: error: {item.error}', file=sys.stderr, flush=True)
        elif args.json:
            print(json.dumps(item.to_dict(), ensure_ascii=False), flush=True)
        else:
            top = ', '.join(f'{t["class"]} {t["prob"]:.3f}' for t in item.topk)
            print(f'{item.path}: {top}', flush=True)
    return 2 if failed else 0


def _run_dense(args: argparse.Namespace) -> int:
    """``plugattn predict`` with a detection or segmentation checkpoint."""
    from ..engine.dense_inference import predict_dense
    from ..engine.inference import ImageFailure

    failed = 0
    for item in predict_dense(args.checkpoint, args.images, score_thresh=args.score_thresh, device=args.device,
                              which=args.which, draw_dir=args.draw):
        if isinstance(item, ImageFailure):
            failed += 1
            print(f'{PROG}: error: {item.error}', file=sys.stderr, flush=True)
        elif args.json:
            print(json.dumps(item.to_dict(), ensure_ascii=False), flush=True)
        elif item.detections is not None:
            found = ', '.join(f'{d["class"]} {d["score"]:.2f} [{", ".join(f"{v:.0f}" for v in d["box"])}]'
                              for d in item.detections) or 'nothing above the score threshold'
            print(f'{item.path}: {found}' + (f'  -> {item.drawn}' if item.drawn else ''), flush=True)
        else:
            shares = ', '.join(f'{name} {share:.1%}' for name, share in (item.classes or {}).items())
            print(f'{item.path}: {shares}' + (f'  -> {item.drawn}' if item.drawn else ''), flush=True)
    return 2 if failed else 0
