"""Train several models with one recipe and several seeds, then tabulate and plot the results.

Every (model, seed) run is trained in-process with the training engine (:func:`plugattn.engine.train`, what
``plugattn train`` runs) into ``OUTPUT/<model>/seed<k>``, one after the other. Re-running the same command skips
the runs whose ``run.json`` says ``finished`` (after checking that their saved config is the requested one), resumes
interrupted runs from their ``last_state.pt`` (the engine's resume, also from inside an epoch), and restarts runs
that died before their first checkpoint. A run that saved its last epoch but whose status says ``failed`` (it died
after that save) counts as finished. A different ``--epochs`` than the runs in ``OUTPUT`` were planned for is
refused: a longer schedule is not the same as continuing a shorter one, so such a comparison needs another folder.

The results are the final-epoch test top-1 (mean ± sample std over seeds; the best epoch is reported too),
parameters and MACs from the checkpoints, the mean training throughput, and an inference throughput measured with
:func:`plugattn.analysis.complexity.benchmark` at the data's input size, interleaved with the plain backbone.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..analysis._common import AnalysisError

__all__ = ['CompareResult', 'compare', 'compare_dense', 'format_markdown', 'read_run_result', 'run_status']

STATE_FILE = 'last_state.pt'
LAST_FILE = 'last.safetensors'


@dataclass
class CompareResult:
    """Outcome of :func:`compare`.

    Attributes:
        rows: One dict per model: ``model, attn, seeds, top1_mean, top1_std, best_top1_mean, best_top1_std,
            params, attn_params, macs, train_img_s, infer_img_s, infer_ratio, runs``.
        runs: One dict per (model, seed): ``model, seed, run_dir, action, top1, best_top1, epochs``.
        trained: Number of runs trained or resumed by this call (0 when everything was finished already).
        files: Written files by kind (``markdown``, ``csv``, ``json``, ``figure``).
        stop_signal: The signal (SIGTERM/SIGINT) that stopped a run; the comparison then ends there, without
            tables, and running the same command again continues it.
    """

    rows: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    trained: int
    files: dict[str, str] = field(default_factory=dict)
    stop_signal: int | None = None


def _flat(cfg: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, Mapping) and k != 'kwargs':
            out.update(_flat(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def run_status(run_dir: Path) -> str:
    """``'missing'``, ``'finished'``, ``'resumable'`` (has a resume state) or ``'empty'`` (no checkpoint yet)."""
    from ..engine import is_run_dir, read_run_info
    from ..engine.rundir import leftovers_only

    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return 'missing'
    if leftovers_only(run_dir):  # killed while it created its run directory
        return 'empty'
    if not is_run_dir(run_dir):
        raise AnalysisError(f'{run_dir} exists but is not a plugattn run directory',
                            'remove it or choose another --output')
    info = read_run_info(run_dir)
    done, planned = info.get('epochs_done') or 0, info.get('epochs')
    # 'failed' or 'interrupted' after the last epoch's checkpoint was written: nothing is left to train
    last_saved = planned is not None and done >= planned and info.get('status') != 'running'
    if (info.get('status') == 'finished' or last_saved) and (run_dir / LAST_FILE).is_file():
        return 'finished'
    return 'resumable' if (run_dir / STATE_FILE).is_file() else 'empty'


def _check_same_config(run_dir: Path, cfg: Mapping[str, Any]) -> None:
    """Raise unless the run's saved config equals ``cfg`` on every key that cannot change on resume."""
    import yaml

    from ..engine.config import RESUME_MUTABLE, validate_config

    try:
        saved = validate_config(yaml.safe_load((run_dir / 'config.yaml').read_text(encoding='utf-8')))
    except (OSError, yaml.YAMLError) as e:
        raise AnalysisError(f'cannot read {run_dir / "config.yaml"} ({type(e).__name__})',
                            'remove the run directory to train it again') from None
    a, b = _flat(saved), _flat(cfg)
    if a['train.epochs'] != b['train.epochs']:
        raise AnalysisError(
            f'{run_dir} was planned for {a["train.epochs"]} epochs, but this comparison asks for {b["train.epochs"]} '
            '(its learning-rate schedule spans its own length, so it is not continued or reused)',
            f'use another --output folder for {b["train.epochs"]} epochs, or --epochs {a["train.epochs"]}')
    for key in sorted(set(a) | set(b)):
        if key in RESUME_MUTABLE or key in ('name', 'description', 'version'):
            continue
        if a.get(key) != b.get(key):
            raise AnalysisError(
                f'{run_dir} was trained with {key} = {a.get(key)!r}, but this comparison asks for {b.get(key)!r}',
                'use another --output folder, or the same options as before')


