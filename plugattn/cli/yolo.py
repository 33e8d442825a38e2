"""``plugattn yolo train|val|predict|export``: ultralytics YOLO with plugattn attention (see :mod:`plugattn.yolo`)."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from ._common import ArgumentParser, CliError, add_command

NAME = 'yolo'
HELP = "train, validate, run or export an ultralytics YOLO model with attention, by ultralytics' own code"
ACTIONS = ('train', 'val', 'predict', 'export')


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``yolo`` parser and its actions."""
    parser = add_command(
        subparsers, NAME, HELP,
        details=(
            'Needs ultralytics (AGPL-3.0): pip install \'plugattn[yolo]\'. The attention is attached right after\n'
            'ultralytics builds or loads the model (placements: docs/yolo.md); every original weight key stays, so\n'
            'official and user-trained *.pt checkpoints load with only the attention new. Trailing key=value words\n'
            'are ultralytics arguments (epochs=10 imgsz=320 batch=16 device=cpu ...). Nothing is downloaded:\n'
            '*.pt files must be local, and plots are off unless plots=True (a missing font is not fetched).'
        ),
        epilog='examples:\n'
               '  plugattn yolo train --model yolov8n.yaml --attn ca --data scenes epochs=5 imgsz=128\n'
               '  plugattn yolo train --model yolov8n.pt --attn bav2 --data data.yaml epochs=50\n'
               '  plugattn yolo val --model runs/detect/train/weights/best.pt --data data.yaml\n'
               '  plugattn yolo export --model runs/detect/train/weights/best.pt format=onnx',
    )
    actions = parser.add_subparsers(dest='action', metavar='ACTION', parser_class=ArgumentParser, required=True)
    for action in ACTIONS:
        sub = add_command(actions, action, f'ultralytics {action} with plugattn attention')
        sub.add_argument('--model', default='yolov8n.yaml' if action == 'train' else None,
                         required=action != 'train',
                         help='model YAML (yolov8n.yaml, yolo11n-seg.yaml, ...) or local *.pt checkpoint')
        sub.add_argument('--attn', default='ca' if action == 'train' else None,
                         help="attention: se, eca, cbam, ca, ela_t/s/b/l, bav1, bav2, dia; 'none' for none; with "
                              'val/predict/export it is attached to a plain model (a plugattn checkpoint has its own)')
        sub.add_argument('--where', default='csp', choices=('csp', 'backbone', 'block', 'backbone_end'),
                         help='placement (docs/yolo.md)')
        sub.add_argument('--cold-start', action='store_true',
                         help="the paper's module from the start, instead of the warm start (the model's function "
                              'at the start)')
        if action in ('train', 'val'):
            sub.add_argument('--data', required=action == 'train',
                             help="dataset YAML, or 'scenes': the offline scenes set, written in YOLO format once")
        if action == 'predict':
            sub.add_argument('--source', required=True, help='image, folder or video')
        sub.add_argument('overrides', nargs='*', metavar='key=value', help='ultralytics arguments')
        sub.set_defaults(func=run)
    return parser


def _value(text: str) -> Any:
    """An ultralytics argument value: bool, None, int, float, else the string."""
    low = text.lower()
    if low in ('true', 'false'):
        return low == 'true'
    if low == 'none':
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_overrides(words: list[str]) -> dict[str, Any]:
    """``['epochs=5', 'device=cpu']`` -> ``{'epochs': 5, 'device': 'cpu'}``."""
    out = {}
    for word in words:
        key, sep, value = word.partition('=')
        if not sep or not key:
            raise CliError(f'{word!r} is not an ultralytics argument', 'write ultralytics arguments as key=value')
        out[key.strip()] = _value(value.strip())
    return out


def scenes_yaml() -> Path:
    """The offline scenes data set in YOLO format (converted once, next to its COCO copy); its data.yaml."""
    try:
        from ..data.scenes import ensure_scenes
    except ImportError:
        raise CliError('the scenes data set is not part of this plugattn version',
                       'pass --data with a dataset YAML') from None
    from ..data.yolo_format import coco_to_yolo

    coco = Path(ensure_scenes())
    out = coco.parent / f'{coco.name}-yolo'
    if (out / 'data.yaml').is_file():
        return out / 'data.yaml'
    tmp = coco.parent / f'.{coco.name}-yolo.tmp'
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted conversion
    data = coco_to_yolo(coco, tmp)
    tmp.rename(out)  # complete or absent, never half-written
    return out / data.name


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn yolo <action>``."""
    from .. import yolo

    kwargs = parse_overrides(args.overrides)
    for key in ('model', 'data', 'attn', 'source'):
        if key in kwargs:
            raise CliError(f'{key}= is an option here', f'use --{key}')
    attn = None if args.attn in (None, 'none') else args.attn
    common = {'attn': attn, 'warm_start': not args.cold_start, 'where': args.where}
    data = getattr(args, 'data', None)
    if data is not None and data == 'scenes':
        data = scenes_yaml()
    if args.action == 'train':
        model = yolo.train(args.model, data=data, **common, **kwargs)
        box = getattr(model.metrics, 'box', None)
        print(f'weights: {model.trainer.best}' + (f'  mAP50-95 {box.map:.4f}  mAP50 {box.map50:.4f}' if box else ''))
    elif args.action == 'val':
        metrics = yolo.val(args.model, data=data, **common, **kwargs)
        box = getattr(metrics, 'box', None)
        if box is not None:
            print(f'mAP50-95 {box.map:.4f}  mAP50 {box.map50:.4f}')
    elif args.action == 'predict':
        results = yolo.predict(args.model, args.source, **common, **{'save': True, **kwargs})
        print(f'{len(results)} results' + (f', saved to {results[0].save_dir}' if results else ''))
    else:
        print(yolo.export(args.model, **common, **{'format': 'onnx', **kwargs}))
    return 0
