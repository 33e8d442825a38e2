"""The outcome of a training run and its one-screen summary."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ['TrainResult', 'format_summary', 'human_count']


@dataclass
class TrainResult:
    """Outcome of :func:`train` (returned on every rank; only rank 0 has ``run_dir`` files).

    Attributes:
        run_dir: The run directory (``None`` on ranks other than 0, and when a signal stopped the run before it was
            created).
        history: One record per finished epoch.
        best_top1: Best test top-1 (model or EMA) in percent; for detection and segmentation the best of their
            primary metric (COCO AP or mIoU, 0-1).
        best_epoch: Epoch (1-based) of ``best_top1``.
        params: Parameter count.
        macs: MACs at batch 1 (conv/linear/matmul only).
        input_size: ``(C, H, W)`` of the model input.
        wall_s: Seconds from ``t_start`` to the end.
        finished: All epochs done (False when stopped by ``stop_after`` or a signal).
        stop_signal: The signal that stopped the run, if any.
        resume_command: The command that continues the run (empty without a run directory).
    """

    run_dir: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_top1: float = 0.0
    best_epoch: int = 0
    params: int = 0
    macs: int = 0
    input_size: tuple[int, int, int] = (0, 0, 0)
    wall_s: float = 0.0
    finished: bool = False
    model_name: str = ''
    data_name: str = ''
    is_main: bool = True
    stop_signal: int | None = None
    resume_command: str = ''

    @property
    def exit_code(self) -> int:
        """0, or ``128 + signal number`` when a signal stopped the run (143 SIGTERM, 130 SIGINT, 129 SIGHUP)."""
        return 0 if self.stop_signal is None else 128 + int(self.stop_signal)


def human_count(n: float) -> str:
    """``n`` with a G/M/K suffix and two decimals (``1.23 M``)."""
    for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if n >= scale:
            return f'{n / scale:.2f} {unit}'
    return f'{n:.0f}'


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f'{h} h {m:02d} min {s:02d} s' if h else f'{m} min {s:02d} s'


def format_summary(result: TrainResult, cfg: Mapping[str, Any]) -> str:
    """The one-screen end-of-run summary."""
    last = next((r for r in reversed(result.history) if r.get('top1') is not None), {})
    c, h, w = result.input_size
    rule = '-' * 72
    lines = [
        rule,
        f'plugattn train: {"finished" if result.finished else "stopped"} - {result.model_name} on {result.data_name} '
        f'(recipe: {cfg["name"]} v{cfg["version"]})',
    ]
    label = '{:<32}'.format
    task = cfg.get('task', 'classification')
    if task != 'classification':
        from .taskinfo import metric_label, primary_metric, task_columns

        keys = task_columns(task)[2:-2]
        last = next((r for r in reversed(result.history) if r.get(keys[-1]) is not None), {})
        if last:
            shown = ', '.join(f'{metric_label(k)} {last[k]:.4f}' for k in keys if last.get(k) is not None)
            lines.append(f'  {label("final")}{shown}  (epoch {last["epoch"]})')
            primary = primary_metric(task)
            lines.append(f'  {label("best " + metric_label(primary))}{result.best_top1:.4f}  '
                         f'(epoch {result.best_epoch})')
    elif last:
        lines.append(f'  {label("final top-1")}{last["top1"]:.2f} %  (top-5 {last["top5"]:.2f} %, test loss '
                     f'{last["test_loss"]:.4f}, epoch {last["epoch"]})')
        if last.get('ema_top1') is not None:
            lines.append(f'  {label("EMA top-1")}{last["ema_top1"]:.2f} %')
        lines.append(f'  {label("best top-1")}{result.best_top1:.2f} %  (epoch {result.best_epoch})')
    done = result.history[-1]['epoch'] if result.history else 0
    lines += [
        f'  {label("epochs")}{done} / {cfg["train"]["epochs"]}',
        f'  {label("params")}{result.params:,}',
        f'  {label("MACs (conv/linear/matmul only)")}{human_count(result.macs)}  (batch 1, {c}x{h}x{w}, eval mode)',
        f'  {label("wall time")}{_duration(result.wall_s)}  ({result.wall_s:.1f} s, from process start)',
        f'  {label("run dir")}{result.run_dir or "none (stopped before it was created)"}',
        rule,
    ]
    if not result.finished and result.resume_command:
        lines.insert(-1, f'  continue with: {result.resume_command}')
    return '\n'.join(lines)