def read_run_result(run_dir: Path) -> dict[str, Any]:
    """Final and best top-1, epochs, params and MACs of a run, read from its ``last.safetensors`` header and
    ``metrics.jsonl``/``run.json`` (no tensor data is loaded)."""
    from safetensors import safe_open

    from ..engine import read_run_info

    with safe_open(str(run_dir / LAST_FILE), framework='pt', device='cpu') as f:
        meta = json.loads((f.metadata() or {}).get('plugattn', '{}'))
    info = read_run_info(run_dir)
    metrics = meta.get('metrics') or {}
    history = _history(run_dir)
    train_img_s = [r['samples_per_s'] for r in history if r.get('samples_per_s')]
    primary = meta.get('primary_metric')
    extra = {primary: metrics.get(primary), f'best_{primary}': info.get(f'best_{primary}')} if primary else {}
    return dict(
        **extra,
        top1=metrics.get('top1'), best_top1=info.get('best_top1'), epochs=meta.get('epoch'),
        params=meta.get('params'), macs=meta.get('macs'), input_size=(meta.get('data') or {}).get('input_size'),
        model_kwargs=meta.get('model_kwargs') or {}, num_classes=(meta.get('data') or {}).get('num_classes'),
        train_img_s=statistics.mean(train_img_s) if train_img_s else None,
    )


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / 'metrics.jsonl'
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding='utf-8').splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def compare(
        models: Sequence[str],
        data: str,
        seeds: int = 1,
        *,
        recipe: str | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        output: str | Path = 'compare',
        data_dir: str | None = None,
        device: str | None = None,
        threads: int | None = None,
        overrides: Sequence[tuple[str, Any]] = (),
        bench: bool = True,
        bench_reps: int = 7,
        bench_min_time: float = 0.2,
        bench_batch: int = 64,
        echo: Callable[[str], None] = print,
        progress: bool | None = None,
) -> CompareResult:
    """Train ``models`` x ``seeds`` with one recipe and write the comparison (``plugattn compare``).

    Args:
        models: Registered model names.
        data: Data set name.
        seeds: Number of seeds (``0 .. seeds-1``).
        recipe: Engine recipe (default: the engine's default recipe); ``data``, ``epochs``, ``batch_size`` and
            ``overrides`` are applied on top.
        epochs: Epochs per run (default: the recipe's).
        batch_size: Training batch size (default: the recipe's).
        output: Output folder; runs go to ``OUTPUT/<model>/seed<k>``, results to ``OUTPUT/results.{md,csv,json,png}``.
        data_dir: Folder searched first for the data set files.
        device: Engine device (``auto``, ``cpu``, ``cuda``...; default: the recipe's).
        threads: torch CPU threads of the engine.
        overrides: Further ``(dotted key, value)`` config overrides (as ``plugattn train --set``).
        bench: Measure inference throughput against the plain backbones after training.
        bench_reps: Interleaved repetitions of that measurement (7 keeps the ratios within a few per cent on a
            quiet 2-core CPU; 3 repetitions of 0.05 s gave ratios below 1 for models that do strictly more work).
        bench_min_time: Minimum seconds per timed measurement (several calls are averaged).
        bench_batch: Batch size of that measurement (run with ``threads`` threads, like the training).
        echo: Line printer for progress messages (the engine's own lines included).
        progress: Engine progress bar (default: when stdout is a terminal).
    """
    from ..engine import load_resume_config, resolve_config, train
    from ..hub import get_model_entry

    if not models:
        raise AnalysisError('no model to compare', 'pass --models A B ...')
    if seeds < 1:
        raise AnalysisError(f'--seeds must be >= 1, got {seeds}')
    for name in models:
        get_model_entry(name)  # unknown names fail before anything trains
    models = list(dict.fromkeys(models))
    out = Path(output).expanduser()
    base: list[tuple[str, Any]] = [('data.name', data)]
    if data_dir is not None:
        base.append(('data.data_dir', str(data_dir)))
    if epochs is not None:
        base.append(('train.epochs', epochs))
    if batch_size is not None:
        base.append(('train.batch_size', batch_size))
    if device is not None:
        base.append(('train.device', device))
    if threads is not None:
        base.append(('train.threads', threads))
    reserved = {'model.name', 'train.seed', 'output.dir', 'output.name'}
    bad = [k for k, _ in overrides if k in reserved]
    if bad:
        raise AnalysisError(f'{bad[0]} is set by compare itself', 'drop it from --set')

    # Resolve every config first, so a bad option fails before the first run trains.
    plan = []
    for name in models:
        for seed in range(seeds):
            run_dir = out / name / f'seed{seed}'
            cfg = resolve_config(recipe, [*base, *overrides, ('model.name', name), ('train.seed', seed),
                                          ('output.dir', str(out / name)), ('output.name', f'seed{seed}')])
            plan.append((name, seed, run_dir, cfg))

    runs: list[dict[str, Any]] = []
    trained = 0
    for i, (name, seed, run_dir, cfg) in enumerate(plan, 1):
        status = run_status(run_dir)
        head = f'[compare {i}/{len(plan)}] {name} seed {seed}'
        if status == 'finished':
            _check_same_config(run_dir, cfg)  # also refuses another --epochs
            echo(f'{head}: finished earlier, skipped ({run_dir})')
            runs.append(dict(model=name, seed=seed, run_dir=str(run_dir), action='skipped'))
            continue
        if status == 'resumable':
            _check_same_config(run_dir, cfg)
            echo(f'{head}: resuming {run_dir}')
            mutable = [(k, v) for k, v in [*base, *overrides] if k in ('train.epochs', 'data.data_dir',
                                                                      'train.device', 'train.threads')]
            rcfg = load_resume_config(run_dir, mutable)
            outcome = train(rcfg, resume_dir=run_dir, echo=echo, progress=progress)
            action = 'resumed'
        else:
            if status == 'empty':  # died before its first checkpoint: nothing to resume
                shutil.rmtree(run_dir)
            echo(f'{head}: training into {run_dir}')
            outcome = train(cfg, echo=echo, progress=progress)
            action = 'trained'
        if outcome.stop_signal is not None:  # SIGTERM/SIGINT: the run saved its state; stop the whole comparison
            runs.append(dict(model=name, seed=seed, run_dir=str(run_dir), action='stopped'))
            return CompareResult(rows=[], runs=runs, trained=trained + 1, stop_signal=outcome.stop_signal)
        trained += 1
        runs.append(dict(model=name, seed=seed, run_dir=str(run_dir), action=action))

    for r in runs:
        r.update({k: v for k, v in read_run_result(Path(r['run_dir'])).items()
                  if k in ('top1', 'best_top1', 'epochs')})
    dev = plan[0][3]['train']['device']
    bench_device = ('cuda' if torch.cuda.is_available() else 'cpu') if dev == 'auto' else dev
    bench_opts = dict(reps=bench_reps, min_time=bench_min_time, batch_size=bench_batch, device=bench_device,
                      threads=threads)
    rows = _summarise(models, runs, bench and bench_opts, echo)
    result = CompareResult(rows=rows, runs=runs, trained=trained)
    n_epochs = plan[0][3]['train']['epochs']
    recipe = plan[0][3]['name']  # the recipe's name, which may be another data set's (fashion-mnist on digits)
    title = f'recipe: {recipe} (data: {data}), {n_epochs} epoch{"" if n_epochs == 1 else "s"}'
    result.files = _write_outputs(result, out, title)
    return result


