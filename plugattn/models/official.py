"""Load checkpoints saved by the official attention repositories (and timm / torchvision) into plugattn models.

Every official repository names its attention modules differently (``se``, ``eca``, ``cbam``, ``ba``, ``lstm``) and
wraps its models differently; plugattn puts every attention module under ``.attn`` of its block (``layerS.attn`` for
a DIA unit). :func:`load_official` reads a checkpoint with ``torch.load(weights_only=True)``, unwraps the training
dict (``state_dict`` / ``model``), strips DataParallel's ``module.`` prefix, renames the keys of the chosen
``source`` layout (specs §3-§10, §14), checks every key and shape against the model and loads parameters *and*
buffers (BatchNorm running statistics, BN1d of bridge attention included).

Sources (official layout -> plugattn layout):
    * ``se``: SE-ResNets of moskomule/senet.pytorch and the BA repository, ``layerS.B.se.fc.{0,2}`` -> ``attn.fc``.
    * ``eca``: ECANet ``eca_resnet.py`` ``layerS.B.eca.conv`` -> ``attn.conv``; ``eca_mobilenetv2.py``
      ``features.i.conv.{3|4}.conv`` -> ``features.i.attn.conv``.
    * ``cbam``: ``model_resnet.py`` ``cbam.ChannelGate.mlp.{1,3}`` -> ``attn.channel_gate.mlp.{0,2}``,
      ``cbam.SpatialGate.spatial.{conv,bn}`` -> ``attn.spatial_gate.{conv,bn}``.
    * ``ca``: ``mbv2_ca.py`` flat ``features.i.conv.{0..8}`` with CA at ``conv.6.{conv1,bn1,conv2,conv3}`` and the
      last conv at top-level ``conv.{0,1}`` -> torchvision MobileNetV2 keys, ``features.i.attn.{conv1,bn1,conv_h,
      conv_w}``, ``features.18``.
    * ``bav1``: ``BA_resnet.py`` ``ba.pre_fusions.i.{0,1}`` + ``ba.cur_fusion.{0,1}`` -> one ``attn.fusions`` list
      with the current feature last; ``ba.generation.1`` -> ``attn.generation.1``. Also reads the BAv2 repository's
      ``ba_resnet_v1.py`` (``ba.fusions``).
    * ``bav2``: ``ba_resnet_v2_1.py`` ``ba.{fusions.i.0, proj, generation.{0,2}}`` -> ``attn.*``.
    * ``dia``: ``dia_resnet.py`` / ``dia_preresnet.py`` ``layerS.ModuleList.i`` and WRN ``blockS.ModuleList.i`` ->
      ``layerS.i``; ``<stage>.lstm.w_{ih,hh}.0.seq.{0,2}`` -> ``layerS.attn.w_{ih,hh}.{0,2}``; WRN
      ``convShortcut`` -> ``conv_shortcut`` and final ``bn1`` -> ``bn``.
    * ``cswin``: microsoft/CSWin-Transformer classification checkpoints (``cswin_{tiny,small,base}_224.pth``, ...):
      keys unchanged (plugattn's CSWin uses the official layout). The files hold ``state_dict_ema`` (the weights the
      published accuracies come from) and ``state_dict``: the EMA weights are loaded unless ``ema=False``. The
      UperNet checkpoints' ``backbone.`` prefix is dropped, so their backbone loads with ``strict=False`` (the
      segmentation heads and the backbone's ``norm1..4`` are left out; ``norm`` and ``head`` are reported missing).
    * ``timm``: timm RegNet-Y (``head.fc`` -> ``fc``; every other key equals ours) and ResNets.
    * ``torchvision``: torchvision ResNets and MobileNetV2 (keys unchanged).

Checkpoint wrappers: ``{'state_dict': ...}`` (BAv1, ECA, CBAM, DIANet, with ``module.``), ``{'model': ...}``
(BAv2), ``{'state_dict': ..., 'state_dict_ema': ...}`` (timm's ``CheckpointSaver`` with model EMA: CSWin), or a bare
state dict (``mbv2_ca.pth``, timm, torchvision). None of these repositories publishes weights
that can be fetched here; the tests build checkpoints in each layout from plugattn models.
"""
from __future__ import annotations

