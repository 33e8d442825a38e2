"""Detection and segmentation training steps: plugattn's engine against a bare loop over the same model and data.

For each task (the ``scenes-detection`` recipe: FCOS on ResNet-18; ``scenes-segmentation``: DeepLabV3 on
MobileNetV2 at output stride 8; both on the generated 64 px ``scenes`` set), the script alternates, ``--rounds``
times:

* **bare**: a ``torch.utils.data.DataLoader`` over :func:`plugattn.data.dense.build_dense_dataset` with the same
  transforms and collate function, the same torchvision model (built once per round, as the engine does) and a plain
  SGD loop: forward, summed losses (detection) or cross-entropy with 255 ignored (segmentation), backward, step;
* **engine**: :func:`plugattn.engine.train` on the same config for one epoch (seeded loader, schedule, AMP off,
  deterministic algorithms on as in every recipe, checkpoints and logs), timed by the engine's own
  ``train_seconds`` (the epoch's training loop, without set-up and evaluation).

It reports the median seconds per training step of each and their ratio (the target is engine <= 1.05 x bare), and
the data pipelines' images per second without a model (the engine's seeded, shardable loader vs the bare
DataLoader). Run it on an otherwise idle machine for numbers to compare; it prints a Markdown table::

    python benchmarks/bench_dense.py --rounds 3 --images 96 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from plugattn.data.dense import (
    build_dense_dataset,
    dense_transforms,
    detection_collate,
    segmentation_collate,
)
from plugattn.data.scenes import ScenesConfig
from plugattn.engine import resolve_config, train
from plugattn.engine.distributed import DistContext
from plugattn.engine.tasks import DenseTask, build_task_model


def _config(task: str, images: int, threads: int, out: Path, name: str) -> dict:
    return resolve_config(f'scenes-{task}', [
        ('dense.scenes_train', images), ('dense.scenes_val', 8), ('train.epochs', 1), ('train.threads', threads),
        ('output.dir', str(out)), ('output.name', name)])


def _bare_dataset(cfg: dict):
    d = cfg['dense']
    task = cfg['task']
    size = d['scenes_size']
    scenes = ScenesConfig(num_train=d['scenes_train'], num_val=d['scenes_val'], canvas_size=size,
                          min_scale=max(1, size * 28 // 128), max_scale=max(1, size // 2))
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if task == 'segmentation' else (None, None)
    transforms = dense_transforms(task, True, min_size=d['min_size'], max_size=d['max_size'], crop_size=d['crop_size'],
                                  scale_range=tuple(d['scale_range']), hflip=d['hflip'], mean=mean, std=std)
    return build_dense_dataset('scenes', None, 'train', task, transforms, with_masks=False, scenes=scenes)


def _bare_loader(cfg: dict) -> torch.utils.data.DataLoader:
    collate = detection_collate if cfg['task'] == 'detection' else segmentation_collate
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.DataLoader(_bare_dataset(cfg), batch_size=cfg['train']['batch_size'], shuffle=True,
                                       drop_last=True, collate_fn=collate, generator=g)


def bare_step_seconds(cfg: dict) -> float:
    """Seconds per step of a plain SGD loop over the model and data of ``cfg`` (one epoch)."""
    torch.manual_seed(0)
    task = DenseTask(cfg, DistContext())
    model = build_task_model(cfg['model']['name'], task.model_kwargs(11))
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg['optim']['lr'], momentum=0.9,
                          weight_decay=cfg['optim']['weight_decay'])
    loader = _bare_loader(cfg)
    t0 = time.perf_counter()
    steps = 0
    for images, targets in loader:
        if cfg['task'] == 'detection':
            images = [x.as_subclass(torch.Tensor) for x in images]
            targets = [{k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                       for t in targets]
            loss = sum(model(images, targets).values())
        else:
            loss = F.cross_entropy(model(images.as_subclass(torch.Tensor))['out'], targets.as_subclass(torch.Tensor),
                                   ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return (time.perf_counter() - t0) / steps


def engine_step_seconds(cfg: dict) -> float:
    """Seconds per step of the engine's training loop on ``cfg`` (its own ``train_seconds``)."""
    result = train(cfg, progress=False, echo=lambda _line: None)
    record = result.history[-1]
    return record['train_seconds'] / record['step']


def loader_images_per_s(cfg: dict, repeats: int = 3) -> tuple[float, float]:
    """Images per second of the engine's loader and of the bare DataLoader (no model), the best of ``repeats``
    interleaved passes over the epoch (the first pass also warms the file cache)."""
    task = DenseTask(cfg, DistContext())
    engine_loader, _, _ = task.loaders(seed=0)
    bare_loader = _bare_loader(cfg)
    engine, bare = [], []
    for epoch in range(repeats):
        engine_loader.set_epoch(epoch)
        t0 = time.perf_counter()
        n = sum(len(x) for x, _ in engine_loader)
        engine.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        n = sum(len(x) for x, _ in bare_loader)
        bare.append(n / (time.perf_counter() - t0))
    return max(engine), max(bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--images', type=int, default=96, help='training images per epoch (steps = images / 8)')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--tasks', nargs='+', default=['detection', 'segmentation'])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            bare, engine = [], []
            for r in range(args.rounds):  # interleaved, so a load change hits both
                cfg = _config(task, args.images, args.threads, Path(tmp), f'{task}-{r}')
                bare.append(bare_step_seconds(cfg))
                engine.append(engine_step_seconds(cfg))
                torch.set_num_threads(args.threads)
            eng_ips, bare_ips = loader_images_per_s(_config(task, args.images, args.threads, Path(tmp), 'data'))
            b, e = statistics.median(bare), statistics.median(engine)
            cfg = _config(task, args.images, args.threads, Path(tmp), 'x')
            rows.append((task, f'{cfg["model"]["name"]} on {cfg["model"]["backbone"]}', b, e, e / b, bare, engine,
                         eng_ips, bare_ips))
    print('| task | model | bare s/step | engine s/step | engine / bare | rounds (bare; engine) | '
          'engine loader img/s | bare DataLoader img/s |')
    print('|:---|:---|---:|---:|---:|:---|---:|---:|')
    for task, model, b, e, ratio, bare, engine, eng_ips, bare_ips in rows:
        rounds = ', '.join(f'{x:.3f}' for x in bare) + '; ' + ', '.join(f'{x:.3f}' for x in engine)
        print(f'| {task} | {model} | {b:.3f} | {e:.3f} | {ratio:.3f} | {rounds} | {eng_ips:.0f} | {bare_ips:.0f} |')
    print(f'\n{args.images} images per epoch, batch 8, {args.images // 8} steps per round, {args.threads} threads, '
          f'{args.rounds} interleaved rounds; torch {torch.__version__}.')


if __name__ == '__main__':
    main()
