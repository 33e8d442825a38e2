"""``plugattn bench``: parameters, MACs, inference and training-step time and memory against the plain backbone."""
from __future__ import annotations

import argparse
import sys

from ._common import ArgumentParser, add_command, non_negative_int, positive_int, stdout_is_tty

NAME = 'bench'
HELP = 'measure parameters, MACs, inference/training time and peak memory of models against their plain backbones'


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``bench`` parser."""
    parser = add_command(
        subparsers, NAME, HELP,
        details=(
            'Every model is measured in the same run as its plain backbone, with interleaved rounds (A B A B ...)\n'
            'after a warm-up; times are process CPU time on the CPU (1 thread by default) and wall time on CUDA,\n'
            'reported as median and min-max over the rounds; "xbb" columns are the median over the rounds of the\n'
            "model's time / the backbone's in the same round, with a distribution-free confidence interval (CI).\n"
            'Models and inputs are channels_last unless --no-channels-last. "torchvision:NAME" measures\n'
            "torchvision's model.\n"
            'MACs are conv/linear/matmul multiply-adds per image (torch FlopCounterMode FLOPs / 2); norms, pooling,\n'
            'activations and gating multiplies are not counted. Peak memory is what torch allocates during one call\n'
            'above the live weights (CUDA: max_memory_allocated; CPU: torch.profiler allocation events).'
        ),
        epilog='examples:\n'
               '  plugattn bench se_resnet20 bav2_resnet20 dia_resnet20\n'
               '  plugattn bench "*_resnet50" --batch-size 8 --threads 4 --format csv > r50.csv\n'
               '  plugattn bench se_resnet50 bav2_resnet50 --markdown > results.md\n'
               '  plugattn bench torchvision:resnet50 se_resnet50 --batch-size 8\n'
               '  plugattn bench bav2_resnet50 --macs-only',
    )
    parser.add_argument('models', nargs='+', metavar='MODEL',
                        help='model names or fnmatch patterns (plugattn list-models); torchvision:NAME for '
                             "torchvision's model next to plugattn's NAME")
    parser.add_argument('--img-size', type=positive_int, default=None, metavar='N',
                        help="input height = width (default: the model's default_cfg input size)")
    parser.add_argument('--batch-size', type=positive_int, default=8, metavar='N',
                        help='inference batch size; the training step uses max(N, 2)')
    parser.add_argument('--threads', type=positive_int, default=None, metavar='N',
                        help='torch intra-op threads (default: 1 on the CPU, the torch default on CUDA)')
    parser.add_argument('--reps', type=positive_int, default=5, metavar='N', help='interleaved rounds (default 5)')
    parser.add_argument('--no-channels-last', dest='channels_last', action='store_false',
                        help='keep models and inputs contiguous (NCHW) instead of channels_last')
    parser.add_argument('--warmup', type=non_negative_int, default=2, metavar='N', help='untimed warm-up calls')
    parser.add_argument('--min-time', type=float, default=0.1, metavar='S',
                        help='minimum seconds per measurement (several calls are averaged)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    parser.add_argument('--no-train', action='store_true', help='skip the training-step measurement')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    parser.add_argument('--macs-only', action='store_true', help='only parameters and MACs (no timing)')
    parser.add_argument('--format', choices=('table', 'markdown', 'csv', 'json'), default=None,
                        help='output format: "table" is a narrow table for a terminal (medians and ratios to the '
                             'backbone), "markdown" the full table with ranges, intervals, throughput and memory '
                             '(default: table on a terminal, markdown when the output goes to a file or pipe)')
    parser.add_argument('--markdown', dest='format', action='store_const', const='markdown',
                        help='the same as --format markdown')
    parser.set_defaults(func=run)
    return parser


def _expand(patterns: list[str]) -> list[str]:
    from ..analysis import AnalysisError
    from ..hub import list_models

    names: list[str] = []
    for p in patterns:
        if p.startswith('torchvision:'):
            names.append(p)
        elif any(c in p for c in '*?['):
            found = list_models(p)
            if not found:
                raise AnalysisError(f'no model matches {p!r}', 'see plugattn list-models')
            names += found
        else:
            names.append(p)
    return list(dict.fromkeys(names))


def _report_load(device: str, threads: int | None) -> None:
    """Print the load average; CPU timings are noisy while other jobs use the cores, so warn then."""
    import os

    from ..analysis.complexity import load_average

    load = load_average()
    if load is None:
        return
    cores = os.cpu_count() or 1
    print(f'plugattn bench: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {cores} logical cores',
          file=sys.stderr)
    if device == 'cpu' and load[0] > 0.5 * cores:
        hint = '' if threads in (None, 1) else '; --threads 1 suffers least from oversubscribed cores'
        print(f'plugattn bench: warning: other processes are running, so CPU times will be noisy (process CPU time '
              f'and interleaved rounds keep the ratios to the backbone usable){hint}', file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn bench``."""
    from ..analysis.complexity import benchmark, format_records

    fmt = args.format or ('table' if stdout_is_tty() else 'markdown')
    names = _expand(args.models)
    _report_load(args.device, args.threads)
    records = benchmark(
        names, img_size=args.img_size, batch_size=args.batch_size, threads=args.threads, reps=args.reps,
        channels_last=args.channels_last,
        warmup=args.warmup, min_time=args.min_time, device=args.device, timing=not args.macs_only,
        train=not args.no_train, memory=not (args.no_memory or args.macs_only),
        progress=(lambda msg: print(msg, file=sys.stderr, flush=True)) if fmt in ('table', 'markdown') else None,
    )
    print(format_records(records, fmt))
    return 0
