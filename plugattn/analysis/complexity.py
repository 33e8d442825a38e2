"""Model cost: parameters, MACs, and inference / training-step time and memory against the plain backbone.

MACs follow specs D11: multiply-adds of the conv, linear and matmul ops, counted with
``torch.utils.flop_counter.FlopCounterMode`` (its FLOPs / 2) on one image in eval mode. Normalisation, pooling,
activations and the element-wise gating multiplies and additions are *not* counted (the counter ignores them), so an
attention module's overhead is its convs and linears only.

Timing: every model is measured in the same run as its plain backbone, with interleaved rounds after a warm-up
(``A B C A B C ...``, at least five by default), and the report gives the minimum, median and maximum per-batch time
and the ratio to the backbone: the median over the rounds of the model's time divided by the backbone's time in the
same round, with a distribution-free confidence interval of that median (order statistics of the per-round ratios;
see :func:`median_interval`), so a shared machine's round-to-round swings show as a wide interval instead of a
misleading point. On the CPU the clock is the process CPU time
(:func:`time.process_time`) at one intra-op thread by default, so time the process spends waiting for a core on a
shared machine is not counted; on CUDA it is the wall clock between synchronisations. Models and inputs are in
``channels_last`` memory format by default (the layout fast convolution kernels prefer). The load average before and
after the run is recorded with the results.
Memory is the peak of what torch's allocator holds *above what was live before the measured call* (activations,
gradients, temporaries; not the weights and the optimizer state): ``torch.cuda.max_memory_allocated`` on CUDA, and on
the CPU the running sum of the allocation and free events that ``torch.profiler`` records (``profile_memory=True``).
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.builder import check_input_size
from ..engine.metrics import count_macs, count_params  # the one implementation of each, shared with the engine
from ..hub import create_model, get_model_entry
from ._common import AnalysisError

__all__ = [
    'MACS_NOTE',
    'MEMORY_NOTE',
    'TORCHVISION_PREFIX',
    'BenchRecord',
    'benchmark',
    'count_macs',
    'count_params',
    'format_records',
    'machine_description',
    'median_interval',
]

MACS_NOTE = (
    'MACs: multiply-adds of conv, linear and matmul ops per image, counted with torch.utils.flop_counter.'
    'FlopCounterMode (FLOPs / 2), eval mode; not counted: normalisation, pooling, activations, element-wise gating '
    'multiplies and additions.'
)
MEMORY_NOTE = (
    'Peak memory: the most memory torch allocated during one inference call / one training step above what was '
    'already live (activations, gradients, temporaries; weights and optimizer state excluded); CUDA: '
    'torch.cuda.max_memory_allocated, CPU: running sum of torch.profiler allocation events.'
)


TORCHVISION_PREFIX = 'torchvision:'
# torchvision names that differ from plugattn's for the same architecture
_TORCHVISION_ALIASES = {'mobilenet_v2': 'mobilenetv2'}


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or ``None`` where the platform has none."""
    try:
        return os.getloadavg()
    except (OSError, AttributeError):
        return None


