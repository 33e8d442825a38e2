"""Measure the cost of every attention module on ResNet-50, ResNet-20 and MobileNetV2; write ``benchmarks/RESULTS.md``.

Each family (and each attached torchvision / timm host, ``--skip attached`` to leave them out) is measured as one
interleaved group (the plain backbone first, then torchvision's model of the same architecture and every attention
variant, repeated A B C ... A B C ... after a warm-up), so the ratios to the
backbone come from the same run under the same machine load. On the CPU the clock is the process CPU time at one
thread (other processes' use of the cores does not count), channels_last, five rounds by default. Usage::

    python benchmarks/bench_resnet.py                  # R50 224 px batch 8, R20 32 px batch 32, MBv2 224 px batch 8
    python benchmarks/bench_resnet.py --quick          # fewer models and rounds
    python benchmarks/bench_resnet.py --skip r20 mbv2 --r50-models resnet50 ca_resnet50 --output /tmp/r50.md
    python benchmarks/bench_resnet.py --skip r20 mbv2 --r50-subset   # plugattn's ResNet-50s beside the attached ones
    python benchmarks/bench_resnet.py --device cuda --r50-batch 128 --mbv2-batch 128
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import torch

import plugattn
from plugattn.analysis.complexity import MACS_NOTE, MEMORY_NOTE, benchmark, format_records, machine_description

HERE = Path(__file__).resolve().parent

R20 = ['resnet20', 'se_resnet20', 'eca_resnet20', 'cbam_resnet20', 'ca_resnet20', 'ela_b_resnet20', 'ela_s_resnet20',
       'ela_l_resnet20', 'bav1_resnet20', 'bav2_resnet20', 'dia_resnet20']
R50 = ['resnet50', 'torchvision:resnet50', 'se_resnet50', 'eca_resnet50', 'cbam_resnet50', 'ca_resnet50',
       'ela_t_resnet50', 'ela_b_resnet50', 'ela_s_resnet50', 'ela_l_resnet50', 'bav1_resnet50', 'bav2_resnet50',
       'dia_resnet50']
MBV2 = ['mobilenetv2', 'torchvision:mobilenet_v2', 'ca_mobilenetv2']
# attached torchvision / timm models, each measured against its own un-attached host
_R50_ATTNS = ('se', 'eca', 'cbam', 'ca', 'ela_b', 'bav1', 'bav2', 'dia')
ATTACHED = {
    'Attached torchvision ResNet-50': ['tv:resnet50', *(f'tv:resnet50+{a}' for a in _R50_ATTNS)],
    'Attached torchvision MobileNetV2': ['tv:mobilenet_v2', 'tv:mobilenet_v2+ca', 'tv:mobilenet_v2+eca'],
    'Attached torchvision EfficientNet-B0': ['tv:efficientnet_b0', 'tv:efficientnet_b0+bav1'],
    'Attached torchvision ConvNeXt-T': ['tv:convnext_tiny', 'tv:convnext_tiny+se', 'tv:convnext_tiny+bav2'],
    'Attached timm resnet50': ['timm:resnet50', 'timm:resnet50+se', 'timm:resnet50+ca', 'timm:resnet50+bav2',
                               'timm:resnet50+dia'],
    'Attached timm convnext_tiny': ['timm:convnext_tiny', 'timm:convnext_tiny+se', 'timm:convnext_tiny+bav2'],
}
QUICK = {'se', 'eca', 'cbam', 'ca', 'ela_b', 'bav1', 'bav2', 'dia', 'none'}
# targets (training peak memory, training step, inference) as ratios to the plain backbone: ResNet-50 at 224 px and
# MobileNetV2 with CA; plugattn's plain resnet50 at most torchvision's (checked on the torchvision row, >= 1.00)
CHANNEL_TARGET = (1.05, 1.05, 1.03)
SPATIAL_TARGET = (1.10, 1.10, 1.08)
TARGETS = {'se': CHANNEL_TARGET, 'eca': CHANNEL_TARGET, 'bav1': CHANNEL_TARGET, 'bav2': CHANNEL_TARGET,
           'dia': CHANNEL_TARGET, 'cbam': SPATIAL_TARGET, 'ca': SPATIAL_TARGET, 'ela_t': SPATIAL_TARGET,
           'ela_b': SPATIAL_TARGET, 'ela_s': SPATIAL_TARGET, 'ela_l': SPATIAL_TARGET}
TARGET_FAMILIES = ('ImageNet ResNet-50', 'MobileNetV2', 'Attached torchvision ResNet-50',
                   'Attached torchvision MobileNetV2')
# RESULTS.md keeps what follows this line when the tables above it are regenerated
KEEP_MARKER = '<!-- analysis: written by hand, kept when the script regenerates the tables above -->'


def _load() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f'{one:.2f} (1 min), {five:.2f} (5 min)'
    except OSError:
        return 'unknown'


def _ratio_cell(ratio: float, lo: float, hi: float) -> str:
    return f'{ratio:.3f} ({lo:.2f}-{hi:.2f})'


def _verdict(ratio: float | None, lo: float | None, hi: float | None, target: float) -> str:
    """``met`` / ``missed`` when the whole confidence interval is on one side of the target, else ``within noise``."""
    if ratio is None:
        return '-'
    cell = _ratio_cell(ratio, lo, hi)
    if hi <= target:
        return f'{cell} met'
    if lo > target:
        return f'{cell} **missed by {ratio - target:+.2f}**'
    return f'{cell} within noise'


def target_table(parts: list[tuple[str, list]]) -> list[str]:
    """Markdown lines: every targeted model's ratios against its targets, and the torchvision comparison."""
    lines = ['| family | model | train peak (target) | train step, CI (target) | inference, CI (target) |',
             '|:---|:---|:---|:---|:---|']
    flagged = []
    for title, recs in parts:
        for r in recs:
            if r.attn != 'none' and min(r.infer_ratio_hi or 2.0, r.train_ratio_hi or 2.0) < 1.0:
                flagged.append(r.model)
            if not title.startswith(TARGET_FAMILIES):
                continue
            family = title.split(',')[0]
            if r.model.startswith('torchvision:'):
                train = _ratio_cell(r.train_ratio, r.train_ratio_lo, r.train_ratio_hi)
                infer = _ratio_cell(r.infer_ratio, r.infer_ratio_lo, r.infer_ratio_hi)
                lines.append(f'| {family} | {r.model} / {r.backbone} (target >= 1.00: plugattn no slower) | '
                             f'{r.train_mem_ratio:.3f} | {train} | {infer} |')
                continue
            if r.attn not in TARGETS:
                continue
            mem_t, step_t, infer_t = TARGETS[r.attn]
            mem = '-' if r.train_mem_ratio is None else (
                f'{r.train_mem_ratio:.3f} {"met" if r.train_mem_ratio <= mem_t else "**missed**"}')
            lines.append(f'| {family} | {r.model} | {mem} ({mem_t:.2f}) | '
                         f'{_verdict(r.train_ratio, r.train_ratio_lo, r.train_ratio_hi, step_t)} ({step_t:.2f}) | '
                         f'{_verdict(r.infer_ratio, r.infer_ratio_lo, r.infer_ratio_hi, infer_t)} ({infer_t:.2f}) |')
    lines.append('')
    lines.append('met / missed: the whole confidence interval is at or below / above the target; within noise: the '
                 'interval contains it. Memory is exact (allocator events), so it has no interval.')
    if flagged:
        lines.append(f'Measurement error: the whole interval is below 1.00 for {", ".join(flagged)} (they do strictly '
                     'more work than their backbone).')
    return [*lines, '']


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='a subset of the modules, fewer repetitions')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: 1 on the CPU)')
    parser.add_argument('--reps', type=int, default=5, help='interleaved rounds (default 5)')
    parser.add_argument('--r20-batch', type=int, default=32)
    parser.add_argument('--r50-batch', type=int, default=8)
    parser.add_argument('--mbv2-batch', type=int, default=8)
    parser.add_argument('--skip', nargs='*', default=[], choices=('r20', 'r50', 'mbv2', 'attached'),
                        help='families to skip (attached: the torchvision / timm models with attention attached)')
    parser.add_argument('--r50-subset', action='store_true', help='only the --quick subset of ResNet-50 variants')
    parser.add_argument('--r50-models', nargs='+', default=None, metavar='NAME',
                        help='only these ResNet-50 family models (resnet50 is always measured)')
    parser.add_argument('--no-channels-last', dest='channels_last', action='store_false')
    parser.add_argument('--output', type=Path, default=HERE / 'RESULTS.md')
    parser.add_argument('--figure', type=Path, default=HERE / 'bench_ratios.png')
    parser.add_argument('--json', type=Path, default=HERE / 'results.json', help='the records as JSON')
    args = parser.parse_args(argv)

    reps = args.reps

    def pick(names: list[str], subset: bool = False) -> list[str]:
        from plugattn.analysis._common import model_attn

        return [n for n in names if not (args.quick or subset) or n.startswith('torchvision:')
                or model_attn(n) in QUICK]

    def log(msg: str) -> None:
        print(f'[{time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)

    threads = args.threads or (1 if args.device == 'cpu' else None)
    if threads:
        torch.set_num_threads(threads)  # also what machine_description reports
    common = dict(reps=reps, device=args.device, threads=threads, channels_last=args.channels_last, progress=log)
    load_before = _load()
    t0 = time.perf_counter()
    parts = []
    if 'r50' not in args.skip:
        names = args.r50_models if args.r50_models else pick(R50, args.r50_subset)
        r50 = benchmark(names, batch_size=args.r50_batch, warmup=1, min_time=0.0, **common)
        parts.append(('ImageNet ResNet-50 family, 224x224 input, 1000 classes', r50))
    if 'r20' not in args.skip:
        r20 = benchmark(pick(R20), batch_size=args.r20_batch, warmup=2, min_time=0.2, **common)
        parts.append(('CIFAR ResNet-20 family, 32x32 input, 10 classes', r20))
    if 'mbv2' not in args.skip:
        mbv2 = benchmark(MBV2, batch_size=args.mbv2_batch, warmup=1, min_time=0.0, **common)
        parts.append(('MobileNetV2, 224x224 input, 1000 classes', mbv2))
    if 'attached' not in args.skip:
        for title, names in ATTACHED.items():
            recs = benchmark(pick(names), batch_size=args.r50_batch, warmup=1, min_time=0.0, **common)
            parts.append((f'{title}, 224x224 input, 1000 classes', recs))
    wall = time.perf_counter() - t0

    lines = [
        '# plugattn: measured cost of the attention modules',
        '',
        f'Generated by `python benchmarks/{Path(__file__).name}{" " + " ".join(argv or sys.argv[1:])}` on '
        f'{dt.date.today().isoformat()} (plugattn {plugattn.__version__}); {wall / 60:.1f} min in total.',
        '',
        f'* Machine: {machine_description(args.device)}.',
        f'* Load average when the run started: {load_before}; at the end: {_load()}. Times are '
        f'{parts[0][1][0].clock if parts else "process CPU time"} per batch (on the CPU: what this process '
        'computed, so waiting for a shared core does not count), median and min-max over the rounds; every model is '
        'measured interleaved with its backbone (A B C ... repeated); xbb is the median over the rounds of the '
        "model's time / the backbone's in the same round and CI its distribution-free confidence interval (order "
        'statistics of the per-round ratios), which shows how much of a difference the machine\'s swings allow.',
        '* Inference: eval mode, `torch.inference_mode()`, one forward of the batch. Training step: train mode, '
        'forward + cross-entropy + backward + SGD (momentum) step; batch at least 2 (bridge attention has BatchNorm1d, '
        'specs D10).',
        f'* {MACS_NOTE}',
        f'* {MEMORY_NOTE}',
        '',
    ]
    for title, recs in parts:
        lines += [f'## {title}', '', format_records(recs, 'table').split('\n\n')[0], '']
        n = recs[0].threads
        layout = 'channels_last' if recs[0].channels_last else 'NCHW'
        lines.append(f'Inference batch {recs[0].batch_size}, training batch {recs[0].train_batch_size}, '
                     f'{n} thread{"" if n == 1 else "s"}, {layout}, {recs[0].reps} interleaved rounds'
                     + ('.' if recs[0].load_before is None else f'; load average {recs[0].load_before:.2f} at the '
                        f'start of this family, {recs[0].load_after:.2f} at its end.'))
        lines.append('')
    lines += ['## Targets', '', *target_table(parts)]
    try:
        from plugattn.analysis.plots import plot_bench

        rows = [r.to_dict() for _, recs in parts for r in recs if r.attn != 'none']
        plot_bench(rows, args.figure, title=f'Time relative to the plain backbone ({args.device}, medians of '
                                            f'{reps} interleaved rounds)')
        lines += [f'![time ratios]({args.figure.name})', '']
    except ValueError as e:  # matplotlib missing
        log(f'no figure: {e}')
    kept = args.output.read_text(encoding='utf-8').partition(KEEP_MARKER)[2] if args.output.exists() else ''
    args.output.write_text('\n'.join(lines) + (f'\n{KEEP_MARKER}{kept}' if kept else ''), encoding='utf-8')
    args.json.write_text(json.dumps({title: [r.to_dict() for r in recs] for title, recs in parts}, indent=1) + '\n',
                         encoding='utf-8')
    log(f'wrote {args.output} ({wall:.0f} s)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
