"""Attention in detection and segmentation: attach to torchvision detectors / segmenters, feature wrappers and user
modules (blocks found inside any module), plugattn.freeze_bn, and plugattn.dense's FPN and segmentation backbones."""
from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
from torch import nn

import plugattn
from plugattn.errors import PlugattnError
from plugattn.layers.norms import FrozenBatchNorm1d

tv = pytest.importorskip('torchvision')
from torchvision.models import detection as D  # noqa: E402
from torchvision.models import segmentation as S  # noqa: E402

NONE = {'weights': None, 'weights_backbone': None}
SMALL = {'min_size': 64, 'max_size': 64}
# few proposals and sampled boxes: the R-CNN heads' cost is per box
RCNN = {**SMALL, 'rpn_pre_nms_top_n_train': 32, 'rpn_post_nms_top_n_train': 8, 'rpn_pre_nms_top_n_test': 32,
        'rpn_post_nms_top_n_test': 8, 'box_batch_size_per_image': 8, 'box_detections_per_img': 4}

# every detection and segmentation builder torchvision ships with a ResNet-50, MobileNetV3 or VGG16 backbone
DETECTORS = {
    'fasterrcnn': lambda: D.fasterrcnn_resnet50_fpn(num_classes=3, **NONE, **RCNN),
    'fasterrcnn_v2': lambda: D.fasterrcnn_resnet50_fpn_v2(num_classes=3, **NONE, **RCNN),
    'fasterrcnn_mbv3': lambda: D.fasterrcnn_mobilenet_v3_large_fpn(num_classes=3, **NONE, **RCNN),
    'fasterrcnn_mbv3_320': lambda: D.fasterrcnn_mobilenet_v3_large_320_fpn(num_classes=3, **NONE, **RCNN),
    'maskrcnn': lambda: D.maskrcnn_resnet50_fpn(num_classes=3, **NONE, **RCNN),
    'maskrcnn_v2': lambda: D.maskrcnn_resnet50_fpn_v2(num_classes=3, **NONE, **RCNN),
    'keypointrcnn': lambda: D.keypointrcnn_resnet50_fpn(num_classes=2, num_keypoints=3, **NONE, **RCNN),
    'retinanet': lambda: D.retinanet_resnet50_fpn(num_classes=3, **NONE, **SMALL),
    'retinanet_v2': lambda: D.retinanet_resnet50_fpn_v2(num_classes=3, **NONE, **SMALL),
    'fcos': lambda: D.fcos_resnet50_fpn(num_classes=3, **NONE, **SMALL),
    'ssd300': lambda: D.ssd300_vgg16(num_classes=3, **NONE),  # resizes to 300 px (its extra layers need ~260)
    'ssdlite': lambda: D.ssdlite320_mobilenet_v3_large(num_classes=3, **NONE),
}
SEGMENTERS = {
    'fcn': lambda: S.fcn_resnet50(num_classes=3, **NONE),
    'deeplabv3': lambda: S.deeplabv3_resnet50(num_classes=3, **NONE),  # dilated layer3 / layer4
    'deeplabv3_mbv3': lambda: S.deeplabv3_mobilenet_v3_large(num_classes=3, **NONE),
    'lraspp': lambda: S.lraspp_mobilenet_v3_large(num_classes=3, **NONE),
}
# one gate, one block and one stage attention per model (gates and BA versions vary across the models)
GATES = {'fasterrcnn': 'se', 'fasterrcnn_v2': 'ca', 'fasterrcnn_mbv3': 'eca', 'fasterrcnn_mbv3_320': 'se',
         'maskrcnn': 'cbam', 'maskrcnn_v2': 'eca', 'keypointrcnn': 'se', 'retinanet': 'ca', 'retinanet_v2': 'se',
         'fcos': 'ela_s', 'ssd300': 'ca', 'ssdlite': 'ca', 'fcn': 'se', 'deeplabv3': 'ca', 'deeplabv3_mbv3': 'se',
         'lraspp': 'eca'}
