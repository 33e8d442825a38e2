"""Run configuration: the schema of known keys, recipe loading, command-line overrides and validation.

The schema is :data:`SCHEMA`; its ``aug`` and ``mixup`` sections are derived from the data layer's settings
dataclasses (:class:`~plugattn.data.AugConfig`, :class:`~plugattn.data.MixupConfig`), which also check their ranges.
A config is a nested dict with the sections ``model``, ``data``, ``aug``, ``mixup``, ``loss``, ``optim``,
``schedule``, ``ema``, ``train`` and ``output`` plus the top-level ``version``, ``name`` and ``description``.
Recipes are versioned YAML files in ``plugattn/recipes/``; a recipe only lists what differs from the schema
defaults, and :func:`resolve_config` fills in the rest, applies overrides and validates every value, so that a
bad key or value is reported before anything is built or written.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import EngineError

__all__ = [
    'DEFAULT_RECIPE',
    'SCHEMA',
    'Field',
    'dump_config',
    'get_field',
    'list_recipes',
    'load_recipe',
    'parse_set',
    'recipe_path',
    'resolve_config',
    'set_value',
    'validate_config',
]

DEFAULT_RECIPE = 'fashion-mnist'
TASK_RECIPES = {'classification': DEFAULT_RECIPE, 'detection': 'scenes-detection',
                'segmentation': 'scenes-segmentation'}
"""The recipe ``plugattn train --task TASK`` uses without ``--recipe``."""
CONFIG_VERSION = 1  # revision of the schema itself; recipes carry their own ``version``


@dataclass(frozen=True)
class Field:
    """One config key.

    Attributes:
        kind: ``'int'``, ``'float'``, ``'bool'``, ``'str'``, ``'list[int]'``, ``'list[float]'`` or ``'dict'``.
        default: Value used when neither the recipe nor an override sets the key.
        help: One-line description.
        nullable: ``null`` is allowed.
        choices: Allowed values of a ``str`` field.
        min: Lower bound of a number (or of each list item).
        min_exclusive: The lower bound itself is not allowed.
        max: Upper bound (inclusive).
        length: Exact length of a list.
        flag: Command-line flag that sets the key, named in error messages.
    """

    kind: str
    default: Any
    help: str
    nullable: bool = False
    choices: tuple[str, ...] | None = None
    min: float | None = None
    min_exclusive: bool = False
    max: float | None = None
    length: int | None = None
    flag: str | None = None


F = Field
SCHEMA: dict[str, Any] = {
    'version': F('int', 1, 'revision of the recipe', min=1),
    'name': F('str', 'custom', 'recipe name'),
    'description': F('str', '', 'what the recipe reproduces'),
    'task': F('str', 'classification', 'what the model learns', choices=('classification', 'detection',
                                                                          'segmentation'), flag='--task'),
    'model': {
        'name': F('str', 'bav2_resnet20', 'registered model name (plugattn list-models); detection: fasterrcnn, '
                  'retinanet, fcos, maskrcnn, ssdlite320; segmentation: deeplabv3, fcn, lraspp (or torchvision '
                  'builder names)', flag='--model'),
        'backbone': F('str', None, 'detection/segmentation: classification backbone (plugattn, tv:NAME or '
                      "timm:NAME; null: the torchvision model's own)", nullable=True, flag='--backbone'),
        'output_stride': F('int', None, 'segmentation: output stride 8 or 16 of the --backbone (dilated stages)',
                           nullable=True, min=8, max=32),
        'kwargs': F('dict', {}, 'extra keyword arguments of create_model (num_classes/in_chans come from the data)'),
        'init_checkpoint': F('str', None, 'initial weights (.safetensors) of the same architecture', nullable=True,
                             flag='--init-checkpoint'),
    },
    'data': {
        'name': F('str', 'fashion-mnist', 'dataset name', flag='--data'),
        'data_dir': F('str', None, 'folder searched first for the dataset files (imagefolder root)', nullable=True,
                      flag='--data-dir'),
        'num_workers': F('int', 0, 'loader worker processes (imagefolder only)', min=0, flag='--workers'),
        'download': F('bool', True, 'allow downloading a missing built-in dataset'),
        'preflight': F('bool', True, 'imagefolder: decode every image once before training and name the bad ones '
                                     '(cached by folder state)', flag='--preflight'),
    },
    'dense': {
        'min_size': F('int', None, 'detection training: random shorter side (multi-scale); segmentation: the '
                      'shorter side (evaluation) and base of the random scale (training); null: unchanged',
                      nullable=True, min=1),
        'max_size': F('int', None, 'detection training: longest longer side after the resize', nullable=True, min=1),
        'crop_size': F('int', None, 'segmentation training: square crop side (padded with ignore)', nullable=True,
                       min=1),
        'scale_range': F('list[float]', [0.5, 2.0], 'segmentation training: random scale range', length=2, min=0.0,
                         min_exclusive=True),
        'hflip': F('float', 0.5, 'probability of the horizontal flip in training', min=0.0, max=1.0),
        'scenes_train': F('int', 1000, 'scenes: generated training images', min=1),
        'scenes_val': F('int', 200, 'scenes: generated validation images', min=1),
        'scenes_size': F('int', 128, 'scenes: canvas side in pixels', min=32),
    },
    'aug': {},  # derived from AugConfig below
    'mixup': {},  # derived from MixupConfig below
    'loss': {
        'label_smoothing': F('float', 0.0, 'label smoothing of the cross-entropy', min=0.0, max=1.0),
    },
    'optim': {
        'name': F('str', 'sgd', 'optimizer', choices=('sgd', 'adamw')),
        'lr': F('float', 0.1, 'base learning rate (not scaled with the batch size)', min=0.0, min_exclusive=True,
                flag='--lr'),
        'momentum': F('float', 0.9, 'SGD momentum', min=0.0, max=1.0),
        'nesterov': F('bool', False, 'Nesterov momentum (SGD)'),
        'weight_decay': F('float', 0.0, 'weight decay', min=0.0),
        'no_wd_1d': F('bool', True, 'no weight decay on 1-D parameters (norm weights, biases)'),
        'betas': F('list[float]', [0.9, 0.999], 'AdamW betas', length=2, min=0.0, max=1.0),
        'eps': F('float', 1e-8, 'AdamW epsilon', min=0.0, min_exclusive=True),
    },
    'schedule': {
        'name': F('str', 'cosine', 'learning-rate schedule', choices=('cosine', 'step', 'constant')),
        'warmup_epochs': F('float', 0.0, 'linear warmup length in epochs (fractions allowed)', min=0.0),
        'warmup_lr': F('float', 0.0, 'learning rate at the first warmup step', min=0.0),
        'min_lr': F('float', 0.0, 'final learning rate of the cosine schedule', min=0.0),
        'milestones': F('list[int]', [], 'epochs at which the step schedule multiplies the lr by gamma', min=0),
        'gamma': F('float', 0.1, 'factor of the step schedule', min=0.0, min_exclusive=True),
        'per_iteration': F('bool', True, 'update the lr every iteration (else once per epoch)'),
    },
    'ema': {
        'enabled': F('bool', False, 'keep an exponential moving average of the weights and evaluate it too'),
        'decay': F('float', 0.9998, 'EMA decay per optimizer step', min=0.0, max=1.0),
        'warmup': F('bool', False, 'use min(decay, (1 + step) / (10 + step)) early in training'),
    },
    'train': {
        'epochs': F('int', 3, 'number of epochs', min=1, flag='--epochs'),
        'batch_size': F('int', 128, 'batch size per process (global batch = processes x batch size)', min=1,
                        flag='--batch-size'),
        'eval_batch_size': F('int', None, 'evaluation batch size per process (null: 2 x batch_size)', nullable=True,
                             min=1),
        'seed': F('int', 0, 'random seed', min=0, flag='--seed'),
        'deterministic': F('bool', True, 'torch.use_deterministic_algorithms and no cuDNN benchmark'),
        'device': F('str', 'auto', "'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'", flag='--device'),
        'threads': F('int', None, "torch CPU threads (null: torch's default, or the cores other processes leave free "
                     'when they keep some busy; a resume keeps the count its run trained with)', nullable=True, min=1,
                     flag='--threads'),
        'amp': F('bool', False, 'automatic mixed precision', flag='--amp'),
        'amp_dtype': F('str', 'auto', 'AMP dtype; auto = bfloat16 on CPU, float16 (GradScaler) on CUDA',
                       choices=('auto', 'bfloat16', 'float16')),
        'channels_last': F('bool', False, 'channels_last memory format', flag='--channels-last'),
        'compile': F('bool', False, 'torch.compile the model', flag='--compile'),
        'find_unused_parameters': F('bool', False, "DDP's find_unused_parameters, for detection/segmentation "
                                    'models with parts a step may not use'),
        'sync_bn': F('bool', False, 'synchronise BatchNorm statistics across processes', flag='--sync-bn'),
        'grad_clip': F('float', None, 'clip the global gradient norm (null: off)', nullable=True, min=0.0,
                       min_exclusive=True),
        'eval_every': F('int', 1, 'evaluate every N epochs (and after the last)', min=1),
        'log_interval': F('int', 50, 'iterations between progress lines when stdout is not a terminal', min=1),
        'save_every_steps': F('int', None, 'also save the resume state every N optimizer steps inside an epoch '
                                           '(null: at epoch ends only)', nullable=True, min=1,
                              flag='--save-every-steps'),
        'save_every_minutes': F('float', None, 'also save the resume state when this many minutes passed since the '
                                               'last save (null: off)', nullable=True, min=0.0, min_exclusive=True,
                                flag='--save-every-minutes'),
    },
    'output': {
        'dir': F('str', 'runs', 'parent folder of run directories', flag='--output'),
        'name': F('str', None, 'run directory name (null: <data>-<model>-<time>)', nullable=True, flag='--name'),
    },
}
del F


def _schema_kind(annotation: str) -> tuple[str, bool, int | None]:
    """``(Field.kind, nullable, list length)`` of a section dataclass field's annotation string."""
    text = annotation.replace(' ', '')
    nullable = text.endswith('|None')
    text = text.removesuffix('|None')
    if text.startswith('tuple['):
        items = text[len('tuple['):-1].split(',')
        return f'list[{items[0]}]', nullable, len(items)
    return text, nullable, None


