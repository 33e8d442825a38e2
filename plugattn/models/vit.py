"""Vision Transformer / DeiT with plug-in bridge attention (BAv2) or DIA in its blocks.

Papers: "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", Dosovitskiy et al., ICLR 2021,
arXiv:2010.11929; "Training data-efficient image transformers & distillation through attention" (DeiT), Touvron et
al., ICML 2021, arXiv:2012.12877. Reference code: google-research/vision_transformer, facebookresearch/deit, and
timm ``models/vision_transformer.py`` (architecture, state_dict keys and init followed here).

``deit_tiny`` / ``deit_small`` are timm's ``deit_{tiny,small}_patch16_224``, which are architecturally identical to
``vit_{tiny,small}_patch16_224`` (same widths, depth, heads, class-token pooling; the two differ only in training
recipe and weights), so no separate ``vit_*`` names are registered: load either timm checkpoint into them.

Attention placement (ours: no official code exists for transformers, specs D12 and the §9/§10 proposals):
    * **BAv2** (block level): each block bridges the token means of its sub-layer outputs, ``[attention output
      (after proj), MLP hidden (after GELU)]`` plus the MLP output, and gates the MLP output channel-wise before its
      residual addition (``inner_channels = (C, mlp_ratio * C)``, reduction 16 as the CNN default). One module per
      block, key ``blocks.{i}.ba``: 193,872 parameters on DeiT-Tiny, 774,768 on DeiT-Small.
    * **DIA** (stage level): one unit for all blocks (ViT/DeiT have one group of equal-width blocks), key
      ``blocks.attn``. It takes the token mean of each block's MLP-branch output, carries its (h, c) state from block
      to block (zero at the first block of every forward) and gates that branch output channel-wise before the
      residual addition. The attention branch is not gated. Gate-map reduction 16 (ours, as for ImageNet CNN widths,
      specs D9): 24,600 parameters on DeiT-Tiny, 95,280 on DeiT-Small.
    * Token means are taken over all tokens, the class token included, and the gate scales every token. The
      channel attention modules are the CNN ones, run on a ``(B, C, N, 1)`` view of the tokens
      (:func:`~plugattn.layers.token.tokens_to_map`), so parameter names and counts equal the CNN modules'.

Differences from the reference:
    * Backbone keys equal timm's (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.{i}.{norm1, attn.qkv,
      attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``): timm DeiT/ViT weights load with ``strict=True``
      into the plain models (and with only attention keys missing into the attention variants).
    * Self-attention runs ``F.scaled_dot_product_attention`` (timm's fused path); MAC counting switches it to explicit
      matmuls (:func:`~plugattn.layers.token.explicit_attention`), which ``FlopCounterMode`` counts on every device.
    * Any input size divisible by the patch size works: the position embedding is resized bicubically when the
      patch grid differs from ``img_size`` (timm's ``dynamic_img_size``), without antialiasing (export-safe; timm
      antialiases when downsampling); ``torch.fx`` graphs resize at run time too (:func:`resample_pos_embed` is an
      FX leaf).
    * ``features_only`` returns the patch-embedding output and every block output as NCHW maps on the patch grid
      (class token dropped), all at reduction ``patch_size``.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from ..errors import PlugattnError, check_out_indices
from ..layers import BlockAttention, GateAttention, StageAttention, attn_level, create_attn
from ..layers.registry import AttnSpec
from ..layers.token import Mlp, dot_product_attention, map_to_tokens, tokens_to_map
from ._base import (
    AttnNet,
    AttnStage,
    FeatureInfo,
    checkpoint_seq,
    feature_take_indices,
    init_attn_modules,
    run_stage,
)
from ._registry import register_model, register_model_family

__all__ = ['Attention', 'Block', 'VisionTransformer', 'tokens_to_nchw']

_ATTNS = ['bav2', 'dia']
_DIA_DEFAULTS = {'dia': {'reduction': 16}}


# helpers shared by the transformer families (swin.py and pvt.py import them, as timm's swin imports its ViT init)

def transformer_attn_level(attn: AttnSpec) -> str | None:
    """Level of a plug-in attention for a transformer block; gate-level modules have no defined placement."""
    level = attn_level(attn)
    if level == 'gate':
        raise PlugattnError(
            f'attention {attn!r} is a gate-level module; transformer blocks take block-level (bav1, bav2) or '
            'stage-level (dia) attention'
        )
    return level


def block_bridge(
        attn: AttnSpec,
        level: str | None,
        dim: int,
        hidden: int,
        attn_kwargs: dict[str, Any] | None,
) -> BlockAttention | None:
    """The block's bridge attention over ``[attention output, MLP hidden]`` (+ MLP output), or ``None``."""
    if level != 'block':
        return None
    return create_attn(attn, dim, inner_channels=(dim, hidden), **(attn_kwargs or {}))


