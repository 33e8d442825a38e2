"""``plugattn compare``: train several models with one recipe and several seeds, and tabulate the results."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ._common import ArgumentParser, add_command, positive_int, stdout_is_tty

NAME = 'compare'
HELP = 'train several models x seeds with one recipe; write a mean +- std table (Markdown, CSV) and a bar chart'


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``compare`` parser."""
    parser = add_command(
        subparsers, NAME, HELP,
        details=(
            'Runs go to OUTPUT/<model>/seed<k> (seeds 0..N-1), trained one after the other with the engine of\n'
            '"plugattn train". Running the same command again skips finished runs, resumes interrupted ones and\n'
            'rewrites OUTPUT/results.md, results.csv, results.json and results.png (top-1 after the last epoch,\n'
            'mean +- std over seeds; params; MACs; training and inference throughput).'
        ),
        epilog='examples:\n'
               '  plugattn compare --models resnet20 se_resnet20 bav2_resnet20 dia_resnet20 --data fashion-mnist \\\n'
               '      --seeds 3 --output runs/cmp-fmnist\n'
               '  plugattn compare --models resnet20 eca_resnet20 --data digits --seeds 2 --epochs 5 '
               '--set optim.lr=0.05\n'
               '  plugattn compare --task detection --models none se ca ela_b bav2 dia --seeds 2   # FCOS-ResNet-18, '
               'scenes\n'
               '  plugattn compare --task segmentation --models none ca --seeds 2 --set model.output_stride=8',
    )
    parser.add_argument('--task', choices=('classification', 'detection', 'segmentation'), default='classification',
                        help='detection / segmentation: --models entries are MODEL+ATTN, MODEL or ATTN (none = '
                             "plain) on the recipe's model (default recipe scenes-detection / scenes-segmentation), "
                             'and the table gives COCO AP or mIoU')
    parser.add_argument('--models', nargs='+', required=True, metavar='NAME', help='model names (required)')
    parser.add_argument('--data', default=None, metavar='NAME',
                        help="data set (required for classification; detection/segmentation: the recipe's)")
    parser.add_argument('--seeds', type=positive_int, default=1, metavar='N', help='seeds 0..N-1 per model')
    parser.add_argument('--recipe', default=None, metavar='NAME|FILE', help='recipe (default: the engine default)')
    parser.add_argument('--epochs', type=positive_int, default=None, metavar='N',
                        help='epochs per run (default: the recipe\'s)')
    parser.add_argument('--batch-size', type=positive_int, default=None, metavar='N',
                        help='training batch size (default: the recipe\'s)')
    parser.add_argument('--data-dir', default=None, metavar='DIR', help='folder searched first for the data files')
    parser.add_argument('--device', default=None, metavar='DEV', help='auto, cpu, cuda, cuda:N (default: recipe)')
    parser.add_argument('--threads', type=positive_int, default=None, metavar='N', help='torch CPU threads')
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                        help='override a config key for every run, as in plugattn train (repeatable)')
    parser.add_argument('--output', default='compare', metavar='DIR', help='output folder')
    parser.add_argument('--no-bench', action='store_true', help='skip the inference-throughput measurement')
    parser.add_argument('--bench-batch', type=positive_int, default=64, metavar='N',
                        help='batch size of the inference-throughput measurement')
    parser.add_argument('--no-progress', action='store_true', help='no tqdm bars during training')
    parser.add_argument('--json', action='store_true', help='print the result rows as one JSON object at the end')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn compare``."""
    import sys

    from ..engine.config import parse_set
    from ..experiments.compare import compare, format_markdown

    def echo(line: str) -> None:  # with --json, stdout carries only the JSON object
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    if args.task != 'classification':
        return _run_dense(args, echo, parse_set)
    if args.data is None:
        from ._common import CliError

        raise CliError('the following arguments are required: --data', 'see "plugattn compare --help"')
    result = compare(
        args.models, args.data, args.seeds, recipe=args.recipe, epochs=args.epochs, batch_size=args.batch_size,
        output=args.output, data_dir=args.data_dir, device=args.device, threads=args.threads,
        overrides=[parse_set(s) for s in args.overrides], bench=not args.no_bench, bench_batch=args.bench_batch,
        progress=False if args.no_progress else stdout_is_tty() and not args.json, echo=echo,
    )
    return _report(result, args.json, lambda: format_markdown(result, args.data))


def _run_dense(args: argparse.Namespace, echo: Any, parse_set: Any) -> int:
    """``plugattn compare --task detection|segmentation``."""

    from ..experiments.compare import compare_dense, format_markdown_dense

    result = compare_dense(
        args.task, args.models, args.seeds, recipe=args.recipe, data=args.data, epochs=args.epochs,
        batch_size=args.batch_size, output=args.output, data_dir=args.data_dir, device=args.device,
        threads=args.threads, overrides=[parse_set(s) for s in args.overrides],
        progress=False if args.no_progress else stdout_is_tty() and not args.json, echo=echo,
    )
    return _report(result, args.json, lambda: format_markdown_dense(result, '', args.task))


def _report(result: Any, as_json: bool, markdown: Callable[[], str]) -> int:
    """Print a comparison's outcome (the table, or one JSON object with ``--json``) and return the exit status: 0, or
    128 + the signal that stopped it (its last run saved its resume state)."""
    import sys

    if result.stop_signal is not None:
        import signal

        name = signal.Signals(result.stop_signal).name
        print(f'plugattn: compare stopped by {name}; {result.runs[-1]["run_dir"]} saved its resume state; continue '
              'by running the same plugattn compare command again', file=sys.stderr, flush=True)
        return 128 + int(result.stop_signal)
    if as_json:
        print(json.dumps(dict(rows=result.rows, runs=result.runs, trained=result.trained, files=result.files)))
        return 0
    print(markdown().split('\n', 2)[2].rstrip())
    print(f'trained or resumed {result.trained} run(s); files: {", ".join(result.files.values())}')
    return 0
