"""YOLOv8n plain vs with attention on the offline scenes data set, trained by ultralytics (the table of docs/yolo.md).

Each variant trains from the YAML (no pretrained weights: none may be downloaded here) for ``--epochs`` epochs at
``--imgsz`` on the CPU, once per seed, and reports mAP50-95 and mAP50 of the last epoch's weights on the validation
split (mean ± std over seeds, std with ddof=1) and the wall minutes per run. Attention is attached with the
paper's module (``warm_start=False``: from scratch there is no function to keep).

    python benchmarks/yolo_attention.py                       # scenes (plugattn.data.scenes), default sizes
    python benchmarks/yolo_attention.py --coco DIR            # any COCO-layout folder instead
    python benchmarks/yolo_attention.py --epochs 2 --seeds 0  # a quick look

Writes ``benchmarks/results_yolo.json`` and prints the markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

VARIANTS = (('plain', None), ('CA', 'ca'), ('ELA-B', 'ela_b'), ('CBAM', 'cbam'), ('BAv2', 'bav2'))


def _scenes(num_train: int, num_val: int) -> Path:
    from plugattn.data.scenes import ScenesConfig, ensure_scenes

    return ensure_scenes(cfg=ScenesConfig(num_train=num_train, num_val=num_val))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--coco', type=Path, default=None, help='COCO-layout folder (default: generated scenes)')
    parser.add_argument('--num-train', type=int, default=480)
    parser.add_argument('--num-val', type=int, default=120)
    parser.add_argument('--epochs', type=int, default=8)
    parser.add_argument('--imgsz', type=int, default=128)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--variants', nargs='+', default=[name for name, _ in VARIANTS])
    parser.add_argument('--out', type=Path, default=Path(__file__).with_name('results_yolo.json'))
    args = parser.parse_args()

    import torch

    from plugattn import yolo
    from plugattn.data.yolo_format import coco_to_yolo

    coco = args.coco or _scenes(args.num_train, args.num_val)
    work = Path(tempfile.mkdtemp(prefix='plugattn-yolo-bench-'))
    data = coco_to_yolo(coco, work / 'data')
    runs: dict[str, list[dict[str, float]]] = {}
    for name, attn in VARIANTS:
        if name not in args.variants:
            continue
        for seed in args.seeds:
            start = time.perf_counter()
            model = yolo.train('yolov8n.yaml', attn, data=data, warm_start=False, epochs=args.epochs,
                               imgsz=args.imgsz, batch=args.batch, seed=seed, deterministic=True, workers=2,
                               device='cpu', project=str(work / 'runs'), name=f'{name}-{seed}', exist_ok=True,
                               verbose=False, val=False, cache=True)
            minutes = (time.perf_counter() - start) / 60
            box = model.metrics.box
            runs.setdefault(name, []).append({'seed': seed, 'map50_95': float(box.map), 'map50': float(box.map50),
                                              'minutes': minutes,
                                              'params': sum(p.numel() for p in model.model.parameters())})
            print(f'{name} seed {seed}: mAP50-95 {box.map:.4f} mAP50 {box.map50:.4f} {minutes:.2f} min', flush=True)
    meta = {'data': str(coco), 'epochs': args.epochs, 'imgsz': args.imgsz, 'batch': args.batch, 'seeds': args.seeds,
            'torch_threads': torch.get_num_threads(), 'cpus': os.cpu_count()}
    args.out.write_text(json.dumps({'meta': meta, 'runs': runs}, indent=1), encoding='utf-8')
    print(table(runs))


def _mean_std(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else math.nan
    return f'{mean:.2f} ± {std:.2f}'


def table(runs: dict[str, list[dict[str, float]]]) -> str:
    """The markdown table: mAP in percent, mean ± std over the seeds."""
    rows = ['| model | params | mAP50-95 (%) | mAP50 (%) | minutes / run |', '|---|---:|---:|---:|---:|']
    for name, rs in runs.items():
        rows.append(f"| YOLOv8n{'' if name == 'plain' else ' + ' + name} | {rs[0]['params']:,} | "
                    f"{_mean_std([r['map50_95'] for r in rs])} | {_mean_std([r['map50'] for r in rs])} | "
                    f"{statistics.fmean(r['minutes'] for r in rs):.1f} |")
    return '\n'.join(rows)


if __name__ == '__main__':
    main()