def init_transformer_weights(model: nn.Module) -> None:
    """timm's ViT init (Linear trunc-normal std 0.02, zero bias; LayerNorm 1/0), leaving attention modules to theirs."""
    skip = {id(m) for a in model.modules() if isinstance(a, (GateAttention, BlockAttention, StageAttention))
            for m in a.modules()}
    for m in model.modules():
        if id(m) in skip:
            continue
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    init_attn_modules(model)


def tokens_to_nchw(x: Tensor, num_prefix_tokens: int | None = None) -> Tensor:
    """Grad-CAM ``reshape_transform``: ``(B, P + N, C)`` tokens on a square grid -> ``(B, C, sqrt N, sqrt N)``.

    Args:
        x: tokens, the first ``num_prefix_tokens`` of which (class token) are dropped.
        num_prefix_tokens: number of leading non-patch tokens; ``None`` infers 0 or 1 from which count is square
            (unambiguous: N and N + 1 are both squares only for N = 0).
    """
    n = x.shape[1]
    if num_prefix_tokens is None:
        num_prefix_tokens = 0 if math.isqrt(n) ** 2 == n else 1
    x = x[:, num_prefix_tokens:]
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
        raise PlugattnError(f'{x.shape[1]} patch tokens do not form a square grid: use a square input for CAM')
    return x.reshape(x.shape[0], side, side, x.shape[2]).permute(0, 3, 1, 2)


def resample_pos_embed(pos: Tensor, gh: int, gw: int, rh: int, rw: int) -> Tensor:
    """The ``(1, 1 + rh * rw, C)`` class + grid position embedding for a ``gh x gw`` patch grid (bicubic).

    Registered with :func:`torch.fx.wrap`: FX graphs keep it as one call, so they resize at run time too.
    """
    if gh == rh and gw == rw:
        return pos
    C = pos.shape[2]
    grid = pos[:, 1:].reshape(1, rh, rw, C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode='bicubic', align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, C)], dim=1)


