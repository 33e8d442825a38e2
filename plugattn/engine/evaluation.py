"""Evaluation: the test loop of training (:func:`evaluate`), and a saved checkpoint rebuilt from its metadata and
run on a test split (:func:`evaluate_checkpoint`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .builder import build_model
from .checkpoint import BEST_FILE, LAST_FILE, check_state_dict_fits, is_run_dir, read_run_info, read_weights
from .distributed import DistContext, all_reduce_sum, resolve_device
from .errors import EngineError
from .logger import Progress
from .metrics import topk_correct
from .preprocess import checkpoint_classes, preprocessing_from_meta

__all__ = ['evaluate', 'evaluate_checkpoint', 'load_checkpoint_model', 'resolve_checkpoint']


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: Any,
        ctx: DistContext,
        *,
        amp: tuple[bool, torch.dtype] = (False, torch.float32),
        channels_last: bool = False,
        progress: bool = False,
        desc: str = 'eval',
) -> dict[str, float]:
    """Test loss, top-1 and top-5 (percent) of a model on a loader, summed over all processes.

    Each process evaluates its shard; loss sums, correct counts and sample counts are all-reduced. With W
    processes the test split is padded by at most W - 1 repeated samples (DistributedSampler convention).

    Returns:
        ``{'test_loss', 'top1', 'top5', 'samples'}``.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    count = 0
    with Progress(len(loader), desc, enabled=progress and ctx.is_main, leave=False,
                  interval=10**9) as bar:
        for x, y in loader:
            x = x.to(ctx.device, non_blocking=True)
            y = y.to(ctx.device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(ctx.device.type, dtype=amp[1], enabled=amp[0]):
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction='sum').double()
            correct += torch.tensor(topk_correct(logits, y, (1, 5)), dtype=torch.float64, device=ctx.device)
            count += y.shape[0]
            bar.update()
    loss, c1, c5, n = all_reduce_sum([loss_sum.item(), *correct.tolist(), count], ctx)
    model.train(was_training)
    n = max(n, 1.0)
    return {'test_loss': loss / n, 'top1': 100.0 * c1 / n, 'top5': 100.0 * c5 / n, 'samples': int(n)}




