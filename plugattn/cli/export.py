"""``plugattn export``: write a model as ONNX or TorchScript and check the exported graph against PyTorch."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._common import ArgumentParser, CliError, add_command, positive_int

NAME = 'export'
HELP = 'export a model (by name, or a trained checkpoint) to ONNX or TorchScript, checked against PyTorch'


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``export`` parser."""
    parser = add_command(
        subparsers, NAME, HELP,
        details=(
            'ONNX uses torch.onnx.export (--exporter dynamo: the torch.export-based exporter, needs onnx, onnxruntime\n'
            'and onnxscript; legacy: the deprecated TorchScript-based one, needs onnx and onnxruntime) and is checked\n'
            'with onnxruntime. TorchScript uses torch.jit.trace (the models cannot be scripted); a trace freezes\n'
            'Python branches, so it is always checked at two input sizes. With --dynamic the ONNX batch, height and\n'
            'width are symbolic and the check runs at the export size and at a larger non-square size.'
        ),
        epilog='examples:\n'
               '  plugattn export --model bav2_resnet50 --format onnx --dynamic\n'
               '  plugattn export --checkpoint runs/fashion-mnist --format torchscript --output model.pt',
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--model', metavar='NAME', help='registered model, randomly initialised (plugattn list-models)')
    source.add_argument('--checkpoint', metavar='RUN',
                        help='run directory (uses --which) or .safetensors file written by plugattn train')
    parser.add_argument('--format', required=True, choices=('onnx', 'torchscript'), help='output format (required)')
    parser.add_argument('--dynamic', action='store_true',
                        help='ONNX: symbolic batch, height and width (TorchScript traces are checked at two sizes '
                             'either way)')
    parser.add_argument('--output', metavar='FILE', default=None,
                        help='output file (default: MODEL.onnx or MODEL.pt in the current folder)')
    parser.add_argument('--which', choices=('best', 'last'), default='best', help='checkpoint of a run directory')
    parser.add_argument('--num-classes', type=positive_int, default=None, metavar='N',
                        help="with --model: classifier outputs (default: the model's)")
    parser.add_argument('--img-size', type=positive_int, default=None, metavar='N',
                        help="input height = width (default: the training run's, else the model's default)")
    parser.add_argument('--batch-size', type=positive_int, default=None, metavar='N',
                        help='batch of the example input (default: 2; a static ONNX export may use 1)')
    parser.add_argument('--exporter', choices=('dynamo', 'legacy'), default='dynamo', help='ONNX exporter')
    parser.add_argument('--opset', type=positive_int, default=None, metavar='N',
                        help='ONNX opset (default: the exporter\'s)')
    parser.add_argument('--no-verify', action='store_true', help='skip the comparison with PyTorch')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn export``."""
    from ..export import export_model
    from ..models import create_model

    if args.checkpoint is not None:
        if args.num_classes is not None:
            raise CliError('--num-classes applies to --model only', 'the checkpoint fixes the number of classes')
        from ..engine.evaluation import load_checkpoint_model

        model, meta, _ = load_checkpoint_model(args.checkpoint, args.which)
        name, img_size = meta['model'], (meta.get('data') or {}).get('image_size')
    else:
        kwargs = {} if args.num_classes is None else {'num_classes': args.num_classes}
        model, name, img_size = create_model(args.model, **kwargs), args.model, None
    _, height, width = model.default_cfg['input_size']
    size = args.img_size or img_size
    input_size = (model.in_chans, size or height, size or width)
    output = Path(args.output or f'{name}.{"onnx" if args.format == "onnx" else "pt"}')
    result = export_model(
        model, output, fmt=args.format, input_size=input_size, dynamic=args.dynamic, batch_size=args.batch_size,
        exporter=args.exporter, opset=args.opset, verify=not args.no_verify,
    )
    shapes = 'dynamic batch/height/width' if args.format == 'onnx' and args.dynamic else \
        'shape-generic trace' if args.format == 'torchscript' else f'static input {result.input_shape}'
    size_mb = result.path.stat().st_size / 2**20
    print(f'wrote  {result.path} ({name}, {args.format} via {result.method}, {shapes}, {size_mb:.1f} MiB)')
    for shape, err in result.checks:
        print(f'check  input {shape}: max |{args.format} - PyTorch| = {err:.2e}')
    if not result.checks:
        print('check  skipped (--no-verify)')
    return 0
