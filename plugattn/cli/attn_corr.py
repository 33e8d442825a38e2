"""``plugattn attn-corr``: correlation of the attention gates between the layers of each stage."""
from __future__ import annotations

import argparse
import json

from ._common import ArgumentParser, add_command, positive_int

NAME = 'attn-corr'
HELP = 'correlate the attention gates of the layers of each stage over real images (heatmaps + statistics)'


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``attn-corr`` parser."""
    parser = add_command(
        subparsers, NAME, HELP,
        details=(
            'Runs the model in eval mode over the test split, records the gate of every attention module (one per\n'
            'block call, so a DIA unit gives one gate per block of its stage), reduces each gate to a per-image\n'
            'channel vector (spatial mean for spatial gates) and reports, per stage, the Pearson correlation of the\n'
            'flattened (images x channels) vectors between every pair of layers, their mean off-diagonal value, and\n'
            'per-layer gate statistics (mean, std, fraction saturated below 0.05 or above 0.95). Heatmaps need\n'
            "matplotlib (pip install 'plugattn[viz]')."
        ),
        epilog='examples:\n'
               '  plugattn attn-corr --checkpoint runs/fashion-mnist-dia_resnet20-... --data fashion-mnist\n'
               '  plugattn attn-corr --model bav2_resnet20 --data digits --batches 4 --json',
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('--model', metavar='NAME', help='model name (random weights, built for the data set)')
    src.add_argument('--checkpoint', metavar='PATH', help='run directory or .safetensors file')
    parser.add_argument('--which', choices=('best', 'last'), default='best', help='checkpoint of a run directory')
    parser.add_argument('--data', default=None, metavar='NAME',
                        help='data set (test split); default: the checkpoint\'s training data set')
    parser.add_argument('--data-dir', default=None, metavar='DIR', help='folder searched first for the data files')
    parser.add_argument('--batches', type=positive_int, default=10, metavar='N', help='test batches to run')
    parser.add_argument('--batch-size', type=positive_int, default=100, metavar='N', help='images per batch')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    parser.add_argument('--output', default=None, metavar='DIR',
                        help='folder for one heatmap PNG per stage and the JSON report (default: attn_corr)')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of text')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn attn-corr``."""
    from ..analysis import AnalysisError, attn_correlation, load_model
    from ..data import get_dataset_info

    meta_data: dict = {}
    if args.checkpoint is not None:
        model, meta = load_model(checkpoint=args.checkpoint, which=args.which)
        meta_data = meta.get('data') or {}
        data = args.data or meta_data.get('name')
        if data is None:
            raise AnalysisError('the checkpoint does not name its data set', 'pass --data NAME')
    else:
        if args.data is None:
            raise AnalysisError('--model needs --data', 'pass --data NAME (e.g. digits, fashion-mnist, cifar10)')
        data = args.data
        info = get_dataset_info(data, args.data_dir)
        model, _ = load_model(args.model, num_classes=info.num_classes, in_chans=info.in_chans)
    image_size = meta_data.get('image_size') if data == meta_data.get('name') else None
    report = attn_correlation(model, data, data_dir=args.data_dir, batches=args.batches, batch_size=args.batch_size,
                              image_size=image_size, output=args.output or 'attn_corr', device=args.device)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.summary())
    return 0
