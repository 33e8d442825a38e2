"""``plugattn export``: write a model as ONNX or TorchScript and check the exported graph against PyTorch."""
from __future__ import annotations

import argparse
import json
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
            'width are symbolic (axes named batch, height, width) and the check runs at the export size and at a\n'
            'larger non-square size. The file carries the model name and kwargs, the class names and the\n'
            'preprocessing (input size, colour mode, resize, crop, interpolation, mean/std) as ONNX metadata_props\n'
            'or TorchScript extra files, so a runtime needs nothing else.'
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
    from ..engine.builder import check_input_size
    from ..engine.preprocess import preprocessing_from_meta
    from ..export import export_metadata, export_model
    from ..hub import create_model

    meta = None
    if args.checkpoint is not None:
        if args.num_classes is not None:
            raise CliError('--num-classes applies to --model only', 'the checkpoint fixes the number of classes')
        from ..engine.evaluation import load_checkpoint_model

        model, meta, _ = load_checkpoint_model(args.checkpoint, args.which)
        name = meta['model']
    else:
        kwargs = {} if args.num_classes is None else {'num_classes': args.num_classes}
        model, name = create_model(args.model, **kwargs), args.model
    # the training run's input size (native-size datasets included), else the model's default
    _, height, width = preprocessing_from_meta(meta or {}, model).input_size
    if args.img_size:
        height = width = args.img_size
        check_input_size(model, name, model.in_chans, (height, width), '--img-size {}', f'--img-size {height}')
    input_size = (model.in_chans, height, width)
    output = Path(args.output or f'{name}.{"onnx" if args.format == "onnx" else "pt"}')
    result = export_model(
        model, output, fmt=args.format, input_size=input_size, dynamic=args.dynamic, batch_size=args.batch_size,
        exporter=args.exporter, opset=args.opset, verify=not args.no_verify,
        metadata=export_metadata(model, meta, input_size),
    )
    shapes = 'dynamic batch/height/width' if args.format == 'onnx' and args.dynamic else \
        'shape-generic trace' if args.format == 'torchscript' else f'static input {result.input_shape}'
    size_mb = result.path.stat().st_size / 2**20
    print(f'wrote  {result.path} ({name}, {args.format} via {result.method}, {shapes}, {size_mb:.1f} MiB)')
    prep = json.loads(result.metadata['preprocessing'])
    classes = json.loads(result.metadata['classes'])
    print(f'meta   {len(classes) if classes else "no"} class names, input {"x".join(map(str, prep["input_size"]))}, '
          f'{prep["resize_mode"]} resize ({prep["interpolation"]}), mean {prep["mean"]}, std {prep["std"]}')
    for shape, err in result.checks:
        print(f'check  input {shape}: max |{args.format} - PyTorch| = {err:.2e}')
    if not result.checks:
        print('check  skipped (--no-verify)')
    return 0
