"""One command that checks plugattn's CUDA paths and measures the GPU tables; writes ``gpu_check.{json,md}``.

Parts, each runnable alone (``--parts a,b,c``) with its own time budget in seconds (``--budget a=90,b=190,c=170``):

* **a, correctness**: the lean training path against the plain formulation (what runs under ``torch.jit.trace``, see
  :func:`plain_reference`) for every attention on each CNN family, forward and backward, in float32, channels_last,
  and under AMP bfloat16 / float16; ``torch.compile`` (inductor) against float64; attach on the device; a short
  ``plugattn`` engine training run with AMP and EMA and its bit-exact resume.
* **b, cost**: ResNet-50 at 224 px, AMP bfloat16, channels_last, batch 128: training step time and peak memory as
  ratios to the plain backbone for every attention, plugattn's models and attention attached to torchvision's
  ResNet-50, eager and compiled (paired rounds and intervals as in ``bench_resnet.py``); the largest batch that fits
  for resnet50 and bav2_resnet50.
* **c, accuracy**: plain, SE, ECA, CA, ELA-B, BAv1, BAv2 and DIA ResNet-20 on Fashion-MNIST (crop and flip, up to 30
  epochs, 3 seeds) as concurrent processes sharing the device; mean +- std and per-epoch curves. The epoch count is
  the largest the budget allows for all runs alike (measured after a short calibration), at most ``--epochs``.

Every run rewrites the parts it ran and keeps the others' results from the previous run in the same folder, so
re-running one part is safe. Usage::

    PYTHONPATH=. python benchmarks/gpu_check.py                          # all parts on cuda, about 8 minutes
    PYTHONPATH=. python benchmarks/gpu_check.py --parts b --budget b=300
    PYTHONPATH=. python benchmarks/gpu_check.py --device cpu --quick     # every part at tiny sizes on the CPU

Fashion-MNIST is looked up as ``plugattn.data`` does (``--data-dir``, ``$PLUGATTN_DATA``, the system folder, the
download cache); on a machine without network, copy its four ``.gz`` files into ``benchmarks/gpu/data`` (ignored by
git), which is searched first.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import gc
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import plugattn
from plugattn.analysis.complexity import (  # plugattn bench's timing, memory and interval helpers, shared
    _calibrate,
    _peak_mb,
    _time,
    load_average,
    machine_description,
    median_interval,
)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / 'gpu'
DATA_DIR = HERE / 'gpu' / 'data'
ATTNS = ('se', 'eca', 'cbam', 'ca', 'ela_t', 'ela_b', 'ela_s', 'ela_l', 'bav1', 'bav2', 'dia')
CHECK_ORDER = (None, 'se', 'ca', 'cbam', 'bav2', 'dia', 'eca', 'ela_b', 'bav1', 'ela_t', 'ela_s', 'ela_l')
BUDGETS = {'a': 90.0, 'b': 190.0, 'c': 170.0}  # seconds on one H100: about 8 minutes with the overruns
QUICK_BUDGETS = {'a': 60.0, 'b': 40.0, 'c': 60.0}
ACCURACY_MODELS = ('resnet20', 'se_resnet20', 'eca_resnet20', 'ca_resnet20', 'ela_b_resnet20', 'bav1_resnet20',
                   'bav2_resnet20', 'dia_resnet20')
# tolerances of part a, relative norm-wise errors against the float64 plain formulation:
# a lean run must be at most ERROR_FACTOR times as far from float64 as the plain formulation in the same precision,
# plus a floor for results that are exact in both (float32: a few ulps; AMP: an eighth of a bfloat16 ulp)
ERROR_FACTOR = 2.0
FLOOR = {torch.float32: 1e-6, torch.bfloat16: 1e-3, torch.float16: 1e-3}
LEAN_VS_PLAIN_FLOAT32 = 1e-4  # float32 lean against float32 plain: the same arithmetic up to summation order


def log(msg: str) -> None:
    print(f'[{time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


class Budget:
    """Seconds left of a part's allowance."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.t0 = time.perf_counter()

    def used(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.used()


def _bench_resnet() -> Any:
    """``benchmarks/bench_resnet.py`` as a module (its targets and verdicts), also when this file is imported."""
    if 'bench_resnet' not in sys.modules:
        spec = importlib.util.spec_from_file_location('bench_resnet', HERE / 'bench_resnet.py')
        module = importlib.util.module_from_spec(spec)
        sys.modules['bench_resnet'] = module
        spec.loader.exec_module(module)
    return sys.modules['bench_resnet']


# --------------------------------------------------------------------------------------------- lean vs plain


def plain_reference(model: nn.Module, x: Tensor, amp: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` that runs the plain formulation (``x * gate``, separate residual addition, ``mean``).

    plugattn keeps the plain module calls in traced graphs (TorchScript, FX, ONNX, ``torch.export``), so the copy is
    ``torch.jit.trace`` of the model on ``x``; autograd differentiates the traced graph, and the copy's state is the
    model's (the tracing forward's BatchNorm update is undone). With ``amp`` the trace runs under autocast and records
    its casts: call the copy *without* autocast (the graph's own casts then give bitwise the eager plain formulation
    under autocast, where a float32 trace run under autocast would keep its ``aten::_convolution`` in float32). The
    one place to change if that contract moves.
    """
    ref = copy.deepcopy(model)
    state = copy.deepcopy(ref.state_dict())
    with warnings.catch_warnings(), torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        warnings.simplefilter('ignore')  # TracerWarnings about Python values baked into the graph
        traced = torch.jit.trace(ref, x, check_trace=False)
    traced.load_state_dict(state)
    return traced


def forward_backward(
        model: nn.Module, x: Tensor, *, amp: torch.dtype | None = None, seed: int = 0,
) -> dict[str, Tensor]:
    """Output, input gradient and all parameter gradients (one flat vector, by parameter name) of one training pass
    with a loss that weighs every output differently, so no gradient cancels by symmetry."""
    x = x.clone().requires_grad_(True)
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(seed)  # dropout draws the same mask in every run
    with torch.jit.optimized_execution(False):  # traced graphs: no fusers, the ops as traced
        with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(x)
        weight = torch.linspace(-1.0, 2.0, out.numel(), device=out.device).reshape(out.shape)
        (out.float() * weight).sum().backward()
    params = dict(model.named_parameters())
    grads = [params[n].grad if params[n].grad is not None else torch.zeros_like(params[n]) for n in sorted(params)]
    return {'output': out.detach().double(), 'input grad': x.grad.double(),
            'param grads': torch.cat([g.detach().double().flatten() for g in grads])}


def relative_errors(got: dict[str, Tensor], want: dict[str, Tensor]) -> dict[str, float]:
    """Norm-wise relative error of each quantity: ``||got - want|| / ||want||``."""
    return {k: ((got[k].cpu() - want[k].cpu()).norm() / want[k].cpu().norm().clamp_min(1e-30)).item() for k in want}


def as_accurate(lean: dict[str, float], plain: dict[str, float], dtype: torch.dtype) -> bool:
    """Whether every lean error is within ``ERROR_FACTOR`` times the plain formulation's, plus the dtype's floor."""
    return all(lean[k] <= ERROR_FACTOR * plain[k] + FLOOR[dtype] and math.isfinite(lean[k]) for k in plain)


# --------------------------------------------------------------------------------------------- CNN families


@dataclass(frozen=True)
class CnnFamily:
    """A CNN family of part a: its builder and input sizes (full on the GPU, tiny with ``--quick``)."""

    name: str
    build: Callable[[str | None, bool], nn.Module]
    px: int
    quick_px: int
    quick_attn: str  # the one attention checked with --quick (tests/test_amp.py covers every one on the CPU)


def _tiny_attn_kwargs(attn: str | None) -> dict[str, Any] | None:
    return {'reduction': 4} if attn == 'dia' else None  # DIA's default reduction 16 on 8-16 channels leaves 0


# Part a checks the CUDA kernels of each block type at the family's real widths, with fewer blocks per stage than
# the registered depths (tracing, five precisions and a float64 run per model stay within the budget).


def _resnet(block: str, attn: str | None, quick: bool, **kwargs: Any) -> nn.Module:
    from plugattn.models.resnet import BasicBlock, Bottleneck, ResNet

    if block == 'basic':
        if not quick:
            return plugattn.create_model('resnet20', attn=attn, num_classes=10)
        return ResNet(BasicBlock, (1, 1), widths=(8, 16), num_classes=5, stem='cifar', attn=attn,
                      attn_kwargs=_tiny_attn_kwargs(attn))
    if not quick:  # ResNet-50 / ResNeXt-50 widths, one block per stage
        if kwargs:
            kwargs = {'groups': 32, 'width_per_group': 4}
        return ResNet(Bottleneck, (1, 1, 1, 1), num_classes=10, attn=attn, **kwargs)
    return ResNet(Bottleneck, (1, 1), widths=(16, 32), num_classes=5, attn=attn, attn_kwargs=_tiny_attn_kwargs(attn),
                  **kwargs)


def _preact(block: str, attn: str | None, quick: bool) -> nn.Module:
    from plugattn.models.preact_resnet import PreActBottleneck, PreActResNet, WideBasic

    cls = PreActBottleneck if block == 'bottleneck' else WideBasic
    if not quick:  # PreAct ResNet-164 / WRN-52-4 widths, two blocks per stage, no dropout (its mask would follow
        # the memory layout, so channels_last would draw another one)
        widths = (16, 32, 64) if block == 'bottleneck' else (64, 128, 256)
        return PreActResNet(cls, (2, 2, 2), widths, num_classes=10, attn=attn)
    return PreActResNet(cls, (1, 1), (16, 32), num_classes=5, attn=attn, attn_kwargs=_tiny_attn_kwargs(attn))


def _regnet(attn: str | None, quick: bool) -> nn.Module:
    from plugattn.models.regnet import RegNet, RegNetCfg

    # RegNetY-400MF's widths and group width, one block per stage (--quick: two stages' worth of channels)
    cfg = RegNetCfg((1, 1, 1, 1), (16, 32, 32, 64) if quick else (48, 104, 208, 440), 8)
    return RegNet(cfg, num_classes=10 if not quick else 5, attn=attn, attn_kwargs=_tiny_attn_kwargs(attn) if quick
                  else None)


def _mobilenet(attn: str | None, quick: bool) -> nn.Module:
    # no dropout before the classifier: its mask depends on the dtype, so AMP would draw another one
    model = plugattn.create_model('mobilenetv2', attn=attn, num_classes=10 if not quick else 5,
                                  width_mult=0.5 if quick else 1.0, drop_rate=0.0)
    if quick:  # the stem and the first six inverted residuals (both expansion kinds, strides 1 and 2): bfloat16
        # rounding grows about 1.2x per train-mode block, so the full depth drowns a comparison at tiny widths
        model.features = model.features[:7]
        model.classifier[-1] = nn.Linear(model.features[-1].conv[-1].num_features, 5)
    return model


FAMILIES = (
    CnnFamily('ResNet (basic, CIFAR)', lambda a, q: _resnet('basic', a, q), 32, 16, 'se'),
    CnnFamily('ResNet (bottleneck)', lambda a, q: _resnet('bottleneck', a, q), 96, 32, 'cbam'),
    CnnFamily('ResNeXt', lambda a, q: _resnet('bottleneck', a, q, groups=4, width_per_group=8), 96, 32, 'ela_b'),
    CnnFamily('PreAct ResNet', lambda a, q: _preact('bottleneck', a, q), 32, 16, 'bav2'),
    CnnFamily('Wide ResNet', lambda a, q: _preact('wide', a, q), 32, 16, 'eca'),
    CnnFamily('RegNet-Y', _regnet, 96, 32, 'dia'),
    CnnFamily('MobileNetV2', _mobilenet, 96, 32, 'ca'),
)


# --------------------------------------------------------------------------------------------- part a


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """No TF32 and deterministic cuDNN while comparing float32 results (TF32 rounds convolutions to 10 bits)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


def compare_lean_with_plain(
        model: nn.Module, x: Tensor, amps: Sequence[torch.dtype], *, channels_last: bool = True,
) -> list[dict[str, Any]]:
    """Check rows for one model: float32, channels_last float32 and each AMP dtype against float64 plain."""
    model = model.train()
    ref64 = forward_backward(plain_reference(copy.deepcopy(model).double(), x.double()), x.double())
    plain32_run = forward_backward(plain_reference(model, x), x)
    plain32 = relative_errors(plain32_run, ref64)
    lean32 = forward_backward(copy.deepcopy(model), x)
    rows = []
    err = relative_errors(lean32, ref64)
    vs_plain = relative_errors(lean32, plain32_run)
    ok = as_accurate(err, plain32, torch.float32) and max(vs_plain.values()) <= LEAN_VS_PLAIN_FLOAT32
    rows.append(dict(check='float32', lean=err, plain=plain32, lean_vs_plain=vs_plain, ok=ok))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model, xa = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    if channels_last:  # against the plain formulation on channels_last too: the CPU's NHWC kernels round otherwise
        plain = relative_errors(forward_backward(plain_reference(model, xa), xa), ref64)
        err = relative_errors(forward_backward(copy.deepcopy(model), xa), ref64)
        rows.append(dict(check='channels_last float32', lean=err, plain=plain, ok=as_accurate(err, plain,
                                                                                                torch.float32)))
    for dtype in amps:  # in the layout training uses
        plain = relative_errors(forward_backward(plain_reference(model, xa, dtype), xa), ref64)
        err = relative_errors(forward_backward(copy.deepcopy(model), xa, amp=dtype), ref64)
        rows.append(dict(check=f'{str(dtype).split(".")[-1]} AMP', lean=err, plain=plain, ok=as_accurate(err, plain,
                                                                                                         dtype)))
    return rows


def part_a(device: torch.device, quick: bool, budget: Budget) -> dict[str, Any]:
    amps = [torch.bfloat16, torch.float16]  # CPU autocast takes float16 too, so the CPU mode runs both
    skipped = [] if device.type == 'cuda' else [
        'the engine run in float16 with a GradScaler: needs CUDA (plugattn trains float16 only there); it trains in '
        'bfloat16 (tests/test_amp.py runs the GradScaler path on the CPU)']
    batch = 8  # train-mode BatchNorm over fewer values makes float32 rounding chaotic
    rows: list[dict[str, Any]] = []
    not_run: list[str] = []
    # attention-major order, the least used ELA variants last: a budget cut leaves out whole attentions, not families
    order = [(f, f.quick_attn) for f in FAMILIES] if quick else [(f, a) for a in CHECK_ORDER for f in FAMILIES]
    with exact_float32():
        for fam, attn in order:
            label = f'{fam.name} + {attn or "none"}'
            if budget.left() < 0.45 * budget.seconds:  # the rest: attach, compile and the engine run
                not_run.append(label)
                continue
            torch.manual_seed(0)
            try:
                model = fam.build(attn, quick).to(device)
            except ValueError as e:  # the family does not offer this attention (it says why)
                rows.append(dict(family=fam.name, attn=attn or 'none', check='not offered', note=str(e), ok=True))
                continue
            px = fam.quick_px if quick else fam.px
            x = torch.randn(batch, 3, px, px, generator=torch.Generator().manual_seed(1)).to(device)
            rows += _guarded(fam.name, attn or 'none', compare_lean_with_plain, model, x, amps)
        log(f'part a: {len(rows)} checks of the CNN families done ({budget.used():.0f} s)')
        rows += _attach_checks(device, quick, budget, amps, not_run)
        log(f'part a: attach checks done ({budget.used():.0f} s)')
        rows += _compile_checks(device, quick, budget, skipped)
        log(f'part a: compile checks done ({budget.used():.0f} s)')
    rows += _guarded('engine', 'bav2', lambda: [_engine_resume_check(device, quick)])
    if not_run:
        skipped.append(f'not reached within the budget ({budget.seconds:.0f} s): {", ".join(not_run)}')
    failed = [r for r in rows if not r['ok']]
    for line in skipped:
        log(f'part a: skipped {line}')
    log(f'part a: {len(rows) - len(failed)} of {len(rows)} checks passed in {budget.used():.0f} s')
    return {'rows': rows, 'skipped': skipped, 'failed': len(failed), 'seconds': budget.used(),
            'tolerance': {'factor': ERROR_FACTOR, 'floor': {str(k).split('.')[-1]: v for k, v in FLOOR.items()},
                          'lean_vs_plain_float32': LEAN_VS_PLAIN_FLOAT32}}


def _guarded(family: str, attn: str, check: Callable[..., list[dict[str, Any]]], *args: Any) -> list[dict[str, Any]]:
    """The rows of ``check(*args)``, or one failed row naming the exception: one broken path must not stop the run."""
    try:
        return [dict(family=family, attn=attn, **r) for r in check(*args)]
    except Exception as e:
        return [dict(family=family, attn=attn, check='error', ok=False, note=_error_line(e))]


def _compile_checks(device: torch.device, quick: bool, budget: Budget, skipped: list[str]) -> list[dict[str, Any]]:
    """``torch.compile`` training passes against float64 plain, as accurate as the eager plain float32 pass."""
    backend = 'inductor' if device.type == 'cuda' else 'aot_eager'
    if backend != 'inductor':
        skipped.append('torch.compile with inductor on the CPU (minutes of C++ compiling per model on two cores): '
                       'aot_eager instead, which traces the same autograd graphs without generating kernels')
    rows = []
    for attn in (('ca',) if quick else ('ca', 'dia', 'cbam', 'bav2', 'se', 'ela_b')):
        if budget.left() < (0 if quick else 20):  # an inductor compile of a training pass takes tens of seconds
            skipped.append(f'torch.compile of {attn}: not reached within the budget')
            continue
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = FAMILIES[0].build(attn, quick).to(device).train()
        px = FAMILIES[0].quick_px if quick else FAMILIES[0].px
        x = torch.randn(8, 3, px, px, generator=torch.Generator().manual_seed(1)).to(device)
        rows += _guarded(FAMILIES[0].name, attn, _compile_check, model, x, backend)
    torch._dynamo.reset()
    return rows


def _compile_check(model: nn.Module, x: Tensor, backend: str) -> list[dict[str, Any]]:
    ref64 = forward_backward(plain_reference(copy.deepcopy(model).double(), x.double()), x.double())
    plain = relative_errors(forward_backward(plain_reference(model, x), x), ref64)
    t0 = time.perf_counter()
    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    # the compiled module's parameter names carry '_orig_mod.', sorted the same way
    err = relative_errors(forward_backward(compiled, x), ref64)
    return [dict(check=f'compile {backend} float32', lean=err, plain=plain, ok=as_accurate(err, plain, torch.float32),
                 note=f'compiled and ran in {time.perf_counter() - t0:.1f} s')]


def _attach_checks(
        device: torch.device, quick: bool, budget: Budget, amps: Sequence[torch.dtype], not_run: list[str],
) -> list[dict[str, Any]]:
    """Attention attached to torchvision's ResNet: the lean path against the plain one, as for plugattn's models."""
    try:
        import torchvision
    except ImportError:
        return [dict(family='torchvision', attn='-', check='attach', ok=True, note='torchvision not installed')]
    name = 'resnet18' if quick else 'resnet50'
    rows = []
    for attn in (('se',) if quick else ATTNS):
        if budget.left() < 0.3 * budget.seconds:  # the rest: compile and the engine run
            not_run.append(f'attach {attn} on torchvision {name}')
            continue
        torch.manual_seed(0)
        try:
            model = plugattn.attach(torchvision.models.get_model(name, weights=None, num_classes=10), attn)
        except ValueError as e:
            rows.append(dict(family=f'torchvision {name}', attn=attn, check='not offered', note=str(e), ok=True))
            continue
        model = model.to(device)
        x = torch.randn(8, 3, 32 if quick else 96, 32 if quick else 96,
                        generator=torch.Generator().manual_seed(1)).to(device)
        rows += _guarded(f'torchvision {name} (attached)', attn, compare_lean_with_plain, model, x, amps)
    return rows


def _engine_resume_check(device: torch.device, quick: bool) -> dict[str, Any]:
    """``plugattn train`` (the engine) with AMP and EMA: two identical runs, and one stopped after an epoch and
    resumed, must end with bitwise the same weights, optimizer state and EMA."""
    from plugattn.engine import load_resume_config, load_state, resolve_config, train

    row: dict[str, Any] = dict(check='train AMP + EMA, bit-exact resume')
    try:
        import sklearn  # noqa: F401  (the digits dataset)
    except ImportError:
        return dict(row, ok=True, note='skipped: scikit-learn (the digits dataset) is not installed')
    with tempfile.TemporaryDirectory() as tmp:
        def run(name: str, **kwargs: Any) -> Any:
            overrides = {'data.name': 'digits', 'model.name': 'bav2_resnet20', 'train.batch_size': 128 if quick else 64,
                         'train.eval_batch_size': 360, 'train.epochs': 2, 'train.log_interval': 10_000,
                         'train.device': device.type, 'train.amp': True, 'train.channels_last': True,
                         'ema.enabled': True, 'ema.decay': 0.9, 'aug.random_crop_padding': 1, 'aug.hflip': True,
                         'output.dir': tmp, 'output.name': name}
            if device.type == 'cpu':
                overrides['train.threads'] = 1
            cfg = resolve_config('fashion-mnist', list(overrides.items()))
            return train(cfg, progress=False, echo=lambda _line: None, **kwargs)

        t0 = time.perf_counter()
        first = run('straight')
        split = run('split', stop_after=1)
        resumed = train(load_resume_config(split.run_dir, []), resume_dir=split.run_dir, progress=False,
                        echo=lambda _line: None)
        # a second straight run tells nondeterministic kernels apart from a resume fault (not needed on the CPU)
        again = run('again') if device.type == 'cuda' else None
        states = [load_state(r.run_dir / 'last_state.pt') for r in (first, resumed, again) if r is not None]
        scaler = states[0].get('scaler') or {}

    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        ta, tb = dict(_tensors(a)), dict(_tensors(b))
        return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)

    keys = ('model', 'optimizer', 'ema')
    exact = all(same(states[0][k], states[1][k]) for k in keys)
    repeat = '' if len(states) < 3 else f'repeat run identical: {all(same(states[0][k], states[2][k]) for k in keys)}; '
    amp = 'float16 + GradScaler' if device.type == 'cuda' else 'bfloat16'
    note = (f'{amp}, 2 epochs of digits; {repeat}resumed run identical: {exact}; '
            f'grad scale at the end {scaler.get("scale", "-")}; top-1 {first.history[-1]["top1"]:.1f} %, '
            f'{time.perf_counter() - t0:.0f} s')
    return dict(row, ok=exact and resumed.finished and math.isfinite(first.history[-1]['train_loss']), note=note)


def _tensors(obj: Any, prefix: str = '') -> Iterator[tuple[str, Tensor]]:
    if isinstance(obj, Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f'{prefix}.{k}')
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f'{prefix}[{i}]')


# --------------------------------------------------------------------------------------------- part b


@dataclass
class CostRow:
    """One model of the cost table and its measurements."""

    label: str
    kind: str  # 'plugattn' or 'attached'
    mode: str  # 'eager' or 'compiled'
    attn: str
    build: Callable[[], nn.Module]
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    inner: int = 1
    times: list[float] | None = None
    warmup_s: float = 0.0
    peak_mb: float | None = None


class _Step:
    """A training step under autocast: forward, cross-entropy, backward, SGD with momentum."""

    def __init__(self, row: CostRow, x: Tensor, y: Tensor, amp: torch.dtype) -> None:
        self.row, self.x, self.y, self.amp = row, x, y, amp

    def __call__(self) -> None:
        model, opt = self.row.model, self.row.optimizer
        opt.zero_grad(set_to_none=True)
        with torch.autocast(self.x.device.type, dtype=self.amp):
            logits = model(self.x)
            loss = F.cross_entropy(logits, self.y % logits.shape[1])  # labels for 10 or 1000 classes
        loss.backward()
        opt.step()


def _torchvision_resnet(name: str, attn: str | None) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(name, weights=None)
    return plugattn.attach(model, attn) if attn else model


def measure_group(
        rows: list[CostRow], *, device: torch.device, batch: int, px: int, amp: torch.dtype, reps: int,
        budget: Budget, reserve: float, backend: str = 'inductor',
) -> tuple[list[CostRow], list[str]]:
    """Interleaved rounds of training steps (the first row is the baseline), as ``bench_resnet.py`` measures.

    Models are built (and compiled, for ``mode='compiled'``) in order while the budget, less ``reserve`` seconds,
    still allows the rounds; the rows that did not fit are returned with the names dropped.
    """
    fmt = torch.channels_last
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, px, px, generator=gen).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    kept, dropped = [], []
    per_round = 0.0
    for row in rows:
        # the next model's warm-up (a compile: as long as the last one) and all rounds must fit before the reserve
        warmup = max((r.warmup_s for r in kept), default=60.0 if row.mode == 'compiled' else 5.0)
        if kept and budget.left() - reserve < per_round * (reps + 2) * 1.5 + warmup:
            dropped.append(row.label)
            continue
        torch.manual_seed(0)
        t0 = time.perf_counter()
        try:
            model = row.build().to(device).to(memory_format=fmt).train()
            row.model = torch.compile(model, backend=backend) if row.mode == 'compiled' else model
            row.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            step = _Step(row, x, y, amp)
            row.inner = _calibrate(step, 3, 0.1 if device.type == 'cuda' else 0.0, device)
        except Exception as e:  # one model's failure (a compile error, memory) is reported, the rest measured
            dropped.append(f'{row.label} ({_error_line(e)})')
            row.model = row.optimizer = None
            if not kept:  # no baseline, no ratios
                return [], dropped + [r.label for r in rows[1:]]
            continue
        row.warmup_s = time.perf_counter() - t0
        per_round += _time(step, 1, device) * row.inner
        row.times = []
        kept.append(row)
    for _ in range(reps):
        for row in kept:
            row.times.append(_time(_Step(row, x, y, amp), row.inner, device))
    for row in kept:
        step = _Step(row, x, y, amp)
        row.peak_mb = _peak_mb(step, device)
        row.model = row.optimizer = None
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return kept, dropped


def _error_line(e: BaseException) -> str:
    """An exception as one short line for the report."""
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0][:200] if text else ""}'


def _ratio_record(row: CostRow, base: CostRow) -> dict[str, Any]:
    ratio, lo, hi, conf = median_interval([t / b for t, b in zip(row.times, base.times)])
    return dict(model=row.label, kind=row.kind, mode=row.mode, attn=row.attn, baseline=base.label,
                step_ms=statistics.median(row.times) * 1e3, step_ms_min=min(row.times) * 1e3,
                step_ms_max=max(row.times) * 1e3, ratio=ratio, ratio_lo=lo, ratio_hi=hi, confidence=conf,
                rounds=len(row.times), peak_mb=row.peak_mb,
                peak_ratio=row.peak_mb / base.peak_mb if row.peak_mb and base.peak_mb else None,
                warmup_s=row.warmup_s)


def largest_batch(
        name: str, device: torch.device, px: int, amp: torch.dtype, start: int, budget: Budget,
) -> tuple[int, int]:
    """``(fits, fails)``: the largest training batch found to fit and the smallest found not to (apart by 16 when
    the search finished within the budget); doubling from ``start``, then bisection."""

    def fits(batch: int) -> bool:
        model = plugattn.create_model(name).to(device).to(memory_format=torch.channels_last).train()
        row = CostRow(name, 'plugattn', 'eager', '', nn.Identity, model=model,  # built here, no builder needed
                      optimizer=torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
        try:
            x = torch.randn(batch, 3, px, px, device=device).contiguous(memory_format=torch.channels_last)
            step = _Step(row, x, torch.zeros(batch, dtype=torch.long, device=device), amp)
            step()
            step()  # the optimizer's momentum buffers exist from the second step on
            torch.cuda.synchronize(device)
            return True
        except RuntimeError as e:  # torch.cuda.OutOfMemoryError, or a library's own allocation failing
            if 'out of memory' not in str(e).lower():
                raise
            return False
        finally:
            del row, model
            gc.collect()
            torch.cuda.empty_cache()

    return bracket_largest(fits, start, budget)


def bracket_largest(fits: Callable[[int], bool], start: int, budget: Budget, step: int = 16) -> tuple[int, int]:
    """``(lo, hi)``: ``fits(lo)`` and not ``fits(hi)``, ``hi - lo <= step`` unless the budget ran out first (``lo`` 0:
    not even ``start`` fits, or the budget was spent). Doubling from ``start`` (a multiple of ``step``), then
    bisection on multiples of ``step``."""
    lo, hi = 0, start
    while budget.left() > 0 and fits(hi):
        lo, hi = hi, hi * 2
    while lo and hi - lo > step and budget.left() > 0:
        mid = (lo + hi) // (2 * step) * step
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, hi


def part_b(device: torch.device, quick: bool, budget: Budget, reps: int | None) -> dict[str, Any]:
    bench = _bench_resnet()
    amp = torch.bfloat16
    skipped = []
    if quick:
        own_names, tv_name, px, batch = ['resnet20', 'se_resnet20', 'ca_resnet20'], 'resnet18', 32, 4
        attached_attns, compiled_names, reps = ['se'], ['resnet20'], reps or 3
    else:
        own_names, tv_name, px, batch = list(bench.R50), 'resnet50', 224, 128
        attached_attns, reps = list(ATTNS), reps or 10
        compiled_names = ['resnet50', 'se_resnet50', 'ca_resnet50', 'bav2_resnet50', 'cbam_resnet50',
                          'dia_resnet50', 'eca_resnet50', 'ela_b_resnet50', 'bav1_resnet50']
    backend = 'inductor' if device.type == 'cuda' else 'aot_eager'
    if backend != 'inductor':
        skipped.append('compiled rows with inductor on the CPU: aot_eager instead (no kernel generation)')

    def own(name: str, mode: str = 'eager') -> CostRow:
        if name.startswith('torchvision:'):
            return CostRow(name, 'torchvision', mode, 'none', lambda: _torchvision_resnet(name.split(':')[1], None))
        from plugattn.analysis._common import model_attn

        return CostRow(name, 'plugattn', mode, model_attn(name) or 'none', lambda: plugattn.create_model(name))

    def attached(attn: str | None) -> CostRow:
        label = f'torchvision:{tv_name}' + (f' + attach {attn}' if attn else '')
        return CostRow(label, 'attached', 'eager', attn or 'none', lambda: _torchvision_resnet(tv_name, attn))

    groups = [('plugattn models, eager', [own(n) for n in own_names])]
    try:
        import torchvision  # noqa: F401

        groups.append((f'attention attached to torchvision {tv_name}, eager',
                       [attached(None)] + [attached(a) for a in attached_attns]))
    except ImportError:
        skipped.append('attached rows: torchvision is not installed')
    groups.append((f'plugattn models, torch.compile ({backend})', [own(n, 'compiled') for n in compiled_names]))
    if device.type == 'cuda':  # the engine run of part a leaves deterministic algorithms on
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
    reserve_largest = 40.0 if device.type == 'cuda' else 0.0
    records, dropped_all = [], []
    for title, rows in groups:
        log(f'part b: {title} ({len(rows)} models)')
        # the eager groups leave the compiled group time for two compiles (the backbone and one attention) of about
        # 50 s each and their rounds; it measures as many more as the rest of the budget allows
        compiling = rows[0].mode == 'compiled'
        reserve = reserve_largest + (0.0 if compiling else 0.45 * (budget.seconds - reserve_largest))
        kept, dropped = measure_group(rows, device=device, batch=batch, px=px, amp=amp, reps=reps, budget=budget,
                                      reserve=reserve, backend=backend)
        dropped_all += dropped
        records += [dict(_ratio_record(r, kept[0]), group=title) for r in kept]
        if device.type == 'cuda':
            torch._dynamo.reset()
    if dropped_all:
        skipped.append(f'not measured within the budget ({budget.seconds:.0f} s): {", ".join(dropped_all)}')
    for rec in records:
        target = None if quick else bench.TARGETS.get(rec['attn'])  # the targets are ResNet-50's
        rec['verdict'] = bench._verdict(rec['ratio'], rec['ratio_lo'], rec['ratio_hi'], target[1]) if target else ''
    largest = {}
    if device.type == 'cuda':
        for name in ('resnet50', 'bav2_resnet50'):
            try:
                largest[name] = largest_batch(name, device, px, amp, batch, budget)
                log(f'part b: largest batch of {name}: {largest[name][0]} fits, {largest[name][1]} does not')
            except Exception as e:
                skipped.append(f'largest batch of {name}: {_error_line(e)}')
    else:
        skipped.append('largest batch that fits: needs CUDA (the device memory limit)')
    for line in skipped:
        log(f'part b: skipped {line}')
    return {'records': records, 'largest_batch': largest, 'skipped': skipped, 'batch': batch, 'px': px,
            'amp': 'bfloat16', 'channels_last': True, 'reps': reps, 'seconds': budget.used(),
            'machine': machine_description(device),
            'load': ', '.join(f'{v:.2f}' for v in load_average() or ())}


# --------------------------------------------------------------------------------------------- part c


@dataclass(frozen=True)
class AccuracyRun:
    """One training process of part c."""

    model: str
    seed: int
    device: str
    epochs: int  # the most epochs; the calibration may choose fewer
    batch: int
    train_samples: int | None  # a subset, for --quick
    test_samples: int | None
    data_dir: str | None
    work: str  # folder shared by the runs (calibration files, results)
    deadline: float  # time.time() by which the run must be done
    runs: int  # how many runs calibrate together
    amp: bool


def _load_fashion(run: AccuracyRun, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from plugattn.data.sources import load_fashion_mnist

    xs, ys = [], []
    for split, n in (('train', run.train_samples), ('test', run.test_samples)):
        images, labels, _ = load_fashion_mnist(split, run.data_dir, download=False)
        images, labels = images[:n], labels[:n]
        xs.append(((images.float() / 255.0 - 0.2860) / 0.3530).to(device))  # Fashion-MNIST mean and std
        ys.append(labels.to(device))
    return xs[0], ys[0], xs[1], ys[1]


def _crop_flip(x: Tensor, gen: torch.Generator, pad: int = 4) -> Tensor:
    """Random crops of the zero-padded images and horizontal flips, on the images' device."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=gen, device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy).expand(b, h, w)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx).expand(b, h, w)
    flip = torch.rand(b, 1, 1, generator=gen, device=x.device) < 0.5
    cols = torch.where(flip, 2 * dx + w - 1 - cols, cols)  # mirrored inside the crop window
    idx = torch.arange(b, device=x.device).view(b, 1, 1).expand(b, h, w)
    return padded[idx, 0, rows, cols].unsqueeze(1)


def accuracy_worker(run: AccuracyRun) -> None:
    """Train one model with one seed; write its per-epoch record to ``work/<model>-s<seed>.json``."""
    from plugattn.engine import LRSchedule, create_optimizer, resolve_config

    device = torch.device(run.device)
    torch.set_num_threads(1)
    cfg = resolve_config('fashion-mnist', [])
    x_train, y_train, x_test, y_test = _load_fashion(run, device)
    steps = x_train.shape[0] // run.batch  # the last partial batch is dropped
    fmt = torch.channels_last
    tag = f'{run.model}-s{run.seed}'
    work = Path(run.work)

    def build() -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
        torch.manual_seed(run.seed)
        model = plugattn.create_model(run.model, num_classes=10, in_chans=1).to(device).to(memory_format=fmt)
        gen = torch.Generator(device=device).manual_seed(run.seed)
        return model, create_optimizer(model, dict(cfg['optim'], lr=0.1 * run.batch / 128)), gen

    def train_step(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, idx: Tensor) -> Tensor:
        x = _crop_flip(x_train[idx], gen).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.amp):
            loss = F.cross_entropy(model(x).float(), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    # calibration: a few steps under the same sharing of the device as the real run (once every run has started),
    # then the epoch count that every run can finish by the deadline (the slowest run decides, so all runs train
    # the same schedule)
    torch.backends.cudnn.benchmark = True
    model, opt, gen = build()
    model.train()
    _wait_for_all(work, f'{tag}.ready', run.runs, run.deadline)
    calib = min(steps, 30)
    warm = calib // 6  # the first steps pay for kernel selection and allocator growth
    for i in range(calib):
        if i == warm:
            _sync(device)
            t0 = time.perf_counter()
        train_step(model, opt, gen, torch.arange(i * run.batch, (i + 1) * run.batch, device=device) % len(y_train))
    _sync(device)
    per_step = (time.perf_counter() - t0) / (calib - warm)
    _wait_for_all(work, f'{tag}.calib', run.runs, run.deadline, {'per_step': per_step, 'done_at': time.time()})
    calibs = [json.loads(p.read_text()) for p in work.glob('*.calib')]
    slowest = max(c['per_step'] for c in calibs)
    start = max(c['done_at'] for c in calibs)
    epoch_s = slowest * steps * 1.25 + 1.0  # evaluation and the runs' uneven sharing of the device
    epochs = max(1, min(run.epochs, int((run.deadline - start) // epoch_s)))
    result = {'model': run.model, 'seed': run.seed, 'epochs': epochs, 'max_epochs': run.epochs, 'batch': run.batch,
              'steps_per_epoch': steps, 'calibrated_step_s': per_step, 'slowest_step_s': slowest, 'history': [],
              'finished': False}

    model, opt, gen = build()
    schedule = LRSchedule.from_config(cfg['schedule'], opt.param_groups[0]['lr'], epochs, steps)
    step = 0
    t_start = time.perf_counter()
    for epoch in range(epochs):
        if epoch and time.time() + (time.perf_counter() - t_start) / epoch > run.deadline:
            break  # the device is shared more unevenly than calibrated: stop with the epochs done (reported)
        model.train()
        order = torch.randperm(len(y_train), generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        for b in range(steps):
            schedule.apply(opt, step)
            loss_sum += train_step(model, opt, gen, order[b * run.batch:(b + 1) * run.batch])
            step += 1
        model.eval()
        correct = 0
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.amp):
            for i in range(0, len(y_test), 1000):
                xb = x_test[i:i + 1000].contiguous(memory_format=fmt)
                correct += (model(xb).argmax(1) == y_test[i:i + 1000]).sum().item()
        result['history'].append({'epoch': epoch + 1, 'train_loss': loss_sum.item() / steps,
                                  'top1': 100.0 * correct / len(y_test), 'seconds': time.perf_counter() - t_start})
        result['finished'] = epoch + 1 == epochs
        _write_json(work / f'{tag}.json', result)  # after every epoch: a run stopped later still reports


def _wait_for_all(work: Path, name: str, runs: int, deadline: float, content: Any = None) -> None:
    """Write ``work/name``, then wait until every run has written its file of that suffix (or the deadline)."""
    _write_json(work / name, content)
    suffix = Path(name).suffix
    while len(list(work.glob(f'*{suffix}'))) < runs and time.time() < deadline:
        time.sleep(0.2)


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` so that a concurrent reader sees the whole file or none (a rename)."""
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def part_c(device: torch.device, quick: bool, budget: Budget, args: argparse.Namespace) -> dict[str, Any]:
    from plugattn.data.sources import load_fashion_mnist

    data_dir = args.data_dir or (str(DATA_DIR) if DATA_DIR.is_dir() else None)
    try:
        load_fashion_mnist('test', data_dir, download=False)
    except Exception as e:  # DataError: not found, with where it looked
        line = f'Fashion-MNIST not found ({e}); copy its four .gz files into {DATA_DIR} or pass --data-dir'
        log(f'part c: skipped: {line}')
        return {'skipped': [line], 'runs': []}
    models = ACCURACY_MODELS[:2] if quick else ACCURACY_MODELS
    seeds = range(args.seeds if not quick else 1)
    work = Path(tempfile.mkdtemp(prefix='gpu_check_c_'))
    runs = [AccuracyRun(model=m, seed=s, device=str(device), epochs=2 if quick else args.epochs,
                        batch=32 if quick else args.batch, train_samples=256 if quick else None,
                        test_samples=256 if quick else None, data_dir=data_dir, work=str(work),
                        deadline=time.time() + budget.left() - 10, runs=len(models) * len(seeds), amp=True)
            for m in models for s in seeds]
    log(f'part c: {len(runs)} concurrent runs ({len(models)} models x {len(seeds)} seeds), deadline in '
        f'{budget.left() - 10:.0f} s')
    procs = []
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for r in runs:  # each run's output goes to a file: pipes read one after the other could fill up and block
        log_path = work / f'{r.model}-s{r.seed}.log'
        with open(log_path, 'w') as out:
            procs.append((subprocess.Popen([sys.executable, str(Path(__file__).resolve()), '--worker',
                                            json.dumps(r.__dict__)], env=env, stdout=out, stderr=subprocess.STDOUT),
                          log_path))
    errors = []
    for r, (p, log_path) in zip(runs, procs):
        try:
            p.wait(timeout=max(budget.left() + 30, 1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            errors.append(f'{r.model} seed {r.seed}: stopped after the budget')
            continue
        if p.returncode != 0:
            last = log_path.read_text(errors='replace').strip().splitlines()[-1:]
            errors.append(f'{r.model} seed {r.seed}: exit {p.returncode}: {" ".join(last)}')
    results = [json.loads(p.read_text()) for p in sorted(work.glob('*.json'))]
    shutil.rmtree(work, ignore_errors=True)
    summary = []
    for m in models:
        mine = [r for r in results if r['model'] == m and r['history']]
        if not mine:
            continue
        finals = [r['history'][-1]['top1'] for r in mine]
        done = min(len(r['history']) for r in mine)
        curves = [statistics.mean(r['history'][e]['top1'] for r in mine) for e in range(done)]
        summary.append({'model': m, 'seeds': [r['seed'] for r in mine], 'top1': finals,
                        'mean': statistics.mean(finals), 'std': statistics.stdev(finals) if len(finals) > 1 else 0.0,
                        'epochs': mine[0]['epochs'], 'epochs_done': [len(r['history']) for r in mine],
                        'finished': all(r['finished'] for r in mine), 'mean_curve': curves,
                        'seconds': max(r['history'][-1]['seconds'] for r in mine)})
    for line in errors:
        log(f'part c: {line}')
    finished = sum(r['finished'] for r in results)
    log(f'part c: {finished} of {len(runs)} runs finished their schedule in {budget.used():.0f} s')
    return {'runs': results, 'summary': summary, 'errors': errors, 'skipped': [], 'seconds': budget.used(),
            'concurrent': len(runs), 'max_epochs': runs[0].epochs, 'batch': runs[0].batch, 'amp': runs[0].amp,
            'subset': [runs[0].train_samples, runs[0].test_samples]}


# --------------------------------------------------------------------------------------------- report


def _fmt_err(errors: dict[str, float]) -> str:
    return f'{max(errors.values()):.1e}'


def render(report: dict[str, Any]) -> str:
    meta = report['meta']
    lines = ['# plugattn: GPU check', '',
             f'Generated by `{meta["command"]}` on {meta["date"]} (plugattn {meta["version"]}).', '',
             f'* Machine: {meta["machine"]}.', '']
    titles = {'a': 'a. Correctness', 'b': 'b. Cost', 'c': 'c. Accuracy'}
    for part, title in titles.items():
        if 'error' in report.get(part, {}):  # the part stopped: say where, and drop it from the sections below
            lines += [f'## {title}: stopped', '', f'`{report[part]["error"]}`', '', '```',
                      report[part]['traceback'].strip(), '```', '']
    a, b, c = (report.get(k) if 'error' not in report.get(k, {}) else None for k in 'abc')
    if a:
        tol = a['tolerance']
        lines += ['## a. Correctness: the lean path against the plain formulation', '',
                  f'{len(a["rows"]) - a["failed"]} of {len(a["rows"])} checks passed ({a["seconds"]:.0f} s).', '',
                  'Each cell: the largest norm-wise relative error, against the plain formulation in float64, of the '
                  'output, the input gradient and all parameter gradients of one training pass (batch of 8, '
                  'train-mode BatchNorm), for the lean path / the plain formulation in the same precision. A check '
                  f'passes when the lean error is at most {tol["factor"]:g}x the plain one plus a floor '
                  f'(float32 {tol["floor"]["float32"]:g}, AMP {tol["floor"]["bfloat16"]:g}, results exact in both), '
                  'i.e. the lean path is as accurate as the plain formulation in that precision; float32 lean and '
                  f'plain must also agree within {tol["lean_vs_plain_float32"]:g} (the same arithmetic in another '
                  'summation order). TF32 is off and cuDNN deterministic for these comparisons. AMP: convolutions '
                  'and matrix products in 16 bits, whose rounding train-mode BatchNorm over a batch of 8 amplifies '
                  'in backward: both paths\' gradients are 1e-2 to 1 from float64 (1e-3 to 1e-2 for the outputs), '
                  'so the bound is relative to the plain path\'s own error rather than a fixed number.', '']
        checks = list(dict.fromkeys(r['check'] for r in a['rows'] if 'lean' in r))
        lines += ['| family | attention | ' + ' | '.join(checks) + ' |', '|:---|:---|' + '---:|' * len(checks)]
        cells: dict[tuple[str, str], dict[str, str]] = {}
        for r in a['rows']:
            if 'lean' in r:
                mark = '' if r['ok'] else ' **FAIL**'
                cells.setdefault((r['family'], r['attn']), {})[r['check']] = \
                    f'{_fmt_err(r["lean"])} / {_fmt_err(r["plain"])}{mark}'
        for (fam, attn), row in cells.items():
            lines.append(f'| {fam} | {attn} | ' + ' | '.join(row.get(c, '') for c in checks) + ' |')
        lines.append('')
        for r in a['rows']:
            if 'lean' not in r:
                lines.append(f'* {r["family"]} {r["attn"]}, {r["check"]}: {"ok" if r["ok"] else "**FAILED**"}'
                             f'{": " + r["note"] if r.get("note") else ""}')
        lines += [*(f'* Skipped: {s}' for s in a['skipped']), '']
    if b:
        lines += ['## b. Cost: training step time and peak memory against the plain backbone', '',
                  f'{b["px"]} px, batch {b["batch"]}, AMP {b["amp"]}, channels_last, {b["reps"]} interleaved rounds '
                  f'per group; machine {b["machine"]}; load average {b["load"]}. Step time: median (min-max) of the '
                  'rounds; xbb: median of the per-round ratios to the group\'s first row with its distribution-free '
                  'interval, as in `bench_resnet.py`; peak: `torch.cuda.max_memory_allocated` above what was live '
                  '(CPU: profiler allocation events); target verdicts as in RESULTS.md.', '',
                  '| group | model | step (ms) | min-max | xbb (CI) | peak (MiB) | peak xbb | warm-up (s) | target |',
                  '|:---|:---|---:|---:|---:|---:|---:|---:|:---|']
        for r in b['records']:
            lines.append(f'| {r["group"]} | {r["model"]} | {r["step_ms"]:.1f} | {r["step_ms_min"]:.1f}-'
                         f'{r["step_ms_max"]:.1f} | {r["ratio"]:.3f} ({r["ratio_lo"]:.2f}-{r["ratio_hi"]:.2f}) | '
                         f'{r["peak_mb"]:.0f} | {r["peak_ratio"]:.3f} | {r["warmup_s"]:.1f} | {r["verdict"]} |')
        lines.append('')
        if b['largest_batch']:
            lines += ['Largest training batch that fits in device memory (same settings): ' + ', '.join(
                f'{k} {fit} ({fail} does not)' if fail - fit <= 16 else
                f'{k} at least {fit}, under {fail} (the search stopped at the budget)'
                for k, (fit, fail) in b['largest_batch'].items()) + '.', '']
        lines += [*(f'* Skipped: {s}' for s in b['skipped']), '']
    if c:
        lines += ['## c. Accuracy: ResNet-20 variants on Fashion-MNIST', '']
        if c.get('summary'):
            lines += [f'{c["concurrent"]} runs at once on the one device; SGD Nesterov (the fashion-mnist recipe), '
                      f'lr 0.1 x batch / 128, batch {c["batch"]}, cosine with warmup, random crop (pad 4) and '
                      f'flip, AMP bfloat16: {c["amp"]}; at most {c["max_epochs"]} epochs, as many as the budget '
                      'allowed all runs alike; subset (train, test): '
                      f'{c["subset"]}. Final test top-1, mean +- std over the seeds:', '',
                      '| model | epochs | top-1 mean +- std (%) | per seed | seconds |', '|:---|---:|---:|:---|---:|']
            for s in c['summary']:
                epochs = s['epochs'] if s['finished'] else f'{s["epochs"]} (stopped at {s["epochs_done"]})'
                lines.append(f'| {s["model"]} | {epochs} | {s["mean"]:.2f} +- {s["std"]:.2f} | '
                             f'{", ".join(f"{v:.2f}" for v in s["top1"])} | {s["seconds"]:.0f} |')
            lines += ['', 'Per-epoch test top-1, mean over the seeds:', '']
            n = max(len(s['mean_curve']) for s in c['summary'])
            lines += ['| model | ' + ' | '.join(str(e + 1) for e in range(n)) + ' |', '|:---|' + '---:|' * n]
            for s in c['summary']:
                lines.append(f'| {s["model"]} | ' + ' | '.join(f'{v:.1f}' for v in s['mean_curve']) + ' |')
            lines.append('')
        lines += [*(f'* Skipped: {s}' for s in c['skipped']), *(f'* Error: {e}' for e in c.get('errors', [])), '']
    return '\n'.join(lines)


def _parse_budgets(text: str | None, quick: bool) -> dict[str, float]:
    budgets = dict(QUICK_BUDGETS if quick else BUDGETS)
    for item in filter(None, (text or '').split(',')):
        part, _, seconds = item.partition('=')
        if part not in budgets or not seconds.replace('.', '', 1).isdigit():
            raise SystemExit(f'gpu_check: --budget takes PART=SECONDS items such as a=110,b=300, got {item!r}')
        budgets[part] = float(seconds)
    return budgets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda', help="'cuda' (default), 'cuda:N' or 'cpu'")
    parser.add_argument('--quick', action='store_true', help='every part at tiny sizes (the CPU test)')
    parser.add_argument('--parts', default='a,b,c', help='comma-separated parts to run (default a,b,c)')
    parser.add_argument('--budget', default=None, metavar='PART=SECONDS,...',
                        help=f'time budget per part (default {",".join(f"{k}={v:g}" for k, v in BUDGETS.items())}; '
                             f'--quick {",".join(f"{k}={v:g}" for k, v in QUICK_BUDGETS.items())})')
    parser.add_argument('--out', type=Path, default=None,
                        help=f'report folder (default {DEFAULT_OUT.relative_to(HERE.parent)} on cuda, '
                             'runs/gpu_check_cpu otherwise)')
    parser.add_argument('--reps', type=int, default=None, help='part b: interleaved rounds (default 10, --quick 3)')
    parser.add_argument('--epochs', type=int, default=30, help='part c: most epochs (default 30)')
    parser.add_argument('--batch', type=int, default=256, help='part c: batch size (default 256, lr 0.2)')
    parser.add_argument('--seeds', type=int, default=3, help='part c: seeds per model (default 3)')
    parser.add_argument('--data-dir', default=None, help='part c: folder with the Fashion-MNIST files')
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        accuracy_worker(AccuracyRun(**json.loads(args.worker)))
        return 0
    parts = [p for p in args.parts.split(',') if p]
    if not parts or set(parts) - {'a', 'b', 'c'}:
        print(f'gpu_check: --parts takes a comma-separated subset of a,b,c, got {args.parts!r}', file=sys.stderr)
        return 2
    budgets = _parse_budgets(args.budget, args.quick)
    device = torch.device(args.device)
    if device.type == 'cuda':  # before cuBLAS starts: the engine run of part a is deterministic
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('gpu_check: no CUDA device here; run it on a machine with a GPU, or pass --device cpu --quick for the '
              'CPU version of every part', file=sys.stderr)
        return 2
    out = args.out or (DEFAULT_OUT if device.type == 'cuda' else HERE.parent / 'runs' / 'gpu_check_cpu')
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / 'gpu_check.json'
    report: dict[str, Any] = {}
    if json_path.is_file():  # the parts not run this time keep their previous results
        with contextlib.suppress(ValueError):
            report = json.loads(json_path.read_text(encoding='utf-8'))
        if report.get('meta', {}).get('device_type') != device.type:
            report = {}
    if device.type == 'cpu':
        torch.set_num_threads(1)  # the CPU mode is a smoke test; one thread leaves the other core to part c
    report['meta'] = {'command': 'python benchmarks/gpu_check.py ' + ' '.join(argv if argv is not None else
                                                                             sys.argv[1:]),
                      'date': dt.date.today().isoformat(), 'version': plugattn.__version__,
                      'machine': machine_description(device), 'device_type': device.type}
    t0 = time.perf_counter()
    for part in parts:
        budget = Budget(budgets[part])
        log(f'part {part}: budget {budget.seconds:.0f} s')
        try:
            if part == 'a':
                report['a'] = part_a(device, args.quick, budget)
            elif part == 'b':
                report['b'] = part_b(device, args.quick, budget, args.reps)
            else:
                report['c'] = part_c(device, args.quick, budget, args)
        except Exception as e:  # reported, and the other parts still run
            log(f'part {part} stopped: {_error_line(e)}')
            report[part] = {'error': _error_line(e), 'traceback': traceback.format_exc()}
        json_path.write_text(json.dumps(report, indent=1) + '\n', encoding='utf-8')
        (out / 'gpu_check.md').write_text(render(report), encoding='utf-8')
    log(f'wrote {out / "gpu_check.md"} and {json_path.name} ({time.perf_counter() - t0:.0f} s)')
    return 1 if report.get('a', {}).get('failed') and 'a' in parts else 0


if __name__ == '__main__':
    raise SystemExit(main())