def section_from_dataclass(cls: type) -> dict[str, Field]:
    """The schema section of a settings dataclass (``AugConfig``, ``MixupConfig``).

    Types, defaults, help lines and string choices come from the dataclass fields (``metadata['help']``,
    ``metadata['choices']``); the schema checks the types only, and :func:`validate_config` lets the dataclass check
    the ranges, so that every range is written once, where the settings are used.
    """
    section = {}
    for f in dataclasses.fields(cls):
        kind, nullable, length = _schema_kind(str(f.type))
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        section[f.name] = Field(kind, default, f.metadata['help'], nullable=nullable or default is None,
                                choices=f.metadata.get('choices'), length=length)
    return section


def _section_classes() -> dict[str, type]:
    from ..data import AugConfig, MixupConfig

    return {'aug': AugConfig, 'mixup': MixupConfig}


SECTION_CLASSES = _section_classes()
"""Config sections that are settings dataclasses of the data layer, validated by constructing them."""
SCHEMA.update({name: section_from_dataclass(cls) for name, cls in SECTION_CLASSES.items()})

# Keys that may change when a run is resumed; anything else must match the saved config.
RESUME_MUTABLE = frozenset({
    'train.epochs', 'data.data_dir', 'data.num_workers', 'data.download', 'train.device', 'train.threads',
    'train.log_interval', 'train.eval_every', 'train.compile', 'output.dir', 'output.name',
    'train.save_every_steps', 'train.save_every_minutes', 'data.preflight',
})


