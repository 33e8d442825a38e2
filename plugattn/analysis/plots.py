"""Figures of the analysis tools, with one colour per attention type across every figure.

matplotlib is an optional dependency (``plugattn[viz]``), imported inside the functions; figures are drawn on
``matplotlib.figure.Figure`` with the Agg canvas, so no global backend is switched and no window opens.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..layers import ATTN_REGISTRY
from ..layers.registry import FALLBACK_COLOR
from ._common import model_attn, require

__all__ = ['PLAIN_COLOR', 'attn_color', 'attn_label', 'plot_bench', 'plot_compare', 'plot_corr_heatmap']

# The plain backbone's colour; every attention's colour and label are registered with the module itself
# (plugattn.layers.register_attn), so figures agree on them and a new attention needs no entry here.
PLAIN_COLOR = '#7f7f7f'


def _attn_key(name: str) -> str:
    """Attention key of an attention key, ``'none'`` or a model name (``'none'`` for unknown names)."""
    return name if name == 'none' or name in ATTN_REGISTRY else model_attn(name)


def attn_color(name: str) -> str:
    """Colour of a model (by its attention type) or of an attention key (``'none'``: the plain backbone)."""
    key = _attn_key(name)
    if key == 'none':
        return PLAIN_COLOR
    return ATTN_REGISTRY[key].color if key in ATTN_REGISTRY else FALLBACK_COLOR


def attn_label(name: str) -> str:
    """Display label of a model's attention type or of an attention key (``'plain'`` for none)."""
    key = _attn_key(name)
    if key == 'none':
        return 'plain'
    return ATTN_REGISTRY[key].label if key in ATTN_REGISTRY else key


def _legend_handles(names: Sequence[str]) -> list[Any]:
    """One patch per attention type present, the plain backbone first, then in the order of ``names``."""
    from matplotlib.patches import Patch

    keys = sorted(dict.fromkeys(_attn_key(n) for n in names), key=lambda k: k != 'none')
    return [Patch(color=attn_color(k), label=attn_label(k)) for k in keys]


def _figure(width: float, height: float) -> Any:
    require('matplotlib', 'plotting')
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout='constrained')
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path, dpi: int = 100) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return str(path)


def _legend(ax: Any, names: Sequence[str], outside: bool = False) -> None:
    """Legend with one patch per attention type present."""
    handles = _legend_handles(names)
    if handles:
        place = dict(loc='upper left', bbox_to_anchor=(1.01, 1.0)) if outside else dict(loc='best')
        ax.legend(handles=handles, title='attention', fontsize=8, title_fontsize=8, **place)


def plot_corr_heatmap(matrix: np.ndarray, blocks: Sequence[str], path: str | Path, title: str) -> str:
    """Heatmap of a layer-by-layer Pearson correlation matrix (colour scale fixed to [-1, 1]).

    Args:
        matrix: ``(L, L)`` correlations; NaN cells are drawn blank.
        blocks: Tick labels (block indices).
        path: PNG to write.
        title: Figure title.
    """
    n = len(blocks)
    size = min(4.0 + 0.25 * n, 12.0)
    fig = _figure(size + 1.2, size)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap='RdBu_r', vmin=-1.0, vmax=1.0, interpolation='nearest')
    step = max(1, n // 20)
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [blocks[i] for i in ticks])
    ax.set_yticks(ticks, [blocks[i] for i in ticks])
    ax.set_xlabel('layer (block index)')
    ax.set_ylabel('layer (block index)')
    ax.set_title(title, fontsize=9)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                if np.isfinite(matrix[i, j]):
                    ax.text(j, i, f'{matrix[i, j]:.2f}', ha='center', va='center', fontsize=7,
                            color='white' if abs(matrix[i, j]) > 0.6 else 'black')
    fig.colorbar(im, ax=ax, label='Pearson r', shrink=0.85)
    return _save(fig, path)


