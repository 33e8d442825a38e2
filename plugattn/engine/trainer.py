"""The training loop: build everything from a validated config, train, evaluate every epoch, checkpoint, resume.

:func:`train` is what ``plugattn train`` runs. It works single-process or under ``torchrun`` (one process per
device, DistributedDataParallel, per-rank data shards, all-reduced metrics, rank 0 writes everything).

Preemption: SIGTERM, SIGINT, SIGHUP and SIGUSR1 stop the run after the current optimizer step with the resume state
saved, and ``train.save_every_steps`` / ``train.save_every_minutes`` save it inside epochs too; such a mid-epoch state
holds the position in the epoch, the running loss sums and the mixup generator, so resuming from it is bit-exact.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import STOP_SIGNALS
from ..errors import summarise_cause
from .builder import build_model, check_config
from .checkpoint import (
    BEST_FILE,
    LAST_FILE,
    STATE_FILE,
    atomic_write_text,
    capture_rng_state,
    check_state_dict_fits,
    load_state,
    read_run_info,
    remove_stale_temps,
    restore_rng_state,
    save_state,
    save_weights,
    write_run_info,
)
from .config import dump_config, validate_config
from .distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    convert_sync_batchnorm,
    init_distributed,
)
from .ema import ModelEma
from .errors import EngineError
from .evaluation import evaluate
from .logger import Progress, RunLogger
from .metrics import count_macs, count_params
from .optim import create_optimizer
from .preprocess import Preprocessing
from .provenance import command_line, environment_info
from .rundir import CONFIG_FILE, RunDirLock, new_run_dir, resume_command, unstarted_run
from .scheduler import LRSchedule
from .summary import TrainResult, human_count
from .taskinfo import format_metrics, primary_metric
from .tasks import build_task_model, dense_task
from .threads import busy_cores, choose_threads

__all__ = ['amp_settings', 'seed_everything', 'train']

# --------------------------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _set_determinism(deterministic: bool, device: torch.device) -> None:
    if device.type == 'cuda':
        if deterministic:
            os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def amp_settings(cfg_train: Mapping[str, Any], device: torch.device) -> tuple[bool, torch.dtype, bool]:
    """``(enabled, dtype, use_grad_scaler)`` of AMP for a device.

    ``auto`` is bfloat16 on the CPU and float16 with a GradScaler on CUDA; explicit bfloat16 on CUDA uses no
    scaler.

    Raises:
        EngineError: float16 requested on the CPU.
    """
    if not cfg_train['amp']:
        return False, torch.float32, False
    name = cfg_train['amp_dtype']
    if name == 'auto':
        name = 'float16' if device.type == 'cuda' else 'bfloat16'
    if name == 'float16' and device.type != 'cuda':
        raise EngineError('float16 AMP needs CUDA', 'use --set train.amp_dtype=bfloat16 (or auto) on the CPU')
    dtype = torch.float16 if name == 'float16' else torch.bfloat16
    return True, dtype, dtype == torch.float16


class _Stop(Exception):
    """Raised at a safe point after a stop signal, once the resume state is saved."""


def _detach_from_terminal() -> None:
    """After SIGHUP the terminal is gone: send what would go to it to /dev/null, so the clean stop can still print."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            if os.isatty(fd):
                os.dup2(null, fd)
        os.close(null)


# --------------------------------------------------------------------------------------------- trainer