import difflib
import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys

from ..errors import summarise_cause

__all__ = ['OFFICIAL_SOURCES', 'load_official', 'map_official_keys']

StateDict = dict[str, Tensor]
Rules = list[tuple[str, str]]


def _rename(state: StateDict, rules: Rules) -> StateDict:
    """Apply every ``(pattern, replacement)`` regex rule, in order, to every key."""
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _bav1(state: StateDict) -> StateDict:
    # pre_fusions.{i} + cur_fusion -> one fusions list with the current feature last (index = number of pre_fusions).
    n_pre: dict[str, int] = {}
    for key in state:
        if m := re.match(r'(.*)\bba\.pre_fusions\.(\d+)\.', key):
            n_pre[m[1]] = max(n_pre.get(m[1], 0), int(m[2]) + 1)

    def current_last(key: str) -> str:
        m = re.match(r'(.*)\bba\.cur_fusion\.', key)
        return f'{m[1]}ba.fusions.{n_pre.get(m[1], 0)}.{key[m.end():]}' if m else key

    return _rename({current_last(k): v for k, v in state.items()},
                   [(r'\bba\.pre_fusions\.', 'attn.fusions.'), (r'\bba\.', 'attn.')])


def _dia(state: StateDict) -> StateDict:
    rules: Rules = [
        (r'^(?:layer|block)(\d+)\.lstm\.(w_ih|w_hh)\.0\.seq\.(\d+)\.', r'layer\1.attn.\2.\3.'),
        (r'^(?:layer|block)(\d+)\.ModuleList\.', r'layer\1.'),
        (r'\.convShortcut\.', '.conv_shortcut.'),
    ]
    if any(k.startswith('block') for k in state):  # WRN: the final norm is `bn1` there, `bn` here
        rules.append((r'^bn1\.', 'bn.'))
    return _rename(state, rules)


def _mbv2_ca(state: StateDict) -> StateDict:
    # mbv2_ca.py lays each inverted residual out flat (conv, BN, ReLU6, ...): map the indices onto torchvision's
    # nested layout; the last 1x1 conv is a top-level `conv` there and features.<last> here.
    expand = {'0': 'conv.0.0', '1': 'conv.0.1', '3': 'conv.1.0', '4': 'conv.1.1', '7': 'conv.2', '8': 'conv.3'}
    no_expand = {'0': 'conv.0.0', '1': 'conv.0.1', '3': 'conv.1', '4': 'conv.2'}
    ca = {'conv1': 'conv1', 'bn1': 'bn1', 'conv2': 'conv_h', 'conv3': 'conv_w'}
    blocks: dict[str, int] = {}
    for key in state:
        if m := re.match(r'features\.(\d+)\.conv\.(\d+)\.', key):
            blocks[m[1]] = max(blocks.get(m[1], 0), int(m[2]))
    last = max((int(i) for i in blocks), default=0) + 1
    out = {}
    for key, value in state.items():
        if m := re.match(r'features\.(\d+)\.conv\.6\.(conv1|bn1|conv2|conv3)\.(.*)', key):
            key = f'features.{m[1]}.attn.{ca[m[2]]}.{m[3]}'
        elif m := re.match(r'features\.(\d+)\.conv\.(\d+)\.(.*)', key):
            table = expand if blocks[m[1]] > 4 else no_expand
            key = f'features.{m[1]}.{table.get(m[2], "conv." + m[2])}.{m[3]}'
        elif m := re.match(r'conv\.([01])\.(.*)', key):
            key = f'features.{last}.{m[1]}.{m[2]}'
        out[key] = value
    return out


