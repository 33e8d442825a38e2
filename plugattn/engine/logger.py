"""Run logs (``summary.csv``, ``metrics.jsonl``, TensorBoard, ``curves.png``) and console progress.

The log files are rewritten from the full per-epoch history after every epoch (atomically), so after a resume they
hold exactly the epochs of the checkpoint, never a duplicated or half-written row. TensorBoard and matplotlib are
optional and imported only when used.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .checkpoint import atomic_write_bytes, atomic_write_text

__all__ = ['CSV_COLUMNS', 'Progress', 'RunLogger', 'plot_curves']

CSV_COLUMNS = ('epoch', 'train_loss', 'test_loss', 'top1', 'top5', 'lr', 'seconds')


def _fmt(value: Any) -> str:
    if value is None:
        return ''
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)


class RunLogger:
    """Writes the per-epoch logs of a run directory (call it on rank 0 only).

    Args:
        run_dir: The run directory.
        tensorboard: Write TensorBoard event files when ``tensorboard`` is installed.
        plots: Write ``curves.png`` when ``matplotlib`` is installed.
        title: Title of the plots.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, plots: bool = True, title: str = '',
                 task: str = 'classification') -> None:
        self.run_dir = Path(run_dir)
        self.title = title
        self.task = task
        self.plots = plots and importlib.util.find_spec('matplotlib') is not None
        self._tb = None
        self._tb_wanted = tensorboard and importlib.util.find_spec('tensorboard') is not None

    def _writer(self, purge_step: int | None) -> Any:
        if self._tb is None and self._tb_wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / 'tb'), purge_step=purge_step)
            except Exception:  # a broken tensorboard install must not stop training
                self._tb_wanted = False
        return self._tb

    def missing_files(self) -> list[str]:
        """The log files :meth:`log_epoch` writes that the run directory lacks."""
        names = ['summary.csv', 'metrics.jsonl', *(['curves.png'] if self.plots else [])]
        return [n for n in names if not (self.run_dir / n).is_file()]

    def log_epoch(self, history: Sequence[dict[str, Any]]) -> None:
        """Rewrite ``summary.csv``/``metrics.jsonl``/``curves.png`` from ``history`` and add its last record to
        TensorBoard."""
        from .taskinfo import task_columns

        columns = task_columns(self.task)
        extra = [f'ema_{k}' for k in columns[2:-2] if any(f'ema_{k}' in r for r in history)]
        if self.task == 'classification':
            extra = [k for k in ('ema_top1', 'ema_top5', 'ema_test_loss') if any(k in r for r in history)]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator='\n')
        writer.writerow([*columns, *extra])
        for rec in history:
            writer.writerow([_fmt(rec.get(k)) for k in (*columns, *extra)])
        atomic_write_text(self.run_dir / 'summary.csv', buf.getvalue())
        atomic_write_text(self.run_dir / 'metrics.jsonl', ''.join(json.dumps(r) + '\n' for r in history))
        if history:
            last = history[-1]
            tb = self._writer(purge_step=int(last['epoch']))
            if tb is not None:
                for key, value in last.items():
                    if key != 'epoch' and isinstance(value, (int, float)) and value is not None:
                        tb.add_scalar(key, value, int(last['epoch']))
                tb.flush()
        if self.plots:
            try:
                atomic_write_bytes(self.run_dir / 'curves.png', plot_curves(history, self.title, self.task))
            except Exception:  # plotting is a convenience; never fail a run over it
                self.plots = False

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_curves(history: Sequence[dict[str, Any]], title: str = '', task: str = 'classification') -> bytes:
    """PNG bytes of loss and the test metrics vs epoch (needs matplotlib): top-1/top-5 accuracy, COCO AP/AP50/AP75
    or mIoU/pixel accuracy."""
    import matplotlib

    matplotlib.use('Agg', force=False)
    from matplotlib.figure import Figure

    epochs = [r['epoch'] for r in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_acc = fig.subplots(1, 2)

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r['epoch'], r[key]) for r in history if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    ax_loss.plot(epochs, [r['train_loss'] for r in history], marker='o', label='train loss')
    for key, label in (('test_loss', 'test loss'), ('ema_test_loss', 'test loss (EMA)')):
        xs, ys = series(key)
        if xs:
            ax_loss.plot(xs, ys, marker='s', label=label)
    ax_loss.set_title('Loss')
    ax_loss.set_xlabel('epoch')
    ax_loss.set_ylabel('cross-entropy loss (nats)' if task != 'detection' else "the detector's summed losses")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    curves, heading, unit = {
        'classification': ((('top1', 'test top-1'), ('top5', 'test top-5'), ('ema_top1', 'test top-1 (EMA)')),
                           'Test accuracy', 'accuracy (%)'),
        'detection': ((('map', 'AP'), ('map_50', 'AP50'), ('map_75', 'AP75'), ('ema_map', 'AP (EMA)')),
                      'Test COCO AP', 'AP (pycocotools, 0-1)'),
        'segmentation': ((('miou', 'mIoU'), ('pixel_acc', 'pixel accuracy'), ('ema_miou', 'mIoU (EMA)')),
                         'Test mIoU', 'fraction (0-1)'),
    }[task]
    for key, label in curves:
        xs, ys = series(key)
        if xs:
            ax_acc.plot(xs, ys, marker='o', label=label)
    ax_acc.set_title(heading)
    ax_acc.set_xlabel('epoch')
    ax_acc.set_ylabel(unit)
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format='png')
    return out.getvalue()


class Progress:
    """Console progress of one loop: a tqdm bar on a terminal, plain periodic lines otherwise.

    Args:
        total: Number of iterations.
        desc: Prefix, e.g. ``'epoch 1/3'``.
        enabled: Print anything at all (False on ranks other than 0).
        tty: Use a tqdm bar (default: whether ``stream`` is a terminal).
        interval: Iterations between plain lines.
        stream: Output stream (default ``sys.stdout``).
        leave: Keep the finished bar on screen.
    """

    def __init__(
            self,
            total: int,
            desc: str,
            *,
            enabled: bool = True,
            tty: bool | None = None,
            interval: int = 50,
            stream: TextIO | None = None,
            leave: bool = True,
    ) -> None:
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = (self.stream.isatty() if tty is None else tty) and enabled
        self.interval = max(1, interval)
        self.count = 0
        self.t0 = time.perf_counter()
        self.bar = None
        if self.tty:
            import shutil

            from tqdm import tqdm

            # A pseudo-terminal without a size (CI, `script`) reports 0x0, which makes tqdm hide the bar.
            sized = shutil.get_terminal_size((0, 0)).columns >= 40
            self.bar = tqdm(total=total, desc=desc, file=self.stream, leave=leave, dynamic_ncols=sized,
                            ncols=None if sized else 100, nrows=None if sized else 24, unit='it', smoothing=0.1)

    def update(self, n: int = 1, samples: int = 0, **postfix: Any) -> None:
        """Advance by ``n`` iterations; ``postfix`` values are shown (floats with 4 significant digits)."""
        self.count += n
        if not self.enabled:
            return
        shown = {k: (f'{v:.4g}' if isinstance(v, float) else v) for k, v in postfix.items() if v is not None}
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(n)
        elif self.count % self.interval == 0 and self.count < self.total:
            rate = ''
            if samples:
                rate = f'  {samples / max(time.perf_counter() - self.t0, 1e-9):.0f} img/s'
            items = ''.join(f'  {k} {v}' for k, v in shown.items())
            self.write(f'{self.desc}  [{self.count}/{self.total}]{items}{rate}')

    def write(self, line: str) -> None:
        """Print a line without breaking the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Finish the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

