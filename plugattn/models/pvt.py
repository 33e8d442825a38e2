"""Pyramid Vision Transformer (PVT v1) with plug-in bridge attention (BAv2) or DIA in its blocks.

Paper: "Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without Convolutions", Wang, Xie, Li,
Fan, Song, Liang, Lu, Luo, Shao, ICCV 2021, arXiv:2102.12122. Official code: https://github.com/whai362/PVT
(``classification/pvt.py`` @332805170455a869a74257e9efe7ccbc2dcc5d50: ``pvt_tiny``, ``pvt_small``), whose structure,
state_dict keys and init are followed here. timm has only PVT v2.

Parameter counts (no timm model to compare with; derived from the official builders, which this file reproduces):
PVT-v1-Tiny 13,229,288 and PVT-v1-Small 24,485,864 at 1000 classes, the published 13.2 M and 24.5 M. Per stage s
(width C, depth d, MLP ratio r, spatial reduction R): patch embedding ``C_in p^2 C + C`` (conv) ``+ 2C`` (LayerNorm),
position embedding ``N_s C`` (``+ C`` for the class token's slot in stage 4), and per block ``4C`` (two LayerNorms)
``+ 4C^2 + 4C`` (q, kv, proj with biases) ``+ 2 r C^2 + (r + 1) C`` (MLP) ``+ [R > 1] (R^2 C^2 + 3C)`` (the
spatial-reduction conv and its LayerNorm).

Attention placement (ours: no official code exists for PVT, specs D12 and the §9/§10 proposals):
    * **BAv2** (block level): each block bridges the token means of ``[attention output (after proj), MLP hidden
      (after GELU)]`` plus the MLP output and gates the MLP output channel-wise before its residual addition. One
      module per block (reduction 16), key ``block{s}.{i}.ba``: 347,424 parameters on PVT-v1-Tiny, 666,952 on
      PVT-v1-Small.
    * **DIA** (stage level): one unit per stage, key ``block{s}.attn``, fed the token mean of each block's MLP-branch
      output, its state carried through the stage's blocks (zero at the first block of every stage), gating that
      branch output before the residual addition. Gate-map reduction 16 (ours, as for ImageNet CNN widths, specs
      D9): 248,960 parameters (3,080 / 11,280 / 66,600 / 168,000 per stage).
    * Token means include the class token in stage 4; the modules are the CNN ones run on a ``(B, C, N, 1)`` view of
      the tokens (same names and counts).

Differences from the reference:
    * Keys equal the official ones (``patch_embed{s}.{proj,norm}``, ``pos_embed{s}``, ``block{s}.{i}.{norm1, attn.q,
      attn.kv, attn.sr, attn.norm, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``cls_token``, ``head``); each
      ``block{s}`` is a :class:`PVTStage` instead of an ``nn.ModuleList`` (same child names), so official weights
      load with ``strict=True``.
    * The position embedding is resized (bilinear, as the official code) whenever a stage's patch grid differs from
      the one it was built for; the official code compares every stage's token count with stage 1's, which also
      interpolates (to the same size, an identity) at the native resolution.
    * The official ``reset_classifier`` refers to a missing ``embed_dim`` attribute; ours works.
    * Self-attention runs ``F.scaled_dot_product_attention`` (the official code: explicit matmuls, which MAC counting
      switches back to with :func:`~plugattn.layers.token.explicit_attention`, so ``FlopCounterMode`` counts them).
    * ``features_only`` returns NCHW maps of the first patch embedding and of the four stages (class token dropped).
      Inputs must give every stage at least ``sr_ratio`` tokens per side (32 x 32 and up for the 224 models).
    * TorchScript: the forward is spelled out for PVT v1's four stages (``torch.jit.script`` needs literal attribute
      names); a stage's block loop runs as a Python call, so scripted models cannot be saved with ``torch.jit.save``.
      ``torch.fx`` graphs resize the position embeddings at run time (:func:`resize_pos_embed` is an FX leaf).
"""
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from ..errors import PlugattnError
from ..layers import create_attn
from ..layers.registry import AttnSpec
from ..layers.token import Mlp, dot_product_attention, map_to_tokens, tokens_to_map
from ._base import AttnNet, AttnStage, FeatureInfo, feature_take_indices, run_stage, stage_attn_kwargs, stage_blocks
from ._registry import register_model, register_model_family
from .vit import block_bridge, drop_path_rates, init_transformer_weights, tokens_to_nchw, transformer_attn_level

