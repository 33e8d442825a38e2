"""ultralytics YOLO family for :func:`plugattn.attach` (ultralytics is imported only when a family is looked up and it
is installed; it is AGPL-3.0, see ``docs/yolo.md``).

Takes every task model ultralytics builds from its CSP blocks: YOLOv8 (``C2f`` with ``Bottleneck``), YOLO11
(``C3k2``, whose bottlenecks may be ``C3k`` blocks) and the v5-style ``C3``, for detection, segmentation, pose, OBB
and classification alike (``YOLO('yolov8n.yaml').model``, the ``YOLO`` object itself, or a module holding one). The
attention modules are added after the model is built; every original key stays as it is, so an official or
user-trained checkpoint loads with only the attention keys missing, and ``warm_start=True`` starts from exactly the
checkpoint's function. Channels are read from the host modules (``cv2.conv.out_channels``), never from the YAML, so
every width scale (n/s/m/l/x) works.

Placements (all ours: no paper places these modules in a CSP detector; the reasons follow each one), chosen with
``where=``:

* ``where='csp'`` (default), inside every CSP block of the backbone and the neck:

  - gate-level modules (SE, ECA, CBAM, CA, ELA) gate each ``Bottleneck``'s residual branch, the output of its
    ``cv2``, before the shortcut addition, or the block output where the bottleneck has no shortcut (the neck's
    ``C2f``). This is where SE-ResNet and the CA / ECA / CBAM papers put the module in a residual unit: the shortcut
    path stays the identity, so a warm-started or weak gate cannot block the signal.
  - bridge attention (BAv1, BAv2) is one module per CSP block (``C2f``, ``C3k2``, ``C3``): it pools the features the
    block concatenates (the ``cv1`` split and every bottleneck output; for ``C3`` also its ``cv2`` shortcut branch)
    and gates the block's fusing conv (``cv2``, ``cv3`` for ``C3``). BA's idea is to compute a block's channel
    weights from all of the block's intermediate features; a YOLO bottleneck has one inner conv only (nothing to
    bridge), while the CSP block holds exactly such a set of features, which its last 1x1 conv fuses.
  - DIA is one shared unit per CSP block, over its bottlenecks (``<block>.m.attn``), each bottleneck's branch
    output gated as above. DIA shares one LSTM over the blocks of one stage, which have equal width; the bottlenecks
    of one CSP block are YOLO's equal-width run (every backbone stage is a strided conv and one CSP block).
* ``where='backbone'``: as ``'csp'``, in the backbone's CSP blocks only (the neck stays plain).
* ``where='block'``: gate-level modules only, one after every CSP block of the backbone (gating its fusing conv),
  the placement most hand-edited YAMLs use (``[-1, 1, CBAM, [c]]`` after each ``C2f``), without their index shift.
* ``where='backbone_end'``: one gate-level module on the backbone's last layer output (``SPPF`` for v5/v8, ``C2PSA``
  for YOLO11, the last CSP block of a classifier): "attention before the neck".

Keys: ``model.2.m.0.attn`` (gate, bottleneck), ``model.2.attn`` (BA, ``where='block'``), ``model.2.m.attn`` (DIA).
ultralytics' ``initialize_weights`` resets every ``nn.BatchNorm2d`` to ``eps=1e-3, momentum=0.03`` while the
model is built; attaching afterwards keeps the papers' BatchNorm settings in the attention modules (CA, ELA, BA).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..errors import PlugattnError
from ..layers import attn_level
from ._core import BlockPlan, Family, Tap, register_family

__all__ = ['WHERE', 'register', 'yolo_root']

WHERE = ('csp', 'backbone', 'block', 'backbone_end')


def yolo_root(model: nn.Module) -> nn.Module | None:
    """The ultralytics task model (``DetectionModel``, ``ClassificationModel``, ...) of ``model``: itself, the
    ``.model`` of a ``YOLO`` object, or the first one inside a user's module; ``None`` without one."""
    from ultralytics.nn.tasks import BaseModel

    for m in model.modules():
        if isinstance(m, BaseModel):
            return m
    return None