BLOCKS = {'fasterrcnn_v2': 'bav1', 'retinanet_v2': 'bav1', 'ssd300': 'bav1'}
MOBILENET_V3 = {'fasterrcnn_mbv3', 'fasterrcnn_mbv3_320', 'ssdlite', 'deeplabv3_mbv3', 'lraspp'}  # takes no DIA
MATRIX = [(name, attn) for name in (*DETECTORS, *SEGMENTERS)
          for attn in (GATES[name], BLOCKS.get(name, 'bav2'), 'dia')]


@functools.lru_cache(maxsize=2)
def _pristine(name: str) -> nn.Module:
    """The model as torchvision builds it, built once per worker (the tests attach to copies)."""
    torch.manual_seed(0)
    return (DETECTORS.get(name) or SEGMENTERS[name])()


def _targets(name: str) -> list[dict[str, torch.Tensor]]:
    out = []
    for _ in range(2):
        t = {'boxes': torch.tensor([[4.0, 6.0, 40.0, 50.0]]), 'labels': torch.tensor([1])}
        if name.startswith('maskrcnn'):
            t['masks'] = torch.zeros(1, 64, 64, dtype=torch.uint8)
            t['masks'][:, 6:50, 4:40] = 1
        if name == 'keypointrcnn':
            t['keypoints'] = torch.tensor([[[10.0, 10.0, 1.0], [20.0, 30.0, 1.0], [30.0, 40.0, 1.0]]])
        out.append(t)
    return out


@pytest.mark.parametrize('name,attn', MATRIX, ids=[f'{n}-{a}' for n, a in MATRIX])
def test_attach_detection_and_segmentation(name: str, attn: str) -> None:
    model = copy.deepcopy(_pristine(name))
    if attn == 'dia' and name in MOBILENET_V3:
        with pytest.raises(PlugattnError, match=r'^torchvision mobilenet_v3 takes no stage-level attention \(dia\)'):
            plugattn.attach(model, attn)
        return
    original = model.state_dict()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # keep_se: nothing of the host is replaced
        plugattn.attach(model, attn, keep_se=True)
    state = model.state_dict()
    added = set(state) - set(original)
    assert set(original) <= set(state) and added
    assert all('.attn.' in k for k in added), sorted(added)[:3]
    assert all(torch.equal(state[k], v) for k, v in original.items())  # the host is unchanged
    resnet = name not in MOBILENET_V3 and name != 'ssd300'
    prefix = 'backbone.body.' if name in DETECTORS and resnet else 'backbone.'
    assert all(k.startswith(prefix) for k in added)
    units = {k.split('.attn.')[0] for k in added}
    if attn == 'dia' and resnet:  # one unit per ResNet stage, at the classification model's key under the prefix
        assert units == {f'{prefix}layer{i}' for i in range(1, 5)}
    if name == 'ssd300':  # VGG16's conv1-conv5, fc6/fc7, and (not for DIA: two widths) the four extra blocks
        vgg = {'backbone.features.3', 'backbone.features.8', 'backbone.features.15', 'backbone.features.22',
               'backbone.extra.0.6', 'backbone.extra.0.7.4'}
        assert units == vgg | ({f'backbone.extra.{i}.3' for i in range(1, 5)} if attn != 'dia' else set())
    attn_params = [p for n, p in model.named_parameters() if '.attn.' in n]
    model.train()
    x = torch.rand(2, 3, 64, 64)
    if name in DETECTORS:
        losses = model(list(x), _targets(name))
        loss = sum(losses.values())
    else:
        loss = nn.functional.cross_entropy(model(x)['out'], torch.randint(0, 3, (2, 64, 64)))
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in attn_params)  # the attention ran
    model.eval()
    with torch.no_grad():
        out = model(list(x[:1])) if name in DETECTORS else model(x[:1])
    if name in DETECTORS:
        assert len(out) == 1 and {'boxes', 'labels', 'scores'} <= set(out[0])
    else:
        assert out['out'].shape == (1, 3, 64, 64)