__all__ = ['PVTBlock', 'PVTStage', 'PyramidVisionTransformer']

Size = tuple[int, int]


class SRAttention(nn.Module):
    """Spatial-reduction attention: keys and values from a strided-conv reduced map (official keys).

    Args:
        dim: token width.
        num_heads: attention heads.
        qkv_bias: bias of the q and kv projections.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        sr_ratio: reduction R of the key/value map (conv k = stride = R, then LayerNorm); 1 for none.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = False,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            sr_ratio: int = 1,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise PlugattnError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)  # default eps, as the official code (the blocks use 1e-6)

    def forward(self, x: Tensor, size: Size) -> Tensor:
        B, N, C = x.shape
        h = self.num_heads
        q = self.q(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
        if hasattr(self, 'sr'):  # built only for sr_ratio > 1; a static test for TorchScript
            kv_in = self.sr(x.transpose(1, 2).reshape(B, C, size[0], size[1])).flatten(2).transpose(1, 2)
            kv_in = self.norm(kv_in)
        else:
            kv_in = x
        k, v = self.kv(kv_in).reshape(B, -1, 2, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)
        out = dot_product_attention(q, k, v, scale=self.scale, dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class PVTBlock(nn.Module):
    """Pre-norm PVT block; the MLP-branch output is the gated residual branch.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``dim``.
        qkv_bias: bias of the q and kv projections.
        drop: dropout after the projections.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic-depth rate of both residual branches.
        sr_ratio: spatial reduction of the keys and values.
        attn: plug-in attention spec (block level is built here; stage level is owned by the stage).
        attn_kwargs: options of the plug-in attention.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = False,
            drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
            sr_ratio: int = 1,
            *,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SRAttention(dim, num_heads, qkv_bias, attn_drop, drop, sr_ratio)
        self.drop_path = StochasticDepth(drop_path, 'row') if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden, drop=drop)
        self.ba = block_bridge(attn, transformer_attn_level(attn), dim, hidden, attn_kwargs)

    def forward_branch(self, x: Tensor, size: Size) -> tuple[Tensor, Tensor]:
        """MLP-branch output as a ``(B, C, N, 1)`` map (gated by the block's bridge attention) and the stream."""
        a = self.attn(self.norm1(x), size)
        x = x + self.drop_path(a)
        out, hidden = self.mlp.forward_with_hidden(self.norm2(x))
        out = tokens_to_map(out)
        if self.ba is not None:
            out = self.ba([a.mean(1), hidden.mean(1)], out)
        return out, x

    def merge(self, branch: Tensor, shortcut: Tensor) -> Tensor:
        return shortcut + self.drop_path(map_to_tokens(branch))

    def forward(self, x: Tensor, size: Size) -> Tensor:
        return self.merge(*self.forward_branch(x, size))


class PVTStage(AttnStage):
    """An :class:`~plugattn.models._base.AttnStage` whose blocks also take the token grid ``size`` (children ``0, 1,
    ...`` as the official ``nn.ModuleList``; ``attn``: the shared DIA unit or ``None``)."""

    def forward_checkpointed(self, x: Tensor, size: Size) -> Tensor:
        """:meth:`forward` with every block under activation checkpointing."""
        return run_stage(stage_blocks(self), self.attn, x, size, checkpointing=True)

    @torch.jit.ignore  # a custom container: TorchScript cannot iterate it
    def forward(self, x: Tensor, size: Size) -> Tensor:
        return run_stage(stage_blocks(self), self.attn, x, size)


