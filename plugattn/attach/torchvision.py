"""torchvision families for :func:`plugattn.attach` (torchvision is imported only when a model is attached).

Placements (each family's ``note``; "ours" marks a design without a paper or official code behind it):

* ResNet / ResNeXt / Wide ResNet (``resnet18…152``, ``resnext50_32x4d``, ``resnext101_*``, ``wide_resnet*``): as
  plugattn's ResNets (specs §11): gates on ``bn2`` / ``bn3``, bridge attention over the post-ReLU ``bn1`` (and
  ``bn2``) outputs, DIA one unit per ``layerS`` (reduction 16, specs D9). Keys equal plugattn's
  (``layerS.B.attn``, ``layerS.attn``), so the attached model *is* ``plugattn.create_model('<attn>_<name>')``.
* MobileNetV2: as plugattn's MobileNetV2 (CA/SE/CBAM/ELA after the depthwise conv on the hidden width, official CA
  place; ECA at the block output with k = 1 if C < 96 else 3, official; BA bridges the expansion output and gates
  the depthwise BN output before its ReLU6, reduction 6, BAv1's MobileNetV3 design). Keys ``features.i.attn``.
* MobileNetV3 and EfficientNet-B0…B7: BA as the BAv1 repository builds it (specs §8): in blocks with an expansion
  conv (MobileNetV3: and an SE), BA replaces the SE, bridging the expansion output and gating the depthwise output
  (MobileNetV3: its BN output before the activation; EfficientNet: after the activation), reduction 6; the other
  blocks keep their SE. The BA module has the repository's activations: MobileNetV3 ReLU hidden and h-sigmoid gate
  (``gate_layer='hardsigmoid'``), EfficientNet swish hidden (``act_layer='silu'``) and sigmoid gate; BAv2 takes
  the same. Gate-level modules replace the SE at its place (ours).
* RegNet-Y (``regnet_y_*``): as plugattn's RegNet-Y (specs §9 proposal, ours): BA bridges ``f.a`` and ``f.b`` and
  gates ``f.c`` in place of the SE, gate-level modules replace the SE at its place, DIA one unit per stage on
  ``f.c`` (reduction 16); ``keep_se=True`` keeps the SE.
* ConvNeXt (ours): gate-level modules gate the block's branch output (before the layer scale, which is
  channel-wise and commutes with a channel gate; the attention sees the unscaled output) before the residual
  addition; BA bridges the depthwise-conv output and the MLP hidden (after GELU); DIA one unit per stage.
* Swin v1 (``swin_t/s/b``) and ViT (``vit_b_16`` …): as plugattn's Swin / DeiT (ours): BA (key ``ba``, the blocks'
  ``attn`` is the self-attention) bridges the token means of the attention output and the MLP hidden and gates the
  MLP output before its residual addition; DIA one unit per stage (Swin) or for all blocks (ViT) on the MLP branch
  output, reduction 16. Gate-level modules have no placement in transformer blocks.
* VGG (``vgg11`` … ``vgg19_bn``) and SSD's VGG16 extractor (ours, :mod:`plugattn.attach.vgg`): per conv stage (the
  convs between two max-pools; SSD's fc6/fc7 and extra blocks), gates on the stage's last ReLU before its pool, BA
  bridging the stage's earlier ReLU outputs, DIA one unit per stage of one width gating every conv layer; keys
  ``<last ReLU>.attn`` (``features.29.attn``).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..errors import PlugattnError
from ._core import BlockPlan, Family, Tap, nhwc_to_nchw, register_family, token_cam

__all__ = ['register']


def _width(m: nn.Module) -> int:
    for sub in reversed(list(m.modules())):
        for attr in ('num_features', 'out_channels', 'out_features'):
            if hasattr(sub, attr):
                return int(getattr(sub, attr))
        if isinstance(getattr(sub, 'running_mean', None), Tensor):  # FrozenBatchNorm2d (detection backbones)
            return sub.running_mean.numel()
    raise PlugattnError(f'cannot tell the width of {type(m).__name__}')


def _children(container: nn.Module, types: tuple[type, ...]) -> bool:
    return any(isinstance(m, types) for m in container.children())


def register() -> None:
    """Register the torchvision families (called once, the first time a family is looked up)."""
    try:
        from torchvision import models as tvm
    except ImportError:
        return
    from torchvision.models import convnext, efficientnet, mobilenetv2, mobilenetv3, regnet, swin_transformer
    from torchvision.models import vision_transformer as vit
    from torchvision.ops import SqueezeExcitation

    # ResNet family ----------------------------------------------------------------------------------------------
    def resnet_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan:
        if isinstance(block, tvm.resnet.Bottleneck):
            gate, bridge = 'bn3', ('bn1', 'bn2')
        else:
            gate, bridge = 'bn2', ('bn1',)
        channels = _width(getattr(block, gate))
        if level != 'block':
            return BlockPlan(Tap(gate), channels)
        return BlockPlan(Tap(gate), channels, tuple(Tap(b, 'relu') for b in bridge),
                         tuple(_width(getattr(block, b)) for b in bridge))

    def resnet_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(n, getattr(model, n)) for n in ('layer1', 'layer2', 'layer3', 'layer4')]

    register_family(Family(
        'torchvision resnet/resnext/wide_resnet', (tvm.ResNet,), resnet_plan,
        (tvm.resnet.BasicBlock, tvm.resnet.Bottleneck), resnet_stages,
        defaults={'dia': {'reduction': 16}},
        note='gate on bn2/bn3, BA over post-ReLU bn1(/bn2), DIA per layerS (as plugattn ResNet)',
    ))

    # MobileNetV2 ------------------------------------------------------------------------------------------------
    register_family(Family(
        'torchvision mobilenet_v2', (tvm.MobileNetV2,), mobilenetv2_plan,
        (mobilenetv2.InvertedResidual,), None, levels=('gate', 'block'),
        defaults={'bav1': {'reduction': 6}, 'bav2': {'reduction': 6}},
        note='after the depthwise conv (CA place); ECA at the block output (official); BA as BAv1 MobileNetV3',
    ))

    # MobileNetV3 / EfficientNet --------------------------------------------------------------------------------
    def mbv3_parts(block: nn.Module) -> tuple[int | None, int, int | None]:
        layers = list(block.block)
        se = next((i for i, m in enumerate(layers) if isinstance(m, SqueezeExcitation)), None)
        expand = len(layers) - (1 if se is None else 0) == 4
        return (0 if expand else None), (1 if expand else 0), se

    def ba_defaults(**acts: str) -> dict[str, dict[str, Any]]:
        # BAv1 repository (specs §8): MobileNetV3 h-sigmoid gate, EfficientNet swish hidden activation
        return {'bav1': {'reduction': 6, **acts}, 'bav2': {'reduction': 6, **acts}}

    def mbv3_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan | None:
        expand, dw, se = mbv3_parts(block)
        hidden = _width(block.block[dw])
        if level == 'block':
            if expand is None or se is None:
                return None
            return BlockPlan(Tap(f'block.{dw}.1'), hidden, (Tap('block.0'),), (_width(block.block[0]),))
        return None if se is None else BlockPlan(Tap(f'block.{se}'), hidden)

    def se_slot(block: nn.Module, level: str, opts: dict[str, Any]) -> list[str]:
        expand, _, se = mbv3_parts(block)
        if se is None or opts.get('keep_se') or (level == 'block' and expand is None):
            return []
        return [f'block.{se}']

    register_family(Family(
        'torchvision mobilenet_v3', (tvm.MobileNetV3,), mbv3_plan, (mobilenetv3.InvertedResidual,), None,
        levels=('gate', 'block'), replace=se_slot,
        defaults=ba_defaults(gate_layer='hardsigmoid'),
        note='BA replaces the SE of expansion blocks (BAv1 repository); gate modules replace the SE',
    ))

    def effnet_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan | None:
        expand, dw, se = mbv3_parts(block)
        hidden = _width(block.block[dw])
        if level == 'block':
            if expand is None:
                return None
            return BlockPlan(Tap(f'block.{dw}'), hidden, (Tap('block.0'),), (_width(block.block[0]),))
        return BlockPlan(Tap(f'block.{se}'), hidden)

    register_family(Family(
        'torchvision efficientnet', (tvm.EfficientNet,), effnet_plan, (efficientnet.MBConv,), None,
        levels=('gate', 'block'), replace=se_slot,
        defaults=ba_defaults(act_layer='silu'),
        match=lambda m: not any(isinstance(x, efficientnet.FusedMBConv) for x in m.modules()),
        note='BA replaces the SE of expansion blocks (BAv1 repository); gate modules replace the SE',
    ))

    # RegNet ----------------------------------------------------------------------------------------------------
    def regnet_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan:
        f = block.f
        wb = _width(f.b)
        if level == 'gate':
            return BlockPlan(Tap('f.se' if hasattr(f, 'se') else 'f.b'), wb)
        if level == 'stage':
            return BlockPlan(Tap('f.c'), _width(f.c))
        return BlockPlan(Tap('f.c'), _width(f.c), (Tap('f.a'), Tap('f.b')), (_width(f.a), wb))

    def regnet_replace(block: nn.Module, level: str, opts: dict[str, Any]) -> list[str]:
        return [] if opts.get('keep_se') or not hasattr(block.f, 'se') else ['f.se']

    def regnet_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(f'trunk_output.{n}', m) for n, m in model.trunk_output.named_children()]

    register_family(Family(
        'torchvision regnet', (tvm.RegNet,), regnet_plan, (regnet.ResBottleneckBlock,), regnet_stages,
        replace=regnet_replace, defaults={'dia': {'reduction': 16}},
        note='as plugattn RegNet-Y: in place of the SE (keep_se=True keeps it)',
    ))

    # ConvNeXt --------------------------------------------------------------------------------------------------
    def convnext_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan:
        dim = block.block[0].out_channels
        if level != 'block':
            return BlockPlan(Tap('block'), dim)
        return BlockPlan(Tap('block'), dim, (Tap('block.0'), Tap('block.4', layout='nhwc')),
                         (dim, block.block[3].out_features))

    def feature_stages(types: tuple[type, ...]) -> Any:
        def stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
            return [(f'features.{n}', m) for n, m in model.features.named_children() if _children(m, types)]

        return stages

    register_family(Family(
        'torchvision convnext', (tvm.ConvNeXt,), convnext_plan, (convnext.CNBlock,),
        feature_stages((convnext.CNBlock,)), defaults={'dia': {'reduction': 16}},
        note='ours: gate the branch output before the addition; BA bridges dwconv and MLP hidden; DIA per stage',
    ))

    # Transformers ----------------------------------------------------------------------------------------------
    def swin_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan | None:
        if type(block) is not swin_transformer.SwinTransformerBlock:
            return None
        dim, hidden = block.mlp[3].out_features, block.mlp[0].out_features
        gate = Tap('mlp', layout='nhwc')
        if level != 'block':
            return BlockPlan(gate, dim)
        return BlockPlan(gate, dim, (Tap('attn', layout='nhwc'), Tap('mlp.1', layout='nhwc')), (dim, hidden))

    register_family(Family(
        'torchvision swin', (tvm.SwinTransformer,), swin_plan, (swin_transformer.SwinTransformerBlock,),
        feature_stages((swin_transformer.SwinTransformerBlock,)), levels=('block', 'stage'), attn_key='ba',
        defaults={'dia': {'reduction': 16}},
        match=lambda m: not any(isinstance(x, swin_transformer.SwinTransformerBlockV2) for x in m.modules()),
        cam=lambda m: ('norm', nhwc_to_nchw),  # the final norm's NHWC map is what the pooled head sees
        note='as plugattn Swin: BA on the MLP output bridging attention output and MLP hidden; DIA per stage',
    ))

    def vit_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan:
        dim, hidden = block.mlp[3].out_features, block.mlp[0].out_features
        gate = Tap('mlp', layout='nlc')
        if level != 'block':
            return BlockPlan(gate, dim)
        return BlockPlan(gate, dim, (Tap('dropout', layout='nlc'), Tap('mlp.1', layout='nlc')), (dim, hidden))

    def vit_cam(model: nn.Module) -> tuple[str, Any]:
        # the last block's ln_1: its patch tokens reach the class token (the block output's do not: zero gradient)
        last = [n for n, m in model.encoder.layers.named_children() if isinstance(m, vit.EncoderBlock)][-1]
        return f'encoder.layers.{last}.ln_1', token_cam(1)

    register_family(Family(
        'torchvision vit', (tvm.VisionTransformer,), vit_plan, (vit.EncoderBlock,),
        lambda m: [('encoder.layers', m.encoder.layers)], levels=('block', 'stage'), attn_key='ba',
        defaults={'dia': {'reduction': 16}}, cam=vit_cam,
        note='as plugattn DeiT: BA on the MLP output bridging attention output and MLP hidden; one DIA unit',
    ))

    from . import vgg

    vgg.register()


def mobilenetv2_plan(block: nn.Module, level: str, opts: dict[str, Any]) -> BlockPlan | None:
    """MobileNetV2 placements of plugattn's MobileNetV2 (torchvision layout ``conv.{0..3}``)."""
    from ..layers import EfficientChannelAttention, get_attn

    expand = len(block.conv) == 4
    position = opts.get('attn_position')
    attn = opts.get('_attn')
    factory = get_attn(attn) if attn is not None else None
    cls = getattr(factory, 'func', factory)
    is_eca = cls is EfficientChannelAttention
    if position is None:
        position = 'output' if is_eca else 'hidden'
    if position not in ('hidden', 'output'):
        raise PlugattnError(f"attn_position must be 'hidden' or 'output', got {position!r}")
    hidden = _width(block.conv[1] if expand else block.conv[0])
    if position == 'hidden':
        if not expand:
            return None
        if level == 'block':
            return BlockPlan(Tap('conv.1.1'), hidden, (Tap('conv.0'),), (hidden,))
        return BlockPlan(Tap('conv.1'), hidden, consumer='conv.2')
    last = len(block.conv) - 1
    out = _width(block.conv[last])
    kwargs = {'kernel_size': 1 if out < 96 else 3} if is_eca else {}
    if level == 'block':
        bridge = (Tap('conv.0'), Tap('conv.1')) if expand else (Tap('conv.0'),)
        return BlockPlan(Tap(f'conv.{last}'), out, bridge, (hidden,) * len(bridge))
    return BlockPlan(Tap(f'conv.{last}'), out, attn_kwargs=kwargs)
