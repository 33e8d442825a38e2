"""Build foreign models by name (``tv:resnet50``, ``timm:convnext_tiny``), attach attention, load local weights.

Names: ``tv:NAME`` is ``torchvision.models.get_model(NAME)``, ``timm:NAME`` is ``timm.create_model(NAME)``;
``tv:NAME+ATTN`` / ``timm:NAME+ATTN`` carry the attached attention in the name (for ``plugattn bench``, ``compare``,
``export --model``, which take names); any other name is a plugattn model. ``attn=`` on a foreign name attaches
that attention (:func:`plugattn.attach`); on a plugattn name it builds plugattn's own variant, unless
``warm_start=True`` asks for the plain model with the attention attached with warm start. This is what
``plugattn train --model tv:resnet50 --attn bav2 --warm-start`` runs, and what checkpoints record (the name and
these keyword arguments) so that eval/export/cam rebuild the model.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ['FOREIGN_PREFIXES', 'create_model', 'load_weights']

FOREIGN_PREFIXES = ('tv:', 'timm:')
_ATTACH_KEYS = ('attn_kwargs', 'stages', 'keep_se', 'attn_position')


def _offline_error(name: str, reason: str) -> ValueError:
    return ValueError(
        f'cannot download the pretrained weights of {name} ({reason}); download the weights file where you are '
        f'online and pass it: plugattn train --model {name} --init-checkpoint FILE, or build with '
        f'pretrained=False and model.load_state_dict(torch.load(FILE, weights_only=True))'
    )


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return n, m
    raise ValueError(f'{type(model).__name__} has no Conv2d to adapt to other input channels')


def _adapt_in_chans(model: nn.Module, in_chans: int) -> None:
    """Replace the first conv for ``in_chans`` input channels (RGB weights summed for 1 channel, as timm does)."""
    name, conv = _first_conv(model)
    if conv.in_channels == in_chans:
        return
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        w = conv.weight
        if in_chans == 1:
            new.weight.copy_(w.sum(1, keepdim=True))
        else:
            reps = -(-in_chans // w.shape[1])
            new.weight.copy_(w.repeat(1, reps, 1, 1)[:, :in_chans] * (w.shape[1] / in_chans))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    model.set_submodule(name, new)


def _reset_classifier(model: nn.Module, num_classes: int) -> None:
    """Replace the last Linear (torchvision's classifier in every supported family) for ``num_classes``."""
    last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(f'{type(model).__name__} has no Linear classifier to resize')
    name, fc = last[-1]
    if fc.out_features != num_classes:
        model.set_submodule(name, nn.Linear(fc.in_features, num_classes, bias=fc.bias is not None))


def _torchvision(name: str, pretrained: bool, num_classes: int | None, in_chans: int | None,
                 kwargs: dict[str, Any]) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise ValueError(f'{name} needs torchvision: pip install torchvision') from None
    arch = name[3:]
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f'unknown torchvision classification model {arch!r}: see torchvision.models.list_models()')
    if pretrained:
        try:
            model = torchvision.models.get_model(arch, weights='DEFAULT', **kwargs)
        except OSError as e:  # URLError, socket errors: offline
            raise _offline_error(name, ' '.join(str(e).split())[:80] or type(e).__name__) from None
        if num_classes is not None:
            _reset_classifier(model, num_classes)
    else:
        model = torchvision.models.get_model(arch, weights=None, **({'num_classes': num_classes} if num_classes
                                                                     else {}), **kwargs)
    if in_chans is not None:
        _adapt_in_chans(model, in_chans)
    return model


def _timm(name: str, pretrained: bool, num_classes: int | None, in_chans: int | None,
          kwargs: dict[str, Any]) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ValueError(f'{name} needs timm: pip install timm') from None
    arch = name[5:]
    if not timm.is_model(arch):
        raise ValueError(f'unknown timm model {arch!r}: see timm.list_models()')
    extra = {k: v for k, v in (('num_classes', num_classes), ('in_chans', in_chans)) if v is not None}
    try:
        return timm.create_model(arch, pretrained=pretrained, **extra, **kwargs)
    except (OSError, RuntimeError) as e:
        if not pretrained:
            raise
        raise _offline_error(name, ' '.join(str(e).split())[:80] or type(e).__name__) from None