# source -> (what it reads, key mapper)
OFFICIAL_SOURCES: dict[str, tuple[str, Callable[[StateDict], StateDict]]] = {
    'se': ('SE-ResNets of moskomule/senet.pytorch and zhaoy376/Bridge-Attention (se.fc.{0,2})',
           lambda s: _rename(s, [(r'\bse\.', 'attn.')])),
    'eca': ('BangguWu/ECANet ResNets (eca.conv) and MobileNetV2 (features.i.conv.{3|4}.conv)',
            lambda s: _rename(s, [(r'\beca\.', 'attn.'), (r'^(features\.\d+)\.conv\.\d+\.conv\.', r'\1.attn.conv.')])),
    'cbam': ('Jongchan/attention-module ResNets (cbam.ChannelGate / cbam.SpatialGate)',
             lambda s: _rename(s, [
                 (r'\bcbam\.ChannelGate\.mlp\.1\.', 'attn.channel_gate.mlp.0.'),
                 (r'\bcbam\.ChannelGate\.mlp\.3\.', 'attn.channel_gate.mlp.2.'),
                 (r'\bcbam\.SpatialGate\.spatial\.(conv|bn)\.', r'attn.spatial_gate.\1.'),
             ])),
    'ca': ('houqb/CoordAttention mbv2_ca.py (MobileNetV2 + CA, mbv2_ca.pth)', _mbv2_ca),
    'bav1': ('zhaoy376/Bridge-Attention BA_resnet.py (ba.pre_fusions / ba.cur_fusion), or the BAv2 repository\'s '
             'ba_resnet_v1.py (ba.fusions)', _bav1),
    'bav2': ('ZOUrz/BA-Net-Bridge-Attention-in-Deep-Neural-Networks ba_resnet_v2_1.py (ba.fusions, ba.proj)',
             lambda s: _rename(s, [(r'\bba\.', 'attn.')])),
    'dia': ('gbup-group/DIANet dia_resnet.py / dia_preresnet.py / dia_wrn.py (layerS.ModuleList, lstm)', _dia),
    'cswin': ('microsoft/CSWin-Transformer checkpoints (official keys; state_dict_ema by default; the UperNet '
              "checkpoints' backbone. prefix dropped)", lambda s: _rename(s, [(r'^backbone\.', '')])),
    'timm': ('timm RegNet-Y (head.fc) and ResNets', lambda s: _rename(s, [(r'^head\.fc\.', 'fc.')])),
    'torchvision': ('torchvision ResNets and MobileNetV2 (keys unchanged)', dict),
}


def _read(checkpoint: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(checkpoint, Mapping):
        return checkpoint, 'the checkpoint'
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(2, 'checkpoint not found', str(path))
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        first = summarise_cause(e, 200)
        raise ValueError(
            f'{path} cannot be read with torch.load(weights_only=True): it holds Python objects other than tensors '
            f'and plain containers ({first}); re-save only its state_dict (torch.save(ckpt["state_dict"], ...)) in a '
            'trusted environment'
        ) from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f'{path} is not a readable PyTorch checkpoint ({summarise_cause(e, 200)})') from None
    if not isinstance(obj, Mapping):
        raise ValueError(f'{path} holds a {type(obj).__name__}, not a state dict or a checkpoint dict')
    return obj, str(path)


def _unwrap(obj: Mapping[str, Any], where: str, ema: bool | None = None) -> StateDict:
    """The tensors of a bare state dict or of a ``state_dict_ema`` / ``state_dict`` / ``model`` entry, ``module.``
    stripped: the EMA weights when the checkpoint has them, unless ``ema`` is False (True requires them)."""
    has_ema = isinstance(obj.get('state_dict_ema'), Mapping)
    if ema and not has_ema:
        raise ValueError(
            f'{where} holds no EMA weights (no "state_dict_ema" entry; top-level keys: '
            f'{", ".join(map(str, list(obj)[:8]))}): load its other weights with ema=False'
        )
    if has_ema and ema is not False:
        obj = obj['state_dict_ema']
    for key in ('state_dict', 'model'):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise ValueError(
            f'{where} holds no state dict (top-level keys: {", ".join(map(str, list(obj)[:8]))}); pass a file saved '
            'with torch.save(model.state_dict()) or a training checkpoint with a "state_dict" or "model" entry'
        )
    return {k.removeprefix('module.'): v for k, v in state.items()}


