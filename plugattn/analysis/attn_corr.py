"""Gate values of every attention module over real images, and their correlation between layers of a stage.

How the gates are read: :class:`GateRecorder` registers a forward hook on every attention module; the hook calls the
module's ``gate`` method on the very arguments the forward received (``gate(x)``, ``gate(inner, x)`` or
``gate(x, state)``), so the modules are not changed and all three plug levels are handled the same way. Wrapping
``gate`` itself would not work: several modules (CBAM, CA, ELA) apply their factors inside ``forward`` without
calling ``gate``. In eval mode the recomputed gate is exactly the one the forward applied (a test checks
``forward(x) == x * gate``); it costs one extra evaluation of the (small) attention module per call.

Layers: a gate-level or block-level module belongs to the block that owns it; a stage-level module (DIA) is called
once per block of its stage, and each call is recorded as the layer of that block. Layer names are the block's
qualified name (``layer2.3``).

Correlation: each gate is reduced to a per-image channel vector (the spatial mean for spatial gates), and for every
pair of layers of the same stage (equal width) the Pearson correlation is computed on the flattened
(images x channels) vectors, as the DIA paper correlates the attention of layers in one stage.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..layers import BlockAttention, StageAttention
from ._common import AnalysisError, model_stages

__all__ = [
    'SATURATION',
    'CorrReport',
    'GateLayer',
    'GateRecorder',
    'attn_correlation',
    'collect_gates',
    'gate_correlation',
    'pearson_matrix',
]

SATURATION = (0.05, 0.95)  # a gate value below the first or above the second counts as saturated


@dataclass
class GateLayer:
    """One recorded layer and the running statistics of its raw gate values.

    Attributes:
        name: Qualified name of the block the gate acts in (``layer2.3``).
        module: Qualified name of the attention module (``layer2.3.attn``, or ``layer2.attn`` for DIA).
        stage: Name of the stage (``layer2``).
        block: Index of the block within its stage.
        level: ``'gate'``, ``'block'`` or ``'stage'``.
        attn: Class name of the attention module.
        vectors: Per-image channel vectors, one ``(B, C)`` tensor per batch.
        count: Number of raw gate values seen.
        total: Sum of the raw gate values.
        total_sq: Sum of their squares.
        saturated: Number of raw values below ``SATURATION[0]`` or above ``SATURATION[1]``.
    """

    name: str
    module: str
    stage: str
    block: int
    level: str
    attn: str
    vectors: list[Tensor] = field(default_factory=list, repr=False)
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    saturated: int = 0

    def add(self, gate: Tensor, channels: int) -> None:
        g = gate.detach().double()
        self.count += g.numel()
        self.total += g.sum().item()
        self.total_sq += g.square().sum().item()
        self.saturated += ((g < SATURATION[0]) | (g > SATURATION[1])).sum().item()
        v = g.mean((2, 3)) if g.ndim == 4 else g.reshape(g.shape[0], -1)
        if v.shape[1] == 1 and channels > 1:  # a purely spatial gate weights every channel alike
            v = v.expand(-1, channels)
        self.vectors.append(v.float().cpu())

    def matrix(self) -> Tensor:
        """All recorded per-image channel vectors, ``(N, C)``."""
        return torch.cat(self.vectors) if self.vectors else torch.empty(0, 0)

    def stats(self) -> dict[str, Any]:
        """Mean, standard deviation and saturated fraction of the raw gate values."""
        if not self.count:
            return dict(mean=None, std=None, saturated=None)
        mean = self.total / self.count
        var = max(self.total_sq / self.count - mean * mean, 0.0)
        return dict(mean=mean, std=math.sqrt(var), saturated=self.saturated / self.count)


def _level(m: nn.Module) -> str:
    if isinstance(m, StageAttention):
        return 'stage'
    if isinstance(m, BlockAttention):
        return 'block'
    return 'gate'


class GateRecorder:
    """Context manager recording the gate values of every attention module of a plugattn model.

    Use it in eval mode: the hook recomputes each gate, which in train mode would update the running statistics of
    the BatchNorm layers inside some modules (BA, CBAM, CA) a second time.

    Example:
        >>> with GateRecorder(model) as rec, torch.no_grad():
        ...     model(images)
        >>> rec.layers['layer1.0'].matrix().shape   # (images, channels)

    Args:
        model: A plugattn model or an attached torchvision / timm model (it needs stages and
            ``attention_modules()``).
    """

    def __init__(self, model: nn.Module) -> None:
        if not hasattr(model, 'attention_modules'):
            raise AnalysisError(f'{type(model).__name__} is not a plugattn model (no attention_modules)',
                                'pass a plugattn model or one with attention attached (plugattn.attach)')
        stages = model_stages(model)
        if not stages:
            raise AnalysisError(f'{type(model).__name__} has no stages to group its gates by',
                                'attn-corr needs a model with stages (ResNet, RegNet, ConvNeXt, transformers)')
        self.model = model
        self._stages = stages
        self.layers: dict[str, GateLayer] = {}
        self._handles: list[RemovableHandle] = []
        self._calls: dict[str, int] = {}
        self._place = self._locate()
        if not self._place:
            name = getattr(model, 'model_name', type(model).__name__)
            raise AnalysisError(f'{name} has no attention modules', 'pick a model with attention, e.g. se_resnet20')

    def _locate(self) -> dict[str, tuple[str, int | None, nn.Module | None]]:
        """Attention module name -> (stage name, block index or None for per-call, owning stage module)."""
        owner: dict[int, tuple[str, int | None, nn.Module]] = {}
        for sname, stage in self._stages:
            for bi, block in enumerate(stage):
                for m in block.modules():
                    owner.setdefault(id(m), (sname, bi, stage))
            for m in stage.modules():
                owner.setdefault(id(m), (sname, None, stage))  # shared per-stage unit
        place = {}
        for name, m in self.model.attention_modules().items():
            sname, bi, stage = owner.get(id(m), ('other', None, None))
            place[name] = (sname, bi, stage)
        return place

    def __enter__(self) -> GateRecorder:
        modules = self.model.attention_modules()
        for name, m in modules.items():
            sname, bi, stage = self._place[name]
            self._handles.append(m.register_forward_hook(self._hook(name, sname, bi), with_kwargs=True))
            if bi is None and stage is not None:
                self._handles.append(stage.register_forward_pre_hook(self._reset(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _reset(self, name: str) -> Callable[[nn.Module, tuple], None]:
        def pre_hook(module: nn.Module, args: tuple) -> None:
            self._calls[name] = 0

        return pre_hook

    def _hook(self, name: str, stage: str, block: int | None) -> Callable[[nn.Module, tuple, dict, Any], None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if block is None:  # one call per block of the stage
                bi = self._calls.get(name, 0)
                self._calls[name] = bi + 1
            else:
                bi = block
            layer_name = f'{stage}.{bi}' if stage != 'other' else name
            layer = self.layers.get(layer_name)
            if layer is None:
                layer = self.layers[layer_name] = GateLayer(
                    layer_name, name, stage, bi, _level(module), type(module).__name__)
            with torch.no_grad():
                gate = module.gate(*args, **kwargs)
            if isinstance(gate, tuple):  # stage level: (gate, state)
                gate = gate[0]
            layer.add(gate, int(getattr(module, 'channels', gate.shape[1])))

        return hook


def collect_gates(
        model: nn.Module,
        batches: Iterable[tuple[Tensor, Tensor]] | Iterable[Tensor],
        max_batches: int | None = None,
        device: str | torch.device = 'cpu',
) -> dict[str, GateLayer]:
    """Run ``model`` in eval mode over batches and record every gate.

    Args:
        model: A plugattn model.
        batches: An iterable of ``(images, labels)`` or of image tensors.
        max_batches: Stop after this many batches.
        device: Device to run on.

    Returns:
        The recorded layers by name, in forward order.
    """
    model.eval().to(device)
    with GateRecorder(model) as rec, torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images.to(device))
    if not rec.layers:
        raise AnalysisError('no batch was run', 'check the data set and --batches')
    return rec.layers


def pearson_matrix(vectors: list[np.ndarray]) -> np.ndarray:
    """Pearson correlation between every pair of equally shaped arrays (each flattened).

    A constant array has no defined correlation; its row and column are NaN except the diagonal (1).
    """
    flat = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in vectors])
    centred = flat - flat.mean(1, keepdims=True)
    norm = np.sqrt((centred ** 2).sum(1))
    with np.errstate(invalid='ignore', divide='ignore'):
        r = (centred @ centred.T) / np.outer(norm, norm)
    r = np.clip(r, -1.0, 1.0)
    np.fill_diagonal(r, 1.0)
    return r


@dataclass
class CorrReport:
    """Layer correlations of one model on one data set.

    Attributes:
        model: Model name.
        data: Data set name (or a description of the input).
        images: Number of images the gates were collected on.
        layers: Per-layer gate statistics (``name, module, stage, block, level, attn, channels, mean, std,
            saturated``) in forward order.
        stages: Per stage (``'stage@C'`` when a stage gates tensors of several widths C, e.g. MobileNetV2):
            ``layers`` (names), ``matrix`` (Pearson r, list of lists; ``None`` where undefined),
            ``mean_offdiag`` (mean over the layer pairs with a defined r), ``constant`` (layers whose gate is
            the same for every image and channel, e.g. an untrained SE whose one hidden unit is always 0: r is
            undefined for them).
        mean_offdiag: Mean correlation over all same-stage layer pairs of the model.
        figures: Heatmap PNGs written, by stage.
    """

    model: str
    data: str
    images: int
    layers: list[dict[str, Any]]
    stages: dict[str, dict[str, Any]]
    mean_offdiag: float | None
    figures: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(model=self.model, data=self.data, images=self.images, mean_offdiag=self.mean_offdiag,
                    stages=self.stages, layers=self.layers, figures=self.figures)

    def summary(self) -> str:
        """A short human-readable report."""
        lines = [f'{self.model} on {self.data}: gates of {len(self.layers)} layers over {self.images} images']
        lines.append('mean off-diagonal Pearson r (layers of the same stage):')
        for name, st in self.stages.items():
            note = f'  (constant gate, r undefined: {", ".join(st["constant"])})' if st['constant'] else ''
            lines.append(f'  {name:<10} {len(st["layers"]):>3} layers  r = {_fmt(st["mean_offdiag"])}{note}')
        lines.append(f'  {"overall":<10} {"":>10}  r = {_fmt(self.mean_offdiag)}')
        lines.append(f'{"layer":<12} {"attn":<26} {"mean":>7} {"std":>7} {"saturated":>10}')
        for ly in self.layers:
            sat = '-' if ly['saturated'] is None else f'{100 * ly["saturated"]:.1f} %'
            lines.append(f'{ly["name"]:<12} {ly["attn"]:<26} {_fmt(ly["mean"])} {_fmt(ly["std"])} {sat:>10}')
        for stage, path in self.figures.items():
            lines.append(f'heatmap {stage}: {path}')
        return '\n'.join(lines)


def _fmt(v: float | None) -> str:
    return '    nan' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:7.3f}'


def _clean(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def gate_correlation(layers: dict[str, GateLayer], model: str = '', data: str = '') -> CorrReport:
    """Correlation matrices per stage and gate statistics per layer from recorded gates."""
    by_stage: dict[str, list[GateLayer]] = {}
    for layer in layers.values():
        by_stage.setdefault(layer.stage, []).append(layer)
    groups: dict[str, list[GateLayer]] = {}
    for stage, group in by_stage.items():
        widths = sorted({ly.matrix().shape[1] for ly in group})
        for width in widths:  # layers of equal width (a MobileNet stage gates two widths: key 'stage@C')
            key = stage if len(widths) == 1 else f'{stage}@{width}'
            groups[key] = [ly for ly in group if ly.matrix().shape[1] == width]
    stages: dict[str, dict[str, Any]] = {}
    pairs: list[float] = []
    images = 0
    for stage, group in groups.items():
        group.sort(key=lambda ly: ly.block)
        mats = [ly.matrix().numpy() for ly in group]
        images = max(images, mats[0].shape[0])
        shapes = {m.shape for m in mats}
        if len(shapes) != 1:
            raise AnalysisError(f'gates of stage {stage} differ in shape {sorted(shapes)}',
                                'collect every layer over the same images')
        r = pearson_matrix(mats)
        iu = np.triu_indices(len(group), 1)
        off = r[iu]
        off = off[~np.isnan(off)]
        pairs.extend(off.tolist())
        stages[stage] = dict(
            layers=[ly.name for ly in group],
            constant=[ly.name for ly, m in zip(group, mats) if m.size and np.ptp(m) == 0],
            matrix=[[_clean(v) for v in row] for row in r.tolist()],
            mean_offdiag=float(off.mean()) if off.size else None,
        )
    stats = []
    for layer in layers.values():
        channels = layer.vectors[0].shape[1] if layer.vectors else 0
        stats.append(dict(name=layer.name, module=layer.module, stage=layer.stage, block=layer.block,
                          level=layer.level, attn=layer.attn, channels=channels, **layer.stats()))
    return CorrReport(model, data, images, stats, stages, float(np.mean(pairs)) if pairs else None)


def attn_correlation(
        model: nn.Module,
        data: str,
        *,
        data_dir: str | Path | None = None,
        batches: int = 10,
        batch_size: int = 100,
        image_size: int | None = None,
        output: str | Path | None = None,
        device: str | torch.device = 'cpu',
) -> CorrReport:
    """Collect gates over the test split of a data set and report their correlations (``plugattn attn-corr``).

    Args:
        model: A plugattn model whose input channels (and, for a trained one, classes) match the data.
        data: Data set name (``plugattn.data`` names: ``digits``, ``cifar10``, ...).
        data_dir: Folder searched first for the data set files.
        batches: Number of test batches.
        batch_size: Images per batch.
        image_size: Resize the images to this square size (e.g. the size a checkpoint was trained at).
        output: Folder for the heatmap PNGs (one per stage) and ``attn_corr.json``; ``None`` writes nothing.
        device: Device to run on.
    """
    from ..data import build_loader

    aug = {'image_size': image_size} if image_size else None
    loader = build_loader(data, 'test', batch_size=batch_size, train=False, data_dir=data_dir, aug=aug,
                          drop_last=False)
    in_chans = getattr(model, 'in_chans', None)
    if in_chans is not None and loader.info.in_chans != in_chans:
        raise AnalysisError(f'{data} has {loader.info.in_chans}-channel images but the model takes {in_chans}',
                            f'build the model with in_chans={loader.info.in_chans} or use another data set')
    layers = collect_gates(model, loader, batches, device)
    name = getattr(model, 'model_name', type(model).__name__)
    report = gate_correlation(layers, name, loader.info.name)
    if output is not None:
        report.figures = write_corr_outputs(report, output)
    return report


def write_corr_outputs(report: CorrReport, output: str | Path) -> dict[str, str]:
    """Write one heatmap PNG per stage of two or more layers and ``attn_corr.json`` into ``output``.

    Returns:
        The PNG paths by stage.
    """
    import json

    from .plots import plot_corr_heatmap

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    for stage, st in report.stages.items():
        if len(st['layers']) < 2:  # nothing to correlate
            continue
        path = out / f'{report.model}_{stage}_corr.png'
        matrix = np.array([[np.nan if v is None else v for v in row] for row in st['matrix']], dtype=float)
        blocks = [n.rsplit('.', 1)[-1] for n in st['layers']]
        plot_corr_heatmap(
            matrix, blocks, path,
            title=(f'{report.model}: gate correlation in {stage} ({report.data}, {report.images} images)\n'
                   f'mean off-diagonal r = {_fmt(st["mean_offdiag"]).strip()}'),
        )
        figures[stage] = str(path)
    report.figures = figures
    (out / f'{report.model}_attn_corr.json').write_text(json.dumps(report.to_dict(), indent=2) + '\n')
    return figures