class _Trainer:
    def __init__(
            self,
            cfg: dict[str, Any],
            ctx: DistContext,
            *,
            resume_dir: Path | None,
            stop_after: int | None,
            progress: bool | None,
            echo: Callable[[str], None],
            t_start: float,
            command: str,
            reschedule: bool = False,
    ) -> None:
        self.cfg = cfg
        self.command = command
        self.resumed_with: list[str] = []
        self.reschedule = reschedule
        self.stop_signum: int | None = None
        self.partial: dict[str, Any] | None = None  # progress inside start_epoch of a mid-epoch resume state
        self.last_save = time.monotonic()
        # --resume of a run killed before its first checkpoint: start it from the beginning in place.
        self.restart = resume_dir is not None and unstarted_run(resume_dir)
        self.finish_only = False  # --resume of a run that trained every epoch but lacks its end-of-run files
        self.thread_note: str | None = None  # why the run uses another thread count than torch's default
        self.ctx = ctx
        self.resume_dir = resume_dir
        self.stop_after = stop_after
        self.echo = echo if ctx.is_main else (lambda _line: None)
        self.t_start = t_start
        tc = cfg['train']
        self.tty = progress
        self.epochs = tc['epochs']
        self.seed = tc['seed']
        self.step = 0
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_top1 = -1.0
        self.best_epoch = 0
        self.run_dir: Path | None = None
        self.logger: RunLogger | None = None
        self.lock: RunDirLock | None = None
        self.created = _dt.datetime.now().isoformat(timespec='seconds')
        self.dense = dense_task(cfg, ctx)  # None for classification
        self.primary = primary_metric(cfg['task'])  # the metric of best.safetensors (top1, map or miou)

    # ----------------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        cfg, ctx, tc = self.cfg, self.ctx, self.cfg['train']
        if tc['threads']:
            torch.set_num_threads(tc['threads'])
        elif ctx.distributed and ctx.device.type == 'cpu' and 'OMP_NUM_THREADS' not in os.environ:
            local = int(os.environ.get('LOCAL_WORLD_SIZE', ctx.world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        elif ctx.device.type == 'cpu' and 'OMP_NUM_THREADS' not in os.environ:
            self._choose_threads()
        _set_determinism(tc['deterministic'], ctx.device)
        self.amp_enabled, self.amp_dtype, use_scaler = amp_settings(tc, ctx.device)

        if self.dense is not None:
            model = self._setup_dense()
        else:
            model = self._setup_classification()
        m = cfg['model']
        if m['init_checkpoint'] and (self.resume_dir is None or self.restart):
            from .init_checkpoint import load_init_checkpoint

            load_init_checkpoint(model, m['init_checkpoint'], m['name'])
        self.params = count_params(model)
        self.macs = self._count_macs(model)
        self._setup_training(model, use_scaler)

    def _setup_classification(self) -> nn.Module:
        from ..data import AugConfig, build_loader
        from ..data.images import preflight_imagefolder
        from ..data.info import canonical_name
        from ..data.loader import use_timm_pipeline

        cfg, ctx, tc = self.cfg, self.ctx, self.cfg['train']
        # Data first: a missing dataset is the most likely user error and must come before any output.
        d = cfg['data']
        if d['preflight'] and canonical_name(d['name']) == 'imagefolder':
            if ctx.is_main:  # decode every file once, before any output, and name the bad ones
                preflight_imagefolder(d['data_dir'], threads=max(1, d['num_workers']) if d['num_workers'] else None,
                                      echo=self.echo)
            barrier(ctx)
        if cfg['aug']['pipeline'] == 'auto' and canonical_name(d['name']) == 'imagefolder':
            # saved resolved: a resumed run keeps the pipeline it started with, whether timm is installed then or not
            cfg['aug']['pipeline'] = 'timm' if use_timm_pipeline(AugConfig.from_dict(cfg['aug'])) else 'plugattn'
        aug = AugConfig.from_dict(cfg['aug'])
        common = dict(data_dir=d['data_dir'], aug=aug, seed=self.seed, rank=ctx.rank, world_size=ctx.world_size,
                      num_workers=d['num_workers'], download=d['download'])
        self.train_loader = build_loader(d['name'], 'train', batch_size=tc['batch_size'], train=True,
                                         drop_last=True, **common)
        eval_bs = tc['eval_batch_size'] or 2 * tc['batch_size']
        self.test_loader = build_loader(d['name'], 'test', batch_size=eval_bs, train=False, drop_last=False,
                                        **common)
        self.info = self.train_loader.info
        self.input_size = (self.info.in_chans, *self.train_loader.info.image_size)

        # Model: identical initialisation on every rank (DDP also broadcasts rank 0's weights).
        seed_everything(self.seed)
        m = cfg['model']
        model = build_model(m['name'], self.info.num_classes, self.info.in_chans, m['kwargs'])
        if tc['batch_size'] == 1 and any(
                isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in model.modules()):
            raise EngineError(f'{m["name"]} has BatchNorm layers, which cannot train on a batch of one sample',
                              'use --batch-size 2 or more (per process)')
        self.model_kwargs = {'num_classes': self.info.num_classes, 'in_chans': self.info.in_chans, **m['kwargs']}
        self.classes = list(self.info.classes) if self.info.classes else None
        try:
            self.preprocessing: dict[str, Any] | None = Preprocessing.for_dataset(
                self.test_loader.info, cfg['aug']['image_size'], cfg['aug']['interpolation']).to_dict()
        except EngineError:  # images other than grey or RGB: no file preprocessing to describe
            self.preprocessing = None
        self.environment = environment_info(ctx.device)
        return model

    def _setup_dense(self) -> nn.Module:
        """Data and model of a detection or segmentation run."""
        assert self.dense is not None
        cfg, tc = self.cfg, self.cfg['train']
        self.train_loader, self.test_loader, self.info = self.dense.loaders(self.seed)
        self.input_size = (self.info.in_chans, *self.info.image_size)
        seed_everything(self.seed)
        m = cfg['model']
        self.model_kwargs = self.dense.model_kwargs(self.info.num_classes)
        model = build_task_model(m['name'], self.model_kwargs)
        if cfg['task'] == 'segmentation' and tc['batch_size'] == 1:
            raise EngineError(f'{m["name"]} has BatchNorm layers, which cannot train on a batch of one image',
                              'use --batch-size 2 or more (per process)')
        self.classes = list(self.info.classes)
        self.preprocessing = None
        self.environment = environment_info(self.ctx.device)
        return model

    def _count_macs(self, model: nn.Module) -> int:
        if self.dense is None:
            return count_macs(model, self.input_size)
        try:  # detectors take a list of images; a model that cannot be counted is reported as 0
            return count_macs(model, self.input_size)
        except Exception:
            return 0

    def _setup_training(self, model: nn.Module, use_scaler: bool) -> None:
        from ..data import MixupCutmix

        cfg, ctx, tc = self.cfg, self.ctx, self.cfg['train']
        if tc['sync_bn'] and ctx.distributed:
            model = convert_sync_batchnorm(model, ctx.device)
        model.to(ctx.device)
        if tc['channels_last']:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = create_optimizer(model, cfg['optim'])
        self.schedule = LRSchedule.from_config(cfg['schedule'], cfg['optim']['lr'], self.epochs,
                                               len(self.train_loader))
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=use_scaler)
        e = cfg['ema']
        self.ema = ModelEma(model, e['decay'], e['warmup']) if e['enabled'] else None
        mx = cfg['mixup']
        self.mixup = None
        if self.dense is None and mx['prob'] > 0 and (mx['mixup_alpha'] > 0 or mx['cutmix_alpha'] > 0):
            self.mixup = MixupCutmix(mx['mixup_alpha'], mx['cutmix_alpha'], mx['prob'], mx['switch_prob'],
                                     cfg['loss']['label_smoothing'], self.info.num_classes)

        if self.resume_dir is not None and not self.restart:
            self._load_resume_state()
        else:
            seed_everything(self.seed + ctx.rank)

        self.train_model: nn.Module = model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [ctx.device.index] if ctx.device.type == 'cuda' else None
            self.train_model = DDP(model, device_ids=ids, output_device=ids[0] if ids else None,
                                   find_unused_parameters=self.dense is not None and tc['find_unused_parameters'])
        self.eval_model: nn.Module = model
        if tc['compile']:
            self.train_model = torch.compile(self.train_model)
            self.eval_model = torch.compile(model)

    def _choose_threads(self) -> None:
        """``train.threads`` null on the CPU: a resume keeps the count its run trained with (thread counts change the
        order of float sums, so results then match a run never stopped); a new run takes the cores other processes
        leave free (see :mod:`plugattn.engine.threads`)."""
        if self.resume_dir is not None and not self.restart:
            with contextlib.suppress(EngineError):
                threads = read_run_info(self.resume_dir).get('threads')
                if isinstance(threads, int) and threads >= 1 and threads != torch.get_num_threads():
                    torch.set_num_threads(threads)
                    self.thread_note = (f'{threads} CPU thread{"s" if threads > 1 else ""}, as the run trained with '
                                        '(so it continues bit for bit); --threads N sets the count')
                    return
        if torch.get_num_threads() <= 1:  # nothing to lower: no need to measure the load (half a second)
            return
        threads, self.thread_note = choose_threads(torch.get_num_threads(), busy_cores())
        torch.set_num_threads(threads)

    def _load_resume_state(self) -> None:
        assert self.resume_dir is not None
        state = load_state(self.resume_dir / STATE_FILE)
        name = self.cfg['model']['name']
        if state.get('model_name') != name:
            raise EngineError(f'{self.resume_dir / STATE_FILE} holds a {state.get("model_name")} run, not {name}',
                              'resume the run directory it came from')
        try:
            check_state_dict_fits(self.model, state['model'], str(self.resume_dir / STATE_FILE),
                                  state.get('model_name'), name)
            self.model.load_state_dict(state['model'])
            self.optimizer.load_state_dict(state['optimizer'])
            if state.get('scaler'):
                self.scaler.load_state_dict(state['scaler'])
            if self.ema is not None:
                if state.get('ema') is None:
                    raise EngineError('the run was trained without EMA', 'do not enable ema when resuming')
                self.ema.load_state_dict(state['ema'], state.get('ema_updates', 0))
        except KeyError as e:
            raise EngineError(f'resume state {self.resume_dir / STATE_FILE} lacks {e.args[0]!r}',
                              'start a new run') from None
        except (RuntimeError, ValueError) as e:
            if isinstance(e, EngineError):
                raise
            raise EngineError(f'resume state {self.resume_dir / STATE_FILE} does not match the model/optimizer '
                              f'({summarise_cause(e)})', 'start a new run') from None
        self.start_epoch = int(state['epoch'])
        self.step = int(state['step'])
        self.history = list(state.get('history', []))
        self.best_top1 = float(state.get('best_top1', -1.0))
        self.best_epoch = int(state.get('best_epoch', 0))
        rng = state.get('rng') or []
        if rng:
            restore_rng_state(rng[self.ctx.rank] if len(rng) == self.ctx.world_size else rng[0])
        partial = state.get('partial')
        if partial:
            if len(partial) != self.ctx.world_size:
                raise EngineError(f'{self.resume_dir / STATE_FILE} was saved inside epoch {self.start_epoch + 1} by '
                                  f'{len(partial)} processes, this job has {self.ctx.world_size}',
                                  f'resume it with {len(partial)} processes (the data order depends on it)')
            self.partial = partial[self.ctx.rank]
        if self.start_epoch == self.epochs and not self._end_of_run_complete():
            self.finish_only = True  # killed after its last save, e.g. while it wrote curves.png
            return
        if self.start_epoch >= self.epochs:
            raise EngineError(f'run {self.resume_dir} already finished {self.start_epoch} of {self.epochs} epochs',
                              f'train longer with --resume {self.resume_dir} --epochs N (N > {self.start_epoch})')
        self._check_schedule(state.get('scheduler') or {})

    def _end_of_run_complete(self) -> bool:
        """Whether a run that trained every epoch also wrote its end-of-run files and its "finished" status."""
        assert self.resume_dir is not None
        try:
            finished = read_run_info(self.resume_dir).get('status') == 'finished'
        except EngineError:
            finished = False
        return finished and not RunLogger(self.resume_dir, tensorboard=False).missing_files()

    def _check_schedule(self, saved: Mapping[str, Any]) -> None:
        """Refuse (without ``reschedule``) a changed --epochs that changes the learning rate of the coming steps."""
        old_epochs = int(saved.get('epochs', self.epochs))
        if old_epochs == self.epochs:
            return
        new = self.schedule
        old = LRSchedule.from_config(self.cfg['schedule'], self.cfg['optim']['lr'], old_epochs,
                                     new.steps_per_epoch)
        end = max(old.total_steps, new.total_steps)
        stride = max(1, (end - self.step) // 100_000)
        changed = next((s for s in range(self.step, end, stride) if not math.isclose(old(s), new(s))), None)
        if changed is None:
            return  # e.g. a step or constant schedule: the coming steps keep their learning rates
        what = (f'--epochs {self.epochs} re-times the {new.name} learning-rate schedule of {self.resume_dir} '
                f'(planned for {old_epochs} epochs): from step {changed} on the lr follows {self.epochs} epochs '
                f'({new(changed):.4g} instead of {old(changed):.4g} at step {changed})')
        if not self.reschedule:
            raise EngineError(what, 'pass --reschedule to accept the new schedule, or resume without --epochs '
                                    '(to split a run into jobs use --stop-after)')
        self.echo(f'  note: {what}')

    # ----------------------------------------------------------------------------------------- train

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype, enabled=self.amp_enabled)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        from ..data import derive_seed

        ctx, tc = self.ctx, self.cfg['train']
        model, loader = self.train_model, self.train_loader
        model.train()
        partial, self.partial = self.partial, None
        start = int(partial['batch']) if partial else 0
        loader.set_epoch(epoch, start)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 'mixup', ctx.rank)) if self.mixup else None
        if gen is not None and partial and partial.get('mixup_gen') is not None:
            gen.set_state(partial['mixup_gen'])
        smoothing = self.cfg['loss']['label_smoothing']
        loss_sum = torch.tensor(float(partial['loss_sum']) if partial else 0.0, dtype=torch.float64,
                                device=ctx.device)
        seen = int(partial['seen']) if partial else 0
        lr = self.schedule(self.step)
        t0 = time.perf_counter() - (float(partial['train_seconds']) if partial else 0.0)
        desc = f'epoch {epoch + 1}/{self.epochs}'
        batch, n_batches = start, len(loader)
        with Progress(n_batches - start, desc, enabled=ctx.is_main, tty=self.tty,
                      interval=tc['log_interval']) as bar:
            self.bar = bar
            for x, y in loader:
                lr = self.schedule.apply(self.optimizer, self.step)
                if self.dense is not None:
                    loss, n = self.dense.loss(model, (x, y), self._autocast)
                else:
                    x = x.to(ctx.device, non_blocking=True)
                    y = y.to(ctx.device, non_blocking=True)
                    n = y.shape[0]
                    target = None
                    if self.mixup is not None:
                        x, target = self.mixup(x, y, gen)
                    if tc['channels_last'] and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with self._autocast():
                        logits = model(x)
                    logits = logits.float()
                    # Mixup/CutMix targets are class probabilities (already smoothed), which F.cross_entropy takes.
                    loss = F.cross_entropy(logits, y if target is None else target,
                                           label_smoothing=smoothing if target is None else 0.0)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if tc['grad_clip'] is not None:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), tc['grad_clip'])
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update(self.model)
                self.step += 1
                loss_sum += loss.detach().double() * n
                seen += n
                show = bar.tty or bar.count + 1 == bar.total or (bar.count + 1) % bar.interval == 0
                value = loss.item() if show else None
                if value is not None and not math.isfinite(value):
                    self._non_finite(epoch, value)
                bar.update(1, samples=seen * ctx.world_size, loss=value, lr=lr)
                batch += 1
                save, stop = self._checkpoint_due(batch == n_batches)
                if save:
                    progress = {'batch': batch, 'loss_sum': loss_sum.item(), 'seen': seen,
                                'mixup_gen': gen.get_state() if gen is not None else None,
                                'train_seconds': time.perf_counter() - t0}
                    self._save(epoch, {}, None, partial=progress, status='stopped' if stop else 'running')
                    where = f'epoch {epoch + 1}, batch {batch}/{n_batches}, step {self.step}'
                    bar.write(f'  {"stopping: " if stop else ""}saved the resume state at {where}')
                if stop:
                    raise _Stop
        total, count = all_reduce_sum([loss_sum.item(), seen], ctx)
        train_loss = total / max(count, 1.0)
        if not math.isfinite(train_loss):
            self._non_finite(epoch, train_loss)
        seconds = time.perf_counter() - t0
        return {'train_loss': train_loss, 'lr': lr, 'train_seconds': seconds,
                'samples_per_s': count / max(seconds, 1e-9)}

    def _checkpoint_due(self, epoch_end: bool) -> tuple[bool, bool]:
        """``(save now, stop now)`` after an optimizer step; all processes get the same answer."""
        tc = self.cfg['train']
        stop = self.stop_signum is not None
        timed = (tc['save_every_minutes'] is not None and self.ctx.is_main
                 and time.monotonic() - self.last_save >= 60.0 * tc['save_every_minutes'])
        if self.ctx.distributed:  # a signal may reach only some processes; rank 0's clock decides the timed saves
            flags = all_reduce_sum([float(stop), float(timed)], self.ctx)
            stop, timed = flags[0] > 0, flags[1] > 0
            if stop and self.stop_signum is None:
                self.stop_signum = signal.SIGTERM
        every = tc['save_every_steps']
        due = timed or (every is not None and self.step % every == 0)
        return stop or (due and not epoch_end), stop

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == getattr(signal, 'SIGHUP', None):
            _detach_from_terminal()
        if self.stop_signum is not None:  # a second signal: stop at once (the last saved state stays valid)
            raise KeyboardInterrupt
        self.stop_signum = signum

    def _stop_requested(self) -> bool:
        """Whether a stop signal arrived on any process (checked before the run directory is created and after each
        epoch's evaluation and save)."""
        stop = self.stop_signum is not None
        if self.ctx.distributed:
            stop = all_reduce_sum([float(stop)], self.ctx)[0] > 0
            if stop and self.stop_signum is None:
                self.stop_signum = signal.SIGTERM
        return stop

    @contextlib.contextmanager
    def _signal_handlers(self) -> Any:
        """The stop signals (:data:`plugattn.data.loader.STOP_SIGNALS`) request a stop at the next safe point
        (installed in the main thread only; a signal the process was started to ignore, e.g. SIGHUP under ``nohup``,
        stays ignored)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _non_finite(self, epoch: int, value: float) -> None:
        raise EngineError(f'the training loss became {value} in epoch {epoch + 1}',
                          'lower --lr, set --set train.grad_clip=1.0, or train without --amp')

    # ----------------------------------------------------------------------------------------- checkpoints

    def _weights_meta(self, epoch: int, record: Mapping[str, Any], weights: str) -> dict[str, Any]:
        cfg = self.cfg
        meta = {
            'model': cfg['model']['name'],
            'model_kwargs': self.model_kwargs,
            'recipe': cfg['name'],
            'recipe_version': cfg['version'],
            'epoch': epoch,
            'step': self.step,
            'weights': weights,
            'metrics': {k: v for k, v in record.items() if isinstance(v, (int, float))},
            'classes': self.classes,
            'preprocessing': self.preprocessing,
            'data': {
                'name': self.info.name,
                'num_classes': self.info.num_classes,
                'input_size': list(self.input_size),
                'image_size': cfg['aug']['image_size'],
                'interpolation': cfg['aug']['interpolation'],
                'data_dir': cfg['data']['data_dir'],
            },
            'eval_batch_size': cfg['train']['eval_batch_size'] or 2 * cfg['train']['batch_size'],
            'params': self.params,
            'macs': self.macs,
        }
        if self.dense is not None:  # classification checkpoints keep their fields as they were
            meta.update(task=cfg['task'], backbone=cfg['model']['backbone'],
                        attn=cfg['model']['kwargs'].get('attn'), primary_metric=self.primary, dense=cfg['dense'])
        return meta

    def _run_info(self, status: str) -> dict[str, Any]:
        cfg = self.cfg
        return {
            'status': status,
            'recipe': cfg['name'],
            'model': cfg['model']['name'],
            'data': cfg['data']['name'],
            'epochs': self.epochs,
            'epochs_done': self.history[-1]['epoch'] if self.history else 0,
            f'best_{self.primary}': self.best_top1 if self.best_top1 >= 0 else None,
            **({'task': cfg['task']} if self.dense is not None else {}),
            'world_size': self.ctx.world_size,
            'threads': torch.get_num_threads() if self.ctx.device.type == 'cpu' else None,
            'created': self.created,
            'updated': _dt.datetime.now().isoformat(timespec='seconds'),
            'command': self.command,
            'resumed_with': self.resumed_with,
            'environment': self.environment,
            'model_kwargs': self.model_kwargs,
            'classes': self.classes,
            'preprocessing': self.preprocessing,
        }

    def _save(
            self,
            epoch: int,
            record: dict[str, Any],
            improved: str | None,
            partial: dict[str, Any] | None = None,
            status: str = 'running',
    ) -> None:
        """Write the checkpoints after ``epoch`` finished epochs; with ``partial`` (progress inside the next epoch)
        only the resume state is written (the weights files keep the last finished epoch)."""
        rng = capture_rng_state()
        if self.ctx.distributed:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, (rng, partial))
            rngs = [g[0] for g in gathered]
            partials = [g[1] for g in gathered]
        else:
            rngs, partials = [rng], [partial]
        self.last_save = time.monotonic()
        if not self.ctx.is_main:
            return
        assert self.run_dir is not None
        model_state = self.model.state_dict()
        if partial is not None:
            improved = None
        if improved is not None:
            best_state = model_state if improved == 'model' else self.ema.state_dict()  # type: ignore[union-attr]
            save_weights(self.run_dir / BEST_FILE, best_state, self._weights_meta(epoch, record, improved))
        if partial is None:
            save_weights(self.run_dir / LAST_FILE, model_state, self._weights_meta(epoch, record, 'model'))
        state = {
            'model_name': self.cfg['model']['name'],
            'epoch': epoch,
            'step': self.step,
            'model': model_state,
            'optimizer': self.optimizer.state_dict(),
            'scheduler': self.schedule.state_dict(),
            'scaler': self.scaler.state_dict() if self.scaler.is_enabled() else {},
            'ema': self.ema.state_dict() if self.ema is not None else None,
            'ema_updates': self.ema.updates if self.ema is not None else 0,
            'rng': rngs,
            'history': self.history,
            'best_top1': self.best_top1,
            'best_epoch': self.best_epoch,
            'world_size': self.ctx.world_size,
            'partial': partials if partial is not None else None,
        }
        save_state(self.run_dir / STATE_FILE, state)
        write_run_info(self.run_dir, self._run_info(status))

    # ----------------------------------------------------------------------------------------- run

    def _start_output(self) -> None:
        if not self.ctx.is_main:
            return
        if self.resume_dir is not None:
            self.run_dir = self.resume_dir
            try:
                previous = read_run_info(self.run_dir)
            except EngineError:
                if not self.restart:
                    raise
                previous = {}  # killed before it wrote run.json: only its config is there
            self.created = previous.get('created') or self.created
            # the run keeps its first command line; each resume adds its own
            self.resumed_with = [*(previous.get('resumed_with') or []), self.command]
            self.command = previous.get('command') or self.command
            remove_stale_temps(self.run_dir)
            atomic_write_text(self.run_dir / CONFIG_FILE, dump_config(self.cfg))
        else:
            self.run_dir, reused = new_run_dir(self.cfg)
            self.lock = RunDirLock.acquire(self.run_dir, self.echo)
            if reused:
                remove_stale_temps(self.run_dir)
                self.echo(f'  note: {self.run_dir} holds a run stopped before its first checkpoint: the new run '
                          'starts in it')
            atomic_write_text(self.run_dir / CONFIG_FILE, dump_config(self.cfg))
        write_run_info(self.run_dir, self._run_info('running'))
        cfg = self.cfg
        title = f'{cfg["model"]["name"]} on {self.info.name} (recipe: {cfg["name"]})'  # the recipe's name
        self.logger = RunLogger(self.run_dir, title=title, task=cfg['task'])

    def _banner(self) -> None:
        cfg, ctx, tc = self.cfg, self.ctx, self.cfg['train']
        c, h, w = self.input_size
        procs = f'{ctx.world_size} processes ({ctx.backend})' if ctx.distributed else '1 process'
        glob = f', global batch {tc["batch_size"] * ctx.world_size}' if ctx.distributed else ''
        self.echo(f'plugattn train: model {cfg["model"]["name"]} ({self.params:,} params, {human_count(self.macs)} '
                  f'MACs), data {self.info.name} ({self.train_loader.dataset_size} train / '
                  f'{self.test_loader.dataset_size} test, {c}x{h}x{w}), recipe: {cfg["name"]} v{cfg["version"]}')
        amp = f', AMP {str(self.amp_dtype).replace("torch.", "")}' if self.amp_enabled else ''
        self.echo(f'  device {ctx.device}, {procs}, {torch.get_num_threads()} threads, batch {tc["batch_size"]}'
                  f'/process{glob}, {self.epochs} epochs x {len(self.train_loader)} steps, '
                  f'{cfg["optim"]["name"]} lr {cfg["optim"]["lr"]:g}, {cfg["schedule"]["name"]} schedule{amp}')
        if self.thread_note:
            self.echo(f'  note: {self.thread_note}')
        if self.restart:
            self.echo(f'  {self.resume_dir} stopped before its first checkpoint: starting it from the beginning '
                      '(with its saved config)')
        elif self.finish_only:
            self.echo(f'  all {self.epochs} epochs were trained before the run stopped: writing its end-of-run files')
        elif self.resume_dir is not None:
            inside = f', batch {self.partial["batch"] + 1}' if self.partial else ''
            self.echo(f'  resuming at epoch {self.start_epoch + 1}{inside} (step {self.step})')
        self.echo(f'  run dir {self.run_dir}')

    def run(self) -> TrainResult:
        # The signal handlers come first: a signal at any moment stops the run cleanly, before the run directory
        # exists (nothing is written) or after (run.json says "stopped").
        with self._signal_handlers():
            if self.resume_dir is not None and self.ctx.is_main:  # before anything is read or written
                self.lock = RunDirLock.acquire(self.resume_dir, self.echo)
            try:
                self.setup()
                if self._stop_requested():  # nothing written (a resumed run keeps its files as they are)
                    self.run_dir = self.resume_dir if self.ctx.is_main else None
                    return self._result(finished=False)
                self._start_output()
                return self._run()
            finally:
                if self.lock is not None:
                    self.lock.release()

    def _run(self) -> TrainResult:
        self._banner()
        ctx = self.ctx
        finished = True
        try:
            finished = self._epochs()
            if self.finish_only and ctx.is_main and self.logger is not None:
                self.logger.log_epoch(self.history)
        except _Stop:
            finished = False
        except BaseException as e:
            if ctx.is_main and self.run_dir is not None:
                status = 'interrupted' if isinstance(e, KeyboardInterrupt) else 'failed'
                with contextlib.suppress(Exception):
                    write_run_info(self.run_dir, self._run_info(status))
            raise
        finally:
            if self.logger is not None:
                self.logger.close()
        if ctx.is_main and self.run_dir is not None:
            write_run_info(self.run_dir, self._run_info('finished' if finished else 'stopped'))
        barrier(ctx)
        return self._result(finished)

    def _result(self, finished: bool) -> TrainResult:
        return TrainResult(
            run_dir=self.run_dir,
            history=self.history,
            best_top1=max(self.best_top1, 0.0),
            best_epoch=self.best_epoch,
            params=self.params,
            macs=self.macs,
            input_size=self.input_size,
            wall_s=time.perf_counter() - self.t_start,
            finished=finished,
            model_name=self.cfg['model']['name'],
            data_name=self.info.name,
            is_main=self.ctx.is_main,
            stop_signal=self.stop_signum,
            resume_command=resume_command(self.run_dir) if self.run_dir is not None else '',
        )

    def _epochs(self) -> bool:
        """Train the remaining epochs; False when stopped early (``stop_after`` or a signal at an epoch end)."""
        ctx, tc = self.ctx, self.cfg['train']
        if self.stop_signum is not None:
            raise _Stop  # signalled during start-up: nothing trained, nothing to save
        for epoch in range(self.start_epoch, self.epochs):
            t0 = time.perf_counter()
            record: dict[str, Any] = {'epoch': epoch + 1}
            train_stats = self.train_one_epoch(epoch)
            record.update(train_loss=train_stats['train_loss'])
            last_epoch = epoch + 1 == self.epochs
            stop_here = self.stop_after is not None and epoch + 1 >= self.stop_after
            t_eval = time.perf_counter()
            if self.dense is not None:
                if (epoch + 1) % tc['eval_every'] == 0 or last_epoch or stop_here:
                    record.update(self._evaluate_dense())
                else:
                    record.update({k: None for k in self.dense.columns[2:-2]})
            elif (epoch + 1) % tc['eval_every'] == 0 or last_epoch or stop_here:
                amp = (self.amp_enabled, self.amp_dtype)
                metrics = evaluate(self.eval_model, self.test_loader, ctx, amp=amp,
                                   channels_last=tc['channels_last'], progress=bool(self.bar.tty), desc='test')
                record.update(test_loss=metrics['test_loss'], top1=metrics['top1'], top5=metrics['top5'])
                if self.ema is not None:
                    em = evaluate(self.ema.module, self.test_loader, ctx, amp=amp,
                                  channels_last=tc['channels_last'], progress=bool(self.bar.tty),
                                  desc='test (EMA)')
                    record.update(ema_test_loss=em['test_loss'], ema_top1=em['top1'], ema_top5=em['top5'])
            else:
                record.update(test_loss=None, top1=None, top5=None)
            eval_s = time.perf_counter() - t_eval
            record.update(lr=train_stats['lr'], seconds=time.perf_counter() - t0,
                          train_seconds=train_stats['train_seconds'], eval_seconds=eval_s,
                          samples_per_s=train_stats['samples_per_s'], step=self.step)
            improved = None
            key = self.primary
            if record.get(key) is not None:
                candidates = [('model', record[key])]
                if record.get(f'ema_{key}') is not None:
                    candidates.append(('ema', record[f'ema_{key}']))
                which, top1 = max(candidates, key=lambda kv: kv[1])
                if top1 > self.best_top1:
                    self.best_top1, self.best_epoch, improved = top1, epoch + 1, which
            self.history.append(record)
            self._save(epoch + 1, record, improved)
            if ctx.is_main and self.logger is not None:
                self.logger.log_epoch(self.history)
            self._epoch_line(record)
            if stop_here and not last_epoch:
                return False
            if self._stop_requested() and not last_epoch:
                raise _Stop
        return True

    def _evaluate_dense(self) -> dict[str, Any]:
        """The dense task's metrics of the model (and of the EMA, prefixed ``ema_``)."""
        assert self.dense is not None
        amp = (self.amp_enabled, self.amp_dtype)
        tty = bool(self.bar.tty)
        record = self.dense.evaluate(self.eval_model, self.test_loader, amp=amp, progress=tty, desc='test')
        if self.ema is not None:
            em = self.dense.evaluate(self.ema.module, self.test_loader, amp=amp, progress=tty, desc='test (EMA)')
            record.update({f'ema_{k}': v for k, v in em.items() if k in self.dense.columns})
        return record

    def _epoch_line(self, r: Mapping[str, Any]) -> None:
        parts = [f'epoch {r["epoch"]}/{self.epochs}', f'train loss {r["train_loss"]:.4f}']
        if self.dense is not None:
            keys = self.dense.columns[2:-2]
            parts += format_metrics(r, keys) + format_metrics(r, (self.primary,), 'ema_')
        elif r.get('top1') is not None:
            parts += [f'test loss {r["test_loss"]:.4f}', f'top-1 {r["top1"]:.2f} %', f'top-5 {r["top5"]:.2f} %']
        if self.dense is None and r.get('ema_top1') is not None:
            parts.append(f'EMA top-1 {r["ema_top1"]:.2f} %')
        parts += [f'lr {r["lr"]:.4g}', f'{r["seconds"]:.1f} s ({r["samples_per_s"]:.0f} img/s)']
        self.echo('  '.join(parts))


