"""CSWin Transformer: the official parameter counts and key layout, official-layout checkpoints (EMA and not) through
load_official, outputs against a re-derivation of the official forward (classification at 224 px, the segmentation
backbone's padding elsewhere), BAv2/DIA placement, the timm model API and export."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from test_official import randomize_

import plugattn
from plugattn.layers import BridgeAttentionV2, DIAUnit
from plugattn.models import CSWinTransformer

TINY = dict(img_size=64, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(2, 2, 4, 4), split_size=(1, 2, 7, 7))
HAS_ONNX = all(importlib.util.find_spec(m) for m in ('onnx', 'onnxruntime'))


def tiny(attn: str | None = None, **kw) -> CSWinTransformer:
    torch.manual_seed(0)
    return CSWinTransformer(attn=attn, **{**TINY, 'num_classes': 5, **kw})


def count(name: str) -> tuple[int, int]:
    with torch.device('meta'):
        m = plugattn.create_model(name)
    attn = sum(p.numel() for mod in m.attention_modules().values() for p in mod.parameters())
    return sum(p.numel() for p in m.parameters()), attn


# --------------------------------------------------------------------------------------------- counts and keys

# (embed_dim, depths, heads): the official builders CSWin_{64_12211_tiny, 64_24322_small, 96_24322_base,
# 144_24322_large}_224; B's heads follow the code (the paper's table: 2-4-8-16)
VARIANTS = {
    'cswin_t': (64, (1, 2, 21, 1), (2, 4, 8, 16), 22_320_552),
    'cswin_s': (64, (2, 4, 32, 2), (2, 4, 8, 16), 34_643_304),
    'cswin_b': (96, (2, 4, 32, 2), (4, 8, 16, 32), 77_382_184),
    'cswin_l': (144, (2, 4, 32, 2), (6, 12, 24, 24), 173_262_664),
}


def closed_form(c: int, depths: tuple[int, ...], classes: int = 1000) -> int:
    """Stem 150C (conv, LayerNorm); block 12d^2 + 23d; merge 18d^2 + 6d (d its input width); final norm 16C; head."""
    dims = [c * 2 ** i for i in range(4)]
    blocks = sum(n * (12 * d * d + 23 * d) for n, d in zip(depths, dims))
    merges = sum(18 * d * d + 6 * d for d in dims[:3])
    return 150 * c + blocks + merges + 16 * c + 8 * c * classes + classes


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_official_param_counts(name):
    c, depths, heads, expected = VARIANTS[name]
    assert count(name) == (expected, 0)
    assert closed_form(c, depths) == expected
    with torch.device('meta'):
        model = plugattn.create_model(name)
    assert [s[0].attns[0].num_heads * len(s[0].attns) for s in model.stages()] == list(heads)
    assert [len(s) for s in model.stages()] == list(depths)


def test_attention_counts_and_names():
    # BAv2 per block over [attn out (d), MLP hidden (4d)] + MLP out (d), reduction 16; DIA one unit per stage
    def bav2(d: int) -> int:
        m = d // 16
        return m * 6 * d + 4 + 2 * m + m * d

    def dia(d: int) -> int:
        m = d // 16
        return 2 * (d * m + m + m * 4 * d + 4 * d)

    dims, depths = (64, 128, 256, 512), (1, 2, 21, 1)
    assert count('bav2_cswin_t') == (22_320_552 + 733_804, 733_804) and \
        sum(n * bav2(d) for n, d in zip(depths, dims)) == 733_804
    assert count('dia_cswin_t') == (22_320_552 + 225_400, 225_400) and sum(dia(d) for d in dims) == 225_400
    assert count('dia_cswin_l')[1] == sum(dia(d) for d in (144, 288, 576, 1152)) == 1_119_150
    assert plugattn.list_models('*cswin*') == sorted(f'{a}cswin_{v}' for a in ('', 'bav2_', 'dia_') for v in 'bslt')
    cfg = plugattn.models.pretrained_cfg('bav2_cswin_b')
    assert cfg['first_conv'] == 'stage1_conv_embed.0' and cfg['classifier'] == 'head' and cfg['pool_size'] == (7, 7)
    assert cfg['paper_ids'] == ('arXiv:2107.00652', 'arXiv:2410.07860')
    model = plugattn.create_model('cswin_t', attn='dia')
    assert model.stage1.attn.reduction == 16 and model.model_name == 'dia_cswin_t'
    assert model.stage1[0].mlp.fc1.weight.shape == (256, 64)


def official_layout(c: int, depths: tuple[int, ...], full: tuple[bool, ...], classes: int = 1000) -> dict:
    """Key -> shape of an official CSWin classification state_dict, written from its layout (stem Sequential with
    the LayerNorm at index 2, blocks stage{s}.{i}, LePE convs attns.{0,1}.get_v, merges between stages)."""
    out = {'stage1_conv_embed.0.weight': (c, 3, 7, 7), 'stage1_conv_embed.0.bias': (c,),
           'stage1_conv_embed.2.weight': (c,), 'stage1_conv_embed.2.bias': (c,)}
    for s, (n, one) in enumerate(zip(depths, full)):
        d = c * 2 ** s
        if s:
            out.update({f'merge{s}.conv.weight': (d, d // 2, 3, 3), f'merge{s}.conv.bias': (d,),
                        f'merge{s}.norm.weight': (d,), f'merge{s}.norm.bias': (d,)})
        for i in range(n):
            p = f'stage{s + 1}.{i}.'
            out.update({p + 'qkv.weight': (3 * d, d), p + 'qkv.bias': (3 * d,), p + 'norm1.weight': (d,),
                        p + 'norm1.bias': (d,), p + 'proj.weight': (d, d), p + 'proj.bias': (d,)})
            branch = d if one else d // 2
            for j in range(1 if one else 2):
                out.update({p + f'attns.{j}.get_v.weight': (branch, 1, 3, 3), p + f'attns.{j}.get_v.bias': (branch,)})
            out.update({p + 'mlp.fc1.weight': (4 * d, d), p + 'mlp.fc1.bias': (4 * d,),
                        p + 'mlp.fc2.weight': (d, 4 * d), p + 'mlp.fc2.bias': (d,),
                        p + 'norm2.weight': (d,), p + 'norm2.bias': (d,)})
    d = c * 8
    out.update({'norm.weight': (d,), 'norm.bias': (d,), 'head.weight': (classes, d), 'head.bias': (classes,)})
    return out


def test_keys_equal_the_official_layout():
    layout = official_layout(64, (1, 2, 21, 1), (False, False, False, True))
    assert len(layout) == 418
    with torch.device('meta'):
        model = plugattn.create_model('cswin_t')
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    assert list(model.state_dict()) == list(layout)  # the official order too (merge s between stages s and s + 1)
    assert model.forward_features(torch.empty(1, 3, 224, 224, device='meta')).shape == (1, 7, 7, 512)  # pool_size
    # a stage whose reference resolution equals its split size attends over the whole map, as officially
    with torch.device('meta'):
        small = CSWinTransformer(img_size=112, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2))
    assert [len(s[0].attns) for s in small.stages()] == [2, 2, 1, 1]


def test_load_official_checkpoint_ema_by_default(tmp_path):
    model = tiny()
    layout = official_layout(16, (1, 2, 1, 1), (False, False, False, True), classes=5)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    plain = {k: v.clone() for k, v in randomize_(tiny(), seed=1).state_dict().items()}
    ema = {k: v.clone() for k, v in randomize_(tiny(), seed=2).state_dict().items()}
    path = tmp_path / 'cswin_tiny_224.pth'
    torch.save({'epoch': 299, 'arch': 'CSWin_64_12211_tiny_224', 'state_dict': plain, 'state_dict_ema': ema,
                'metric': 82.7}, path)
    result = plugattn.load_official(model, path, source='cswin')
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in ema)
    plugattn.load_official(model, path, source='cswin', ema=False)
    assert all(torch.equal(model.state_dict()[k], plain[k]) for k in plain)
    torch.save({'state_dict': plain}, tmp_path / 'no_ema.pth')
    with pytest.raises(ValueError, match=r'holds no EMA weights.*ema=False'):
        plugattn.load_official(model, tmp_path / 'no_ema.pth', source='cswin', ema=True)
    plugattn.load_official(model, tmp_path / 'no_ema.pth', source='cswin')  # the only weights it has
    with pytest.raises(ValueError, match=r'1 model keys have no match.*stage4\.0\.attns\.0\.get_v\.bias'):
        plugattn.load_official(model, {k: v for k, v in ema.items() if 'stage4.0.attns.0.get_v.bias' not in k},
                               source='cswin')
    with pytest.raises(ValueError, match='shape mismatches'):  # the head of another number of classes
        plugattn.load_official(tiny(num_classes=7), path, source='cswin')
    # an UperNet checkpoint: backbone.-prefixed keys, the stage norms and the heads beside them, no norm or head
    upernet = {f'backbone.{k}': v for k, v in plain.items() if not k.startswith(('norm.', 'head.'))}
    upernet.update({'backbone.norm4.weight': torch.ones(128), 'decode_head.conv_seg.weight': torch.ones(150, 512)})
    result = plugattn.load_official(model, {'meta': {}, 'state_dict': upernet}, source='cswin', strict=False)
    assert sorted(result.missing_keys) == ['head.bias', 'head.weight', 'norm.bias', 'norm.weight']
    assert torch.equal(model.stage3[0].qkv.weight, plain['stage3.0.qkv.weight'])


# --------------------------------------------------------------------------------------------- reference forward


def reference_forward(model: CSWinTransformer, x: torch.Tensor, splits: tuple[int, ...], pad: bool) -> torch.Tensor:
    """The official CSWin forward re-derived on (B, N, C) tokens with explicit attention: the classification code
    (no padding: every stage must divide by its windows) or, with ``pad``, the segmentation backbone's centred zero
    padding of q, k and v per window shape."""
    sd = model.state_dict()

    def ln(t, key):
        return F.layer_norm(t, t.shape[-1:], sd[key + '.weight'], sd[key + '.bias'])

    x = F.conv2d(x, sd['stage1_conv_embed.0.weight'], sd['stage1_conv_embed.0.bias'], stride=4, padding=2)
    B, _, H, W = x.shape
    x = ln(x.flatten(2).transpose(1, 2), 'stage1_conv_embed.2')
    for s, stage in enumerate(model.stages()):
        if s:
            m = x.transpose(1, 2).reshape(B, -1, H, W)
            m = F.conv2d(m, sd[f'merge{s}.conv.weight'], sd[f'merge{s}.conv.bias'], stride=2, padding=1)
            H, W = m.shape[2:]
            x = ln(m.flatten(2).transpose(1, 2), f'merge{s}.norm')
        for i, block in enumerate(stage):
            p, C = f'stage{s + 1}.{i}.', x.shape[2]
            qkv = F.linear(ln(x, p + 'norm1'), sd[p + 'qkv.weight'], sd[p + 'qkv.bias']).reshape(B, -1, 3, C)
            branches = len(block.attns)
            outs = []
            for j in range(branches):
                width, heads = C // branches, block.attns[j].num_heads
                hs, ws = (H, W) if branches == 1 else (H, splits[s]) if j == 0 else (splits[s], W)
                ph, pw = (-H) % hs, (-W) % ws
                assert pad or not (ph or pw), 'the classification code needs divisible stages'
                t = qkv[..., j * width:(j + 1) * width].permute(2, 0, 3, 1).reshape(3, B, width, H, W)
                t = F.pad(t, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
                Hp, Wp = H + ph, W + pw
                win = t.reshape(3, B, width, Hp // hs, hs, Wp // ws, ws).permute(0, 1, 3, 5, 2, 4, 6)
                win = win.reshape(3, -1, width, hs, ws)  # (3, windows, C', hs, ws), windows row-major
                lepe = F.conv2d(win[2], sd[p + f'attns.{j}.get_v.weight'], sd[p + f'attns.{j}.get_v.bias'],
                                padding=1, groups=width)
                q, k, v, lepe = (u.reshape(-1, heads, width // heads, hs * ws).transpose(-2, -1)
                                 for u in (win[0], win[1], win[2], lepe))
                a = ((q * (width // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v + lepe
                a = a.transpose(-2, -1).reshape(B, Hp // hs, Wp // ws, width, hs, ws).permute(0, 3, 1, 4, 2, 5)
                a = a.reshape(B, width, Hp, Wp)[:, :, ph // 2:ph // 2 + H, pw // 2:pw // 2 + W]
                outs.append(a.flatten(2).transpose(1, 2))
            x = x + F.linear(torch.cat(outs, -1), sd[p + 'proj.weight'], sd[p + 'proj.bias'])
            h = F.gelu(F.linear(ln(x, p + 'norm2'), sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias']))
            x = x + F.linear(h, sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])
    return F.linear(ln(x, 'norm').mean(1), sd['head.weight'], sd['head.bias'])


def test_outputs_equal_the_official_forward_at_224_and_padded_sizes():
    model = randomize_(CSWinTransformer(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4), num_classes=5))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, reference_forward(model, x, (1, 2, 7, 7), pad=False), rtol=1e-4, atol=1e-5)
        assert out.std() > 0.1
        for shape in ((100, 76), (64, 64)):  # stage 3 maps 7x5 and 4x4 are padded to the 7-wide stripes
            x = torch.randn(1, 3, *shape)
            torch.testing.assert_close(model(x), reference_forward(model, x, (1, 2, 7, 7), pad=True),
                                       rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------- sizes, BAv2, DIA


def test_inputs_of_other_sizes_and_features_only():
    model = tiny('dia').eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, 100, 76), intermediates_only=True)
        assert [tuple(f.shape[1:]) for f in feats] == [(16, 25, 19), (16, 25, 19), (32, 13, 10), (64, 7, 5),
                                                       (128, 4, 3)]
        extractor = plugattn.create_model('bav2_cswin_t', features_only=True, out_indices=(1, 2, 3, 4)).eval()
        outs = extractor(torch.randn(1, 3, 96, 128))
        assert [tuple(o.shape[1:]) for o in outs] == [(64, 24, 32), (128, 12, 16), (256, 6, 8), (512, 3, 4)]
        assert extractor.feature_info.channels() == [64, 128, 256, 512]
        assert extractor.feature_info.reduction() == [4, 8, 16, 32]


@pytest.mark.parametrize('attn', ['bav2', 'dia'])
def test_attention_forward_backward_and_placement(attn):
    model = tiny(attn)
    x = torch.randn(2, 3, 48, 40)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert not [k for k, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert all(model.get_parameter(k).grad.abs().sum() > 0 for k in ('stage4.0.attns.0.get_v.weight',
                                                                        'stage1.0.attns.1.get_v.weight'))
    blocks = [b for s in model.stages() for b in s]
    if attn == 'bav2':
        assert all(isinstance(b.ba, BridgeAttentionV2) for b in blocks)
        assert list(model.attention_modules()) == [f'stage{s}.{i}.ba' for s, n in enumerate((1, 2, 1, 1), 1)
                                                   for i in range(n)]
        block = model.stage2[1]
        assert block.ba.inner_channels == (32, 128) and block.ba.channels == 32
        seen = {}
        block.proj.register_forward_hook(lambda m, a, o: seen.update(attn_out=o))
        block.mlp.act.register_forward_hook(lambda m, a, o: seen.update(hidden=o))
        block.ba.register_forward_hook(lambda m, a, o: seen.update(inner=a[0], x=a[1], gated=o))
        with torch.no_grad():
            model.eval()(x)
        torch.testing.assert_close(seen['inner'][0], seen['attn_out'].mean((1, 2)))
        torch.testing.assert_close(seen['inner'][1], seen['hidden'].mean((1, 2)))
        torch.testing.assert_close(seen['gated'], seen['x'] * block.ba.gate(seen['inner'], seen['x']))
    else:
        units = [m for m in model.modules() if isinstance(m, DIAUnit)]
        assert [u.channels for u in units] == [16, 32, 64, 128] and all(b.ba is None for b in blocks)
        assert list(model.attention_modules()) == [f'stage{s}.attn' for s in range(1, 5)]
        calls = []
        for k, u in enumerate(units):
            u.register_forward_pre_hook(lambda m, a, k=k: calls.append((k, a[1] is None)))
        model.eval()
        with torch.no_grad():
            first = model(x)
            assert calls == [(0, True), (1, True), (1, False), (2, True), (3, True)]
            torch.testing.assert_close(model(x), first)  # nothing leaks between forward passes


# --------------------------------------------------------------------------------------------- timm API, export


def test_timm_model_api():
    model = tiny('dia').eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert final.shape == (2, 2, 2, 128)  # NHWC, as output_fmt says
        assert [f.shape[1] for f in feats] == model.feature_info.channels() == [16, 16, 32, 64, 128]
        assert [64 // f.shape[2] for f in feats] == model.feature_info.reduction() == [4, 4, 8, 16, 32]
        nhwc = model.forward_intermediates(x, indices=1, norm=True, output_fmt='NHWC', intermediates_only=True)[0]
        torch.testing.assert_close(nhwc, final)
        early, first = model.forward_intermediates(x, indices=[2], stop_early=True)
        torch.testing.assert_close(first[0], feats[2])
        assert early.shape == (2, 8, 6, 32)
        pre = model.forward_head(final, pre_logits=True)
        assert pre.shape == (2, 128) == (2, model.head_hidden_size)
        assert model.no_weight_decay() == set()
        assert model.cam_reshape_transform()(final).shape == (2, 128, 2, 2)
        params = sum(p.numel() for p in model.parameters())
        assert model.prune_intermediate_layers([1, 2]) == [1, 2]
        assert sum(p.numel() for p in model.parameters()) < params and model.num_classes == 0
        torch.testing.assert_close(model.forward_intermediates(x, indices=[1, 2], intermediates_only=True),
                                   feats[1:3])
    model = tiny()
    model.reset_classifier(0, '')
    assert model(x).shape == (2, 2, 2, 128)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3


def test_grad_checkpointing_same_gradients():
    model = tiny('bav2').eval()
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_group_matcher_and_timm_features():
    timm = pytest.importorskip('timm')
    model = tiny('dia')
    for coarse in (False, True):
        groups = timm.models.group_parameters(model, model.group_matcher(coarse=coarse))
        assert sorted(n for names in groups.values() for n in names) == sorted(n for n, _ in model.named_parameters())
        assert 'stage1_conv_embed.0.weight' in groups[0] and 'head.weight' in groups[max(groups)]
        unit = next(names for names in groups.values() if 'stage2.attn.w_ih.0.weight' in names)
        assert 'stage2.1.qkv.weight' in unit  # the shared unit joins its stage's last block
    assert len(timm.models.group_parameters(model, model.group_matcher())) == 7  # stem, 5 blocks (+ merges, norm), head
    plugattn.register_timm()
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    ref = timm.create_model('bav2_cswin_t', img_size=64).eval()
    for feature_cls in ('list', 'getter'):
        torch.manual_seed(0)
        wrapped = timm.create_model('bav2_cswin_t', img_size=64, features_only=True, feature_cls=feature_cls,
                                    out_indices=(1, 2)).eval()
        fmt = 'NHWC' if feature_cls == 'list' else 'NCHW'  # the list wrapper keeps the model's output_fmt
        with torch.no_grad():
            for o, e in zip(wrapped(x), ref.forward_intermediates(x, [1, 2], output_fmt=fmt, intermediates_only=True)):
                torch.testing.assert_close(o, e)


def test_torch_export_and_fx():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = randomize_(tiny('dia', depths=(1, 1, 1, 1)))
    x = torch.randn(2, 3, 64, 48)  # padded stripes in stage 3 (4 x 3 map, 7-wide windows)
    program = torch.export.export(model, (x,))
    graph = create_feature_extractor(model, return_nodes={'head': 'out'})  # traced at img_size (64 x 64)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)
        y = torch.randn(3, 3, 64, 64)
        torch.testing.assert_close(graph(y)['out'], model(y))


@pytest.mark.filterwarnings('ignore::FutureWarning')  # torch.jit.script is deprecated
def test_torchscript_matches_eager():
    model = randomize_(tiny('dia', depths=(1, 1, 1, 1)))
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.skipif(not HAS_ONNX, reason='needs the optional onnx and onnxruntime packages')
@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')
def test_onnx_dynamic_size(tmp_path):
    from plugattn.export import export_model, verify_export

    model = randomize_(tiny('bav2', depths=(1, 1, 1, 1)))
    result = export_model(model, tmp_path / 'cswin.onnx', fmt='onnx', input_size=(3, 32, 32), exporter='legacy')
    assert [shape for shape, _ in result.checks] == [(2, 3, 32, 32), (3, 3, 48, 40)]
    assert all(err < 1e-4 for _, err in result.checks)
    assert max(err for _, err in verify_export(result.path, model, [(1, 3, 100, 76)], fmt='onnx')) < 1e-4
