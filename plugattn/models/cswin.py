"""CSWin Transformer with plug-in bridge attention (BAv2) or DIA in its blocks.

Paper: "CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows", Dong, Bao, Chen, Zhang,
Yu, Yuan, Chen, Guo, CVPR 2022, arXiv:2107.00652. Official code: https://github.com/microsoft/CSWin-Transformer
(``models/cswin.py`` for classification, ``segmentation/backbone/cswin_transformer.py`` for dense prediction), whose
structure, state_dict keys and init are followed here. Neither timm nor mmpretrain has CSWin.

Architecture (official ``CSWinTransformer``): a 7x7 stride-4 conv embedding with LayerNorm, four stages of width
C, 2C, 4C, 8C joined by 3x3 stride-2 conv merges with LayerNorm, and pre-norm blocks whose attention splits the
channels (and heads) in half: the first half attends within vertical stripes (full height, ``split_size`` wide), the
second within horizontal stripes (``split_size`` high, full width), and the halves are concatenated before ``proj``.
The last stage, and any stage whose resolution at ``img_size`` equals its split size, attends over the whole map with
one branch. LePE, the locally-enhanced positional encoding, is a depth-wise 3x3 conv on V inside each stripe window,
added to the attention output. Split sizes 1 / 2 / 7 / 7; the registered variants (widths, depths, heads) are the
official ``CSWin_{64_12211_tiny, 64_24322_small, 96_24322_base, 144_24322_large}_224``. Parameters with 1000
classes: CSWin-T 22,320,552, CSWin-S 34,643,304, CSWin-B 77,382,184, CSWin-L 173,262,664 (the official builders' own
counts). Per block of width d: ``12 d^2 + 23 d`` (qkv, proj, both LePE convs, MLP, two LayerNorms); per merge
``18 d^2 + 6 d``; stem ``150 C``; final norm ``16 C``; head ``8 C x classes + classes``.

CSWin-B's heads: the paper's table lists 2 / 4 / 8 / 16, the official builder uses 4 / 8 / 16 / 32
(CSWin-Transformer issue #18). ``cswin_b`` follows the code (the parameter count is the same either way; the heads
change the attention, so checkpoints of the official builder need the code's).

Attention placement (ours, as plugattn's Swin: no official code exists for BAv2 or DIA in CSWin, and the BA-Net v2
paper's CSWin runs are unpublished; plugattn design, not paper-reproduced):
    * **BAv2** (block level): each block bridges the token means of ``[cross-shaped attention output (after proj),
      MLP hidden (after GELU)]`` plus the MLP output and gates the MLP output channel-wise before its residual
      addition. One module per block (reduction 16), key ``stage{s}.{i}.ba``: 733,804 parameters on CSWin-T, 1,180,528
      on CSWin-S, 2,655,064 on CSWin-B, 5,972,308 on CSWin-L.
    * **DIA** (stage level): one unit per stage, key ``stage{s}.attn``; it takes the token mean of each block's
      MLP-branch output, carries its state through the stage's blocks (zero at the first block of every stage) and
      gates that branch output before the residual addition. The merges are not gated. Gate-map reduction 16 (ours,
      as for ImageNet CNN widths): 225,400 parameters on CSWin-T and CSWin-S, 501,300 on CSWin-B, 1,119,150 on
      CSWin-L.
    * The branch output is handed to the attention modules as an NCHW map, so their spatial mean is the token mean;
      the modules are the CNN ones (same names and counts).

Differences from the reference:
    * Any input size, as the official segmentation backbone: each stripe branch pads q, k and v with zeros
      (symmetrically, after the qkv projection, without masking) to a multiple of its window and crops the output
      back, and the full-attention branches take the map as it is. Inputs need not be square. At 224 px nothing
      is padded, and the outputs equal the official classification model's.
    * Which stages have one full-attention branch (hence the keys ``attns.0`` only) is decided from ``img_size`` as
      the official classification code does (the last stage, and a stage whose resolution equals its split size);
      the segmentation backbone uses one branch in the last stage only.
    * Blocks and maps are NHWC (the official code: ``(B, H * W, C)`` tokens of a square map); the LayerNorms and
      linear layers see the same tokens.
    * ``features_only`` returns NCHW maps of the conv embedding and of the four stages (reductions 4, 4, 8, 16, 32),
      without the segmentation backbone's extra ``norm1..4`` (not in the classification checkpoints).
    * Keys equal the official ones (``stage1_conv_embed.{0,2}``, ``stage{s}.{i}.{qkv, norm1, proj, attns.{0,1}.get_v,
      mlp.fc1, mlp.fc2, norm2}``, ``merge{s}.{conv,norm}``, ``norm``, ``head``): official checkpoints load with
      :func:`~plugattn.models.official.load_official` (``source='cswin'``, EMA weights by default) or
      ``load_state_dict``. Each ``stage{s}`` is an ``AttnStage`` instead of an ``nn.ModuleList`` (same child names).
    * ``drop_rate`` is the dropout before the classifier (timm's convention); the official ``drop_rate`` is our
      ``proj_drop_rate`` (the MLP dropout; the official attention projection has none, here neither). The builders
      default to the official recipes' stochastic depth (T 0.2, S 0.4, B 0.5, L 0.2).
    * Stripe attention runs ``F.scaled_dot_product_attention`` (the official code: explicit matmuls, which MAC
      counting switches back to with :func:`~plugattn.layers.token.explicit_attention`).
    * ``torch.fx`` graphs are traced at ``img_size`` (the padding is a Python decision on the map size), so the
      pretrained cfg says ``fixed_input_size``; eager runs take any size. ``torch.export`` programs take any batch
      at the input size they were exported at (symbolic heights and widths fail its divisibility guards); ONNX files
      from the legacy (trace-based) exporter take any batch and size (tested at 32, 48 x 40 and 100 x 76 px).
      TorchScript scripts the four-stage models; their stages run as Python calls (no ``torch.jit.save``).
"""
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from ..errors import PlugattnError
from ..layers import create_attn
from ..layers.registry import AttnSpec
from ..layers.token import Mlp, dot_product_attention
from ._base import (
    AttnNet,
    AttnStage,
    FeatureInfo,
    feature_take_indices,
    is_fx_proxy,
    stage_attn_kwargs,
)
from ._registry import register_model, register_model_family
from .vit import block_bridge, drop_path_rates, init_transformer_weights, transformer_attn_level

