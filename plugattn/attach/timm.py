"""timm families for :func:`plugattn.attach` (timm is imported only when a family is looked up and it is installed).

Placements (as in :mod:`plugattn.attach.torchvision`; "ours" marks a design without a paper or official code):

* ResNet family (``resnet*``, ``resnext*``, ``seresnet*``, ``resnet*d``, ...): as plugattn's ResNets (specs §11):
  gates on ``bn2`` / ``bn3``, BA over the post-activation ``act1`` (and ``aa``, the post-``act2`` output after the
  optional anti-aliasing) outputs, DIA one unit per ``layerS`` (reduction 16). A native SE (``se``, seresnet) is
  replaced; ``keep_se=True`` keeps it and the gate-level module then gates the SE output.
* RegNet-Y (``regnety_*``): as plugattn's RegNet-Y, whose keys are timm's: ``attach(timm regnety_004, 'bav2')`` is
  ``plugattn.create_model('bav2_regnety_400mf')`` with the classifier at ``head.fc`` instead of ``fc``.
* EfficientNet (``efficientnet_b*``) and MobileNetV3 (``mobilenetv3_*``): BA as the BAv1 repository (specs §8) in
  the inverted residuals with an SE (bridging ``bn1``, the expansion output, and gating the depthwise output, after
  its activation for EfficientNet and between its BN and activation, ``bn2.drop``, for MobileNetV3), reduction 6,
  with the repository's activations (MobileNetV3: h-sigmoid gate; EfficientNet: swish hidden activation); the other
  blocks keep their SE; gate-level modules replace every SE at its place (ours).
* ConvNeXt (ours): the branch output before the layer scale, BA bridging ``conv_dw`` and ``mlp.act``, DIA one unit
  per stage (``stages.i.blocks.attn``).
* ViT / DeiT and Swin (ours, as plugattn's DeiT / Swin): BA at ``blocks.i.ba`` (Swin ``layers.s.blocks.i.ba``)
  bridging the attention-branch output and ``mlp.act`` and gating the MLP output; DIA one unit for the blocks
  (``blocks.attn``) or per stage (``layers.s.blocks.attn``), reduction 16.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ._core import BlockPlan, Family, Tap, nhwc_to_nchw, register_family, token_cam

__all__ = ['register']

_DIA16 = {'dia': {'reduction': 16}}
# BAv1 repository (specs §8): reduction 6, MobileNetV3 h-sigmoid gate, EfficientNet swish hidden activation
_BA_MBV3 = {ba: {'reduction': 6, 'gate_layer': 'hardsigmoid'} for ba in ('bav1', 'bav2')}
_BA_EFFNET = {ba: {'reduction': 6, 'act_layer': 'silu'} for ba in ('bav1', 'bav2')}


def _has_se(block: nn.Module) -> bool:
    return getattr(block, 'se', None) is not None and not isinstance(block.se, nn.Identity)


def _se_replace(block: nn.Module, level: str, opts: dict[str, Any]) -> list[str]:
    return ['se'] if _has_se(block) and not opts.get('keep_se') else []


def register() -> None:
    """Register the timm families (called once, the first time a family is looked up)."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return
    from timm.models import convnext, efficientnet, mobilenetv3, regnet, resnet, swin_transformer
    from timm.models import vision_transformer as vit
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    def resnet_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan:
        bottleneck = isinstance(block, resnet.Bottleneck)
        last = 'bn3' if bottleneck else 'bn2'
        gate = 'se' if _has_se(block) and opts.get('keep_se') and level == 'gate' else last
        channels = getattr(block, last).num_features
        if level != 'block':
            return BlockPlan(Tap(gate), channels)
        bridge = (Tap('act1'), Tap('aa')) if bottleneck else (Tap('aa'),)
        inner = (block.bn1.num_features, block.bn2.num_features) if bottleneck else (block.bn1.num_features,)
        return BlockPlan(Tap(last), channels, bridge, inner)

    register_family(Family(
        'timm resnet/resnext/seresnet', (resnet.ResNet,), resnet_plan, (resnet.BasicBlock, resnet.Bottleneck),
        lambda m: [(n, getattr(m, n)) for n in ('layer1', 'layer2', 'layer3', 'layer4')],
        replace=_se_replace, defaults=_DIA16,
        note='as plugattn ResNet; the native SE is replaced (keep_se=True keeps it)',
    ))

    def regnet_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan | None:
        if not isinstance(block, regnet.Bottleneck):
            return None
        wb = block.conv2.bn.num_features
        if level == 'gate':
            return BlockPlan(Tap('se'), wb)
        out = block.conv3.bn.num_features
        if level == 'stage':
            return BlockPlan(Tap('conv3'), out)
        return BlockPlan(Tap('conv3'), out, (Tap('conv1'), Tap('conv2')), (block.conv1.bn.num_features, wb))

    register_family(Family(
        'timm regnet', (regnet.RegNet,), regnet_plan, (regnet.Bottleneck,),
        lambda m: [(n, getattr(m, n)) for n in ('s1', 's2', 's3', 's4')],
        replace=_se_replace, defaults=_DIA16,
        note='as plugattn RegNet-Y: in place of the SE (keep_se=True keeps it)',
    ))

    def mobile_plan(pre_act: bool):
        def plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan | None:
            ir = isinstance(block, InvertedResidual)
            hidden = (block.bn2 if ir else block.bn1).num_features
            if level == 'block':
                if not ir or not _has_se(block):
                    return None
                gate = Tap('bn2.drop') if pre_act else Tap('aa')
                return BlockPlan(gate, hidden, (Tap('bn1'),), (block.bn1.num_features,))
            return BlockPlan(Tap('se'), hidden) if _has_se(block) else None

        return plan

    def mobile_replace(block: nn.Module, level: str, opts: dict[str, Any]) -> list[str]:
        if level == 'block' and not isinstance(block, InvertedResidual):
            return []
        return _se_replace(block, level, opts)

    for name, cls, pre, defaults in (('timm mobilenetv3', mobilenetv3.MobileNetV3, True, _BA_MBV3),
                                     ('timm efficientnet', efficientnet.EfficientNet, False, _BA_EFFNET)):
        register_family(Family(
            name, (cls,), mobile_plan(pre), (InvertedResidual, DepthwiseSeparableConv), None,
            levels=('gate', 'block'), replace=mobile_replace, defaults=defaults,
            note='BA replaces the SE of expansion blocks (BAv1 repository); gate modules replace the SE',
        ))

    def convnext_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan:
        layout = 'nchw' if block.use_conv_mlp else 'nhwc'
        dim = block.conv_dw.out_channels
        gate = Tap('mlp', layout=layout)
        if level != 'block':
            return BlockPlan(gate, dim)
        hidden = block.mlp.fc1.out_channels if block.use_conv_mlp else block.mlp.fc1.out_features
        return BlockPlan(gate, dim, (Tap('conv_dw'), Tap('mlp.act', layout=layout)), (dim, hidden))

    register_family(Family(
        'timm convnext', (convnext.ConvNeXt,), convnext_plan, (convnext.ConvNeXtBlock,),
        lambda m: [(f'stages.{i}.blocks', s.blocks) for i, s in enumerate(m.stages)], defaults=_DIA16,
        note='ours: gate the branch output before the addition; BA bridges conv_dw and MLP hidden; DIA per stage',
    ))

    def vit_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan | None:
        if type(block) is not vit.Block:
            return None
        dim, hidden = block.mlp.fc2.out_features, block.mlp.fc1.out_features
        gate = Tap('mlp', layout='nlc')
        if level != 'block':
            return BlockPlan(gate, dim)
        return BlockPlan(gate, dim, (Tap('attn', layout='nlc'), Tap('mlp.act', layout='nlc')), (dim, hidden))

    def vit_cam(model: nn.Module) -> tuple[str, Any]:
        # the last block's norm1: its patch tokens reach the class token (the block output's do not)
        return f'blocks.{len(model.blocks) - 1}.norm1', token_cam(model.num_prefix_tokens)

    register_family(Family(
        'timm vit/deit', (vit.VisionTransformer,), vit_plan, (vit.Block,), lambda m: [('blocks', m.blocks)],
        levels=('block', 'stage'), attn_key='ba', defaults=_DIA16, cam=vit_cam,
        note='as plugattn DeiT: BA on the MLP output bridging attention output and MLP hidden; one DIA unit',
    ))

    def swin_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan:
        dim, hidden = block.mlp.fc2.out_features, block.mlp.fc1.out_features
        gate = Tap('mlp', layout='nlc')
        if level != 'block':
            return BlockPlan(gate, dim)
        return BlockPlan(gate, dim, (Tap('drop_path1', layout='nhwc'), Tap('mlp.act', layout='nlc')), (dim, hidden))

    register_family(Family(
        'timm swin', (swin_transformer.SwinTransformer,), swin_plan, (swin_transformer.SwinTransformerBlock,),
        lambda m: [(f'layers.{i}.blocks', s.blocks) for i, s in enumerate(m.layers)],
        levels=('block', 'stage'), attn_key='ba', defaults=_DIA16, cam=lambda m: ('norm', nhwc_to_nchw),
        note='as plugattn Swin: BA on the MLP output bridging attention branch and MLP hidden; DIA per stage',
    ))