def create_model(
        name: str,
        pretrained: bool = False,
        *,
        attn: str | None = None,
        warm_start: bool = False,
        num_classes: int | None = None,
        in_chans: int | None = None,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        **kwargs: Any,
) -> nn.Module:
    """Build a plugattn, torchvision (``tv:NAME``) or timm (``timm:NAME``) model, with ``attn`` attached.

    Args:
        name: ``tv:NAME``, ``timm:NAME`` or a plugattn model name.
        pretrained: the host library's pretrained weights (downloaded; offline this fails with one line saying how
            to pass a local file instead).
        attn: attention to attach (foreign names, or plugattn names with ``warm_start``).
        warm_start: attach with warm start (see :mod:`plugattn.attach`).
        num_classes: classifier outputs (the last Linear is replaced for pretrained torchvision models).
        in_chans: input channels (torchvision: the first conv is replaced, pretrained RGB weights summed for one
            channel).
        features_only: a feature extractor (timm names: :func:`timm_features`, torchvision names:
            :func:`torchvision_features`).
        out_indices: its feature levels (default: timm's for the model).
        **kwargs: attach options (``attn_kwargs``, ``stages``, ``keep_se``, ``attn_position``) and the host
            library's model options.
    """
    from . import attach

    opts = {k: kwargs.pop(k) for k in _ATTACH_KEYS if k in kwargs}
    if name.startswith(FOREIGN_PREFIXES) and '+' in name:  # 'tv:resnet50+bav2': the name carries the attention
        base, _, named = name.partition('+')
        if attn is not None and attn != named:
            raise ValueError(f'{name} already names attention {named!r}; drop attn={attn!r}')
        model = create_model(base, pretrained, attn=named, warm_start=warm_start, num_classes=num_classes,
                             in_chans=in_chans, features_only=features_only, out_indices=out_indices, **opts, **kwargs)
        model.model_name = name
        return model
    if name.startswith(FOREIGN_PREFIXES):
        build = _torchvision if name.startswith('tv:') else _timm
        if features_only and attn is None:
            if warm_start or opts:
                raise ValueError(f'{name}: warm_start/{"/".join(opts) or "options"} need attn=NAME')
            # timm's own feature extractor
            model = build(name, pretrained, None, in_chans, {**kwargs, 'features_only': True,
                                                              **({'out_indices': out_indices} if out_indices else {})})
            model.model_name = name
            return model
        model = build(name, pretrained, num_classes, in_chans, kwargs)
        if attn is not None:
            attach(model, attn, warm_start=warm_start, **opts)
        elif warm_start or opts:
            raise ValueError(f'{name}: warm_start/{"/".join(opts) or "options"} need attn=NAME')
        if features_only:
            if name.startswith('tv:'):
                model = torchvision_features(model, name, out_indices)
            else:
                model = timm_features(model, name[5:], out_indices, kwargs)
            model.model_name = name
            return model
        model.model_name = name
        # what plugattn's engine and analysis read from a model
        model.num_classes = num_classes if num_classes is not None else getattr(model, 'num_classes', 1000)
        model.in_chans = _first_conv(model)[1].in_channels
        if not isinstance(getattr(model, 'default_cfg', None), dict):
            size = getattr(model, 'image_size', 224)  # torchvision's ViT is built for one size
            model.default_cfg = model.pretrained_cfg = {
                'architecture': name, 'input_size': (model.in_chans, size, size), 'num_classes': model.num_classes,
                'family': 'torchvision'}
        return model
    from ..models import create_model as plugattn_create

    extra = {k: v for k, v in (('num_classes', num_classes), ('in_chans', in_chans)) if v is not None}
    if features_only:
        kwargs.update(features_only=True, out_indices=out_indices)
    if not warm_start:
        if attn is not None:
            kwargs['attn'] = attn
        if 'attn_kwargs' in opts:
            kwargs['attn_kwargs'] = opts.pop('attn_kwargs')
        if opts:
            raise ValueError(f'{name}: {", ".join(opts)} apply to attached models (tv:/timm: names or warm_start)')
        return plugattn_create(name, pretrained, **extra, **kwargs)
    if attn is None:
        raise ValueError('warm_start=True needs attn=NAME (the attention to attach)')
    model = plugattn_create(name, pretrained, **extra, **kwargs)
    return attach(model, attn, warm_start=True, **opts)


def timm_features(model: nn.Module, arch: str, out_indices: Sequence[int] | None,
                  kwargs: dict[str, Any]) -> nn.Module:
    """The feature extractor of an attached timm model: timm's ``FeatureGetterNet`` around it (the model's own
    ``forward_intermediates``, which runs the attached blocks), with the levels timm's ``features_only`` gives
    (default ``out_indices``); the classifier is removed (``reset_classifier(0)``). Differences from timm's own
    extractor: every level is NCHW (timm's Swin extractor gives NHWC) and the model's keys sit under ``model.``
    (as in timm's getter-based extractors, e.g. ViT).
    """
    import timm
    from timm.models._features import FeatureGetterNet

    if not hasattr(model, 'forward_intermediates'):
        raise ValueError(f'features_only with attention needs forward_intermediates, which timm {arch} lacks; '
                         'attach to the classifier model instead')
    with torch.device('meta'):  # timm's own extractor, only for its default levels and layout
        ref = timm.create_model(arch, features_only=True, **kwargs)
    indices = tuple(out_indices) if out_indices is not None else tuple(ref.feature_info.out_indices)
    model.reset_classifier(0)
    # prune=False: pruning re-slices the block containers, which would drop a shared DIA unit
    return FeatureGetterNet(model, out_indices=indices, prune=False)