def test_imagenet_weights_load_into_attached_detector_body() -> None:
    model = plugattn.attach(D.fasterrcnn_resnet50_fpn(**NONE, **SMALL), 'bav2')
    state = {k: v for k, v in tv.models.resnet50().state_dict().items() if not k.startswith('fc.')}
    body = model.backbone.body
    result = body.load_state_dict(state, strict=False)
    attention = {k for k in body.state_dict() if '.attn.' in k and not k.endswith('num_batches_tracked')}
    assert set(result.missing_keys) == attention and len(attention) == 16 * 10  # 16 blocks
    assert result.unexpected_keys == []
    assert torch.equal(body.layer1[0].conv1.weight, state['layer1.0.conv1.weight'])


def test_blocks_found_in_feature_wrappers_and_user_modules() -> None:
    timm = pytest.importorskip('timm')
    feats = plugattn.attach(timm.create_model('resnet18', features_only=True), 'dia')
    assert sorted(feats.attention_modules()) == [f'layer{i}.attn' for i in range(1, 5)]
    assert [f.shape[1] for f in feats(torch.rand(2, 3, 64, 64))] == [64, 64, 128, 256, 512]
    mnv3 = timm.create_model('mobilenetv3_small_050', features_only=True)
    assert 'bav2' in plugattn.attachable(mnv3)
    plugattn.attach(mnv3, 'bav2', keep_se=True)
    ba = next(m for m in mnv3.modules() if type(m).__name__ == 'BridgeAttentionV2')
    assert type(ba.generation[-1]).__name__ == 'Hardsigmoid'  # the MobileNetV3 family's, not EfficientNet's

    class Net(nn.Module):  # a user's module built from a torchvision ResNet's pieces
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*list(tv.models.resnet18().children())[:-2])
            self.head = nn.Conv2d(512, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    net = Net()
    assert set(plugattn.attachable(net)) >= {'se', 'bav2', 'dia'}
    plugattn.attach(net, 'dia')
    assert sorted(net.attention_modules()) == [f'body.{i}.attn' for i in (4, 5, 6, 7)]
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 2, 2, 2)
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    fpn = plugattn.attach(resnet_fpn_backbone(backbone_name='resnet18', weights=None), 'eca')
    assert 'body.layer4.1.attn.conv.weight' in fpn.state_dict()
    assert fpn(torch.rand(2, 3, 64, 64))['0'].shape == (2, 256, 16, 16)
    found = plugattn.attach.found_blocks(D.fasterrcnn_resnet50_fpn(**NONE))
    assert found['family'].startswith('torchvision resnet') and len(found['blocks']) == 16
    assert found['blocks'][0] == 'backbone.body.layer1.0'
    assert found['stages'] == [f'backbone.body.layer{i}' for i in range(1, 5)]

    class Wrapper(nn.Module):  # a plugattn model inside a user's module becomes its attention-bearing twin
        def __init__(self) -> None:
            super().__init__()
            self.net = plugattn.create_model('resnet20', num_classes=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    wrapper = Wrapper()
    assert 'dia' in plugattn.attachable(wrapper)
    plugattn.attach(wrapper, 'dia')
    assert 'net.layer1.attn.w_hh.0.bias' in wrapper.state_dict() and wrapper(torch.rand(2, 3, 16, 16)).shape == (2, 4)
    own = plugattn.attach(plugattn.create_model('resnet18', features_only=True), 'se')  # plugattn's own
    assert len(own(torch.rand(2, 3, 32, 32))) == 5 and 'layer1.0.attn.fc.0.weight' in own.state_dict()


def test_module_without_supported_blocks_gets_one_error() -> None:
    squeezenet = tv.models.squeezenet1_1(num_classes=3)
    for module in (squeezenet, nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())):  # VGG-like layers, but no VGG
        with pytest.raises(PlugattnError, match='found no block of a supported family') as info:
            plugattn.attach(module, 'se')
        assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match='found no block'):
        plugattn.attachable(squeezenet)