@dataclass
class BenchRecord:
    """One measured model.

    Attributes:
        model: Registered model name.
        backbone: Plain backbone it is compared with (measured in the same run).
        attn: Attention key (``'none'`` for the backbone).
        img_size: Input height = width.
        batch_size: Inference batch size.
        train_batch_size: Training-step batch size (at least 2: BatchNorm1d in the bridge attention, specs D10).
        params: Total parameters.
        attn_params: Parameters inside attention modules.
        macs: MACs per image (see :data:`MACS_NOTE`).
        macs_ratio: ``macs`` / backbone MACs.
        infer_ms: Median time of one inference forward of ``batch_size`` images (milliseconds; process CPU time on
            the CPU, wall time on CUDA).
        infer_ms_min: Fastest round of the inference forward.
        infer_ms_max: Slowest round of the inference forward.
        infer_ratio: Median over the rounds of the round's inference time / the backbone's in the same round.
        infer_ratio_lo: Lower end of the confidence interval of ``infer_ratio`` (:func:`median_interval`).
        infer_ratio_hi: Upper end of that interval.
        infer_img_s: Throughput, ``batch_size / infer_ms`` in images per second.
        train_ms: Median time of one training step (forward, cross-entropy, backward, SGD step), milliseconds.
        train_ms_min: Fastest round of the training step.
        train_ms_max: Slowest round of the training step.
        train_ratio: The same paired median for the training step.
        train_ratio_lo: Lower end of its confidence interval.
        train_ratio_hi: Upper end of its confidence interval.
        ratio_confidence: Coverage of those intervals (95 %, or the most the number of rounds allows).
        infer_mem_mb: Peak inference memory above the resident weights (MiB, see :data:`MEMORY_NOTE`).
        train_mem_mb: Peak training-step memory above weights and optimizer state (MiB).
        train_mem_ratio: ``train_mem_mb`` / backbone ``train_mem_mb``.
        device: Device string.
        threads: torch intra-op threads.
        reps: Interleaved rounds behind each median.
        channels_last: Model and inputs in ``torch.channels_last`` memory format.
        clock: ``'process CPU time'`` or ``'wall'``.
        load_before: 1-minute load average when the group's measurement started (``None``: unknown).
        load_after: 1-minute load average when it ended.
    """

    model: str
    backbone: str
    attn: str
    img_size: int
    batch_size: int
    train_batch_size: int
    params: int
    attn_params: int
    macs: int
    macs_ratio: float
    infer_ms: float | None = None
    infer_ratio: float | None = None
    infer_ratio_lo: float | None = None
    infer_ratio_hi: float | None = None
    infer_ms_min: float | None = None
    infer_ms_max: float | None = None
    infer_img_s: float | None = None
    train_ms: float | None = None
    train_ratio: float | None = None
    train_ratio_lo: float | None = None
    train_ratio_hi: float | None = None
    ratio_confidence: float | None = None
    train_ms_min: float | None = None
    train_ms_max: float | None = None
    infer_mem_mb: float | None = None
    train_mem_mb: float | None = None
    train_mem_ratio: float | None = None
    device: str = 'cpu'
    threads: int = 1
    reps: int = 0
    channels_last: bool = True
    clock: str = 'process CPU time'
    load_before: float | None = None
    load_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- timing helpers


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Median of ``values`` and a distribution-free confidence interval for it: ``(median, lo, hi, coverage)``.

    The interval is ``[x_(k), x_(n+1-k)]`` of the sorted values with the largest ``k`` whose coverage
    ``1 - 2 P(Binomial(n, 1/2) < k)`` is at least ``level``; with too few values for ``level`` (fewer than six for
    95 %) it is the full range, whose coverage ``1 - 2^(1-n)`` is returned instead. No assumption on the noise's
    distribution is made, only that the rounds are independent.
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError('median_interval needs at least one value')

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return statistics.median(xs), xs[k - 1], xs[n - k], coverage(k)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class _Runner:
    """One model with its inputs, an inference call and a training step."""

    def __init__(self, name: str, model: nn.Module, x: Tensor, x_train: Tensor, num_classes: int) -> None:
        self.name = name
        self.model = model
        self.x = x
        self.x_train = x_train
        gen = torch.Generator().manual_seed(0)
        self.y = torch.randint(0, max(num_classes, 1), (x_train.shape[0],), generator=gen).to(x.device)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.infer_times: list[float] = []
        self.train_times: list[float] = []
        self.infer_inner = 1
        self.train_inner = 1

    def infer(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            self.model(self.x)

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(self.x_train), self.y)
        loss.backward()
        self.optimizer.step()


def _clock(device: torch.device) -> Callable[[], float]:
    """Process CPU time on the CPU (waiting for a core does not count), wall time on accelerators."""
    return time.perf_counter if device.type == 'cuda' else time.process_time


def _time(fn: Callable[[], None], inner: int, device: torch.device) -> float:
    """Mean seconds per call over ``inner`` back-to-back calls."""
    clock = _clock(device)
    _sync(device)
    t0 = clock()
    for _ in range(inner):
        fn()
    _sync(device)
    return (clock() - t0) / inner


