"""Training and evaluation engine: configs and recipes, optimizers, schedules, EMA, checkpoints, distributed.

``train(resolve_config('fashion-mnist'))`` is what ``plugattn train`` runs.
"""
from .checkpoint import (
    atomic_write,
    is_run_dir,
    load_model_weights,
    load_state,
    read_run_info,
    read_weights,
    save_state,
    save_weights,
)
from .config import (
    DEFAULT_RECIPE,
    SCHEMA,
    dump_config,
    list_recipes,
    load_recipe,
    parse_set,
    resolve_config,
    validate_config,
)
from .distributed import DistBatchNorm, DistContext, convert_sync_batchnorm, init_distributed
from .ema import ModelEma
from .errors import EngineError
from .evaluation import evaluate, evaluate_checkpoint, resolve_checkpoint
from .metrics import count_macs, count_params, topk_correct
from .optim import create_optimizer, param_groups_weight_decay
from .rundir import load_resume_config
from .scheduler import LRSchedule
from .summary import TrainResult, format_summary
from .trainer import seed_everything, train

__all__ = [
    'DEFAULT_RECIPE',
    'SCHEMA',
    'DistBatchNorm',
    'DistContext',
    'EngineError',
    'LRSchedule',
    'ModelEma',
    'TrainResult',
    'atomic_write',
    'convert_sync_batchnorm',
    'count_macs',
    'count_params',
    'create_optimizer',
    'dump_config',
    'evaluate',
    'evaluate_checkpoint',
    'format_summary',
    'init_distributed',
    'is_run_dir',
    'list_recipes',
    'load_model_weights',
    'load_recipe',
    'load_resume_config',
    'load_state',
    'param_groups_weight_decay',
    'parse_set',
    'read_run_info',
    'read_weights',
    'resolve_checkpoint',
    'resolve_config',
    'save_state',
    'save_weights',
    'seed_everything',
    'topk_correct',
    'train',
    'validate_config',
]