class FeatureMaps(nn.Module):
    """The feature maps of a torchvision model (attached or not) as a list, as timm's ``features_only`` models give.

    Built by :func:`torchvision_features`. Attributes: ``graph`` (the torch.fx graph module from torchvision's
    ``create_feature_extractor``) and ``feature_info`` (per level: ``num_chs``, ``reduction``, ``module``).
    """

    def __init__(self, graph: nn.Module, nodes: Sequence[str], feature_info: list[dict[str, Any]], nhwc: bool) -> None:
        super().__init__()
        self.graph = graph
        self.nodes = tuple(nodes)
        self.feature_info = feature_info
        self.nhwc = nhwc

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.graph(x)
        return [out[n].permute(0, 3, 1, 2) if self.nhwc else out[n] for n in self.nodes]


def torchvision_features(model: nn.Module, name: str, out_indices: Sequence[int] | None) -> FeatureMaps:
    """The feature extractor of a torchvision model: the output of the last layer at each resolution.

    The candidate layers are the family's stages (ResNet ``layerS``, RegNet ``trunk_output.blockS``) or else the
    children of the model's ``features`` (MobileNet, EfficientNet, ConvNeXt, Swin); a forward at 64 px finds the
    last one of each resolution. The graph is torchvision's ``create_feature_extractor`` (torch.fx), which keeps
    the attached attention (see :mod:`plugattn.attach`). Every level is NCHW (Swin's NHWC maps are permuted).
    """
    from torchvision.models import SwinTransformer, VisionTransformer
    from torchvision.models.feature_extraction import create_feature_extractor

    from ._core import model_stages

    if isinstance(model, VisionTransformer):
        raise ValueError(f'features_only is not supported for {name}: a ViT has one resolution of tokens, no '
                         'feature maps; use forward hooks on model.encoder.layers')
    candidates = [n for n, _ in model_stages(model) or []]
    features = getattr(model, 'features', None)
    if not candidates and isinstance(features, nn.Sequential):
        candidates = [f'features.{i}' for i in range(len(features))]
    if not candidates:
        raise ValueError(f'features_only is not supported for {name}: no stages or features to take maps from')
    nhwc = isinstance(model, SwinTransformer)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, a, out, n=n: shapes.__setitem__(n, tuple(out.shape))) for n in candidates]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, _first_conv(model)[1].in_channels, 64, 64))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    levels: dict[int, tuple[str, int]] = {}  # spatial size -> (last layer of that size, its channels)
    for n in candidates:
        shape = shapes[n]
        size, chs = (shape[1], shape[3]) if nhwc else (shape[2], shape[1])
        levels[size] = (n, chs)
    info = [{'module': n, 'num_chs': c, 'reduction': 64 // size} for size, (n, c) in levels.items()]
    indices = list(range(len(info))) if out_indices is None else list(out_indices)
    if not all(-len(info) <= i < len(info) for i in indices):
        raise ValueError(f'out_indices {tuple(indices)} of {name}: it has {len(info)} feature levels '
                         f'(0-{len(info) - 1})')
    info = [info[i] for i in indices]
    nodes = [d['module'] for d in info]
    graph = create_feature_extractor(model, return_nodes={n: n for n in nodes})
    return FeatureMaps(graph, nodes, info, nhwc)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """A raw state_dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``; nothing unpickled)."""
    if not path.is_file():
        raise ValueError(f'weights file {path} does not exist; pass a .safetensors, .pth or .bin state_dict file')
    try:
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(_unreadable_weights(path, e)) from None
    for key in ('state_dict', 'model', 'state_dict_ema'):  # common training-script containers
        if isinstance(obj, dict) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f'{path} does not hold a state_dict of tensors')
    return {k.removeprefix('module.'): v for k, v in obj.items()}


def _unreadable_weights(path: Path, e: Exception) -> str:
    """One line ``<problem>; <fix>`` for a weights file that ``torch.load(weights_only=True)`` or safetensors
    refused."""
    import pickle
    import re

    found = re.search(r'GLOBAL ([\w.]+)', str(e)) if isinstance(e, pickle.UnpicklingError) else None
    if found:  # a pickled object (e.g. torch.save(model)) needs its code to load: never loaded here
        return (f'weights file {path} holds a pickled Python object ({found.group(1)}), not a state_dict; loading it '
                'would run code, so it was refused; if you trust its source, convert it once in Python: obj = '
                f'torch.load({str(path)!r}, weights_only=False), then torch.save(obj.state_dict(), "weights.pth") '
                '(or safetensors.torch.save_file) and pass that file')
    return (f'cannot read weights file {path} (truncated, damaged or not a torch.save/safetensors file); pass a '
            'state_dict saved with torch.save or safetensors')


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor] | str | os.PathLike) -> dict[str, list[str]]:
    """Load (pretrained) weights into a model that may have attention attached.

    Keys the model has and ``state`` lacks must all be attention keys (and warm-start blends); keys ``state`` has
    and the model lacks must be those of a native SE the attention replaced. A classifier of another size is left at
    its initialisation, and a first conv with other input channels is adapted (RGB summed for one channel).

    Returns:
        ``{'missing': [...], 'unexpected': [...], 'skipped': [...]}``.

    Raises:
        ValueError: Any other mismatch, naming the first offending key; or a file that is not a state_dict (a pickled
            object such as ``torch.save(model)`` is refused without running it, and the message says how to convert
            it).
    """
    if not isinstance(state, Mapping):
        state = _read_state(Path(state))
    own = model.state_dict()
    attn_prefixes = _attn_prefixes(model)
    state = dict(state)
    skipped = []
    first, _ = _first_conv(model)
    for k in list(state):
        if k in own and own[k].shape != state[k].shape:
            w = state[k]
            if k == f'{first}.weight' and w.ndim == 4 and w.shape[1] == 3 and own[k].shape[1] == 1:
                state[k] = w.sum(1, keepdim=True)
            elif own[k].ndim in (1, 2) and _is_classifier(model, k):
                skipped.append(k)
                del state[k]
            else:
                raise ValueError(f'weights do not fit the model: {k} has shape {tuple(w.shape)}, the model '
                                 f'{tuple(own[k].shape)}; use weights of the same architecture')
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in missing if not k.startswith(attn_prefixes)]
    if bad:
        raise ValueError(f'weights lack {len(bad)} non-attention keys of the model (e.g. {bad[0]}); use weights of '
                         'the same architecture')
    replaced = _replaced_prefixes(model)
    bad = [k for k in unexpected if not k.startswith(replaced)]
    if bad:
        raise ValueError(f'weights have {len(bad)} keys the model lacks (e.g. {bad[0]}); use weights of the same '
                         'architecture')
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {'missing': missing, 'unexpected': unexpected, 'skipped': skipped}