# --------------------------------------------------------------------------------------------- recipes


def _recipe_dir() -> Path:
    return Path(str(resources.files('plugattn') / 'recipes'))


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``plugattn/recipes/``."""
    return sorted(p.stem for p in _recipe_dir().glob('*.yaml'))


def recipe_path(name_or_path: str | Path) -> Path:
    """The YAML file of a shipped recipe name, or ``name_or_path`` itself when it is a file.

    Raises:
        EngineError: Neither a shipped recipe nor an existing file.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text.endswith(('.yaml', '.yml')) or path.parent != Path('.'):
        if path.is_file():
            return path
        raise EngineError(f'recipe file {text} does not exist', 'pass an existing YAML file or a recipe name '
                          f'({", ".join(list_recipes())})')
    shipped = _recipe_dir() / f'{text}.yaml'
    if shipped.is_file():
        return shipped
    names = list_recipes()
    close = difflib.get_close_matches(text, names, n=2, cutoff=0.5)
    hint = f' (did you mean {" or ".join(close)}?)' if close else ''
    raise EngineError(f'unknown recipe {text!r}{hint}', f'choose one of {", ".join(names)} or pass a YAML file path')


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """Read a recipe (shipped name or YAML path) as a raw, unvalidated nested dict."""
    import yaml

    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding='utf-8'))
    except OSError as e:
        raise EngineError(f'cannot read recipe {path}: {e.strerror or e}', 'check the file permissions') from None
    except yaml.YAMLError as e:
        first = ' '.join(str(e).split())
        raise EngineError(f'recipe {path} is not valid YAML ({first})', 'fix the YAML syntax') from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EngineError(f'recipe {path} must hold a mapping, got {type(data).__name__}',
                          'write the recipe as nested "section: {key: value}" mappings')
    return data