# ------------------------------------------------------------------------------------------------ VGG and SSD300


def _tiny_vgg(cfg: list, batch_norm: bool = True) -> nn.Module:
    """A torchvision VGG with narrow ``features`` (``make_layers(cfg)``) and a small head, built without the
    25088 x 4096 classifier's cost."""
    from torchvision.models.vgg import VGG, make_layers

    with torch.device('meta'):
        model = VGG(make_layers(cfg, batch_norm=batch_norm), num_classes=3)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(cfg[-2], 3)
    model.to_empty(device='cpu')
    for m in model.modules():
        if hasattr(m, 'reset_parameters'):
            m.reset_parameters()
    return model


VGG_CFG = [8, 'M', 16, 16, 'M', 16, 32, 'M']  # with BN: ReLUs at 2 | 6, 9 | 13, 16; pools at 3, 10, 17


def test_vgg_placements_and_warm_start() -> None:
    torch.manual_seed(0)
    found = plugattn.attach.found_blocks(_tiny_vgg(VGG_CFG))
    assert found == {'family': 'torchvision vgg (and SSD)', 'blocks': [f'features.{i}' for i in (2, 6, 9, 13, 16)],
                     'stages': ['features.2', 'features.9', 'features.16']}
    assert set(plugattn.attachable(_tiny_vgg(VGG_CFG))) >= {'se', 'ca', 'cbam', 'bav1', 'bav2', 'dia'}
    x = torch.rand(2, 3, 16, 16)
    # gate: every stage end; BA: the stages with two conv layers; DIA: the stages of one width (not 16 -> 32)
    for attn, units, inner in (('se', (2, 9, 16), None), ('bav2', (9, 16), [(16,), (16,)]), ('dia', (2, 9), None)):
        model = _tiny_vgg(VGG_CFG).eval()
        with torch.no_grad():
            ref = model(x)
        original = set(model.state_dict())
        plugattn.attach(model, attn, warm_start=True)
        assert list(model.attention_modules()) == [f'features.{i}.attn' for i in units]
        assert original <= set(model.state_dict())
        assert all('.attn.' in k for k in set(model.state_dict()) - original)
        if inner is not None:
            assert [model.features[i].attn.inner_channels for i in units] == inner
        with torch.no_grad():
            assert torch.equal(model(x), ref)  # warm start: exactly the original function
        with torch.no_grad():
            for m in model.attention_modules().values():
                m.blend.fill_(1.0)  # the paper's module: the output changes
            assert not torch.allclose(model(x), ref)
        model.train()
        model(x).sum().backward()
        assert all(m.blend.grad is not None and m.blend.grad.abs() > 0 for m in model.attention_modules().values())
    with pytest.raises(PlugattnError, match=r'takes dia \(a stage-level unit needs one width for all conv layers'):
        plugattn.attach(_tiny_vgg([8, 16, 'M']), 'dia')  # one stage, two widths
    with pytest.raises(PlugattnError, match='already has attention'):
        plugattn.attach(plugattn.attach(_tiny_vgg(VGG_CFG), 'se'), 'eca')


