"""Training throughput of ``plugattn train``'s default thread count against every fixed count, on the cores as they
are and with one more core kept busy by another process.

The default is what a run without ``--threads`` chooses (:func:`plugattn.engine.threads.choose_threads` after
:func:`~plugattn.engine.threads.busy_cores`, measured at the start of each condition, as ``train`` does). Each
condition measures every fixed count in interleaved rounds (1 2 ... 1 2 ...), each measurement a few SGD steps of the
default recipe's model on random 28x28 batches, and reports the median images per second; the target is the default
within 10 % of the best fixed count in both conditions. The load average and the busy cores measured are printed
with the table: on a machine other people use, "as is" is not idle. Usage::

    python benchmarks/threads_under_load.py                 # bav2_resnet20, batch 128, 5 rounds of 4 steps
    python benchmarks/threads_under_load.py --rounds 3 --steps 3 --json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from plugattn.engine.threads import busy_cores, choose_threads, usable_cores
from plugattn.models import create_model

TARGET = 0.90  # the default's throughput over the best fixed count's


@contextlib.contextmanager
def one_busy_core() -> Iterator[None]:
    """Another process that keeps one core busy (a Python busy loop) while the block runs."""
    proc = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        time.sleep(1.0)  # let the scheduler settle it on a core
        yield
    finally:
        proc.kill()
        proc.wait()


def images_per_second(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                      threads: int, steps: int) -> float:
    """Training steps at ``threads`` threads: one warm-up step, then ``steps`` timed ones."""
    torch.set_num_threads(threads)
    t0 = 0.0
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def measure(name: str, batch: int, rounds: int, steps: int) -> dict[str, Any]:
    """One condition: the default's choice and every fixed count's median throughput."""
    torch_default = torch.get_num_threads()
    busy = busy_cores()
    default, note = choose_threads(torch_default, busy)
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    counts = list(range(1, usable_cores() + 1))
    samples: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(rounds):
        for n in counts:
            samples[n].append(images_per_second(model, opt, x, y, n, steps))
    torch.set_num_threads(torch_default)
    fixed = {n: statistics.median(v) for n, v in samples.items()}
    best = max(fixed, key=fixed.get)
    return {'load_1min': os.getloadavg()[0], 'busy_cores': busy, 'default_threads': default, 'note': note,
            'img_per_s': fixed, 'best_threads': best, 'default_over_best': fixed[default] / fixed[best]}


def table(rows: dict[str, dict[str, Any]]) -> str:
    counts = sorted(next(iter(rows.values()))['img_per_s'])
    head = ['condition', 'load (1 min)', 'busy cores', *[f'{n} thr img/s' for n in counts], 'default',
            'default / best', 'target']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for cond, r in rows.items():
        cells = [cond, f'{r["load_1min"]:.2f}', f'{r["busy_cores"]:.2f}' if r['busy_cores'] is not None else '?',
                 *[f'{r["img_per_s"][n]:.0f}' for n in counts], f'{r["default_threads"]} thr',
                 f'{r["default_over_best"]:.2f}', 'met' if r['default_over_best'] >= TARGET else 'missed']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='bav2_resnet20', help='model of the default recipe')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--rounds', type=int, default=5, help='interleaved rounds per condition')
    parser.add_argument('--steps', type=int, default=4, help='timed steps per measurement')
    parser.add_argument('--json', action='store_true', help='print JSON instead of a markdown table')
    args = parser.parse_args()
    rows = {'as is': measure(args.model, args.batch_size, args.rounds, args.steps)}
    with one_busy_core():
        rows['one more core busy'] = measure(args.model, args.batch_size, args.rounds, args.steps)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f'{args.model}, batch {args.batch_size}, 28x28, SGD steps; {usable_cores()} usable cores, torch '
          f'{torch.__version__}; median of {args.rounds} interleaved rounds of {args.steps} steps')
    print(table(rows))


if __name__ == '__main__':
    main()