def _is_classifier(model: nn.Module, key: str) -> bool:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return bool(linears) and key.rsplit('.', 1)[0] == linears[-1]


def _attn_prefixes(model: nn.Module) -> tuple[str, ...]:
    from ..layers import BlockAttention, GateAttention, StageAttention

    names = [n for n, m in model.named_modules() if isinstance(m, (GateAttention, BlockAttention, StageAttention))]
    return tuple(f'{n}.' for n in names) or ('\0',)


def _replaced_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(f'{n}.' for n in model.__dict__.get('_plugattn_replaced', ())) or ('\0',)


def load_init_checkpoint(model: nn.Module, path: str | os.PathLike, model_name: str) -> None:
    """``--init-checkpoint``: a plugattn checkpoint of ``model_name`` (its attention keys may be missing when the
    attention was attached with ``--attn``), or a plain state_dict file of the host library (pretrained weights).

    Raises:
        EngineError: Unreadable file, a plugattn checkpoint of another model, or weights that do not fit.
    """
    from safetensors import safe_open

    from ..engine.checkpoint import META_KEY, load_model_weights, read_weights
    from ..engine.errors import EngineError

    path = Path(path)
    is_plugattn = False
    if path.suffix == '.safetensors' and path.is_file():
        try:
            with safe_open(str(path), framework='pt', device='cpu') as f:
                is_plugattn = META_KEY in (f.metadata() or {})
        except Exception:
            is_plugattn = True  # let read_weights name the damage
    if is_plugattn or path.is_dir():
        state, meta = read_weights(path)
        if meta.get('model') != model_name or set(state) == set(model.state_dict()):
            load_model_weights(model, path, model_name)  # the engine's strict checks and messages
            return
    else:
        try:
            state = _read_state(path)
        except ValueError as e:
            problem, _, fix = str(e).partition('; ')
            raise EngineError(problem, fix or 'pass a .safetensors/.pth state_dict file') from None
    try:
        load_weights(model, state)
    except ValueError as e:
        msg = str(e)
        raise EngineError(f'{path}: {msg.split("; ")[0]}', msg.split('; ')[-1]) from None