__all__ = ['CSWinBlock', 'CSWinTransformer', 'LePEAttention']

Size = tuple[int, int]


class LePEAttention(nn.Module):
    """One branch of cross-shaped window attention, with the locally-enhanced positional encoding (official keys).

    Args:
        dim: channels of this branch (half the block width for stripes, all of it for full attention).
        num_heads: heads of this branch.
        split_size: stripe width (``idx=0``) or height (``idx=1``).
        idx: ``0`` vertical stripes (full height x ``split_size``), ``1`` horizontal stripes (``split_size`` x full
            width), ``-1`` the whole map.
        attn_drop: dropout on the attention weights.
    """

    def __init__(self, dim: int, num_heads: int, split_size: int, idx: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise PlugattnError(f'CSWin branch width {dim} must be divisible by its {num_heads} heads')
        if idx not in (-1, 0, 1):
            raise PlugattnError(f'idx must be -1 (full), 0 (vertical stripes) or 1 (horizontal stripes), got {idx}')
        self.dim = dim
        self.num_heads = num_heads
        self.split_size = split_size
        self.idx = idx
        self.scale = (dim // num_heads) ** -0.5
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.attn_drop = nn.Dropout(attn_drop)

    def window(self, H: int, W: int) -> Size:
        """The attention window on an ``H x W`` map."""
        if self.idx == -1:
            return H, W
        if self.idx == 0:
            return H, self.split_size
        return self.split_size, W

    def forward(self, qkv: Tensor, H: int, W: int) -> Tensor:
        """``(B, H, W, 3, dim)`` queries, keys and values -> ``(B, H, W, dim)`` attention output."""
        hs, ws = self.window(H, W)
        pad_h, pad_w = (hs - H % hs) % hs, (ws - W % ws) % ws
        top, left = pad_h // 2, pad_w // 2  # the segmentation backbone's centred zero padding
        # padded and cropped unconditionally (no-ops at multiples): no Python branch on sizes, so a traced graph
        # (ONNX) keeps the size arithmetic instead of freezing the export size's branch
        qkv = F.pad(qkv, (0, 0, 0, 0, left, pad_w - left, top, pad_h - top))
        B, Hp, Wp = qkv.shape[0], H + pad_h, W + pad_w
        C, heads, n, nh, nw = self.dim, self.num_heads, hs * ws, Hp // hs, Wp // ws
        # explicit sizes rather than -1, which torch.export would have to prove divisible
        windows = qkv.reshape(B, nh, hs, nw, ws, 3 * C).permute(0, 1, 3, 2, 4, 5)
        q, k, v = windows.reshape(B * nh * nw, n, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        # LePE: the depth-wise conv sees V of one window at a time (zero padding at the window's border)
        lepe = self.get_v(v.transpose(-2, -1).reshape(B * nh * nw, C, hs, ws))
        p = self.attn_drop.p if self.training else 0.0
        out = dot_product_attention(q, k, v, scale=self.scale, dropout_p=p)
        out = out + lepe.reshape(B * nh * nw, heads, C // heads, n).transpose(-2, -1)
        out = out.transpose(1, 2).reshape(B, nh, nw, hs, ws, C).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(B, Hp, Wp, C)[:, top:top + H, left:left + W]


class CSWinBlock(nn.Module):
    """Cross-shaped window transformer block on NHWC maps; the MLP-branch output is the gated residual branch.

    Args:
        dim: token width.
        num_heads: attention heads (split in half between the two stripe branches).
        split_size: stripe width of the stripe branches.
        full_attention: one branch over the whole map instead of two stripe branches.
        mlp_ratio: MLP hidden width / ``dim``.
        qkv_bias: bias of the qkv projection.
        proj_drop: dropout in the MLP.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic-depth rate of both residual branches.
        attn: plug-in attention spec (block level is built here; stage level is owned by the stage).
        attn_kwargs: options of the plug-in attention.
        input_resolution: map size at the reference ``img_size`` (what FX tracing assumes).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            split_size: int = 7,
            full_attention: bool = False,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
            *,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | None = None,
            input_resolution: Size = (7, 7),
    ) -> None:
        super().__init__()
        if not full_attention and (dim % 2 or num_heads % 2):
            raise PlugattnError(f'a stripe block splits width {dim} and {num_heads} heads in half: both must be even')
        hidden = int(dim * mlp_ratio)
        self.dim = dim
        self.input_resolution = input_resolution
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm1 = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        if full_attention:
            self.attns = nn.ModuleList([LePEAttention(dim, num_heads, split_size, -1, attn_drop)])
        else:
            self.attns = nn.ModuleList([LePEAttention(dim // 2, num_heads // 2, split_size, i, attn_drop)
                                        for i in range(2)])
        self.drop_path1 = StochasticDepth(drop_path, 'row') if drop_path > 0 else nn.Identity()
        self.mlp = Mlp(dim, hidden, drop=proj_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.drop_path2 = StochasticDepth(drop_path, 'row') if drop_path > 0 else nn.Identity()
        self.ba = block_bridge(attn, transformer_attn_level(attn), dim, hidden, attn_kwargs)

    def _cross_shaped_attn(self, x: Tensor) -> Tensor:
        H, W = x.shape[1], x.shape[2]
        if not torch.jit.is_scripting() and is_fx_proxy(x):
            H, W = self.input_resolution  # FX traces at the reference size: the padding is decided in Python
        C = self.dim
        qkv = self.qkv(x).reshape(x.shape[0], H, W, 3, C)
        width = C // len(self.attns)
        outs = [branch(qkv[..., j * width:(j + 1) * width], H, W) for j, branch in enumerate(self.attns)]
        return self.proj(outs[0] if len(outs) == 1 else torch.cat(outs, -1))

    def forward_branch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """MLP-branch output as an NCHW map (gated by the block's bridge attention) and the NHWC stream."""
        a = self._cross_shaped_attn(self.norm1(x))
        x = x + self.drop_path1(a)
        out, hidden = self.mlp.forward_with_hidden(self.norm2(x))
        out = out.permute(0, 3, 1, 2)
        if self.ba is not None:
            out = self.ba([a.mean((1, 2)), hidden.mean((1, 2))], out)
        return out, x

    def merge(self, branch: Tensor, shortcut: Tensor) -> Tensor:
        return shortcut + self.drop_path2(branch.permute(0, 2, 3, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.merge(*self.forward_branch(x))


class ToNHWC(nn.Module):
    """NCHW -> NHWC (the official stem's ``Rearrange('b c h w -> b (h w) c')``, index 1 of the stem)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


class MergeBlock(nn.Module):
    """3x3 stride-2 conv and LayerNorm between stages, NHWC in and out (official keys ``conv``, ``norm``)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class CSWinTransformer(AttnNet):
    """CSWin Transformer (four stages of cross-shaped window blocks) with an optional plug-in attention.

    Args:
        img_size: reference input size (int or (H, W)): decides which stages attend over the whole map (as the
            official code) and the size ``torch.fx`` traces at; eager runs take any size.
        in_chans: image channels.
        num_classes: classifier outputs (0: no classifier).
        embed_dim: width of the first stage (doubled at every stage).
        depths: blocks per stage.
        split_size: stripe width per stage.
        num_heads: attention heads per stage.
        mlp_ratio: MLP hidden width / stage width.
        qkv_bias: bias of the qkv projections.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout in the MLPs (the official ``drop_rate``).
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth, rising linearly over all blocks to this rate.
        global_pool: ``'avg'`` or ``''`` (no pooling, with ``num_classes=0``: ``forward`` returns NHWC maps).
        attn: plug-in attention: ``'bav2'`` / ``'bav1'`` (block level), ``'dia'`` (one unit per stage) or ``None``.
        attn_kwargs: options of the plug-in attention, one dict or one per stage.
    """

    first_conv_key = 'stage1_conv_embed.0'
    classifier_key = 'head'
    output_fmt = 'NHWC'

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: int = 64,
            depths: Sequence[int] = (1, 2, 21, 1),
            split_size: Sequence[int] = (1, 2, 7, 7),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.1,
            *,
            global_pool: str = 'avg',
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        if not len(split_size) == len(num_heads) == num_stages:
            raise PlugattnError(f'depths {tuple(depths)}, split_size {tuple(split_size)} and num_heads '
                             f'{tuple(num_heads)} need one entry per stage')
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        level = transformer_attn_level(attn)
        dims = [embed_dim * 2 ** i for i in range(num_stages)]
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = dims[-1]
        self.num_stages = num_stages
        self.stage_names = tuple(f'stage{i + 1}' for i in range(num_stages))
        self.stage1_conv_embed = nn.Sequential(nn.Conv2d(in_chans, embed_dim, 7, 4, 2), ToNHWC(),
                                               nn.LayerNorm(embed_dim))
        info = [dict(num_chs=embed_dim, reduction=4, module='stage1_conv_embed')]
        for i, (dim, dpr, kwargs) in enumerate(zip(
                dims, drop_path_rates(drop_path_rate, depths), stage_attn_kwargs(attn_kwargs, num_stages))):
            if i > 0:
                self.add_module(f'merge{i}', MergeBlock(dims[i - 1], dim))
            res = (img_size[0] // 2 ** (i + 2), img_size[1] // 2 ** (i + 2))  # official: img_size // 4, // 8, ...
            full = i == num_stages - 1 or res == (split_size[i], split_size[i])
            blocks = [
                CSWinBlock(dim, num_heads[i], split_size[i], full, mlp_ratio, qkv_bias, proj_drop_rate,
                           attn_drop_rate, dpr[j], attn=attn if level == 'block' else None, attn_kwargs=kwargs,
                           input_resolution=res)
                for j in range(depths[i])
            ]
            self.add_module(self.stage_names[i], AttnStage(
                blocks, create_attn(attn, dim, **kwargs) if level == 'stage' else None))
            info.append(dict(num_chs=dim, reduction=2 ** (i + 2), module=self.stage_names[i]))
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = FeatureInfo(info)
        self.set_global_pool(global_pool)
        init_transformer_weights(self)

    def _run_stage(self, i: int, x: Tensor, checkpointing: bool) -> Tensor:
        """The merge before stage ``i`` (0-based; none before the first), then the stage."""
        if i > 0:
            x = getattr(self, f'merge{i}')(x)
        stage = getattr(self, self.stage_names[i])
        return stage.forward_checkpointed(x) if checkpointing and isinstance(stage, AttnStage) else stage(x)

    def _run(self, x: Tensor, upto: int, norm: bool = False) -> tuple[list[Tensor], Tensor]:
        """NHWC outputs of the conv embedding and of the first ``upto`` stages (the last stage's normalised with
        ``norm``), and the output of the last stage run."""
        x = self.stage1_conv_embed(x)
        feats = [x]
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        for i in range(upto):
            x = self._run_stage(i, x, checkpointing)
            feats.append(self.norm(x) if norm and i == self.num_stages - 1 else x)
        return feats, x

    def stages(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.stage_names]

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.stage1_conv_embed(x)

    def _script_stages(self, x: Tensor) -> Tensor:
        """The stages for TorchScript, which needs literal attribute names: CSWin's four stages spelled out."""
        x = self.stage2(self.merge1(self.stage1(x)))
        return self.stage4(self.merge3(self.stage3(self.merge2(x))))

    def forward_stages(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._script_stages(x)
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        for i in range(self.num_stages):
            x = self._run_stage(i, x, checkpointing)
        return x

    def forward_final(self, x: Tensor) -> Tensor:
        return self.norm(x)

    def norm_intermediate(self, x: Tensor) -> Tensor:
        return self.norm(x)

    def _prune_final(self) -> None:
        self.norm = nn.Identity()

    @torch.jit.ignore
    def forward_intermediates(
            self,
            x: Tensor,
            indices: int | Sequence[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Conv-embedding and stage outputs, NCHW (default) or NHWC; ``norm`` applies the final norm to the last
        stage's output; ``final`` is :meth:`forward_features` (NHWC). See :meth:`AttnNet.forward_intermediates`."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise PlugattnError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, last = feature_take_indices(self.num_stages + 1, indices)
        upto = last if intermediates_only or stop_early else self.num_stages
        feats, x = self._run(self.check_input(x), upto, norm)
        feats = [feats[i] for i in take]
        if output_fmt == 'NCHW':
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        if intermediates_only:
            return feats
        return (self.norm(x) if upto == self.num_stages else x), feats

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: int | Sequence[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages (and their merges) after the last selected level, and the head."""
        take, last = feature_take_indices(self.num_stages + 1, indices)
        for i in range(last, self.num_stages):
            setattr(self, self.stage_names[i], nn.Identity())
            if i > 0:
                setattr(self, f'merge{i}', nn.Identity())
        if prune_norm:
            self._prune_final()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def pool(self, x: Tensor) -> Tensor:
        return x.mean((1, 2)) if self.global_pool == 'avg' else x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The stem, then stage by stage (block by block unless ``coarse``); a merge and a stage's DIA unit join
        the group of the stage's last block (the merge after it)."""
        return {
            'stem': r'^stage1_conv_embed\.',
            'blocks': r'^(?:stage|merge)(\d+)\.' if coarse else [
                (r'^stage(\d+)\.(\d+)\.', None),
                (r'^stage(\d+)\.attn\.', (99999,)),
                (r'^merge(\d+)\.', (99999,)),
                (r'^norm\.', (99999,)),
            ],
        }

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """None: CSWin has no position embeddings, class token or bias tables (LePE is a conv)."""
        return set()

    def cam_target_layer(self) -> str:
        """Grad-CAM target: the final ``norm`` (NHWC tokens the average-pooled head sees)."""
        return 'norm'

    def cam_reshape_transform(self) -> Callable[[Tensor], Tensor]:
        """Grad-CAM ``reshape_transform`` for :meth:`cam_target_layer`: NHWC -> NCHW."""
        return _nhwc_to_nchw


def _nhwc_to_nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


register_model_family(
    'cswin', first_conv='stage1_conv_embed.0', classifier='head', reduction=32, crop_pct=0.9, interpolation='bicubic',
    fixed_input_size=True,  # FX graphs are traced at img_size (eager runs take any size)
    paper_ids=('arXiv:2107.00652',),
    paper_name='CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows',
)
_CSWIN = dict(input_size=(3, 224, 224), family='cswin', attns=['bav2', 'dia'], attn_defaults={'dia': {'reduction': 16}})


@register_model(attn_widths=(64, 128, 256, 512), **_CSWIN)
def cswin_t(**kwargs: Any) -> CSWinTransformer:
    """CSWin-T (official ``CSWin_64_12211_tiny_224``): 22,320,552 params; stochastic depth 0.2 (official recipe)."""
    kwargs.setdefault('drop_path_rate', 0.2)
    return CSWinTransformer(embed_dim=64, depths=(1, 2, 21, 1), num_heads=(2, 4, 8, 16), **kwargs)


@register_model(attn_widths=(64, 128, 256, 512), **_CSWIN)
def cswin_s(**kwargs: Any) -> CSWinTransformer:
    """CSWin-S (official ``CSWin_64_24322_small_224``): 34,643,304 params; stochastic depth 0.4 (official recipe)."""
    kwargs.setdefault('drop_path_rate', 0.4)
    return CSWinTransformer(embed_dim=64, depths=(2, 4, 32, 2), num_heads=(2, 4, 8, 16), **kwargs)


@register_model(attn_widths=(96, 192, 384, 768), **_CSWIN)
def cswin_b(**kwargs: Any) -> CSWinTransformer:
    """CSWin-B (official ``CSWin_96_24322_base_224``): 77,382,184 params; heads 4-8-16-32 as the official code (the
    paper's table says 2-4-8-16); stochastic depth 0.5 (official recipe)."""
    kwargs.setdefault('drop_path_rate', 0.5)
    return CSWinTransformer(embed_dim=96, depths=(2, 4, 32, 2), num_heads=(4, 8, 16, 32), **kwargs)


@register_model(attn_widths=(144, 288, 576, 1152), **_CSWIN)
def cswin_l(**kwargs: Any) -> CSWinTransformer:
    """CSWin-L (official ``CSWin_144_24322_large_224``): 173,262,664 params; stochastic depth 0.2 (the official
    ImageNet-1k fine-tuning recipe)."""
    kwargs.setdefault('drop_path_rate', 0.2)
    return CSWinTransformer(embed_dim=144, depths=(2, 4, 32, 2), num_heads=(6, 12, 24, 24), **kwargs)