torch.fx.wrap('resample_pos_embed')


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic-depth rate per block, rising linearly from 0 to ``drop_path_rate`` over all blocks, per stage."""
    total = sum(depths)
    rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start:start + d])
        start += d
    return out


# classes

class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm keys ``qkv``, ``proj``).

    Args:
        dim: token width.
        num_heads: attention heads.
        qkv_bias: bias of the qkv projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = True,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise PlugattnError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = dot_product_attention(q, k, v, scale=self.scale, dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    """Pre-norm transformer block; the MLP-branch output is the gated residual branch.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``dim``.
        qkv_bias: bias of the qkv projection.
        proj_drop: dropout after the projections.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic-depth rate of both residual branches.
        attn: plug-in attention spec (block level is built here; stage level is owned by the stage).
        attn_kwargs: options of the plug-in attention.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
            *,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = StochasticDepth(drop_path, 'row') if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden, drop=proj_drop)
        self.drop_path2 = StochasticDepth(drop_path, 'row') if drop_path > 0 else nn.Identity()
        self.ba = block_bridge(attn, transformer_attn_level(attn), dim, hidden, attn_kwargs)

    def forward_branch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """MLP-branch output as a ``(B, C, N, 1)`` map (gated by the block's bridge attention) and the stream."""
        a = self.attn(self.norm1(x))
        x = x + self.drop_path1(a)
        out, hidden = self.mlp.forward_with_hidden(self.norm2(x))
        out = tokens_to_map(out)
        if self.ba is not None:
            out = self.ba([a.mean(1), hidden.mean(1)], out)
        return out, x

    def merge(self, branch: Tensor, shortcut: Tensor) -> Tensor:
        return shortcut + self.drop_path2(map_to_tokens(branch))

    def forward(self, x: Tensor) -> Tensor:
        return self.merge(*self.forward_branch(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided conv, output ``(B, gh, gw, C)``.

    Args:
        img_size: reference input size (sets the position-embedding grid).
        patch_size: patch side.
        in_chans: image channels.
        embed_dim: token width.
    """

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class VisionTransformer(AttnNet):
    """ViT / DeiT with class-token pooling and an optional plug-in attention in every block.

    Args:
        img_size: reference input size (int or (H, W)); the position embedding is built for its patch grid.
        patch_size: patch side.
        in_chans: image channels.
        num_classes: classifier outputs (0: no classifier).
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``embed_dim``.
        qkv_bias: bias of the qkv projections.
        drop_rate: dropout after the position embedding, in the blocks' projections and before the head.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth, rising linearly over the blocks to this rate.
        global_pool: ``'token'`` (class token, ViT/DeiT), ``'avg'`` (mean of the patch tokens) or ``''`` (no
            pooling, with ``num_classes=0``: ``forward`` returns all tokens).
        attn: plug-in attention: ``'bav2'`` / ``'bav1'`` (block level), ``'dia'`` (stage level) or ``None``.
        attn_kwargs: options of the plug-in attention.
    """

    first_conv_key = 'patch_embed.proj'
    classifier_key = 'head'
    output_fmt = 'NLC'
    global_pool_types = ('token', 'avg', '')

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            *,
            global_pool: str = 'token',
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(attn_kwargs, (dict, type(None))):
            raise PlugattnError('ViT has one group of blocks: attn_kwargs must be one dict')
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        gh, gw = self.patch_embed.grid_size
        if gh < 1 or gw < 1:
            raise PlugattnError(f'img_size {img_size} is smaller than the patch size {patch_size}')
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, gh * gw + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        level = transformer_attn_level(attn)
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        blocks = [
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i],
                  attn=attn if level == 'block' else None, attn_kwargs=attn_kwargs)
            for i in range(depth)
        ]
        if level == 'stage':
            self.blocks = AttnStage(blocks, create_attn(attn, embed_dim, **(attn_kwargs or {})))
        else:
            self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.stage_names = ('blocks',)
        self.feature_info = FeatureInfo(
            [dict(num_chs=embed_dim, reduction=patch_size, module='patch_embed')]
            + [dict(num_chs=embed_dim, reduction=patch_size, module=f'blocks.{i}') for i in range(depth)]
        )
        self.set_global_pool(global_pool)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        init_transformer_weights(self)

    def _pos_embed(self, x: Tensor) -> Tensor:
        """Class token + patch tokens ``(B, gh, gw, C)`` -> ``(B, 1 + gh * gw, C)`` with the position embedding."""
        B, gh, gw, C = x.shape
        rh, rw = self.patch_embed.grid_size
        pos = resample_pos_embed(self.pos_embed, gh, gw, rh, rw)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.reshape(B, gh * gw, C)], dim=1)
        return self.pos_drop(x + pos)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self._pos_embed(self.patch_embed(x))

    def forward_features(self, x: Tensor) -> Tensor:
        """Normalised tokens ``(B, 1 + N, C)``, class token first."""
        if not torch.jit.is_scripting():
            x = self.check_input(x)
            if self.grad_checkpointing and torch.is_grad_enabled():
                return self.norm(checkpoint_seq(self.blocks, self.forward_stem(x)))
        return self.norm(self.blocks(self.forward_stem(x)))

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
        """Patch-embedding and block outputs on the patch grid (``feature_info`` order), class token dropped:
        ``'NCHW'`` maps or ``'NLC'`` tokens; ``norm`` applies the final norm to each. ``final`` is
        :meth:`forward_features`. See :meth:`AttnNet.forward_intermediates` for the arguments."""
        if output_fmt not in ('NCHW', 'NLC'):
            raise PlugattnError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks) + 1, indices)
        grid = self.patch_embed(self.check_input(x))
        B, gh, gw = grid.shape[0], grid.shape[1], grid.shape[2]
        x = self._pos_embed(grid)
        raw = [x] if 0 in take else []
        shared = self.blocks.attn if isinstance(self.blocks, AttnStage) else None
        blocks = list(self.blocks)
        if intermediates_only or stop_early:
            blocks = blocks[:last]
        outs: list[Tensor] = []
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        x = run_stage(blocks, shared, x, checkpointing=checkpointing, outputs=outs)
        raw += [out for i, out in enumerate(outs, 1) if i in take]
        feats = []
        for f in raw:
            f = (self.norm(f) if norm else f)[:, self.num_prefix_tokens:]
            feats.append(f if output_fmt == 'NLC' else f.reshape(B, gh, gw, -1).permute(0, 3, 1, 2))
        if intermediates_only:
            return feats
        return (self.norm(x) if len(blocks) == len(self.blocks) else x), feats

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: int | Sequence[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Keep the blocks up to the last selected level (and drop the head); returns the absolute indices."""
        take, last = feature_take_indices(len(self.blocks) + 1, indices)
        kept = list(self.blocks)[:last]
        self.blocks = AttnStage(kept, self.blocks.attn) if isinstance(self.blocks, AttnStage) else nn.Sequential(*kept)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == 'avg':
            x = x[:, self.num_prefix_tokens:].mean(1)
        elif self.global_pool == 'token':
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def set_features_only(self, out_indices: tuple[int, ...] | None = None) -> None:
        """Feature extractor over the patch embedding (level 0) and the blocks (levels 1..depth)."""
        n = len(self.blocks) + 1
        out_indices = check_out_indices(out_indices, n, getattr(self, 'model_name', type(self).__name__))
        self.reset_classifier(0)
        self.out_indices = tuple(i % n for i in out_indices)
        self.feature_info = FeatureInfo(self.feature_info[i] for i in self.out_indices)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {
            'stem': r'^(?:cls_token|pos_embed|patch_embed)',
            'blocks': [(r'^blocks\.(\d+)\.', None), (r'^blocks\.attn\.', (99999,)), (r'^norm\.', (99999,))],
        }

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The position embedding and the class token (timm's ViT convention)."""
        return {'pos_embed', 'cls_token'}

    def cam_target_layer(self) -> str:
        """Grad-CAM target: the last block's ``norm1`` (its patch tokens reach the class token; the block output's
        patch tokens do not, so their gradient is zero)."""
        return f'blocks.{len(self.blocks) - 1}.norm1'

    def cam_reshape_transform(self) -> Callable[[Tensor], Tensor]:
        """Grad-CAM ``reshape_transform`` for :meth:`cam_target_layer` (or any block): tokens to NCHW, square inputs."""
        return functools.partial(tokens_to_nchw, num_prefix_tokens=self.num_prefix_tokens)


def _vit(**kwargs: Any) -> VisionTransformer:
    return VisionTransformer(**kwargs)


register_model_family(
    'vit', first_conv='patch_embed.proj', classifier='head', reduction=None, crop_pct=0.9, interpolation='bicubic',
    paper_ids=('arXiv:2012.12877', 'arXiv:2010.11929'),
    paper_name='Training data-efficient image transformers & distillation through attention',
    feature_cfg=dict(feature_cls='getter'), feature_levels=13,  # timm's features: forward_intermediates, every block
)
_VIT = dict(input_size=(3, 224, 224), family='vit', attns=_ATTNS, attn_defaults=_DIA_DEFAULTS)


@register_model(attn_widths=(192,), **_VIT)
def deit_tiny(**kwargs: Any) -> VisionTransformer:
    """DeiT-Tiny / ViT-Tiny, patch 16 (timm ``deit_tiny_patch16_224`` = ``vit_tiny_patch16_224``): 5,717,416 params."""
    return _vit(patch_size=16, embed_dim=192, depth=12, num_heads=3, **kwargs)


@register_model(attn_widths=(384,), **_VIT)
def deit_small(**kwargs: Any) -> VisionTransformer:
    """DeiT-Small / ViT-Small, patch 16 (timm ``deit_small_patch16_224``): 22,050,664 params."""
    return _vit(patch_size=16, embed_dim=384, depth=12, num_heads=6, **kwargs)