def test_vgg_attention_survives_copies_tracing_slicing_and_frozen_norms() -> None:
    import io

    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = plugattn.attach(_tiny_vgg(VGG_CFG), 'ca')
    model.train()
    model(torch.rand(2, 3, 16, 16)).sum().backward()  # BN statistics move; the CA gates differ from 1
    model.eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        gated = model.features[:10](x)  # a slice keeps its stages' attention
        plain = model.features[9](model.features[:9](x))  # the ReLU alone: not gated
        assert not torch.allclose(gated, plain)
        assert torch.equal(copy.deepcopy(model)(x), ref)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        assert torch.equal(torch.load(buffer, weights_only=False)(x), ref)
        graph = create_feature_extractor(model, {'features.9': 'stage2', 'classifier': 'out'})  # torch.fx
        out = graph(x)
        torch.testing.assert_close(out['stage2'], gated)
        torch.testing.assert_close(out['out'], ref)
        plugattn.freeze_bn(model)
        torch.testing.assert_close(model(x), ref)  # frozen norms are still found between conv and ReLU
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_ssd300_coco_and_vgg_imagenet_weights_load_and_warm_start() -> None:
    torch.manual_seed(0)
    with torch.device('meta'):  # keys and shapes only: no memory, no init
        state = tv.models.vgg11_bn().state_dict()  # the ImageNet layout
        vgg = plugattn.attach(tv.models.vgg11_bn(), 'bav2')
    result = vgg.load_state_dict(state, strict=False, assign=True)
    attention = {k for k in vgg.state_dict() if '.attn.' in k and not k.endswith('num_batches_tracked')}
    assert set(result.missing_keys) == attention and result.unexpected_keys == []
    assert {k.split('.attn.')[0] for k in attention} == {'features.13', 'features.20', 'features.27'}
    ssd = copy.deepcopy(_pristine('ssd300')).eval()  # the COCO layout
    state = {k: v.clone() for k, v in ssd.state_dict().items()}
    image = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        ref = ssd(image)[0]
    plugattn.attach(ssd, 'bav2', warm_start=True)
    result = ssd.load_state_dict(state, strict=False)
    attention = {k for k in ssd.state_dict() if '.attn.' in k and not k.endswith('num_batches_tracked')}
    assert set(result.missing_keys) == attention and result.unexpected_keys == [] and len(attention) > 0
    assert ssd.backbone.extra[1][3].attn.inner_channels == (256,)  # conv8_1 bridged, conv8_2 gated
    assert ssd.backbone.extra[0][7][4].attn.inner_channels == (1024,)  # fc6 bridged, fc7 gated
    with torch.no_grad():
        out = ssd(image)[0]
    assert out.keys() == ref.keys() and all(torch.equal(out[k], ref[k]) for k in ref)


def test_freeze_bn_trains_bridge_attention_at_batch_1() -> None:
    torch.manual_seed(0)
    model = plugattn.attach(tv.models.resnet18(num_classes=4), 'bav2')
    x = torch.rand(1, 3, 32, 32)
    model.train()
    with pytest.raises(PlugattnError, match='batch size 1'):
        model(x)
    keys = {k for k in model.state_dict() if not k.endswith('num_batches_tracked')}
    plugattn.freeze_bn(model)
    assert set(model.state_dict()) == keys
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert isinstance(model.layer1[0].attn.generation[0], FrozenBatchNorm1d)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).sum().backward()
    opt.step()
    after = model.state_dict()
    stats = [k for k in keys if 'running_' in k]
    assert len(stats) == 2 * (20 + 8) and all(torch.equal(before[k], after[k]) for k in stats)
    changed = {k.split('.attn.')[0] for k in keys if '.attn.' in k and not torch.equal(before[k], after[k])}
    assert len(changed) >= 2  # (at init, with one sample, some BA hidden units are all below zero: no gradient)
    own = plugattn.freeze_bn(plugattn.create_model('bav1_resnet20', num_classes=3)).train()  # plugattn's model
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in own.modules())
    own(torch.rand(1, 3, 16, 16)).sum().backward()
    assert own.layer1[0].attn.generation[1].weight.grad is not None
    # attention=False: the attention keeps its (paper's) live BatchNorm1d
    kept = plugattn.freeze_bn(plugattn.attach(tv.models.resnet18(), 'bav2'), attention=False)
    assert type(kept.layer1[0].attn.generation[0]) is nn.BatchNorm1d
    assert type(kept.layer1[0].bn1).__name__ == 'FrozenBatchNorm2d'


def test_frozen_batchnorm_1d_equals_eval_batchnorm() -> None:
    bn = nn.BatchNorm1d(6)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm1d(6)
    frozen.load_state_dict(bn.state_dict())
    bn.eval()
    for shape in ((5, 6), (5, 6, 3)):
        x = torch.randn(shape)
        torch.testing.assert_close(frozen(x), bn(x))  # (N, C) stays (N, C), unlike FrozenBatchNorm2d


