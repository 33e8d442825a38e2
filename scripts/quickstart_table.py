"""Write README.md's quick-start table from the files of a ``plugattn train`` run.

The table is what the run measured, epoch by epoch (``metrics.jsonl``: test top-1, top-5, seconds, throughput), with
the thread count, CPU and load the run had (``run.json`` and the arguments here), so README says exactly what
``plugattn train`` gives and on which machine. Run the quick start, then::

    plugattn train --threads 2 --output runs/quickstart
    python scripts/quickstart_table.py runs/quickstart/fashion-mnist-bav2_resnet20-DATE-TIME --machine "..."

It rewrites the section between ``<!-- --8<-- [start:quickstart] -->`` and ``[end:quickstart]`` (the documentation
site's getting-started page includes the same section).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

README = Path(__file__).resolve().parents[1] / 'README.md'
START, END = '<!-- --8<-- [start:quickstart] -->', '<!-- --8<-- [end:quickstart] -->'


def render(run_dir: Path, machine: str) -> str:
    """The quick-start table and its provenance line for the run in ``run_dir``."""
    info = json.loads((run_dir / 'run.json').read_text(encoding='utf-8'))
    records = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text(encoding='utf-8').splitlines()
               if line.strip()]
    lines = ['| epoch | test top-1 | top-5 | seconds (train + eval) | training throughput |',
             '|---:|---:|---:|---:|---:|']
    for r in records:
        if r.get('top1') is None:
            continue
        lines.append(f'| {r["epoch"]} | {r["top1"]:.2f} % | {r["top5"]:.2f} % | {r["seconds"]:.1f} '
                     f'({r["train_seconds"]:.1f} + {r["eval_seconds"]:.1f}) | {r["samples_per_s"]:.0f} img/s |')
    threads = info.get('threads')
    done, planned = info.get('epochs_done'), info.get('epochs')
    stopped = f', stopped after epoch {done} of {planned}' if done is not None and done < planned else ''
    env = info.get('environment', {})
    plural = '' if threads == 1 else 's'
    lines += ['', f'*`{info["command"]}`: {info["model"]} with the `{info["recipe"]}` recipe on {info["data"]}, '
                  f'{threads} CPU thread{plural}, torch {env.get("torch", "?")}, {machine}{stopped}. '
                  'Written by `scripts/quickstart_table.py` from the run\'s `metrics.jsonl` and `run.json`.*']
    return '\n'.join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('run_dir', type=Path, help='the run directory of a finished plugattn train')
    parser.add_argument('--machine', required=True,
                        help='the machine in words, load included (e.g. "2-core CPU, load average 2")')
    args = parser.parse_args()
    text = README.read_text(encoding='utf-8')
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f'{head}{START}\n{render(args.run_dir, args.machine)}\n{END}{tail}', encoding='utf-8')
    print(f'wrote {README}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