def _summarise(
        models: list[str],
        runs: list[dict[str, Any]],
        bench: dict[str, Any] | bool,
        echo: Callable[[str], None],
) -> list[dict[str, Any]]:
    from ..analysis.complexity import benchmark
    from ..engine.metrics import count_params
    from ..hub import create_model, get_model_entry

    rows = []
    details = {}
    for name in models:
        mine = [r for r in runs if r['model'] == name]
        info = read_run_result(Path(mine[0]['run_dir']))
        details[name] = info
        top1, top1_std = _mean_std([r.get('top1') for r in mine])
        best, best_std = _mean_std([r.get('best_top1') for r in mine])
        train_img_s = _mean_std([read_run_result(Path(r['run_dir']))['train_img_s'] for r in mine])[0]
        kwargs = dict(info['model_kwargs'])
        in_size = info['input_size'] or [None]
        net = create_model(name, **{**kwargs, 'num_classes': info['num_classes'] or kwargs.get('num_classes', 10),
                                    'in_chans': in_size[0] or 3})
        rows.append(dict(
            model=name, attn=get_model_entry(name).attn or 'none', seeds=len(mine),
            top1_mean=top1, top1_std=top1_std, best_top1_mean=best, best_top1_std=best_std,
            params=info['params'], attn_params=count_params(net, attention_only=True), macs=info['macs'],
            train_img_s=train_img_s, infer_img_s=None, infer_ratio=None,
            input_size=info['input_size'], epochs=info['epochs'],
        ))
    if bench:
        first = details[models[0]]
        c, h, _ = first['input_size']
        echo(f'[compare] measuring inference throughput ({h}x{h}, batch {bench["batch_size"]}, interleaved with the '
             'backbones)')
        records = benchmark(models, img_size=h, warmup=2, train=False, memory=False,
                            model_kwargs=dict(num_classes=first['num_classes'] or 10, in_chans=c), **bench)
        by_name = {r.model: r for r in records}
        for row in rows:
            rec = by_name[row['model']]
            row['infer_img_s'], row['infer_ratio'] = rec.infer_img_s, rec.infer_ratio
            row['infer_batch'] = rec.batch_size
    return rows