# --------------------------------------------------------------------------------------------- schema helpers


def _flatten_schema(schema: Mapping[str, Any] = SCHEMA, prefix: str = '') -> dict[str, Field]:
    out = {}
    for key, value in schema.items():
        if isinstance(value, Field):
            out[prefix + key] = value
        else:
            out.update(_flatten_schema(value, prefix + key + '.'))
    return out


_FLAT = _flatten_schema()


def get_field(path: str) -> Field:
    """The :class:`Field` of a dotted key such as ``'optim.lr'``.

    Raises:
        EngineError: Unknown key, with the closest known keys suggested.
    """
    if path in _FLAT:
        return _FLAT[path]
    raise _unknown_key(path)


def _unknown_key(path: str) -> EngineError:
    close = difflib.get_close_matches(path, list(_FLAT), n=2, cutoff=0.6)
    if not close:
        section = path.split('.')[0]
        close = [k for k in _FLAT if k.startswith(section + '.')][:4]
    hint = f' (did you mean {" or ".join(close)}?)' if close else ''
    return EngineError(f'unknown config key {path!r}{hint}',
                       'use one of the keys listed by "plugattn train --help" (sections: '
                       f'{", ".join(k for k in SCHEMA if isinstance(SCHEMA[k], dict))})')


def defaults() -> dict[str, Any]:
    """A complete config holding every schema default."""

    def build(schema: Mapping[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v.default) if isinstance(v, Field) else build(v) for k, v in schema.items()}

    return build(SCHEMA)


def _type_name(value: Any) -> str:
    return 'null' if value is None else type(value).__name__


def _how(path: str, field: Field) -> str:
    sets = f'--set {path}=VALUE'
    return f'set it with {field.flag} or {sets}' if field.flag else f'set it with {sets}'


def _check_number(path: str, field: Field, value: Any, what: str = '') -> float | int:
    kind = 'int' if field.kind in ('int', 'list[int]') else 'float'
    if kind == 'float' and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)  # YAML 1.1 reads 1e-3 as a string
    ok_types = (int,) if kind == 'int' else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        want = 'an integer' if kind == 'int' else 'a number'
        raise EngineError(f'{path}{what} must be {want}, got {value!r} ({_type_name(value)})', _how(path, field))
    if kind == 'float':
        value = float(value)
        if not math.isfinite(value):
            raise EngineError(f'{path}{what} must be finite, got {value!r}', _how(path, field))
    if field.min is not None and (value < field.min or (field.min_exclusive and value == field.min)):
        rel = '>' if field.min_exclusive else '>='
        raise EngineError(f'{path}{what} must be {rel} {field.min:g}, got {value!r}', _how(path, field))
    if field.max is not None and value > field.max:
        raise EngineError(f'{path}{what} must be <= {field.max:g}, got {value!r}', _how(path, field))
    return value