def map_official_keys(state: Mapping[str, Tensor], source: str) -> StateDict:
    """Rename the keys of an (unwrapped, ``module.``-stripped) official state dict to plugattn's layout."""
    if source not in OFFICIAL_SOURCES:
        close = difflib.get_close_matches(source, OFFICIAL_SOURCES, n=2, cutoff=0.5)
        hint = f'did you mean {", ".join(close)}?' if close else f'choose one of {", ".join(OFFICIAL_SOURCES)}'
        raise ValueError(f'unknown checkpoint source {source!r}: {hint}')
    return OFFICIAL_SOURCES[source][1](dict(state))


def _listing(keys: list[str], limit: int = 6) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f' and {len(keys) - limit} more' if len(keys) > limit else '')


def load_official(
        model: nn.Module,
        checkpoint: str | os.PathLike | Mapping[str, Any],
        *,
        source: str,
        strict: bool = True,
        ema: bool | None = None,
) -> _IncompatibleKeys:
    """Load an official checkpoint into a plugattn model, parameters and buffers, after checking every key.

    Args:
        model: The plugattn model of the same architecture (e.g. ``create_model('bav1_resnet50')``, or
            ``create_model('dia_resnet164', num_classes=100)`` for a CIFAR-100 DIANet).
        checkpoint: Path of a ``.pth`` / ``.pth.tar`` file (read with ``torch.load(weights_only=True)``), or an
            already loaded checkpoint dict.
        source: Key layout, one of :data:`OFFICIAL_SOURCES` (``se``, ``eca``, ``cbam``, ``ca``, ``bav1``, ``bav2``,
            ``dia``, ``cswin``, ``timm``, ``torchvision``).
        strict: Require every model key to be in the checkpoint and nothing else. ``False`` tolerates missing and
            unused keys (e.g. torchvision MobileNetV2 weights into ``ca_mobilenetv2``: the attention stays at its
            init) and returns them; shape mismatches always raise.
        ema: Which weights of a checkpoint with model EMA (``state_dict_ema`` beside ``state_dict``, as timm's
            ``CheckpointSaver`` and the CSWin releases write) to load: ``None`` (default) the EMA weights when the
            checkpoint has them, ``True`` the EMA weights or an error, ``False`` the non-EMA ``state_dict``.

    Returns:
        ``(missing_keys, unexpected_keys)`` (both empty when ``strict``).

    Raises:
        ValueError: Unknown source, an unreadable checkpoint, or (one error listing all of them) model keys without
            a match, checkpoint keys matching nothing and shape mismatches.
        FileNotFoundError: No file at ``checkpoint``.
    """
    obj, where = _read(checkpoint)
    original = _unwrap(obj, where, ema)
    mapped = map_official_keys(original, source)
    if len(mapped) != len(original):
        raise ValueError(f'{where}: several keys map to the same plugattn key with source {source!r}; wrong source?')
    from_key = dict(zip(mapped, original))
    own = model.state_dict()
    # Checkpoints of PyTorch < 0.4.1 have no num_batches_tracked buffers: keep the model's.
    for key in own:
        if key.endswith('num_batches_tracked') and key not in mapped:
            mapped[key] = own[key]
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    shapes = [k for k in own if k in mapped and tuple(mapped[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing and strict:
        problems.append(f'{len(missing)} model keys have no match in the checkpoint ({_listing(missing)})')
    if unexpected and strict:
        shown = [k if from_key[k] == k else f'{from_key[k]} (as {k})' for k in unexpected]
        problems.append(f'{len(unexpected)} checkpoint keys match nothing in the model ({_listing(shown)})')
    if shapes:
        shown = [f'{k}: {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}' for k in shapes]
        problems.append(f'{len(shapes)} shape mismatches, checkpoint vs model ({_listing(shown)})')
    if problems:
        name = getattr(model, 'model_name', type(model).__name__)
        raise ValueError(
            f'cannot load {where} (source {source!r}) into {name}: {"; ".join(problems)}; check source= and build '
            'the same architecture with the same num_classes'
        )
    return model.load_state_dict({k: v for k, v in mapped.items() if k in own}, strict=False)