def _fmt(v: Any, spec: str = '.2f') -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '-'
    return format(v, spec)


def format_markdown(result: CompareResult, title: str) -> str:
    """The results table as Markdown."""
    lines = [
        f'# Comparison: {title}',
        '',
        '| model | attention | seeds | top-1 (%) final | top-1 (%) best epoch | params (M) | attn params | '
        'MACs (M) | train img/s | infer img/s | infer xbb |',
        '|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for r in result.rows:
        lines.append(
            f'| {r["model"]} | {r["attn"]} | {r["seeds"]} | {_fmt(r["top1_mean"])} ± {_fmt(r["top1_std"])} | '
            f'{_fmt(r["best_top1_mean"])} ± {_fmt(r["best_top1_std"])} | {_fmt(r["params"] / 1e6, ".3f")} | '
            f'{r["attn_params"]:,} | {_fmt(r["macs"] / 1e6, ".2f")} | {_fmt(r["train_img_s"], ".0f")} | '
            f'{_fmt(r["infer_img_s"], ".0f")} | {_fmt(r["infer_ratio"], ".3f")} |'
        )
    batch = next((r['infer_batch'] for r in result.rows if r.get('infer_batch')), None)
    at_batch = f' at batch {batch}' if batch else ''
    lines += [
        '',
        'top-1: test accuracy after the last epoch (and at the best epoch), mean ± sample standard deviation over '
        'seeds 0..N-1 (± 0 for one seed). MACs per image at the data\'s input size: conv/linear/matmul multiply-adds '
        '(torch FlopCounterMode FLOPs / 2; norms, pooling, activations and gating multiplies not counted). '
        'train img/s: mean training throughput of the runs (measured during training, so it depends on what else ran '
        'on the machine). '
        f'infer img/s: eval-mode forward{at_batch}, median of interleaved repetitions; xbb = time relative to the '
        'plain backbone measured in the same run.',
    ]
    return '\n'.join(lines) + '\n'


def _write_outputs(result: CompareResult, out: Path, title: str, task: str = 'classification') -> dict[str, str]:
    from ..analysis.plots import plot_compare

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    md = out / 'results.md'
    dense = task != 'classification'
    md.write_text(format_markdown_dense(result, title, task) if dense else format_markdown(result, title),
                  encoding='utf-8')
    files['markdown'] = str(md)
    cols = ['model', 'attn', 'seeds', 'epochs', 'top1_mean', 'top1_std', 'best_top1_mean', 'best_top1_std', 'params',
            'attn_params', 'macs', 'train_img_s', 'infer_img_s', 'infer_ratio']
    if dense:
        key = _DENSE_PRIMARY[task]
        cols = ['model', 'attn', 'seeds', 'epochs', *(f'{k}_{s}' for k in _DENSE_KEYS[task] for s in ('mean', 'std')),
                f'best_{key}_mean', f'best_{key}_std', 'params', 'macs', 'train_img_s', 'minutes']
    path = out / 'results.csv'
    with path.open('w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction='ignore', lineterminator='\n')
        writer.writeheader()
        writer.writerows(result.rows)
    files['csv'] = str(path)
    path = out / 'results.json'
    path.write_text(json.dumps(dict(title=title, rows=result.rows, runs=result.runs), indent=2) + '\n',
                    encoding='utf-8')
    files['json'] = str(path)
    with contextlib.suppress(AnalysisError):  # matplotlib missing: the tables are still written
        if dense:
            key = _DENSE_PRIMARY[task]
            label = 'COCO AP (pycocotools)' if task == 'detection' else 'mIoU'
            percent = [{**r, f'{key}_mean': None if r.get(f'{key}_mean') is None else 100 * r[f'{key}_mean'],
                        f'{key}_std': None if r.get(f'{key}_std') is None else 100 * r[f'{key}_std']}
                       for r in result.rows]
            files['figure'] = plot_compare(percent, out / 'results.png', title=f'{label}: {title}', metric=key,
                                           ylabel=f'{label} after the last epoch (%)')
        else:
            files['figure'] = plot_compare(result.rows, out / 'results.png', title=f'Test top-1: {title}',
                                           metric='top1', ylabel='test top-1 after the last epoch (%)')
    return files


# --------------------------------------------------------------------------------------------- dense tasks

_DENSE_PRIMARY = {'detection': 'map', 'segmentation': 'miou'}
_DENSE_KEYS = {'detection': ('map', 'map_50', 'map_75'), 'segmentation': ('miou', 'pixel_acc')}
_DENSE_LABELS = {'map': 'AP', 'map_50': 'AP50', 'map_75': 'AP75', 'miou': 'mIoU', 'pixel_acc': 'pixel acc'}


def _split_entry(entry: str) -> tuple[str | None, str | None]:
    """``'fcos+ca'`` -> ``('fcos', 'ca')``; ``'ca'`` or ``'+ca'`` -> ``(None, 'ca')``; ``'none'`` -> ``(None,
    None)``."""
    from ..dense import dense_model_names

    name, _, attn = entry.partition('+')
    if not attn and name not in dense_model_names():
        name, attn = '', name
    attn = None if attn in ('', 'none', 'plain') else attn
    return name or None, attn


def compare_dense(
        task: str,
        entries: Sequence[str],
        seeds: int = 1,
        *,
        recipe: str | None = None,
        data: str | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        output: str | Path = 'compare',
        data_dir: str | None = None,
        device: str | None = None,
        threads: int | None = None,
        overrides: Sequence[tuple[str, Any]] = (),
        echo: Callable[[str], None] = print,
        progress: bool | None = None,
) -> CompareResult:
    """Train detection or segmentation models x seeds with one recipe and tabulate AP or mIoU
    (``plugattn compare --task detection|segmentation``).

    Args:
        task: ``'detection'`` or ``'segmentation'``.
        entries: What to compare, each ``MODEL+ATTN``, ``MODEL``, ``ATTN`` or ``none`` (the recipe's model, plain);
            e.g. ``none se ca`` compares attentions in the recipe's model, ``fcos fcos+ca retinanet+ca`` models.
        seeds: Seeds ``0 .. seeds-1``.
        recipe: Engine recipe (default ``scenes-detection`` / ``scenes-segmentation``).
        data: Data set (default the recipe's).
        epochs: Epochs per run (default the recipe's).
        batch_size: Per-process batch size (default the recipe's).
        output: Runs go to ``OUTPUT/<entry>/seed<k>``, results to ``OUTPUT/results.{md,csv,json,png}``.
        data_dir: Data folder.
        device: Engine device.
        threads: torch CPU threads.
        overrides: Further ``(dotted key, value)`` overrides.
        echo: Line printer.
        progress: Engine progress bar.

    Returns:
        The :class:`CompareResult`; its rows carry ``<metric>_mean`` / ``_std`` for ``map``, ``map_50``, ``map_75``
        or ``miou``, ``pixel_acc``, and ``minutes`` (mean training wall time per run).
    """
    from ..engine import load_resume_config, resolve_config, train
    from ..engine.config import TASK_RECIPES

    if task not in _DENSE_PRIMARY:
        raise AnalysisError(f'unknown dense task {task!r}', 'use --task detection or segmentation')
    if not entries:
        raise AnalysisError('nothing to compare', 'pass --models none se ca ... (attentions) or fcos fcos+ca ...')
    if seeds < 1:
        raise AnalysisError(f'--seeds must be >= 1, got {seeds}')
    entries = list(dict.fromkeys(entries))
    out = Path(output).expanduser()
    base: list[tuple[str, Any]] = [('task', task)]
    for key, value in (('data.name', data), ('data.data_dir', data_dir), ('train.epochs', epochs),
                       ('train.batch_size', batch_size), ('train.device', device), ('train.threads', threads)):
        if value is not None:
            base.append((key, str(value) if key == 'data.data_dir' else value))
    reserved = {'train.seed', 'output.dir', 'output.name', 'task'}
    bad = [k for k, _ in overrides if k in reserved]
    if bad:
        raise AnalysisError(f'{bad[0]} is set by compare itself', 'drop it from --set')
    plan = []
    for entry in entries:
        name, attn = _split_entry(entry)
        chosen = [('model.name', name)] if name else []
        for seed in range(seeds):
            cfg = resolve_config(recipe or TASK_RECIPES[task], [
                *base, *overrides, *chosen, ('model.kwargs.attn', attn), ('train.seed', seed),
                ('output.dir', str(out / entry)), ('output.name', f'seed{seed}')])
            plan.append((entry, seed, out / entry / f'seed{seed}', cfg))
        _check_buildable(cfg)  # an attention the backbone cannot hold fails before any run trains

    runs: list[dict[str, Any]] = []
    trained = 0
    for i, (entry, seed, run_dir, cfg) in enumerate(plan, 1):
        status = run_status(run_dir)
        head = f'[compare {i}/{len(plan)}] {entry} seed {seed}'
        if status == 'finished':
            _check_same_config(run_dir, cfg)
            echo(f'{head}: finished earlier, skipped ({run_dir})')
            runs.append(dict(model=entry, seed=seed, run_dir=str(run_dir), action='skipped'))
            continue
        if status == 'resumable':
            _check_same_config(run_dir, cfg)
            echo(f'{head}: resuming {run_dir}')
            mutable = [(k, v) for k, v in [*base, *overrides] if k in ('train.epochs', 'data.data_dir',
                                                                      'train.device', 'train.threads')]
            outcome = train(load_resume_config(run_dir, mutable), resume_dir=run_dir, echo=echo, progress=progress)
            action = 'resumed'
        else:
            if status == 'empty':
                shutil.rmtree(run_dir)
            echo(f'{head}: training into {run_dir}')
            outcome = train(cfg, echo=echo, progress=progress)
            action = 'trained'
        if outcome.stop_signal is not None:
            runs.append(dict(model=entry, seed=seed, run_dir=str(run_dir), action='stopped'))
            return CompareResult(rows=[], runs=runs, trained=trained + 1, stop_signal=outcome.stop_signal)
        trained += 1
        runs.append(dict(model=entry, seed=seed, run_dir=str(run_dir), action=action))

    key = _DENSE_PRIMARY[task]
    for r in runs:
        info = read_run_result(Path(r['run_dir']))
        meta_metrics = _last_metrics(Path(r['run_dir']))
        r.update({k: meta_metrics.get(k) for k in _DENSE_KEYS[task]}, epochs=info['epochs'],
                 **{f'best_{key}': info.get(f'best_{key}')},
                 minutes=sum(h.get('seconds') or 0.0 for h in _history(Path(r['run_dir']))) / 60.0)
    rows = []
    for entry in entries:
        mine = [r for r in runs if r['model'] == entry]
        info = read_run_result(Path(mine[0]['run_dir']))
        kwargs = info['model_kwargs']
        row = dict(model=entry, attn=kwargs.get('attn') or 'none', seeds=len(mine), epochs=info['epochs'],
                   backbone=kwargs.get('backbone'), params=info['params'], macs=info['macs'],
                   train_img_s=_mean_std([read_run_result(Path(r['run_dir']))['train_img_s'] for r in mine])[0],
                   minutes=_mean_std([r['minutes'] for r in mine])[0])
        for k in (*_DENSE_KEYS[task], f'best_{key}'):
            row[f'{k}_mean'], row[f'{k}_std'] = _mean_std([r.get(k) for r in mine])
        rows.append(row)
    result = CompareResult(rows=rows, runs=runs, trained=trained)
    first = plan[0][3]
    n_epochs = first['train']['epochs']
    title = (f'{first["data"]["name"]}, {first["model"]["name"]}'
             f'{" on " + first["model"]["backbone"] if first["model"]["backbone"] else ""}, recipe {first["name"]}, '
             f'{n_epochs} epoch{"" if n_epochs == 1 else "s"}')
    result.files = _write_outputs(result, out, title, task)
    return result


def _check_buildable(cfg: Mapping[str, Any]) -> None:
    """Build a dense config's model on the meta device (no memory, no weights): unknown names, a model of the other
    task or an attention the backbone cannot hold fail here, in one line."""
    from ..engine.builder import check_config
    from ..engine.tasks import build_task_model

    check_config(cfg)
    m = cfg['model']
    with torch.device('meta'):
        build_task_model(m['name'], {'num_classes': 2, 'backbone': m['backbone'], 'output_stride': m['output_stride'],
                                     **m['kwargs']}, pretrained=False)


def _last_metrics(run_dir: Path) -> dict[str, Any]:
    """The metrics of the last evaluated epoch of a run (from ``metrics.jsonl``)."""
    history = [r for r in _history(run_dir) if r.get('map') is not None or r.get('miou') is not None]
    return history[-1] if history else {}


def format_markdown_dense(result: CompareResult, title: str, task: str) -> str:
    """The results table of a detection or segmentation comparison as Markdown."""
    keys = _DENSE_KEYS[task]
    key = _DENSE_PRIMARY[task]
    heads = ' | '.join(f'{_DENSE_LABELS[k]} (%)' for k in keys)
    lines = [
        f'# Comparison: {title}',
        '',
        f'| model | attention | seeds | {heads} | best {_DENSE_LABELS[key]} (%) | params (M) | GMACs | '
        'train img/s | minutes per run |',
        '|:---|:---|---:|' + '---:|' * (len(keys) + 5),
    ]

    def pct(row: Mapping[str, Any], k: str) -> str:
        mean, std = row.get(f'{k}_mean'), row.get(f'{k}_std')
        if mean is None:
            return '-'
        return f'{100 * mean:.2f} ± {100 * (std or 0.0):.2f}'

    for r in result.rows:
        cells = ' | '.join(pct(r, k) for k in keys)
        macs = r['macs'] / 1e9 if r.get('macs') else None
        lines.append(f'| {r["model"]} | {r["attn"]} | {r["seeds"]} | {cells} | {pct(r, "best_" + key)} | '
                     f'{_fmt(r["params"] / 1e6, ".3f")} | {_fmt(macs, ".3f")} | {_fmt(r["train_img_s"], ".1f")} | '
                     f'{_fmt(r["minutes"], ".2f")} |')
    metric = ('COCO box AP, AP50 and AP75 from pycocotools on the validation split' if task == 'detection'
              else 'mean IoU over the classes present (background included) and pixel accuracy, 255 ignored')
    lines += [
        '',
        f'{metric}, after the last epoch (and the best epoch\'s primary metric), in percent, mean ± sample standard '
        'deviation over seeds 0..N-1. GMACs per image at the recipe\'s input size (conv/linear/matmul; 0 when the '
        'model could not be counted). train img/s and minutes: measured during training, so they depend on what '
        'else ran on the machine.',
    ]
    return '\n'.join(lines) + '\n'