def _check_value(path: str, field: Field, value: Any) -> Any:
    """Type-check and normalise one value (ints accepted for floats, lists for tuples)."""
    if value is None:
        if field.nullable:
            return None
        raise EngineError(f'{path} must not be null', _how(path, field))
    if field.kind == 'bool':
        if not isinstance(value, bool):
            raise EngineError(f'{path} must be true or false, got {value!r} ({_type_name(value)})',
                              _how(path, field))
        return value
    if field.kind == 'str':
        if not isinstance(value, str):
            raise EngineError(f'{path} must be a string, got {value!r} ({_type_name(value)})', _how(path, field))
        if field.choices is not None and value not in field.choices:
            raise EngineError(f'{path} must be one of {", ".join(field.choices)}, got {value!r}', _how(path, field))
        return value
    if field.kind in ('int', 'float'):
        return _check_number(path, field, value)
    if field.kind.startswith('list['):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise EngineError(f'{path} must be a list, got {value!r} ({_type_name(value)})', _how(path, field))
        if field.length is not None and len(value) != field.length:
            raise EngineError(f'{path} must have {field.length} items, got {len(value)}', _how(path, field))
        return [_check_number(path, field, v, f'[{i}]') for i, v in enumerate(value)]
    if field.kind == 'dict':
        if not isinstance(value, dict):
            raise EngineError(f'{path} must be a mapping, got {value!r} ({_type_name(value)})', _how(path, field))
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise EngineError(f'{path} keys must be strings, got {bad[0]!r}', _how(path, field))
        return copy.deepcopy(value)
    raise AssertionError(f'unknown field kind {field.kind}')


# --------------------------------------------------------------------------------------------- validation


