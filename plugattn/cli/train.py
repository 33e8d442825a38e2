"""``plugattn train``: train a model from a recipe, with overrides, resume and torchrun support."""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import Any

from ._common import PROG, ArgumentParser, add_command, positive_int, stdout_is_tty

NAME = 'train'
HELP = ('train a model from a recipe (no arguments: BAv2-ResNet-20 on Fashion-MNIST, 2 epochs, about 4.5 min '
        'on an idle 2-core CPU)')

# flag -> (config key, argparse options)
_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    '--task': ('task', {'choices': ('classification', 'detection', 'segmentation'),
                        'help': 'what to train; without --recipe, detection and segmentation use the '
                                'scenes-detection / scenes-segmentation recipe'}),
    '--model': ('model.name', {'metavar': 'NAME', 'help': 'model name (plugattn list-models), or tv:NAME '
                                                          '(torchvision) / timm:NAME (timm) with --attn; detection: '
                                                          'fasterrcnn, retinanet, fcos, maskrcnn, ssdlite320; '
                                                          'segmentation: deeplabv3, fcn, lraspp'}),
    '--backbone': ('model.backbone', {'metavar': 'NAME', 'help': 'detection/segmentation: the classification '
                                                                 'backbone (plugattn, tv:NAME or timm:NAME name)'}),
    '--data': ('data.name', {'metavar': 'NAME', 'help': 'dataset: fashion-mnist, digits, cifar10, cifar100, '
                                                        'imagefolder; detection/segmentation: scenes (generated), '
                                                        'coco, voc (with --data-dir)'}),
    '--data-dir': ('data.data_dir', {'metavar': 'DIR', 'help': 'folder searched first for the dataset files '
                                                               '(the root of an imagefolder dataset)'}),
    '--epochs': ('train.epochs', {'type': int, 'metavar': 'N', 'help': 'number of epochs'}),
    '--batch-size': ('train.batch_size', {'type': int, 'metavar': 'N',
                                          'help': 'batch size PER PROCESS; under torchrun the global batch is '
                                                  'processes x N'}),
    '--lr': ('optim.lr', {'type': float, 'metavar': 'LR', 'help': 'base learning rate (not scaled with the batch)'}),
    '--seed': ('train.seed', {'type': int, 'metavar': 'N', 'help': 'random seed'}),
    '--output': ('output.dir', {'metavar': 'DIR', 'help': 'parent folder of the run directory'}),
    '--name': ('output.name', {'metavar': 'NAME', 'help': 'run directory name; null gives <data>-<model>-<time>'}),
    '--workers': ('data.num_workers', {'type': int, 'metavar': 'N', 'help': 'data-loader worker processes '
                                                                           '(imagefolder only)'}),
    '--device': ('train.device', {'metavar': 'DEV', 'help': "auto (cuda if available, else cpu), cpu, cuda, "
                                                            "cuda:N"}),
    '--threads': ('train.threads', {'type': int, 'metavar': 'N',
                                    'help': "torch CPU threads; unset, a run measures the load first and uses torch's "
                                            'default (one per core) on free cores, or the cores other processes leave '
                                            'free, saying so in one line; a resume keeps its run\'s count'}),
    '--init-checkpoint': ('model.init_checkpoint', {'metavar': 'FILE', 'help': 'start from these weights '
                                                                               '(.safetensors of the same model, '
                                                                               'attention keys may be missing; or '
                                                                               'a .pth/.safetensors state_dict of '
                                                                               'the tv:/timm: model)'}),
    '--attn': ('model.kwargs.attn', {'metavar': 'ATTN', 'help': 'attention to plug in: with a tv:NAME / timm:NAME '
                                                          'model (torchvision / timm) it is attached with '
                                                          'plugattn.attach; with a plugattn backbone name it builds '
                                                          'that variant'}),
    '--warm-start': ('model.kwargs.warm_start', {'action': argparse.BooleanOptionalAction,
                                                 'help': 'attach --attn so that the model starts as exactly the '
                                                         'original function (a learned blend at 0)'}),
    '--pretrained': ('model.kwargs.pretrained', {'action': argparse.BooleanOptionalAction,
                                                 'help': 'the host library\'s pretrained weights for a tv:/timm: '
                                                         'model (downloaded; offline use --init-checkpoint FILE)'}),
    '--amp': ('train.amp', {'action': argparse.BooleanOptionalAction,
                            'help': 'mixed precision: bfloat16 on CPU, float16 + GradScaler on CUDA'}),
    '--compile': ('train.compile', {'action': argparse.BooleanOptionalAction, 'help': 'torch.compile the model'}),
    '--channels-last': ('train.channels_last', {'action': argparse.BooleanOptionalAction,
                                                'help': 'channels_last memory format'}),
    '--save-every-steps': ('train.save_every_steps', {'type': positive_int, 'metavar': 'N',
                                                      'help': 'also save the resume state every N steps inside an '
                                                              'epoch (for preemptible jobs)'}),
    '--save-every-minutes': ('train.save_every_minutes', {'type': float, 'metavar': 'M',
                                                          'help': 'also save the resume state every M minutes'}),
    '--preflight': ('data.preflight', {'action': argparse.BooleanOptionalAction,
                                       'help': 'imagefolder: decode every image before training and name the bad '
                                               'ones (cached until the folder changes)'}),
    '--sync-bn': ('train.sync_bn', {'action': argparse.BooleanOptionalAction,
                                    'help': 'synchronise BatchNorm over processes (torchrun; SyncBatchNorm on CUDA, '
                                            'an all-reduce BatchNorm on CPU/gloo)'}),
}


