"""Build torchvision and timm models by name (``tv:resnet50``, ``timm:convnext_tiny``), attach attention, load
local weights.

Names: ``tv:NAME`` is ``torchvision.models.get_model(NAME)``, ``timm:NAME`` is ``timm.create_model(NAME)``;
``tv:NAME+ATTN`` / ``timm:NAME+ATTN`` carry the attached attention in the name (for ``plugattn bench``, ``compare``,
``export --model``, which take names). ``attn=`` attaches that attention (:func:`plugattn.attach`). This is what
``plugattn train --model tv:resnet50 --attn bav2`` runs, and what checkpoints record (the name and these keyword
arguments) so that eval/export/cam rebuild the model. :func:`plugattn.create_model` (:mod:`plugattn.hub`) sends
these names here and plugattn's own names to :mod:`plugattn.models`.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import PlugattnError, PlugattnTypeError, check_out_indices

__all__ = ['ATTACH_OPTIONS', 'FOREIGN_PREFIXES', 'create_foreign_model', 'load_weights', 'read_state_dict']

FOREIGN_PREFIXES = ('tv:', 'timm:')
ATTACH_OPTIONS = ('attn_kwargs', 'stages', 'keep_se', 'attn_position')  # create_model kwargs for attach


def _offline_error(name: str, reason: str) -> PlugattnError:
    return PlugattnError(
        f'cannot download the pretrained weights of {name} ({reason}); download the weights file where you are '
        f'online and pass it: plugattn train --model {name} --init-checkpoint FILE, or build with '
        f'pretrained=False and model.load_state_dict(torch.load(FILE, weights_only=True))'
    )


def _cause(err: BaseException, limit: int = 100) -> str:
    """The cause of a failed download in a few words: the socket error's text, else the first sentence of the
    message, shortened at a word boundary (never cut mid-word)."""
    reason = getattr(err, 'reason', None)  # urllib's URLError wraps the socket error
    if isinstance(reason, BaseException):
        err = reason
    elif isinstance(reason, str) and reason:
        return reason
    if type(err).__name__ in ('LocalEntryNotFoundError', 'OfflineModeIsEnabled'):  # huggingface_hub, offline
        return 'not in the Hugging Face cache and the Hub cannot be reached'
    text = err.strerror if isinstance(err, OSError) and err.strerror else ' '.join(str(err).split())
    text = text.split('. ')[0].rstrip('.') or type(err).__name__
    if len(text) > limit:
        text = text[:limit].rsplit(' ', 1)[0].rstrip(',;:') + ' ...'
    return text


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why timm's weights host, the Hugging Face Hub, cannot be reached, or None when it can.

    One TCP connection to ``HF_ENDPOINT`` (or to the proxy the environment names for it), so that an offline
    machine fails in at most ``timeout`` seconds instead of in huggingface_hub's retries (about 45 s).
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # timm then downloads from its release URLs, which fail at once offline
        return None
    if constants.HF_HUB_OFFLINE:
        return 'HF_HUB_OFFLINE is set'
    import socket
    import urllib.parse
    import urllib.request

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host = url.hostname or 'huggingface.co'
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        url = urllib.parse.urlsplit(proxy if '://' in proxy else f'http://{proxy}')
        host = url.hostname or host
    port = url.port or (443 if url.scheme == 'https' else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f'no connection to {host}:{port}: {_cause(e)}'


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return n, m
    raise PlugattnError(f'{type(model).__name__} has no Conv2d to adapt to other input channels')


def _adapt_in_chans(model: nn.Module, in_chans: int) -> None:
    """Replace the first conv for ``in_chans`` input channels (RGB weights summed for 1 channel, as timm does)."""
    if in_chans < 1:
        raise PlugattnError(f'in_chans must be >= 1, got {in_chans}')
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
        raise PlugattnError(f'{type(model).__name__} has no Linear classifier to resize')
    name, fc = last[-1]
    if fc.out_features != num_classes:
        model.set_submodule(name, nn.Linear(fc.in_features, num_classes, bias=fc.bias is not None))


def _torchvision(name: str, pretrained: bool, num_classes: int | None, in_chans: int | None,
                 kwargs: dict[str, Any]) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise PlugattnError(f'{name} needs torchvision: pip install torchvision') from None
    arch = name[3:]
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise PlugattnError(f'unknown torchvision classification model {arch!r}: see '
                            'torchvision.models.list_models()')
    kwargs = dict(kwargs)  # features_only / out_indices: timm's keywords, here the FX extractor's
    features_only, out_indices = kwargs.pop('features_only', False), kwargs.pop('out_indices', None)
    try:
        if pretrained:
            try:
                model = torchvision.models.get_model(arch, weights='DEFAULT', **kwargs)
            except OSError as e:  # URLError, socket errors: offline
                raise _offline_error(name, _cause(e)) from None
            if num_classes is not None:
                _reset_classifier(model, num_classes)
        else:
            model = torchvision.models.get_model(arch, weights=None, **({'num_classes': num_classes} if num_classes
                                                                         else {}), **kwargs)
    except TypeError as e:
        if 'unexpected keyword argument' not in str(e):
            raise
        raise PlugattnTypeError(f'{name}: {e}; see the torchvision builder of {arch} for its options') from None
    if in_chans is not None:
        _adapt_in_chans(model, in_chans)
    return torchvision_features(model, name, out_indices) if features_only else model


def _timm(name: str, pretrained: bool, num_classes: int | None, in_chans: int | None,
          kwargs: dict[str, Any]) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise PlugattnError(f'{name} needs timm: pip install timm') from None
    arch = name[5:]
    if not timm.is_model(arch):
        raise PlugattnError(f'unknown timm model {arch!r}: see timm.list_models()')
    if in_chans is not None and in_chans < 1:
        raise PlugattnError(f'in_chans must be >= 1, got {in_chans}')
    extra = {k: v for k, v in (('num_classes', num_classes), ('in_chans', in_chans)) if v is not None}
    if kwargs.get('features_only') and kwargs.get('out_indices') is not None:
        plain = {k: v for k, v in kwargs.items() if not k.startswith(('feature', 'out_indices', 'flatten_seq'))}
        with torch.device('meta'):  # the levels timm numbers out_indices over
            levels = len(timm.create_model(arch, **extra, **plain).feature_info)
        kwargs = {**kwargs, 'out_indices': check_out_indices(kwargs['out_indices'], levels, name)}
    # weights from a file of the user's (pretrained_cfg_overlay=dict(file=...)) need no network
    unreachable = _hub_unreachable() if pretrained and 'pretrained_cfg_overlay' not in kwargs else None
    try:
        # offline, huggingface_hub's offline mode still loads cached weights and fails at once on others
        with _hf_offline(unreachable is not None):
            return timm.create_model(arch, pretrained=pretrained, **extra, **kwargs)
    except TypeError as e:
        if 'unexpected keyword argument' not in str(e):
            raise
        raise PlugattnTypeError(f'{name}: {e}; see the timm model of {arch} for its options') from None
    except (OSError, RuntimeError) as e:
        if not pretrained:
            raise
        raise _offline_error(name, unreachable or _cause(e)) from None


@contextlib.contextmanager
def _hf_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode (``HF_HUB_OFFLINE``) for the duration, when ``offline``."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def create_foreign_model(
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
    """Build a torchvision (``tv:NAME``) or timm (``timm:NAME``) model, with ``attn`` attached
    (:func:`plugattn.create_model` calls this for those names).

    Args:
        name: ``tv:NAME`` or ``timm:NAME``, optionally ``+ATTN`` (the attention to attach).
        pretrained: the host library's pretrained weights (downloaded; offline this fails with one line saying how
            to pass a local file instead).
        attn: attention to attach.
        warm_start: attach with warm start (see :mod:`plugattn.attach`).
        num_classes: classifier outputs (the last Linear is replaced for pretrained torchvision models).
        in_chans: input channels (torchvision: the first conv is replaced, pretrained RGB weights summed for one
            channel).
        features_only: a feature extractor (timm names: :func:`timm_features`, torchvision names:
            :func:`torchvision_features`).
        out_indices: its feature levels (default: timm's for the model).
        **kwargs: attach options (:data:`ATTACH_OPTIONS`) and the host library's model options.
    """
    from . import attach

    if not name.startswith(FOREIGN_PREFIXES):
        raise ValueError(f'{name!r} is not a torchvision or timm name; use tv:NAME or timm:NAME')
    opts = {k: kwargs.pop(k) for k in ATTACH_OPTIONS if k in kwargs}
    if '+' in name:  # 'tv:resnet50+bav2': the name carries the attention
        base, _, named = name.partition('+')
        if attn is not None and attn != named:
            raise ValueError(f'{name} already names attention {named!r}; drop attn={attn!r}')
        model = create_foreign_model(base, pretrained, attn=named, warm_start=warm_start, num_classes=num_classes,
                                     in_chans=in_chans, features_only=features_only, out_indices=out_indices,
                                     **opts, **kwargs)
        model.model_name = name
        return model
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
        raise PlugattnError(f'features_only with attention needs forward_intermediates, which timm {arch} lacks; '
                            'attach to the classifier model instead')
    with torch.device('meta'):  # timm's own extractor, only for its default levels and layout
        ref = timm.create_model(arch, features_only=True, **kwargs)
    indices = (tuple(ref.feature_info.out_indices) if out_indices is None
               else check_out_indices(out_indices, len(model.feature_info), f'timm:{arch}'))
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
        raise PlugattnError(f'features_only is not supported for {name}: a ViT has one resolution of tokens, no '
                            'feature maps; use forward hooks on model.encoder.layers')
    candidates = [n for n, _ in model_stages(model) or []]
    features = getattr(model, 'features', None)
    if not candidates and isinstance(features, nn.Sequential):
        candidates = [f'features.{i}' for i in range(len(features))]
    if not candidates:
        raise PlugattnError(f'features_only is not supported for {name}: no stages or features to take maps from')
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
    indices = check_out_indices(out_indices, len(info), name)
    info = [info[i] for i in indices]
    nodes = [d['module'] for d in info]
    graph = create_feature_extractor(model, return_nodes={n: n for n in nodes})
    return FeatureMaps(graph, nodes, info, nhwc)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
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
        state = read_state_dict(Path(state))
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
                raise PlugattnError(f'weights do not fit the model: {k} has shape {tuple(w.shape)}, the model '
                                    f'{tuple(own[k].shape)}; use weights of the same architecture')
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in missing if not k.startswith(attn_prefixes)]
    if bad:
        raise PlugattnError(f'weights lack {len(bad)} non-attention keys of the model (e.g. {bad[0]}); use weights of '
                            'the same architecture')
    replaced = _replaced_prefixes(model)
    bad = [k for k in unexpected if not k.startswith(replaced)]
    if bad:
        raise PlugattnError(f'weights have {len(bad)} keys the model lacks (e.g. {bad[0]}); use weights of the same '
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
