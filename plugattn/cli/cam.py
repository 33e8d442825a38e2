"""``plugattn cam``: Grad-CAM (and related) heatmaps of a model, overlaid on images."""
from __future__ import annotations

import argparse
import json

from ._common import ArgumentParser, add_command, non_negative_int, positive_int

NAME = 'cam'
HELP = 'class-activation maps (Grad-CAM, Grad-CAM++, Score-CAM, ...) overlaid on images, as PNGs'


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``cam`` parser."""
    from ..analysis.gradcam import CAM_METHODS

    parser = add_command(
        subparsers, NAME, HELP,
        details=(
            "Needs grad-cam and matplotlib (pip install 'plugattn[viz]'). Writes one labelled composite per image,\n"
            'OUTPUT/<image stem>_<method>.png: the input, the map overlaid on it, the predicted class name and\n'
            'probability, the class the map explains and a colour bar (--overlay-only: the bare overlay at the\n'
            'original image size). The default target layer is the last block of the last stage (the stage\n'
            'itself for DIA). Images are resized to the model input and normalised with the mean/std a checkpoint\n'
            'records, else with the ImageNet mean/std; class names come from the checkpoint. A model built by\n'
            'name has random weights:\n'
            'its map is meaningless and only shows the output format.'
        ),
        epilog='examples:\n'
               '  plugattn cam --checkpoint runs/fashion-mnist-bav2_resnet20-... --image shoe.png\n'
               '  plugattn cam --model bav2_resnet50 --image cat.jpg dog.jpg --method gradcam++ --class 281',
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('--model', metavar='NAME', help='model name (random weights)')
    src.add_argument('--checkpoint', metavar='PATH', help='run directory or .safetensors file')
    parser.add_argument('--which', choices=('best', 'last'), default='best', help='checkpoint of a run directory')
    parser.add_argument('--image', nargs='+', required=True, metavar='PATH', help='image file(s) (required)')
    parser.add_argument('--method', choices=list(CAM_METHODS), default='gradcam', help='CAM method')
    parser.add_argument('--target-layer', default=None, metavar='NAME',
                        help='qualified module name, e.g. layer4.1 or layer4.1.conv2 (default: last block)')
    parser.add_argument('--class', dest='class_idx', type=non_negative_int, default=None, metavar='IDX',
                        help='class to explain (default: the predicted class)')
    parser.add_argument('--img-size', type=positive_int, default=None, metavar='N',
                        help='model input size (default: the training size of a checkpoint, else default_cfg)')
    parser.add_argument('--output', default='cam', metavar='DIR|FILE.png',
                        help='output folder, or a .png file when there is one image')
    parser.add_argument('--overlay-only', action='store_true',
                        help='write the bare overlay at the original image size instead of the labelled composite')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of text')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn cam``."""
    from ..analysis import load_model, run_cam
    from ..analysis._common import require
    from ..engine.builder import check_input_size

    require('pytorch_grad_cam', 'plugattn cam')
    if not args.overlay_only:
        require('matplotlib', 'plugattn cam')
    model, meta = load_model(args.model, args.checkpoint, which=args.which)
    if args.img_size:
        check_input_size(model, model.model_name, getattr(model, 'in_chans', 3), (args.img_size, args.img_size),
                         '--img-size {}', f'--img-size {args.img_size}')
    results = run_cam(model, args.image, method=args.method, target_layer=args.target_layer,
                      class_idx=args.class_idx, output=args.output, meta=meta, img_size=args.img_size,
                      overlay_only=args.overlay_only)
    if args.json:
        print(json.dumps(dict(model=model.model_name, checkpoint=meta.get('checkpoint'),
                              results=[r.to_dict() for r in results])))
        return 0
    source = meta.get('checkpoint') or f'{model.model_name} (random weights: the map is meaningless)'
    print(f'model {source}, {results[0].method} on {results[0].target_layer}')
    for r in results:
        name = f' ({r.pred_name})' if r.pred_name else ''
        target = f'{r.target_class} ({r.target_name})' if r.target_name else f'{r.target_class}'
        explained = '' if r.target_class == r.pred_class else f', map of class {target}'
        print(f'{r.image}: predicted class {r.pred_class}{name} (p = {r.pred_prob:.3f}){explained} -> {r.output}')
    return 0