def test_sync_batchnorm_conversion_of_attached_model() -> None:
    torch.manual_seed(0)
    model = plugattn.attach(tv.models.resnet18(num_classes=4), 'ca').eval()
    x = torch.rand(2, 3, 32, 32)
    ref = model(x)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
    assert isinstance(synced.layer1[0].bn2, nn.SyncBatchNorm)
    assert isinstance(synced.layer1[0].attn.bn1, nn.SyncBatchNorm)
    torch.testing.assert_close(synced(x), ref)
    frozen = nn.SyncBatchNorm.convert_sync_batchnorm(plugattn.freeze_bn(plugattn.attach(tv.models.resnet18(), 'ca')))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in frozen.modules())


def test_bridge_attention_batch_free_norms() -> None:
    m = 64 // 16  # hidden width; each BatchNorm1d / LayerNorm holds 2m parameters, three in BAv1 (two inner + x)
    for attn, norm, fewer in (('bav2', 'layernorm', 0), ('bav2', 'none', 2 * m), ('bav1', 'none', 3 * 2 * m)):
        ref = plugattn.create_attn(attn, 64, inner_channels=(16, 16), reduction=16)
        ba = plugattn.create_attn(attn, 64, inner_channels=(16, 16), reduction=16, norm_layer=norm).train()
        assert sum(p.numel() for p in ref.parameters()) - sum(p.numel() for p in ba.parameters()) == fewer
        x = torch.rand(1, 64, 4, 4)
        assert ba([torch.rand(1, 16)] * 2, x).shape == x.shape  # inner: pooled vectors  # batch 1 trains
    with pytest.raises(PlugattnError, match='norm_layer'):
        plugattn.create_attn('bav2', 64, inner_channels=(16,), norm_layer='group')


def test_fpn_and_segmentation_backbones() -> None:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    from plugattn.dense import fpn_backbone, segmentation_backbone

    torch.manual_seed(0)
    backbone = fpn_backbone('resnet18', 'bav2', returned_layers=[2, 3, 4], trainable_layers=2, out_channels=32)
    assert isinstance(backbone, BackboneWithFPN) and backbone.out_channels == 32
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    params = dict(backbone.body.named_parameters())
    trains = {n.split('.')[1] for n, p in params.items() if p.requires_grad and '.attn.' not in n}
    assert trains == {'layer3', 'layer4'}  # the host's stem, layer1 and layer2 frozen
    assert all(p.requires_grad for n, p in params.items() if '.attn.' in n)  # the new attention trains everywhere
    out = backbone(torch.rand(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        '0': (2, 32, 8, 8), '1': (2, 32, 4, 4), '2': (2, 32, 2, 2), 'pool': (2, 32, 1, 1)}
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    anchors = AnchorGenerator(((16,), (32,), (64,), (128,)), ((1.0,),) * 4)  # 4 levels: 3 returned + pool
    detector = FasterRCNN(backbone, num_classes=3, rpn_anchor_generator=anchors, **RCNN).train()
    losses = detector(list(torch.rand(1, 3, 64, 64)), _targets('fasterrcnn')[:1])  # batch 1: frozen BA norms
    sum(losses.values()).backward()
    assert backbone.body.features.layer4[0].attn.proj.weight.grad.abs().sum() > 0
    with pytest.raises(PlugattnError, match='returned_layers'):
        fpn_backbone('resnet18', returned_layers=[0, 1])
    seg = segmentation_backbone('tv:resnet18', 'ca', aux=True)
    assert (seg.out_channels, seg.aux_channels) == (512, 256)
    fcn = FCN(seg, FCNHead(seg.out_channels, 3), FCNHead(seg.aux_channels, 3)).eval()
    result = fcn(torch.rand(2, 3, 64, 64))
    assert result['out'].shape == result['aux'].shape == (2, 3, 64, 64)