class PatchEmbed(nn.Module):
    """Strided conv patches -> tokens -> LayerNorm (official keys ``proj``, ``norm``).

    Args:
        grid_size: patch grid at the reference input size (sets the position-embedding grid).
        patch_size: patch side.
        in_chans: input channels.
        embed_dim: token width.
    """

    def __init__(self, grid_size: Size, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.num_patches = grid_size[0] * grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Size]:
        x = self.proj(x)
        size = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), size


class PyramidVisionTransformer(AttnNet):
    """PVT v1: four stages of spatial-reduction attention blocks, class-token head in the last stage.

    Args:
        img_size: reference input size (square, as the official code); position embeddings are built for it.
        patch_size: patch side of the first embedding (later stages use 2).
        in_chans: image channels.
        num_classes: classifier outputs (0: no classifier).
        embed_dims: width per stage.
        num_heads: attention heads per stage.
        mlp_ratios: MLP ratio per stage.
        qkv_bias: bias of the q and kv projections.
        drop_rate: dropout after the position embeddings and the projections.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth, rising linearly over all blocks to this rate.
        depths: blocks per stage.
        sr_ratios: spatial reduction of the keys and values per stage.
        global_pool: ``'token'`` (class token, official) or ``''`` (no pooling, with ``num_classes=0``: ``forward``
            returns the normalised last-stage tokens).
        attn: plug-in attention: ``'bav2'`` / ``'bav1'`` (block level), ``'dia'`` (one unit per stage) or ``None``.
        attn_kwargs: options of the plug-in attention, one dict or one per stage.
    """

    first_conv_key = 'patch_embed1.proj'
    classifier_key = 'head'
    output_fmt = 'NLC'
    global_pool_types = ('token', '')

    def __init__(
            self,
            img_size: int = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            num_heads: Sequence[int] = (1, 2, 5, 8),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4),
            qkv_bias: bool = True,
            drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            depths: Sequence[int] = (2, 2, 2, 2),
            sr_ratios: Sequence[int] = (8, 4, 2, 1),
            *,
            global_pool: str = 'token',
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        if not len(embed_dims) == len(num_heads) == len(mlp_ratios) == len(sr_ratios) == num_stages:
            raise PlugattnError('embed_dims, num_heads, mlp_ratios, sr_ratios and depths need one entry per stage')
        level = transformer_attn_level(attn)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = embed_dims[-1]
        self.num_stages = num_stages
        self.stage_names = tuple(f'block{i + 1}' for i in range(num_stages))
        info = [dict(num_chs=embed_dims[0], reduction=patch_size, module='patch_embed1')]
        cin, grid, reduction = in_chans, img_size // patch_size, patch_size
        for i, (dim, dpr, kwargs) in enumerate(zip(
                embed_dims, drop_path_rates(drop_path_rate, depths), stage_attn_kwargs(attn_kwargs, num_stages))):
            if i > 0:
                grid, reduction = img_size // 2 ** (i + 2), reduction * 2  # official: (img_size // 2^(i+1)) // 2
            last = i == num_stages - 1
            embed = PatchEmbed((grid, grid), patch_size if i == 0 else 2, cin, dim)
            blocks = [
                PVTBlock(dim, num_heads[i], mlp_ratios[i], qkv_bias, drop_rate, attn_drop_rate, dpr[j], sr_ratios[i],
                         attn=attn if level == 'block' else None, attn_kwargs=kwargs)
                for j in range(depths[i])
            ]
            setattr(self, f'patch_embed{i + 1}', embed)
            setattr(self, f'pos_embed{i + 1}', nn.Parameter(torch.zeros(1, embed.num_patches + int(last), dim)))
            setattr(self, f'pos_drop{i + 1}', nn.Dropout(drop_rate))
            setattr(self, f'block{i + 1}', PVTStage(
                blocks, create_attn(attn, dim, **kwargs) if level == 'stage' else None))
            info.append(dict(num_chs=dim, reduction=reduction, module=f'block{i + 1}'))
            cin = dim
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[-1]))
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = FeatureInfo(info)
        self.set_global_pool(global_pool)
        self._init_weights()

    def _init_weights(self) -> None:
        for i in range(self.num_stages):
            nn.init.trunc_normal_(getattr(self, f'pos_embed{i + 1}'), std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_transformer_weights(self)

    @staticmethod
    def _resize_pos(pos: Tensor, grid: Size, size: Size) -> Tensor:
        return resize_pos_embed(pos, grid[0], grid[1], size[0], size[1])

    def _embed(self, i: int, x: Tensor) -> tuple[Tensor, Size]:
        """Patch embedding of stage ``i`` (0-based), class token (last stage) and position embedding."""
        embed = getattr(self, f'patch_embed{i + 1}')
        pos = getattr(self, f'pos_embed{i + 1}')
        x, size = embed(x)
        if i == self.num_stages - 1:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            pos = torch.cat([pos[:, :1], self._resize_pos(pos[:, 1:], embed.grid_size, size)], dim=1)
        else:
            pos = self._resize_pos(pos, embed.grid_size, size)
        return getattr(self, f'pos_drop{i + 1}')(x + pos), size

    def _run(self, x: Tensor, upto: int | None = None, norm: bool = False) -> tuple[list[Tensor], Tensor]:
        """NCHW maps of the first patch embedding and of the stages up to ``upto`` (class token dropped; the last
        stage normalised with ``norm``), and the output tokens of the last stage run."""
        feats = []
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        for i in range(self.num_stages if upto is None else upto):
            x, size = self._embed(i, x)
            if i == 0:
                feats.append(_to_map(x, size))
            stage = getattr(self, f'block{i + 1}')
            x = stage.forward_checkpointed(x, size) if checkpointing else stage(x, size)
            last = i == self.num_stages - 1
            out = self.norm(x) if norm and last else x
            feats.append(_to_map(out[:, 1:] if last else out, size))
            if not last:
                x = feats[-1]
        return feats, x

    def forward_features(self, x: Tensor) -> Tensor:
        """Normalised last-stage tokens ``(B, 1 + N, C)``, class token first."""
        if torch.jit.is_scripting():
            return self.norm(self._script_run(x))
        return self.norm(self._run(self.check_input(x))[1])

    def _script_run(self, x: Tensor) -> Tensor:
        """:meth:`_run` for TorchScript, which needs literal attribute names: the four stages of PVT v1 spelled out."""
        x, size = self.patch_embed1(x)
        x = self.pos_drop1(x + resize_pos_embed(self.pos_embed1, self.patch_embed1.grid_size[0],
                                                self.patch_embed1.grid_size[1], size[0], size[1]))
        x = _to_map(self.block1(x, size), size)
        x, size = self.patch_embed2(x)
        x = self.pos_drop2(x + resize_pos_embed(self.pos_embed2, self.patch_embed2.grid_size[0],
                                                self.patch_embed2.grid_size[1], size[0], size[1]))
        x = _to_map(self.block2(x, size), size)
        x, size = self.patch_embed3(x)
        x = self.pos_drop3(x + resize_pos_embed(self.pos_embed3, self.patch_embed3.grid_size[0],
                                                self.patch_embed3.grid_size[1], size[0], size[1]))
        x = _to_map(self.block3(x, size), size)
        x, size = self.patch_embed4(x)
        pos = self.pos_embed4
        pos = torch.cat([pos[:, :1], resize_pos_embed(pos[:, 1:], self.patch_embed4.grid_size[0],
                                                      self.patch_embed4.grid_size[1], size[0], size[1])], dim=1)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.block4(self.pos_drop4(x + pos), size)

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
        """First patch embedding and stage outputs as NCHW maps (``feature_info`` order; class token dropped;
        ``norm`` normalises the last stage's); ``final`` is :meth:`forward_features`. See
        :meth:`AttnNet.forward_intermediates` for the arguments."""
        if output_fmt != 'NCHW':
            raise PlugattnError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, last = feature_take_indices(self.num_stages + 1, indices)
        upto = max(last, 1) if intermediates_only or stop_early else None
        feats, x = self._run(self.check_input(x), upto, norm)
        feats = [feats[i] for i in take]
        if intermediates_only:
            return feats
        return (self.norm(x) if upto is None or upto == self.num_stages else x), feats

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: int | Sequence[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last selected level (their embeddings and blocks) and the head."""
        take, last = feature_take_indices(self.num_stages + 1, indices)
        for i in range(max(last, 1), self.num_stages):
            setattr(self, f'patch_embed{i + 1}', nn.Identity())
            setattr(self, f'block{i + 1}', nn.Identity())
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == 'token':
            x = x[:, 0]
        return x if pre_logits else self.head(x)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {
            'stem': r'^(?:patch_embed1|pos_embed1)',
            'blocks': r'^(?:block|patch_embed|pos_embed)(\d+)' if coarse else [
                (r'^(?:patch_embed|pos_embed)(\d+)', (0,)),
                (r'^block(\d+)\.(\d+)\.', None),
                (r'^block(\d+)\.attn\.', (99999,)),
                (r'^(?:norm|cls_token)', (99999,)),
            ],
        }

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The position embeddings and the class token."""
        return {f'pos_embed{i + 1}' for i in range(self.num_stages)} | {'cls_token'}

    def cam_target_layer(self) -> str:
        """Grad-CAM target: ``norm1`` of the last block (its patch tokens reach the class token)."""
        last = getattr(self, self.stage_names[-1])
        return f'{self.stage_names[-1]}.{len(last) - 1}.norm1'

    def cam_reshape_transform(self) -> Callable[[Tensor], Tensor]:
        """Grad-CAM ``reshape_transform`` for :meth:`cam_target_layer` (or any block): tokens to NCHW, square inputs;
        the class token (stage 4 only) is recognised by the token count."""
        return tokens_to_nchw


def resize_pos_embed(pos: Tensor, gh: int, gw: int, h: int, w: int) -> Tensor:
    """A ``(1, gh * gw, C)`` position embedding resized (bilinear, as the official code) to ``h x w``.

    Registered with :func:`torch.fx.wrap`: FX graphs keep it as one call, so they resize at run time too.
    """
    if h == gh and w == gw:
        return pos
    pos = pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(h, w), mode='bilinear', align_corners=False)
    return pos.flatten(2).transpose(1, 2)


torch.fx.wrap('resize_pos_embed')


def _to_map(x: Tensor, size: Size) -> Tensor:
    """``(B, N, C)`` tokens of an ``H x W`` grid -> ``(B, C, H, W)``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], size[0], size[1])


register_model_family(
    'pvt', first_conv='patch_embed1.proj', classifier='head', reduction=None, crop_pct=0.875, interpolation='bicubic',
    min_input_size=(3, 32, 32), paper_ids=('arXiv:2102.12122',),
    paper_name='Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without Convolutions',
    feature_cfg=dict(feature_cls='getter'),  # timm's features go through forward_intermediates
)
_PVT = dict(input_size=(3, 224, 224), family='pvt', attns=['bav2', 'dia'], attn_defaults={'dia': {'reduction': 16}})


@register_model(attn_widths=(64, 128, 320, 512), **_PVT)
def pvt_v1_tiny(**kwargs: Any) -> PyramidVisionTransformer:
    """PVT-v1-Tiny (official ``pvt_tiny``): depths 2-2-2-2, 13,229,288 params (published 13.2 M)."""
    return PyramidVisionTransformer(depths=(2, 2, 2, 2), **kwargs)


@register_model(attn_widths=(64, 128, 320, 512), **_PVT)
def pvt_v1_small(**kwargs: Any) -> PyramidVisionTransformer:
    """PVT-v1-Small (official ``pvt_small``): depths 3-4-6-3, 24,485,864 params (published 24.5 M)."""
    return PyramidVisionTransformer(depths=(3, 4, 6, 3), **kwargs)