def _recipe_defaults() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    from ..engine.config import DEFAULT_RECIPE, list_recipes, load_recipe, resolve_config

    try:
        cfg = resolve_config(DEFAULT_RECIPE)
    except Exception:  # never let a broken recipe file break --help
        cfg = {}
    recipes = []
    for name in list_recipes():
        try:
            desc = ' '.join(str(load_recipe(name).get('description', '')).split())
            desc = desc if len(desc) <= 96 else desc[:96].rsplit(' ', 1)[0] + ' ...'
        except Exception:
            desc = '(unreadable)'
        recipes.append((name, desc))
    return cfg, recipes


def _lookup(cfg: dict[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split('.'):
        if not isinstance(node, dict) or part not in node:
            return '?'
        node = node[part]
    return node


def _epilog(cfg: dict[str, Any], recipes: list[tuple[str, str]]) -> str:
    from ..engine.config import DEFAULT_RECIPE, iter_fields

    lines = ['recipes (--recipe NAME, or a path to a YAML file):']
    for name, desc in recipes:
        mark = ' (default)' if name == DEFAULT_RECIPE else ''
        lines.append(f'  {name}{mark}: {desc}')
    lines += ['', f'config keys for --set KEY=VALUE (values parsed as YAML; defaults of the {DEFAULT_RECIPE} recipe):']
    for key, field in iter_fields():
        if key in ('version', 'name', 'description'):
            continue
        value = _lookup(cfg, key) if cfg else field.default
        shown = 'null' if value is None else str(value).lower() if isinstance(value, bool) else value
        choices = f' [{"|".join(field.choices)}]' if field.choices else ''
        lines.append(f'  {key} = {shown}  ({field.kind}{", nullable" if field.nullable else ""}{choices}): '
                     f'{field.help}')
    lines += [
        '',
        'examples:',
        f'  {PROG} train                                  # the default quick run',
        f'  {PROG} train --model se_resnet20 --epochs 5 --set optim.weight_decay=1e-4',
        f'  {PROG} train --model tv:resnet50 --attn bav2 --warm-start --init-checkpoint resnet50.pth',
        f'  {PROG} train --model resnet20 --attn bav2 --warm-start --init-checkpoint RUN/best.safetensors',
        f'  {PROG} train --recipe dia-cifar --data-dir ~/data',
        f'  {PROG} train --task detection --attn ca          # FCOS on ResNet-18 with CA, generated scenes',
        f'  {PROG} train --task segmentation --set model.output_stride=8',
        f'  {PROG} train --recipe ssdlite320-coco --data-dir /data/coco --attn ca',
        f'  {PROG} train --resume runs/fashion-mnist-bav2_resnet20-20250101-120000 --epochs 4',
        '  torchrun --standalone --nproc_per_node=4 -m plugattn train --recipe bav2-imagenet-300ep \\',
        '      --data-dir /data/imagenet --batch-size 256          # 256 per process = 1024 global',
    ]
    return '\n'.join(lines)


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``train`` parser."""
    cfg, recipes = _recipe_defaults()
    parser = add_command(
        subparsers, NAME, HELP,
        details='A recipe gives every setting; options below override it. The resolved config is '
                'saved as config.yaml in the run directory,\nnext to last/best.safetensors, last_state.pt, '
                'summary.csv, metrics.jsonl, curves.png and TensorBoard logs.\n'
                'Under torchrun each process trains on its shard of every batch (DDP); rank 0 writes the outputs.',
        epilog=_epilog(cfg, recipes),
    )
    parser.add_argument('--recipe', default=None, metavar='NAME|FILE',
                        help='recipe name or YAML file (default: fashion-mnist)')
    for flag, (key, opts) in _FLAGS.items():
        default_shown = _lookup(cfg, key) if cfg else '?'
        default_shown = None if key.startswith('model.kwargs.') and default_shown == '?' else default_shown
        if key == 'task':
            parser.add_argument(flag, dest='task', default=None, **opts)
            continue
        shown = 'null' if default_shown is None else default_shown
        parser.add_argument(flag, dest=key.replace('.', '__'), default=None,
                            **{**opts, 'help': f'{opts["help"]} (default: from the recipe; fashion-mnist: {shown})'})
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                        help='override any config key, e.g. --set optim.weight_decay=1e-4 --set '
                             'schedule.milestones=[60,120] (repeatable; keys listed below)')
    parser.add_argument('--resume', metavar='RUN_DIR', default=None,
                        help='continue a run directory from its last checkpoint (bit-exact on the same machine); only '
                             '--epochs, --data-dir, --workers, --device, --threads, --compile, output options and '
                             'matching --set keys may change')
    parser.add_argument('--reschedule', action='store_true',
                        help='with --resume and a changed --epochs: accept that the learning-rate schedule of the '
                             'remaining steps is re-timed for the new length')
    parser.add_argument('--stop-after', type=positive_int, metavar='N', default=None,
                        help='stop after N epochs in total (e.g. to fit a job time limit); continue with --resume')
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved config as YAML and exit without training')
    parser.add_argument('--no-progress', action='store_true',
                        help='plain progress lines instead of a tqdm bar even on a terminal')
    parser.set_defaults(func=run)
    return parser


def _overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    from ..engine.config import parse_set

    out = []
    for _flag, (key, _opts) in _FLAGS.items():
        value = getattr(args, key.replace('.', '__'))
        if value is not None:
            out.append((key, value))
    out += [parse_set(item) for item in args.overrides]
    return out


def _check_paths(cfg: dict[str, Any]) -> None:
    """The files and folders a config names exist, in the words training uses when it reaches them."""
    from pathlib import Path

    from ..data.info import canonical_name, scan_imagefolder
    from ..engine.errors import EngineError

    init = cfg['model'].get('init_checkpoint')
    if init and not Path(init).expanduser().exists():
        raise EngineError(f'weights file {init} does not exist', 'pass a .safetensors, .pth or .bin state_dict file')
    if cfg['task'] == 'classification' and canonical_name(cfg['data']['name']) == 'imagefolder':
        scan_imagefolder(cfg['data'].get('data_dir'))  # the root, train/ and val/ with class folders


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn train``."""
    from ..engine import dump_config, format_summary, load_resume_config, resolve_config, train
    from ..engine.builder import check_config
    from ..engine.config import TASK_RECIPES
    from ..engine.errors import EngineError

    overrides = _overrides(args)
    if args.resume is not None:
        if args.recipe is not None:
            raise EngineError('--recipe cannot be combined with --resume (the run keeps its own config)',
                              'drop --recipe')
        cfg = load_resume_config(args.resume, overrides)
    else:
        cfg = resolve_config(args.recipe if args.recipe is not None or args.task is None else TASK_RECIPES[args.task],
                             overrides)
    if args.reschedule and args.resume is None:
        raise EngineError('--reschedule only applies to --resume', 'drop --reschedule')
    if args.print_config:
        check_config(cfg)  # unknown names or wrongly typed model kwargs fail here as they would in training
        _check_paths(cfg)
        sys.stdout.write(dump_config(cfg))
        return 0
    if hasattr(signal, 'SIGXFSZ'):
        # Over a file-size limit a write then fails with EFBIG (a clear error) instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    progress = False if args.no_progress else stdout_is_tty()
    result = train(cfg, resume_dir=args.resume, stop_after=args.stop_after, progress=progress,
                   t_start=getattr(args, 't_start', None), command=getattr(args, 'argv', None),
                   reschedule=args.reschedule)
    if result.is_main:
        # after SIGHUP the terminal may be gone: the run has stopped cleanly whether these lines arrive or not
        with contextlib.suppress(OSError):
            print(format_summary(result, cfg), flush=True)
            if result.stop_signal is not None:
                print(f'{PROG}: {_stop_line(result)}', file=sys.stderr, flush=True)
    return result.exit_code


def _stop_line(result: Any) -> str:
    """What a signal left behind and how to continue."""
    from ..engine.rundir import unstarted_run

    name = signal.Signals(result.stop_signal).name
    if result.run_dir is None:
        return f'stopped by {name} before the run directory was created; nothing was written'
    if unstarted_run(result.run_dir):
        return (f'stopped by {name} before the first checkpoint; run.json in {result.run_dir} says "stopped"; '
                f'continue with: {result.resume_command} (it starts from the beginning)')
    return (f'stopped by {name}; the resume state in {result.run_dir} is saved and run.json says "stopped"; '
            f'continue with: {result.resume_command}')