def plot_compare(
        rows: Sequence[dict[str, Any]],
        path: str | Path,
        title: str,
        metric: str = 'top1',
        ylabel: str = 'top-1 accuracy (%)',
) -> str:
    """Bar chart of mean ± std of a metric per model, coloured by attention type.

    When a plain backbone (``attn == 'none'``) is among the rows, a second panel shows each model's difference to
    it in percentage points, where gaps of a few tenths are visible (the top panel's bars start at 0, since a cut
    axis would exaggerate them); the grey band is the backbone's own ± std.

    Args:
        rows: Dicts with ``model``, ``{metric}_mean``, ``{metric}_std``, ``seeds`` and optionally ``attn``.
        path: PNG to write.
        title: Figure title.
        metric: Metric key prefix.
        ylabel: Y-axis label with its unit.
    """
    names = [r['model'] for r in rows]
    means = np.array([np.nan if r.get(f'{metric}_mean') is None else r[f'{metric}_mean'] for r in rows], float)
    stds = np.array([0.0 if r.get(f'{metric}_std') is None else r[f'{metric}_std'] for r in rows], float)
    base = next((i for i, r in enumerate(rows) if r.get('attn') == 'none' and np.isfinite(means[i])), None)
    fig = _figure(max(4.5, 0.9 * len(rows) + 2.0), 6.6 if base is not None else 4.2)
    axes = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2)) if base is not None else [fig.add_subplot()]
    x = np.arange(len(rows))
    colors = [attn_color(n) for n in names]
    bar_style = dict(capsize=4, color=colors, edgecolor='black', linewidth=0.5, error_kw=dict(elinewidth=1))
    ax = axes[0]
    ax.bar(x, np.nan_to_num(means), yerr=stds, **bar_style)
    for xi, m, s in zip(x, means, stds):
        if np.isfinite(m):
            ax.text(xi, m + s, f'{m:.2f}', ha='center', va='bottom', fontsize=8)
    finite = means[np.isfinite(means)]
    if finite.size:
        hi = float(np.max(finite + stds[np.isfinite(means)]))
        ax.set_ylim(0.0, hi * 1.1 if hi > 0 else 1.0)
    seeds = sorted({int(r.get('seeds', 0)) for r in rows})
    n_seeds = '/'.join(map(str, seeds))
    ax.set_ylabel(ylabel)
    ax.set_title(f'{title}\n(mean ± std over {n_seeds} seed{"" if seeds == [1] else "s"})', fontsize=10)
    ax.grid(axis='y', alpha=0.3)
    _legend(ax, names, outside=True)
    if base is not None:
        ax = axes[1]
        delta = means - means[base]
        ax.axhspan(-stds[base], stds[base], color='#d0d0d0', alpha=0.6, lw=0, label=f'{names[base]} ± std')
        ax.axhline(0.0, color='black', lw=0.8)
        ax.bar(x, np.nan_to_num(delta), yerr=stds, **bar_style)
        for xi, d, sd in zip(x, delta, stds):
            if np.isfinite(d) and xi != base:  # beyond the error bar's end
                ax.text(xi, d + sd if d >= 0 else d - sd, f'{d:+.2f}', ha='center', va='bottom' if d >= 0 else 'top',
                        fontsize=8)
        lim = float(np.nanmax(np.abs(delta) + stds)) if np.isfinite(delta).any() else 0.0
        ax.set_ylim(-1.25 * lim - 0.05, 1.25 * lim + 0.05)
        ax.set_ylabel(f'difference to {names[base]}\n(percentage points)')
        ax.grid(axis='y', alpha=0.3)
        ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
    axes[-1].set_xticks(x, names, rotation=30 if len(rows) > 3 else 0, ha='right' if len(rows) > 3 else 'center')
    axes[-1].set_xlabel('model')
    return _save(fig, path)


def plot_bench(records: Sequence[dict[str, Any]], path: str | Path, title: str) -> str:
    """Bar chart of the inference and training-step time ratios to the plain backbone (1 = no overhead).

    Args:
        records: Dicts with ``model``, ``infer_ratio`` and ``train_ratio`` (``BenchRecord.to_dict()``); their
            ``*_ratio_lo`` / ``*_ratio_hi`` confidence intervals, when present, become error bars.
        path: PNG to write.
        title: Figure title.
    """
    from matplotlib.patches import Patch

    names = [r['model'] for r in records]
    fig = _figure(max(5.0, 0.6 * len(records) + 3.5), 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(records))
    width = 0.4
    colors = [attn_color(n) for n in names]
    infer = [r.get('infer_ratio') or np.nan for r in records]
    train = [r.get('train_ratio') or np.nan for r in records]

    def interval(kind: str, mid: list[float]) -> np.ndarray | None:
        """Error bars from the confidence interval of the ratio, where the records have one."""
        lo = [r.get(f'{kind}_ratio_lo') for r in records]
        hi = [r.get(f'{kind}_ratio_hi') for r in records]
        if any(v is None for v in lo + hi):
            return None
        return np.array([np.subtract(mid, lo), np.subtract(hi, mid)])

    err = dict(ecolor='#333333', capsize=2, error_kw={'linewidth': 0.8})
    ax.bar(x - width / 2, infer, width, color=colors, edgecolor='black', linewidth=0.5, yerr=interval('infer', infer),
           **err)
    ax.bar(x + width / 2, train, width, color=colors, edgecolor='white', linewidth=0.0, hatch='///',
           yerr=interval('train', train), **err)
    ax.axhline(1.0, color='black', linewidth=0.8, linestyle='--')
    ax.set_xticks(x, names, rotation=35, ha='right')
    ax.set_ylabel('time / plain backbone time (ratio)')
    ax.set_xlabel('model')
    ax.set_title(title, fontsize=10)
    ax.grid(axis='y', alpha=0.3)
    handles = _legend_handles(names)
    handles += [Patch(facecolor='#bbbbbb', edgecolor='black', linewidth=0.5, label='inference'),
                Patch(facecolor='#bbbbbb', edgecolor='white', hatch='///', label='training step')]
    ax.legend(handles=handles, fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)