def _calibrate(fn: Callable[[], None], warmup: int, min_time: float, device: torch.device) -> int:
    """Run ``warmup`` untimed calls and return how many calls make one measurement last at least ``min_time``."""
    per_call = math.inf
    for _ in range(max(warmup, 1)):
        per_call = min(per_call, _time(fn, 1, device))
    return max(1, math.ceil(min_time / max(per_call, 1e-9)))


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ profiler's start/stop lines, which bypass ``sys.stderr`` (file descriptor 2)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no real fd 2 (embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _peak_mb(fn: Callable[[], None], device: torch.device) -> float:
    """Peak memory (MiB) allocated by ``fn`` above what was live before it (see :data:`MEMORY_NOTE`)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]'
         and e.device_type() == torch.autograd.DeviceType.CPU),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for e in events:
        live += e.nbytes()  # frees are negative; frees of blocks allocated before profiling are not recorded
        peak = max(peak, live)
    return peak / 2**20


def machine_description(device: str | torch.device = 'cpu') -> str:
    """One line naming the machine, torch version and thread count."""
    device = torch.device(device)
    if device.type == 'cuda':
        hw = torch.cuda.get_device_name(device)
    else:
        hw = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                model_names = [ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')]
            if model_names:
                hw = f'{model_names[0]} ({len(model_names)} logical cores)'
        except OSError:
            pass
    n = torch.get_num_threads()
    return (f'{hw}; torch {torch.__version__}, {n} intra-op thread{"" if n == 1 else "s"}, '
            f'Python {platform.python_version()}, {platform.system()} {platform.release()}')


# --------------------------------------------------------------------------------------------- benchmark


def _backbone_of(name: str) -> str:
    if name.startswith(TORCHVISION_PREFIX):  # torchvision's model, measured next to plugattn's of the same name
        tv_name = name[len(TORCHVISION_PREFIX):]
        return _TORCHVISION_ALIASES.get(tv_name, tv_name)
    return get_model_entry(name).backbone


def _build(name: str, model_kwargs: dict[str, Any]) -> tuple[nn.Module, tuple[int, int, int], str]:
    """The model, its default input size and its attention key."""
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        tv_name = name[len(TORCHVISION_PREFIX):]
        try:
            model = torchvision.models.get_model(tv_name, weights=None, **model_kwargs)
        except ValueError as e:
            raise AnalysisError(f'unknown torchvision model {tv_name!r}', 'see torchvision.models.list_models()') \
                from e
        if not hasattr(model, 'num_classes'):
            model.num_classes = model_kwargs.get('num_classes', 1000)
        return model, tuple(get_model_entry(_backbone_of(name)).cfg['input_size']), 'none'
    model = create_model(name, **model_kwargs)
    entry = get_model_entry(name)
    cfg = getattr(model, 'default_cfg', None) or entry.cfg  # torchvision models have none
    return model, tuple(cfg['input_size']), entry.attn or 'none'


def _group_by_backbone(names: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in names:
        backbone = _backbone_of(name)
        group = groups.setdefault(backbone, [backbone])
        if name not in group:
            group.append(name)
    return groups


def benchmark(
        names: Sequence[str],
        *,
        img_size: int | None = None,
        batch_size: int = 8,
        threads: int | None = None,
        reps: int = 5,
        channels_last: bool = True,
        warmup: int = 2,
        min_time: float = 0.1,
        device: str | torch.device = 'cpu',
        timing: bool = True,
        train: bool = True,
        memory: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        progress: Callable[[str], None] | None = None,
) -> list[BenchRecord]:
    """Measure models against their plain backbones, interleaved in the same run.

    Models are grouped by backbone; each group (the backbone first, then the requested variants in order) is
    warmed up, then measured ``reps`` times in turn (``A B C A B C ...``), inference and training step alike.
    Each measurement averages enough back-to-back calls to last ``min_time`` seconds; the record holds the minimum,
    median and maximum over the rounds. The backbone is always measured, and reported only if it was requested.
    ``torchvision:NAME`` measures torchvision's model of that name next to plugattn's ``NAME``.

    Args:
        names: Registered model names.
        img_size: Input height = width (default: each model's ``default_cfg['input_size']``).
        batch_size: Inference batch size (the training step uses ``max(batch_size, 2)``).
        threads: torch intra-op threads during the run (default: 1 on the CPU, where one thread is the least
            disturbed by other processes; the torch default on CUDA).
        reps: Interleaved rounds.
        channels_last: Put models and inputs in ``torch.channels_last`` memory format.
        warmup: Untimed calls per model and measurement before the first repetition.
        min_time: Minimum seconds per measurement.
        device: ``'cpu'`` or a CUDA device.
        timing: Measure times (False: only parameters and MACs).
        train: Measure the training step.
        memory: Measure peak memory (one extra, untimed call each).
        model_kwargs: ``create_model`` options for every model (e.g. ``num_classes``, ``in_chans``).
        progress: Called with a short message before each group.

    Returns:
        One :class:`BenchRecord` per requested name, in the order given.
    """
    if not names:
        raise AnalysisError('no model to benchmark', 'name at least one model (plugattn list-models)')
    if batch_size < 1 or reps < 1:
        raise AnalysisError(f'batch size and repetitions must be >= 1, got {batch_size} and {reps}')
    device = torch.device(device)
    old_threads = torch.get_num_threads()
    if threads is None and device.type == 'cpu':
        threads = 1
    if threads is not None:
        if threads < 1:
            raise AnalysisError(f'--threads must be >= 1, got {threads}')
        torch.set_num_threads(threads)
    try:
        records: dict[str, BenchRecord] = {}
        for group in _group_by_backbone(names).values():
            if progress is not None:
                progress(f'measuring {", ".join(group)}')
            for rec in _bench_group(group, img_size, batch_size, reps, warmup, min_time, device,
                                    timing, train, memory, model_kwargs or {}, channels_last):
                records[rec.model] = rec
        return [records[n] for n in dict.fromkeys(names)]
    finally:
        torch.set_num_threads(old_threads)


def _bench_group(
        group: list[str],
        img_size: int | None,
        batch_size: int,
        reps: int,
        warmup: int,
        min_time: float,
        device: torch.device,
        timing: bool,
        train: bool,
        memory: bool,
        model_kwargs: dict[str, Any],
        channels_last: bool = True,
) -> list[BenchRecord]:
    train_batch = max(batch_size, 2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    runners: list[_Runner] = []
    static: list[dict[str, Any]] = []
    for name in group:
        torch.manual_seed(0)
        model, (c, h, w), attn = _build(name, model_kwargs)
        model = model.to(device)
        size = (c, img_size, img_size) if img_size else (c, h, w)
        params, attn_params = count_params(model), count_params(model, attention_only=True)
        try:
            macs = count_macs(model, size, device)  # the model's first forward pass
        except Exception:
            if img_size:  # an input too small for the model is the user's to fix: say so, with the size it takes
                check_input_size(model, name, c, size[1:], '--img-size {}', f'--img-size {img_size}')
            raise
        model = model.to(memory_format=fmt)
        static.append(dict(model=name, backbone=group[0], attn=attn,
                           img_size=size[1], params=params, attn_params=attn_params, macs=macs))
        gen = torch.Generator().manual_seed(1)
        x = torch.randn((train_batch, *size), generator=gen).to(device).contiguous(memory_format=fmt)
        runners.append(_Runner(name, model, x[:batch_size], x, model.num_classes))

    load_before = load_average()
    if timing:
        for r in runners:
            r.infer_inner = _calibrate(r.infer, warmup, min_time, device)
            if train:
                r.train_inner = _calibrate(r.train_step, warmup, min_time, device)
        for _ in range(reps):
            for r in runners:
                r.infer_times.append(_time(r.infer, r.infer_inner, device))
            if train:
                for r in runners:
                    r.train_times.append(_time(r.train_step, r.train_inner, device))

    load_after = load_average()

    def median_ms(times: list[float]) -> float | None:
        return statistics.median(times) * 1e3 if times else None

    def extreme_ms(times: list[float], pick: Callable[[list[float]], float]) -> float | None:
        return pick(times) * 1e3 if times else None

    base = runners[0]

    def paired(times: list[float], base_times: list[float]) -> tuple[float | None, ...]:
        """Median and interval of the per-round ratios, and the interval's coverage."""
        if not times:
            return None, None, None, None
        return median_interval([t / b for t, b in zip(times, base_times)])

    out = []
    for r, s in zip(runners, static):
        infer_ms, train_ms = median_ms(r.infer_times), median_ms(r.train_times)
        infer_ratio, infer_lo, infer_hi, conf = paired(r.infer_times, base.infer_times)
        train_ratio, train_lo, train_hi, _ = paired(r.train_times, base.train_times)
        rec = BenchRecord(
            **s, batch_size=batch_size, train_batch_size=train_batch,
            macs_ratio=s['macs'] / static[0]['macs'],
            infer_ms=infer_ms,
            infer_ratio=infer_ratio, infer_ratio_lo=infer_lo, infer_ratio_hi=infer_hi,
            infer_img_s=batch_size / infer_ms * 1e3 if infer_ms else None,
            train_ms=train_ms,
            train_ratio=train_ratio, train_ratio_lo=train_lo, train_ratio_hi=train_hi, ratio_confidence=conf,
            infer_ms_min=extreme_ms(r.infer_times, min), infer_ms_max=extreme_ms(r.infer_times, max),
            train_ms_min=extreme_ms(r.train_times, min), train_ms_max=extreme_ms(r.train_times, max),
            device=str(device), threads=torch.get_num_threads(), reps=reps if timing else 0,
            channels_last=channels_last, clock='wall' if device.type == 'cuda' else 'process CPU time',
            load_before=load_before[0] if load_before else None, load_after=load_after[0] if load_after else None,
        )
        if memory:
            rec.infer_mem_mb = _peak_mb(r.infer, device)
            if train:
                r.train_step()  # optimizer state exists before the measured step
                rec.train_mem_mb = _peak_mb(r.train_step, device)
        out.append(rec)
    if memory and train and out[0].train_mem_mb:
        for rec in out:
            rec.train_mem_ratio = rec.train_mem_mb / out[0].train_mem_mb
    return out


# --------------------------------------------------------------------------------------------- formatting

_COLUMNS = [
    # key, header, format; '*_range' cells show the fastest and slowest round
    ('model', 'model', '{}'),
    ('params', 'params (M)', '{:.3f}'),
    ('attn_params', 'attn params', '{:,}'),
    ('macs', 'MACs (G)', '{:.4f}'),
    ('infer_ms', 'infer (ms)', '{:.2f}'),
    ('infer_range', 'infer min-max (ms)', '{:.1f}-{:.1f}'),
    ('infer_ratio', 'infer xbb', '{:.3f}'),
    ('infer_ratio_ci', 'infer xbb CI', '{:.2f}-{:.2f}'),
    ('infer_img_s', 'img/s', '{:.1f}'),
    ('train_ms', 'train step (ms)', '{:.2f}'),
    ('train_range', 'train min-max (ms)', '{:.1f}-{:.1f}'),
    ('train_ratio', 'train xbb', '{:.3f}'),
    ('train_ratio_ci', 'train xbb CI', '{:.2f}-{:.2f}'),
    ('infer_mem_mb', 'infer peak (MiB)', '{:.1f}'),
    ('train_mem_mb', 'train peak (MiB)', '{:.1f}'),
    ('train_mem_ratio', 'train peak xbb', '{:.3f}'),
]


# The terminal table's columns and their short headers: medians and ratios to the backbone; the ranges, intervals,
# throughput and absolute memory are in the Markdown table (--format markdown), CSV and JSON.
_NARROW = {
    'model': 'model',
    'params': 'params(M)',
    'macs': 'GMACs',
    'infer_ms': 'infer ms',
    'infer_ratio': 'xbb',
    'train_ms': 'train ms',
    'train_ratio': 'xbb',
    'train_mem_mb': 'train MiB',
    'train_mem_ratio': 'xbb',
}


def _pair_keys(key: str) -> tuple[str, str] | None:
    """The two record fields a two-value column shows (``*_range``: fastest / slowest round; ``*_ci``: interval)."""
    if key.endswith('_range'):
        return key.replace('_range', '_ms_min'), key.replace('_range', '_ms_max')
    if key.endswith('_ci'):
        return key.replace('_ci', '_lo'), key.replace('_ci', '_hi')
    return None


def _cell(key: str, fmt: str, row: dict[str, Any]) -> str:
    pair = _pair_keys(key)
    if pair is not None:
        lo, hi = row[pair[0]], row[pair[1]]
        return '-' if lo is None else fmt.format(lo, hi)
    value = row[key]
    if value is None:
        return '-'
    if key == 'params':
        value = value / 1e6
    elif key == 'macs':
        value = value / 1e9
    return fmt.format(value)


def _measured(key: str, rows: list[dict[str, Any]]) -> bool:
    pair = _pair_keys(key)
    return any(row[pair[0] if pair else key] is not None for row in rows)


def format_records(records: Sequence[BenchRecord], fmt: str = 'table') -> str:
    """Render records as a narrow text table for a terminal (``'table'``), the full Markdown table
    (``'markdown'``: ranges, intervals, throughput and peak memory, for files), CSV or JSON (a list of objects).

    Both tables leave out columns that were not measured and end with the measurement, MACs and memory notes.
    """
    import csv
    import io
    import json

    rows = [r.to_dict() for r in records]
    if fmt == 'json':
        return json.dumps(rows, indent=2)
    if fmt == 'csv':
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator='\n')
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    if fmt not in ('table', 'markdown'):
        raise AnalysisError(f'unknown format {fmt!r}', 'use table, markdown, csv or json')
    columns = _COLUMNS if fmt == 'markdown' else [c for c in _COLUMNS if c[0] in _NARROW]
    cols = [c for c in columns if _measured(c[0], rows)]
    if len({(r.img_size, r.batch_size) for r in records}) > 1:
        cols[1:1] = [('img_size', 'input', '{}'), ('batch_size', 'batch', '{}')]
    cells = [[_cell(k, f, row) for k, _, f in cols] for row in rows]
    if fmt == 'markdown':
        lines = ['| ' + ' | '.join(h for _, h, _ in cols) + ' |',
                 '|' + '|'.join(':---' if k == 'model' else '---:' for k, _, _ in cols) + '|']
        lines += ['| ' + ' | '.join(line) + ' |' for line in cells]
    else:  # aligned columns, model name left, numbers right
        heads = [_NARROW.get(k, h) for k, h, _ in cols]
        widths = [max(len(x) for x in (h, *(line[i] for line in cells))) for i, h in enumerate(heads)]

        def fit(values: list[str]) -> str:
            return '  '.join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

        lines = [fit(heads), '  '.join('-' * w for w in widths)] + [fit(line) for line in cells]
    r0 = records[0] if records else None
    if r0 is not None:
        lines.append('')
        if r0.reps:
            layout = 'channels_last' if r0.channels_last else 'contiguous (NCHW)'
            lines.append(f'Inference batch {r0.batch_size}, training-step batch {r0.train_batch_size}, '
                         f'{r0.img_size}x{r0.img_size} input unless the table says otherwise, {r0.device}, '
                         f'{r0.threads} thread{"" if r0.threads == 1 else "s"}, {layout}; times are {r0.clock} per '
                         f'batch, medians (and min-max) of {r0.reps} interleaved rounds; xbb = median over the rounds '
                         "of the model's time / the plain backbone's in the same round, CI = its "
                         f'{100 * r0.ratio_confidence:.1f} % distribution-free confidence interval.'
                         + ('' if fmt == 'markdown' else ' Ranges, intervals and throughput: --format markdown.'))
            loads = [r.load_before for r in records if r.load_before is not None]
            loads += [r.load_after for r in records if r.load_after is not None]
            if loads:
                lines.append(f'Load average (1 min) during the measurement: {min(loads):.2f}-{max(loads):.2f} on '
                             f'{os.cpu_count()} logical cores.')
        else:
            lines.append(f'{r0.img_size}x{r0.img_size} input unless the table says otherwise.')
        lines.append(MACS_NOTE)
        if any(r.infer_mem_mb is not None for r in records):
            lines.append(MEMORY_NOTE)
    if fmt == 'table':  # the notes wrapped for a terminal, like the table above them
        table_end = len(rows) + 2
        lines[table_end:] = [textwrap.fill(line, 100) if line else line for line in lines[table_end:]]
    return '\n'.join(lines)