def train(
        cfg: Mapping[str, Any],
        *,
        resume_dir: str | Path | None = None,
        stop_after: int | None = None,
        progress: bool | None = None,
        echo: Callable[[str], None] = print,
        t_start: float | None = None,
        command: Sequence[str] | None = None,
        reschedule: bool = False,
) -> TrainResult:
    """Train a model from a config (see :mod:`plugattn.engine.config`), single-process or under torchrun.

    Args:
        cfg: A config; it is validated (again) here.
        resume_dir: Continue this run directory from its ``last_state.pt`` (``cfg`` must be its config, see
            :func:`load_resume_config`).
        stop_after: Stop after this many epochs in total (the run can be continued with ``resume_dir``).
        progress: Force (True) or disable (False) the tqdm bar; default: when stdout is a terminal.
        echo: Line printer of rank 0.
        t_start: ``time.perf_counter()`` value the wall time is measured from (default: now).
        command: The command line recorded in ``run.json`` (default: ``sys.argv``).
        reschedule: Accept that a resume with another ``train.epochs`` changes the learning rate of the coming
            steps (without it such a resume is refused).

    SIGTERM, SIGINT, SIGHUP and SIGUSR1 (when called in the main thread) stop the run at the next safe point: after
    the current optimizer step the resume state is saved (``last_state.pt``, valid for a bit-exact resume inside the
    epoch), ``run.json`` says ``stopped`` and the result has ``stop_signal`` set; a second signal interrupts at once.
    A signal during set-up stops before the run directory is created (``run_dir`` is then ``None``).

    Returns:
        The :class:`TrainResult`.

    Raises:
        EngineError: Any user-fixable problem (also ``DataError`` from the data layer).
    """
    t_start = time.perf_counter() if t_start is None else t_start
    cfg = validate_config(cfg)
    if stop_after is not None and stop_after < 1:
        raise EngineError(f'--stop-after must be >= 1, got {stop_after}', 'pass a positive number of epochs')
    check_config(cfg)
    # Process-wide settings changed by a run are restored afterwards (matters when train() is called as a library).
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    ctx = init_distributed(cfg['train']['device'])
    try:
        trainer = _Trainer(cfg, ctx, resume_dir=Path(resume_dir) if resume_dir else None, stop_after=stop_after,
                           progress=progress, echo=echo, t_start=t_start, command=command_line(command),
                           reschedule=reschedule)
        return trainer.run()
    finally:
        cleanup_distributed()
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
