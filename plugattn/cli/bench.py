"""``plugattn bench``: parameters, MACs, inference and training-step time and memory against the plain backbone."""
from __future__ import annotations

import argparse
import sys

from ._common import ArgumentParser, add_command, non_negative_int, positive_int

NAME = 'bench'
HELP = 'measure parameters, MACs, inference/training time and peak memory of models against their plain backbones'


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``bench`` parser."""
    parser = add_command(
        subparsers, NAME, HELP,
        details=(
            'Every model is measured in the same run as its plain backbone, with interleaved repetitions\n'
            '(A B A B ...) after a warm-up; times are medians and "xbb" columns are ratios to the backbone.\n'
            'MACs are conv/linear/matmul multiply-adds per image (torch FlopCounterMode FLOPs / 2); norms, pooling,\n'
            'activations and gating multiplies are not counted. Peak memory is what torch allocates during one call\n'
            'above the live weights (CUDA: max_memory_allocated; CPU: torch.profiler allocation events).'
        ),
        epilog='examples:\n'
               '  plugattn bench se_resnet20 bav2_resnet20 dia_resnet20\n'
               '  plugattn bench "*_resnet50" --batch-size 8 --threads 4 --format csv > r50.csv\n'
               '  plugattn bench bav2_resnet50 --macs-only',
    )
    parser.add_argument('models', nargs='+', metavar='MODEL',
                        help='model names or fnmatch patterns (plugattn list-models)')
    parser.add_argument('--img-size', type=positive_int, default=None, metavar='N',
                        help="input height = width (default: the model's default_cfg input size)")
    parser.add_argument('--batch-size', type=positive_int, default=8, metavar='N',
                        help='inference batch size; the training step uses max(N, 2)')
    parser.add_argument('--threads', type=positive_int, default=None, metavar='N',
                        help='torch intra-op threads (default: torch default)')
    parser.add_argument('--reps', type=positive_int, default=5, metavar='N', help='interleaved repetitions')
    parser.add_argument('--warmup', type=non_negative_int, default=2, metavar='N', help='untimed warm-up calls')
    parser.add_argument('--min-time', type=float, default=0.1, metavar='S',
                        help='minimum seconds per measurement (several calls are averaged)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    parser.add_argument('--no-train', action='store_true', help='skip the training-step measurement')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    parser.add_argument('--macs-only', action='store_true', help='only parameters and MACs (no timing)')
    parser.add_argument('--format', choices=('table', 'csv', 'json'), default='table', help='output format')
    parser.set_defaults(func=run)
    return parser


def _expand(patterns: list[str]) -> list[str]:
    from ..analysis import AnalysisError
    from ..models import list_models

    names: list[str] = []
    for p in patterns:
        if any(c in p for c in '*?['):
            found = list_models(p)
            if not found:
                raise AnalysisError(f'no model matches {p!r}', 'see plugattn list-models')
            names += found
        else:
            names.append(p)
    return list(dict.fromkeys(names))


def _warn_if_busy(device: str, threads: int | None) -> None:
    """CPU timings are meaningless while other jobs use the cores: say so on stderr."""
    import os

    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    cores = os.cpu_count() or 1
    if device == 'cpu' and load > 0.5 * cores:
        hint = '' if threads == 1 else '; --threads 1 suffers least from oversubscribed cores'
        print(f'plugattn bench: warning: load average {load:.1f} on {cores} cores; other processes are running, so '
              f'CPU times will be noisy (the ratios to the backbone less so){hint}', file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn bench``."""
    from ..analysis.complexity import benchmark, format_records

    names = _expand(args.models)
    _warn_if_busy(args.device, args.threads)
    records = benchmark(
        names, img_size=args.img_size, batch_size=args.batch_size, threads=args.threads, reps=args.reps,
        warmup=args.warmup, min_time=args.min_time, device=args.device, timing=not args.macs_only,
        train=not args.no_train, memory=not (args.no_memory or args.macs_only),
        progress=(lambda msg: print(msg, file=sys.stderr, flush=True)) if args.format == 'table' else None,
    )
    print(format_records(records, args.format))
    return 0