def resolve_checkpoint(path: str | Path, which: str = 'best') -> Path:
    """The weights file of a run directory (``best`` or ``last``), or ``path`` itself when it is a file.

    Raises:
        EngineError: Missing path, a folder that is not a run, or a run without that checkpoint.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise EngineError(f'checkpoint {path} does not exist', 'pass a run directory or a .safetensors file')
    if not is_run_dir(path):
        read_run_info(path)  # raises the detailed "not a run directory" error
    name = BEST_FILE if which == 'best' else LAST_FILE
    target = path / name
    if not target.is_file():
        other = path / (LAST_FILE if which == 'best' else BEST_FILE)
        fix = f'pass {other}' if other.is_file() else 'train the run for at least one epoch first'
        raise EngineError(f'run {path} has no {name}', fix)
    return target


def load_checkpoint_model(path: str | Path, which: str = 'best') -> tuple[nn.Module, dict[str, Any], Path]:
    """Rebuild the model a plugattn checkpoint was trained as and load its weights.

    Args:
        path: Run directory or ``.safetensors`` file written by the training engine.
        which: ``'best'`` or ``'last'`` when ``path`` is a run directory.

    Returns:
        ``(model, meta, file)``: the model (train mode, on the CPU), the checkpoint metadata and the weights file.

    Raises:
        EngineError: Missing or unusable checkpoint, or weights that do not fit the recorded architecture.
    """
    file = resolve_checkpoint(path, which)
    state, meta = read_weights(file)
    name = meta['model']
    if meta.get('task') not in (None, 'classification'):
        raise EngineError(f'checkpoint {file} holds a {meta["task"]} model ({name}), not a classification model',
                          'use it with plugattn eval or plugattn predict, which read detection and segmentation '
                          'checkpoints')
    kwargs = dict(meta.get('model_kwargs') or {})
    data = meta.get('data') or {}
    # checkpoints record num_classes/in_chans in model_kwargs; the data entry is the fallback for older ones
    num_classes = kwargs.pop('num_classes', data.get('num_classes'))
    in_chans = kwargs.pop('in_chans', (data.get('input_size') or [None])[0])
    if num_classes is None or in_chans is None:
        raise EngineError(f'checkpoint {file} does not record its number of classes and input channels',
                          'rebuild the model with create_model(NAME, num_classes=N, in_chans=C) and load the weights')
    kwargs.pop('pretrained', None)  # the checkpoint holds the weights: never download again
    net = build_model(name, int(num_classes), int(in_chans), kwargs)
    check_state_dict_fits(net, state, str(file), name, name)
    net.load_state_dict(state)
    _describe_model(net, meta)
    return net, meta, file


def _describe_model(net: nn.Module, meta: dict[str, Any]) -> None:
    """Put the checkpoint's preprocessing and class names into the model's ``pretrained_cfg`` / ``default_cfg``
    (timm's keys), so that e.g. ``timm.data.resolve_data_config(model=net)`` sees the training preprocessing."""
    try:
        prep = preprocessing_from_meta(meta, net)
    except EngineError:  # e.g. a 4-channel model: no image preprocessing to describe
        return
    cfg = dict(getattr(net, 'pretrained_cfg', None) or getattr(net, 'default_cfg', None) or {})
    cfg.update(input_size=prep.input_size, mean=prep.mean, std=prep.std, interpolation=prep.interpolation,
               crop_pct=prep.crop_pct, crop_mode='squash' if prep.resize_mode == 'stretch' else 'center')
    classes = checkpoint_classes(meta)
    if classes:
        cfg['label_names'] = tuple(classes)
    net.pretrained_cfg = net.default_cfg = cfg


def _check_same_classes(file: Path, meta: dict[str, Any], info: Any) -> None:
    """Refuse a dataset whose classes are not the checkpoint's (see :func:`evaluate_checkpoint`)."""
    trained = checkpoint_classes(meta)
    given = list(info.classes) if info.classes else None
    trained_on = (meta.get('data') or {}).get('name')
    fix = (f'evaluate on the data it was trained on ({trained_on}), or pass --allow-class-mismatch to evaluate '
           'anyway')
    if trained is not None and given is not None:
        if trained == given:
            return
        diff = next((i for i, (a, b) in enumerate(zip(trained, given)) if a != b), min(len(trained), len(given)))
        shown = (f'class {diff} is {trained[diff]!r} in the checkpoint but {given[diff]!r} in {info.name}'
                 if diff < min(len(trained), len(given)) else f'{len(trained)} vs {len(given)} classes')
        raise EngineError(f'checkpoint {file} was trained on other classes than {info.name} has ({shown})', fix)
    if trained_on is not None and info.name != trained_on:
        raise EngineError(f'checkpoint {file} was trained on {trained_on}, not {info.name}, and the class names to '
                          'compare are unknown', fix)


def evaluate_checkpoint(
        path: str | Path,
        *,
        which: str = 'best',
        model: str | None = None,
        data: str | None = None,
        data_dir: str | None = None,
        batch_size: int | None = None,
        device: str = 'auto',
        amp: bool = False,
        channels_last: bool = False,
        progress: bool = False,
        allow_class_mismatch: bool = False,
) -> dict[str, Any]:
    """Top-1, top-5 and loss of a checkpoint on a dataset's test split.

    A dataset whose classes differ from the checkpoint's (other names or order; or, when either side does not know
    its names, another dataset) is refused unless ``allow_class_mismatch``: its accuracy would be meaningless.

    Args:
        path: Run directory or ``.safetensors`` file.
        which: ``'best'`` or ``'last'`` when ``path`` is a run directory.
        model: Expected architecture (default: the one in the checkpoint); a different one is an error.
        data: Dataset (default: the one the checkpoint was trained on).
        data_dir: Dataset folder (default: the training run's).
        batch_size: Evaluation batch size (default: the run's).
        device: Device spec.
        amp: bfloat16 (CPU) / float16 (CUDA) autocast.
        channels_last: channels_last inputs and weights.
        progress: Show a progress bar.
        allow_class_mismatch: Evaluate even when the dataset's classes differ from the checkpoint's.

    Returns:
        ``{'checkpoint', 'model', 'data', 'epoch', 'top1', 'top5', 'test_loss', 'samples'}``.

    Raises:
        EngineError: Unusable checkpoint, wrong architecture, class-count or class-name mismatch, or a data problem.
    """
    from ..data import AugConfig, build_loader, get_dataset_info

    if batch_size is not None and batch_size < 1:
        raise EngineError(f'--batch-size must be >= 1, got {batch_size}', 'pass a positive batch size')
    net, meta, file = load_checkpoint_model(path, which)
    name = meta['model']
    if model is not None and model != name:
        raise EngineError(f'checkpoint {file} holds {name} weights, not {model}',
                          f'drop --model or pass --model {name}')
    dmeta = meta.get('data') or {}
    data_name = data or dmeta.get('name')
    if not data_name:
        raise EngineError(f'checkpoint {file} does not say which dataset it was trained on', 'pass --data NAME')
    info = get_dataset_info(data_name, data_dir or dmeta.get('data_dir'))
    if net.num_classes != info.num_classes or net.in_chans != info.in_chans:
        raise EngineError(
            f'checkpoint {file} expects {net.num_classes} classes x {net.in_chans} channels but {info.name} has '
            f'{info.num_classes} classes x {info.in_chans} channels',
            f'evaluate on the dataset it was trained on (--data {dmeta.get("name", "NAME")})',
        )
    dev = resolve_device(device)
    net.to(dev)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    aug = AugConfig(image_size=dmeta.get('image_size'), interpolation=dmeta.get('interpolation') or 'bilinear')
    same_dir = data_dir or (dmeta.get('data_dir') if data_name == dmeta.get('name') else None)
    loader = build_loader(data_name, 'test', batch_size=batch_size or int(meta.get('eval_batch_size') or 256),
                          train=False, data_dir=same_dir, aug=aug, drop_last=False)
    if not allow_class_mismatch:
        _check_same_classes(file, meta, loader.info)
    amp_dtype = torch.float16 if dev.type == 'cuda' else torch.bfloat16
    metrics = evaluate(net, loader, DistContext(device=dev), amp=(amp, amp_dtype), channels_last=channels_last,
                       progress=progress)
    return {
        'checkpoint': str(file),
        'model': name,
        'data': loader.info.name,
        'epoch': meta.get('epoch'),
        'weights': meta.get('weights', 'model'),
        **metrics,
    }