def validate_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check a (possibly partial) config against :data:`SCHEMA` and fill in the defaults.

    Args:
        cfg: Nested mapping; missing keys take their defaults.

    Returns:
        A new, complete and normalised config.

    Raises:
        EngineError: Unknown key, wrong type, value out of range, or inconsistent values.
    """
    if not isinstance(cfg, Mapping):
        raise EngineError(f'a config must be a mapping, got {_type_name(cfg)}', 'write it as nested mappings')
    out = defaults()

    def walk(node: Mapping[str, Any], schema: Mapping[str, Any], target: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f'{prefix}{key}'
            if key not in schema:
                raise _unknown_key(path)
            sub = schema[key]
            if isinstance(sub, Field):
                target[key] = _check_value(path, sub, value)
            else:
                if value is None:
                    continue
                if not isinstance(value, Mapping):
                    raise EngineError(f'{path} must be a section (mapping), got {_type_name(value)}',
                                      f'write "{key}:" followed by indented "key: value" lines')
                walk(value, sub, target[key], path + '.')

    walk(cfg, SCHEMA, out, '')
    _check_consistency(out)
    return out


def _check_consistency(cfg: dict[str, Any]) -> None:
    sched, train = cfg['schedule'], cfg['train']
    if sched['warmup_epochs'] >= train['epochs'] and sched['name'] != 'constant':
        raise EngineError(
            f'schedule.warmup_epochs ({sched["warmup_epochs"]:g}) must be smaller than train.epochs '
            f'({train["epochs"]})', 'lower it with --set schedule.warmup_epochs=N or train longer with --epochs')
    milestones = sched['milestones']
    if sorted(milestones) != milestones or len(set(milestones)) != len(milestones):
        raise EngineError(f'schedule.milestones must be strictly increasing, got {milestones}',
                          'e.g. --set schedule.milestones=[60,120]')
    if sched['name'] == 'step' and not milestones:
        raise EngineError('schedule.name is step but schedule.milestones is empty',
                          'set e.g. --set schedule.milestones=[60,120]')
    if sched['min_lr'] > cfg['optim']['lr']:
        raise EngineError(f'schedule.min_lr ({sched["min_lr"]:g}) exceeds optim.lr ({cfg["optim"]["lr"]:g})',
                          'lower schedule.min_lr or raise --lr')
    from ..data import DataError

    for name, cls in SECTION_CLASSES.items():
        try:
            cls.from_dict(cfg[name])  # the dataclass checks its own ranges
        except DataError as e:
            key = getattr(e, 'key', None)
            how = _how(key, _FLAT[key]) if key in _FLAT else f'fix the {name} section'
            raise EngineError(str(e), how) from None
    device = train['device']
    if device not in ('auto', 'cpu', 'cuda') and not (device.startswith('cuda:') and device[5:].isdigit()):
        raise EngineError(f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}",
                          'e.g. --device cpu')
    if cfg['task'] != 'classification':
        if cfg['task'] == 'segmentation' and cfg['dense']['crop_size'] is None:
            raise EngineError('segmentation training needs dense.crop_size', 'e.g. --set dense.crop_size=128')
        if cfg['model']['output_stride'] not in (None, 8, 16, 32):
            raise EngineError(f'model.output_stride must be 8, 16 or 32, got {cfg["model"]["output_stride"]}',
                              'e.g. --set model.output_stride=16')
    for key in ('num_classes', 'in_chans'):
        if key in cfg['model']['kwargs']:
            raise EngineError(f'model.kwargs.{key} is set by the dataset', f'remove model.kwargs.{key}')


# --------------------------------------------------------------------------------------------- overrides


def parse_set(item: str) -> tuple[str, Any]:
    """Split ``'key.sub=value'`` and read the value as YAML (so ``1e-3``, ``true``, ``[60,120]``, ``null`` work).

    Raises:
        EngineError: No ``=``, an empty key, or a value that is not valid YAML.
    """
    import yaml

    if '=' not in item:
        raise EngineError(f'--set {item!r} has no "="', 'write --set section.key=value, e.g. --set optim.lr=0.05')
    key, _, raw = item.partition('=')
    key = key.strip()
    if not key:
        raise EngineError(f'--set {item!r} has an empty key', 'write --set section.key=value')
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise EngineError(f'--set {item!r}: value {raw!r} is not valid YAML',
                          'quote strings and write lists as [a,b]') from None
    return key, value


def set_value(cfg: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted key in a nested config in place; keys inside ``dict`` fields (``model.kwargs.x``) are allowed.

    Raises:
        EngineError: The key is not in the schema.
    """
    parts = path.split('.')
    schema: Any = SCHEMA
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(schema, Mapping) or part not in schema:
            raise _unknown_key(path)
        schema = schema[part]
        last = i == len(parts) - 1
        if isinstance(schema, Field):
            if last:
                node[part] = value
                return
            if schema.kind != 'dict':
                raise _unknown_key(path)
            sub = node.get(part)
            if not isinstance(sub, dict):
                sub = node[part] = {}
            for key in parts[i + 1:-1]:
                nxt = sub.get(key)
                sub = nxt if isinstance(nxt, dict) else sub.setdefault(key, {})
            sub[parts[-1]] = value
            return
        if last:
            if not isinstance(value, Mapping):
                raise EngineError(f'{path} is a section, not a value',
                                  f'set one of its keys, e.g. --set {path}.{next(iter(schema))}=...')
            node.setdefault(part, {}).update(value)
            return
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt


def resolve_config(
        recipe: str | Path | None = None,
        overrides: Iterable[tuple[str, Any]] = (),
        base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Recipe (or ``base``) + overrides → a complete, validated config.

    Args:
        recipe: Shipped recipe name or YAML path (default :data:`DEFAULT_RECIPE`); ignored when ``base`` is given.
        overrides: ``(dotted key, value)`` pairs applied in order.
        base: A saved config to start from instead of a recipe (used by ``--resume``).

    Returns:
        The validated config.

    Raises:
        EngineError: Unknown recipe, unknown key, bad value.
    """
    if base is not None:
        raw = copy.deepcopy(dict(base))
    else:
        raw = load_recipe(recipe if recipe is not None else DEFAULT_RECIPE)
        validate_config(raw)  # report recipe errors as such, before overrides hide them
    for path, value in overrides:
        set_value(raw, path, value)
    return validate_config(raw)


def dump_config(cfg: Mapping[str, Any]) -> str:
    """The config as YAML text (key order kept)."""
    import yaml

    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None, width=120)


def iter_fields() -> Iterable[tuple[str, Field]]:
    """``(dotted key, field)`` for every schema key, in schema order."""
    return iter(_FLAT.items())