def register() -> None:
    """Register the ultralytics family (called once, the first time a family is looked up)."""
    try:
        from ultralytics.engine.model import Model
        from ultralytics.nn.modules.block import C3, Bottleneck, C2f, C3k
        from ultralytics.nn.tasks import BaseModel
    except ImportError:
        return

    def width(m: nn.Module) -> int:
        """Output channels of a block, from its own convs (width-scale-safe)."""
        if isinstance(m, C3):
            return m.cv3.conv.out_channels
        if isinstance(m, (C2f, Bottleneck)):
            return m.cv2.conv.out_channels
        if isinstance(m, nn.Sequential) and len(m):
            return width(m[-1])
        out = getattr(getattr(m, 'cv2', None), 'conv', None)  # SPPF, C2PSA, ...: the fusing conv is cv2
        if isinstance(out, nn.Conv2d):
            return out.out_channels
        convs = [s for s in m.modules() if isinstance(s, nn.Conv2d)]
        if not convs:
            raise PlugattnError(f'cannot tell the output width of {type(m).__name__}')
        return convs[-1].out_channels

    def output_conv(m: nn.Module) -> str | None:
        """Name of the conv whose output is the layer's output (``cv3`` of a C3, ``cv2`` of C2f / SPPF / C2PSA)."""
        if isinstance(m, C3):
            return 'cv3'
        return 'cv2' if isinstance(getattr(getattr(m, 'cv2', None), 'conv', None), nn.Conv2d) else None

    def csp_bridge(block: nn.Module) -> tuple[tuple[Tap, ...], tuple[int, ...]] | None:
        """The features a CSP block concatenates before its fusing conv, in the order it computes them."""
        if type(block) is C3k or not isinstance(getattr(block, 'm', None), (nn.Sequential, nn.ModuleList)):
            return None  # C3k lives inside a C3k2, whose BA bridges the C3k outputs
        names = ['cv1', *(f'm.{i}' for i in range(len(block.m)))]
        if isinstance(block, C3):
            names.append('cv2')  # C3 computes its shortcut branch cv2(x) after the bottlenecks
        taps = tuple(Tap(n) for n in names)
        return taps, tuple(width(block.get_submodule(n)) for n in names)

    def csp_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan | None:
        if level == 'block':
            if not isinstance(block, (C2f, C3)):
                return None
            bridge = csp_bridge(block)
            if bridge is None:
                return None
            return BlockPlan(Tap(output_conv(block)), width(block), *bridge)
        if isinstance(block, Bottleneck):  # gate, or the stage unit's gate in each bottleneck
            return BlockPlan(Tap('cv2'), block.cv2.conv.out_channels)
        return None

    def stage_containers(model: nn.Module, within: set[int] | None = None) -> list[tuple[str, nn.Module]]:
        """``<block>.m`` of every CSP block that runs bottlenecks (a DIA stage), optionally only inside ``within``."""
        out = []
        inside = _inside(model, within) if within is not None else None
        for name, m in model.named_modules():
            if isinstance(m, (C2f, C3)) and isinstance(getattr(m, 'm', None), (nn.Sequential, nn.ModuleList)) \
                    and any(isinstance(b, Bottleneck) for b in m.m) and (inside is None or id(m) in inside):
                out.append((f'{name}.m' if name else 'm', m.m))
        return out

    def prepare(model: nn.Module, opts: dict[str, Any]) -> Family:
        where = opts.pop('where', 'csp')
        unknown = sorted(k for k in opts if k not in ('keep_se', '_attn'))
        if unknown:
            raise PlugattnError(f'ultralytics models take no attach option {", ".join(unknown)}; '
                                f"options: where={'|'.join(WHERE)}")
        if where not in WHERE:
            raise PlugattnError(f'where={where!r} is not a YOLO placement; use one of {", ".join(WHERE)}')
        level = attn_level(opts['_attn'])
        if where in ('block', 'backbone_end') and level != 'gate':
            raise PlugattnError(f"where={where!r} takes a gate-level attention (se, eca, cbam, ca, ela_*), not "
                                f"{opts['_attn']} ({level} level); use where='csp' or 'backbone'")
        if where == 'csp':
            # gate / block modules are found anywhere (a C3k2's attention variant nests bottlenecks in a Sequential)
            return family if level == 'stage' else dataclasses.replace(family, stages=None)
        layers = _backbone_layers(model)
        if where == 'backbone':
            ids = {id(m) for m in layers}
            inside = _inside(model, ids)
            if level == 'stage':
                return dataclasses.replace(family, stages=lambda m: stage_containers(m, ids))

            def backbone_plan(block: nn.Module, lvl: str, o: dict[str, Any]) -> BlockPlan | None:
                return csp_plan(block, lvl, o) if id(block) in inside else None

            return dataclasses.replace(family, plan=backbone_plan, stages=None)
        chosen = [m for m in layers if isinstance(m, (C2f, C3))] if where == 'block' else layers[-1:]
        for m in chosen:
            if output_conv(m) is None:
                raise PlugattnError(f'the backbone ends with a {type(m).__name__}, which has no output conv to gate; '
                                    "use where='block' or 'csp'")
        if not chosen:
            raise PlugattnError("this model's backbone has no CSP block (C2f, C3k2, C3); use where='backbone_end'")
        ids = {id(m) for m in chosen}

        def layer_plan(block: nn.Module, lvl: str, o: dict[str, Any]) -> BlockPlan | None:
            return BlockPlan(Tap(output_conv(block)), width(block)) if id(block) in ids else None

        return dataclasses.replace(family, plan=layer_plan, stages=None,
                                   block_types=tuple({type(m) for m in chosen}))

    family = register_family(Family(
        'ultralytics yolo', (BaseModel, Model), csp_plan, (Bottleneck, C2f, C3), stage_containers,
        prepare=prepare,
        note="ours: gate each Bottleneck's branch, BA per CSP block over its features, DIA per CSP block",
    ))


def _backbone_layers(model: nn.Module) -> list[nn.Module]:
    """The backbone layers of the YOLO model in ``model`` (its YAML's ``backbone`` entries)."""
    root = yolo_root(model)
    yaml = getattr(root, 'yaml', None) if root is not None else None
    if not isinstance(yaml, dict) or not yaml.get('backbone'):
        raise PlugattnError('this YOLO model has no YAML backbone description (model.yaml), so its backbone is '
                            "unknown; use where='csp'")
    return list(root.model)[:len(yaml['backbone'])]


def _inside(model: nn.Module, ids: set[int]) -> set[int]:
    """Ids of every module inside the modules whose id is in ``ids`` (themselves included)."""
    out: set[int] = set()
    for m in model.modules():
        if id(m) in ids:
            out.update(id(s) for s in m.modules())
    return out
