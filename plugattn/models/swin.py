"""Swin Transformer with plug-in bridge attention (BAv2) or DIA in its blocks.

Paper: "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", Liu et al., ICCV 2021,
arXiv:2103.14030. Official code: https://github.com/microsoft/Swin-Transformer (``models/swin_transformer.py``);
timm ``models/swin_transformer.py`` (v1.0 layout, followed here for state_dict keys, padding and window clamping).

Attention placement (ours: no official code exists, specs D12 and the §9/§10 proposals; the BAv2 authors trained a
``ba_swin_tiny_patch4_window7_224`` whose code is unpublished, specs §9):
    * **BAv2** (block level): each block bridges the token means of ``[window-attention output (after proj), MLP
      hidden (after GELU)]`` plus the MLP output and gates the MLP output channel-wise before its residual addition.
      One module per block (reduction 16), key ``layers.{s}.blocks.{i}.ba``: 944,088 parameters on Swin-T,
      1,718,856 on Swin-S.
    * **DIA** (stage level): one unit per stage (the blocks of a stage have equal width), key ``layers.{s}.attn``.
      It takes the token mean of each block's MLP-branch output, carries its state through the stage's blocks (zero
      at the first block of every stage) and gates that branch output before the residual addition. The patch
      merging at the start of a stage is not gated. Gate-map reduction 16 (ours, as for ImageNet CNN widths, specs
      D9): 501,300 parameters on Swin-T and Swin-S (6,540 / 24,600 / 95,280 / 374,880 per stage).
    * The branch output is handed to the attention modules as the NCHW map of the window grid, so their spatial mean
      is the token mean; the modules are the CNN ones (same names and counts).

Differences from the reference:
    * Backbone keys equal timm's (``patch_embed.{proj,norm}``, ``layers.{s}.downsample.{norm,reduction}``,
      ``layers.{s}.blocks.{i}.{norm1, attn.relative_position_bias_table, attn.qkv, attn.proj, norm2, mlp.fc1,
      mlp.fc2}``, ``norm``, ``head.fc``): timm Swin weights load with ``strict=True`` into the plain models and the
      outputs agree. The official repository's keys differ by its stage-end ``downsample`` (timm moved it to the
      next stage's start) and ``head`` instead of ``head.fc``.
    * Any input size works, as timm's ``dynamic_img_size``: windows are clamped to the feature map, the shift is
      dropped where the map fits in one window, maps are padded to a multiple of the window, and the shifted-window
      mask is built for the actual size in ``forward``. When a window is smaller than the one the
      relative-position table was built for, its biases are read from the same table (same relative offsets).
    * Windows are clamped at construction to the stage resolution of ``img_size`` as timm does (so the table sizes
      and the parameter counts equal timm's at every ``img_size``).
    * ``forward_features`` returns normalised NHWC tokens (timm); ``features_only`` returns NCHW maps of the patch
      embedding and of the four stages (reductions 4, 4, 8, 16, 32).
    * Window attention runs ``F.scaled_dot_product_attention`` with bias and shift mask as its additive mask (timm's
      fused path); MAC counting switches it to explicit matmuls (:func:`~plugattn.layers.token.explicit_attention`).
    * ``torch.fx`` graphs are traced at ``img_size`` (window clamping, shift and mask are Python decisions on the map
      size), as timm's Swin; the pretrained cfg therefore says ``fixed_input_size``. Eager and TorchScript runs take
      any size. A scripted DIA Swin runs its stages' shared-unit loop as a Python call (no ``torch.jit.save``).
"""
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from ..errors import PlugattnError
from ..layers import StageAttention, create_attn
from ..layers.registry import AttnSpec
from ..layers.token import Mlp, dot_product_attention
from ._base import AttnNet, FeatureInfo, is_fx_proxy, run_stage, stage_attn_kwargs, stage_blocks
from ._registry import register_model, register_model_family
from .vit import block_bridge, drop_path_rates, init_transformer_weights, transformer_attn_level

__all__ = ['SwinBlock', 'SwinStage', 'SwinTransformer']

Size = tuple[int, int]


def window_partition(x: Tensor, window: Size) -> Tensor:
    """``(B, H, W, C)`` -> ``(B * num_windows, wh * ww, C)``; H and W must be multiples of the window."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // window[0], window[0], W // window[1], window[1], C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window[0] * window[1], C)


def window_reverse(windows: Tensor, window: Size, H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * num_windows, wh * ww, C)`` -> ``(B, H, W, C)``."""
    C = windows.shape[-1]
    x = windows.reshape(-1, H // window[0], W // window[1], window[0], window[1], C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def relative_position_index(window: Size, table_window: Size, device: torch.device | None = None) -> Tensor:
    """Index into a ``(2 Th - 1) (2 Tw - 1)`` bias table for every token pair of a ``window`` (<= table window)."""
    coords = torch.stack(torch.meshgrid(
        torch.arange(window[0], device=device), torch.arange(window[1], device=device), indexing='ij',
    )).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + table_window[0] - 1) * (2 * table_window[1] - 1) + rel[..., 1] + table_window[1] - 1


def shifted_window_mask(Hp: int, Wp: int, window: Size, shift: Size, like: Tensor) -> Tensor:
    """0 / -100 mask ``(num_windows, area, area)`` of the shifted windows of a padded ``Hp x Wp`` map, on the
    device and dtype of ``like`` (a constant of the graph when FX traces)."""
    if not torch.jit.is_scripting() and is_fx_proxy(like):
        img = torch.zeros((1, Hp, Wp, 1))
    else:
        img = like.new_zeros((1, Hp, Wp, 1))
    cnt = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            img[:, h[0]:h[1], w[0]:w[1], :] = cnt
            cnt += 1
    regions = window_partition(img, window).squeeze(-1)
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with a learned relative-position bias table (timm keys).

    Args:
        dim: token width.
        num_heads: attention heads.
        window_size: window the bias table is built for.
        qkv_bias: bias of the qkv projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: Size,
            qkv_bias: bool = True,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise PlugattnError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))
        self.register_buffer(
            'relative_position_index', relative_position_index(window_size, window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def rel_pos_bias(self, window: Size) -> Tensor:
        """Bias ``(1, heads, area, area)`` of a window no larger than the table's."""
        if window == self.window_size:
            index = self.relative_position_index
        else:
            index = relative_position_index(window, self.window_size, self.relative_position_bias_table.device)
        area = window[0] * window[1]
        bias = self.relative_position_bias_table[index.reshape(-1)].reshape(area, area, -1)
        return bias.permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: Tensor, window: Size, mask: Tensor | None = None) -> Tensor:
        """Attention inside windows ``(B * num_windows, area, C)``; ``mask`` (num_windows, area, area) or None."""
        B_, N = x.shape[0], x.shape[1]
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.rel_pos_bias(window)
        if mask is not None:
            num_win = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask.unsqueeze(1).unsqueeze(0)).expand(B_ // num_win, -1, -1, -1, -1)
            bias = bias.reshape(-1, self.num_heads, N, N)  # (1, heads) bias + (windows, 1) mask, per window
        p = self.attn_drop.p if self.training else 0.0
        out = dot_product_attention(q, k, v, bias.to(q.dtype), scale=self.scale, dropout_p=p)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B_, N, -1)))


class SwinBlock(nn.Module):
    """(Shifted-)window transformer block on NHWC maps; the MLP-branch output is the gated residual branch.

    Args:
        dim: token width.
        num_heads: attention heads.
        window_size: window (already clamped to the stage resolution of ``img_size``).
        shift: whether this is a shifted-window block (odd blocks of a stage).
        mlp_ratio: MLP hidden width / ``dim``.
        qkv_bias: bias of the qkv projection.
        proj_drop: dropout after the projections.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic-depth rate of both residual branches.
        attn: plug-in attention spec (block level is built here; stage level is owned by the stage).
        attn_kwargs: options of the plug-in attention.
        input_resolution: map size at the reference ``img_size`` (what FX tracing assumes; default the window).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: Size,
            shift: bool = False,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
            *,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | None = None,
            input_resolution: Size | None = None,
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.window_size = window_size
        self.shift_size = (window_size[0] // 2, window_size[1] // 2) if shift else (0, 0)
        self.input_resolution = input_resolution or window_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = StochasticDepth(drop_path, 'row') if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden, drop=proj_drop)
        self.drop_path2 = StochasticDepth(drop_path, 'row') if drop_path > 0 else nn.Identity()
        self.ba = block_bridge(attn, transformer_attn_level(attn), dim, hidden, attn_kwargs)

    def _window_attn(self, x: Tensor) -> Tensor:
        H, W = x.shape[1], x.shape[2]
        if not torch.jit.is_scripting() and is_fx_proxy(x):
            H, W = self.input_resolution  # FX traces at the reference size (as timm's Swin), sizes must be ints
        # timm's rule: the window shrinks to a map that fits in it, and such a map is not shifted
        window = (min(H, self.window_size[0]), min(W, self.window_size[1]))
        shift = (self.shift_size[0] if window[0] < H else 0, self.shift_size[1] if window[1] < W else 0)
        has_shift = shift[0] > 0 or shift[1] > 0
        if has_shift:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        pad_h = (window[0] - H % window[0]) % window[0]
        pad_w = (window[1] - W % window[1]) % window[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        mask = shifted_window_mask(Hp, Wp, window, shift, x) if has_shift else None
        x = window_reverse(self.attn(window_partition(x, window), window, mask), window, Hp, Wp)[:, :H, :W]
        if has_shift:
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x

    def forward_branch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """MLP-branch output as an NCHW map (gated by the block's bridge attention) and the NHWC stream."""
        a = self._window_attn(self.norm1(x))
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


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm -> Linear(4C -> 2C, no bias), NHWC; odd sizes are zero-padded."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        H, W = x.shape[1], x.shape[2]
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Optional patch merging, then blocks (``blocks.{i}``), with an optional shared stage-level unit (``attn``).

    Iterating the stage yields its blocks (as :class:`~plugattn.models.AttnStage` does), which is what the analysis
    tools expect of a stage.

    Args:
        blocks: the stage's blocks.
        downsample: patch merging at the start of the stage, or ``None``.
        attn: stage-level attention shared by the blocks (DIA), or ``None``.
    """

    def __init__(
            self,
            blocks: list[SwinBlock],
            downsample: nn.Module | None = None,
            attn: StageAttention | None = None,
    ) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.attn = attn
        self.depth = len(blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, idx: int) -> SwinBlock:
        return self.blocks[idx]

    def __iter__(self) -> Iterator[SwinBlock]:
        return iter(self.blocks)

    def forward_checkpointed(self, x: Tensor) -> Tensor:
        """:meth:`forward` with every block under activation checkpointing."""
        return run_stage(list(self.blocks), self.attn, self.downsample(x), checkpointing=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.attn is None:
            return self.blocks(x)
        return self._forward_dia(x)

    @torch.jit.ignore  # the shared unit's state is handed from block to block in Python
    def _forward_dia(self, x: Tensor) -> Tensor:
        return run_stage(stage_blocks(self.blocks, self.depth), self.attn, x)


class ClassifierHead(nn.Module):
    """Global average pool of NHWC tokens, dropout and ``fc`` (timm's ``head.fc`` key)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop(x.mean((1, 2)))
        return x if pre_logits else self.fc(x)


class PatchEmbed(nn.Module):
    """Strided conv patches -> NHWC -> LayerNorm (timm keys ``proj``, ``norm``); inputs are zero-padded to a
    multiple of the patch size."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        x = F.pad(x, (0, (p - x.shape[3] % p) % p, 0, (p - x.shape[2] % p) % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformer(AttnNet):
    """Swin Transformer (four stages of shifted-window blocks) with an optional plug-in attention.

    Args:
        img_size: reference input size (int or (H, W)); windows are clamped to its stage resolutions, as timm.
        patch_size: patch side of the embedding.
        in_chans: image channels.
        num_classes: classifier outputs (0: no classifier).
        embed_dim: width of the first stage (doubled at every stage).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: window side.
        mlp_ratio: MLP hidden width / stage width.
        qkv_bias: bias of the qkv projections.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after the projections in the blocks.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth, rising linearly over all blocks to this rate (timm default 0.1).
        global_pool: ``'avg'`` or ``''`` (no pooling, with ``num_classes=0``: ``forward`` returns NHWC maps).
        attn: plug-in attention: ``'bav2'`` / ``'bav1'`` (block level), ``'dia'`` (one unit per stage) or ``None``.
        attn_kwargs: options of the plug-in attention, one dict or one per stage.
    """

    first_conv_key = 'patch_embed.proj'
    classifier_key = 'head.fc'
    output_fmt = 'NHWC'

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            window_size: int = 7,
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
        if len(depths) != len(num_heads):
            raise PlugattnError(f'depths {tuple(depths)} and num_heads {tuple(num_heads)} must have the same length')
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        level = transformer_attn_level(attn)
        num_stages = len(depths)
        dims = [embed_dim * 2 ** i for i in range(num_stages)]
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = dims[-1]
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        res = (-(-img_size[0] // patch_size), -(-img_size[1] // patch_size))
        info = [dict(num_chs=embed_dim, reduction=patch_size, module='patch_embed')]
        stages = []
        for i, (dim, depth, heads, dpr, kwargs) in enumerate(zip(
                dims, depths, num_heads, drop_path_rates(drop_path_rate, depths),
                stage_attn_kwargs(attn_kwargs, num_stages))):
            if i > 0:
                res = ((res[0] + 1) // 2, (res[1] + 1) // 2)
            window = (min(res[0], window_size), min(res[1], window_size))
            blocks = [
                SwinBlock(dim, heads, window, j % 2 == 1, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate,
                          dpr[j], attn=attn if level == 'block' else None, attn_kwargs=kwargs, input_resolution=res)
                for j in range(depth)
            ]
            stages.append(SwinStage(
                blocks,
                PatchMerging(dims[i - 1], dim) if i > 0 else None,
                create_attn(attn, dim, **kwargs) if level == 'stage' else None,
            ))
            info.append(dict(num_chs=dim, reduction=patch_size * 2 ** i, module=f'layers.{i}'))
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        self.stage_names = tuple(f'layers.{i}' for i in range(num_stages))
        self.feature_info = FeatureInfo(info)
        self.set_global_pool(global_pool)
        init_transformer_weights(self)

    def stages(self) -> list[nn.Module]:
        return list(self.layers)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.patch_embed(x)

    def forward_final(self, x: Tensor) -> Tensor:
        return self.norm(x)

    def forward_stages(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
            for stage in self.layers:
                x = stage.forward_checkpointed(x)
            return x
        return self.layers(x)

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
        """Patch-embedding and stage outputs, NCHW (default) or NHWC; ``norm`` applies the final norm to the last
        stage's output; ``final`` is :meth:`forward_features` (NHWC). See :meth:`AttnNet.forward_intermediates`."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise PlugattnError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        out = super().forward_intermediates(x, indices, norm, stop_early, 'NCHW', intermediates_only)
        feats = out if intermediates_only else out[1]
        if output_fmt == 'NCHW':
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return feats if intermediates_only else (out[0], feats)

    def pool(self, x: Tensor) -> Tensor:
        return x.mean((1, 2)) if self.global_pool == 'avg' else x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head.drop(self.pool(x))
        return x if pre_logits else self.head.fc(x)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {
            'stem': r'^patch_embed\.',
            'blocks': r'^layers\.(\d+)\.' if coarse else [
                (r'^layers\.(\d+)\.downsample\.', (0,)),
                (r'^layers\.(\d+)\.blocks\.(\d+)\.', None),
                (r'^layers\.(\d+)\.attn\.', (99999,)),
                (r'^norm\.', (99999,)),
            ],
        }

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The relative-position bias tables (timm's Swin convention)."""
        return {n for n, _ in self.named_parameters() if 'relative_position_bias_table' in n}

    def cam_target_layer(self) -> str:
        """Grad-CAM target: the final ``norm`` (NHWC tokens the average-pooled head sees)."""
        return 'norm'

    def cam_reshape_transform(self) -> Callable[[Tensor], Tensor]:
        """Grad-CAM ``reshape_transform`` for :meth:`cam_target_layer`: NHWC -> NCHW."""
        return _nhwc_to_nchw


def _nhwc_to_nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


register_model_family(
    'swin', first_conv='patch_embed.proj', classifier='head.fc', reduction=32, crop_pct=0.9, interpolation='bicubic',
    fixed_input_size=True,  # FX graphs are traced at img_size (eager runs take any size)
    paper_ids=('arXiv:2103.14030',),
    paper_name='Swin Transformer: Hierarchical Vision Transformer using Shifted Windows',
    feature_cfg=dict(flatten_sequential=True),  # timm's feature wrapper runs the flattened Sequential in order
)
_SWIN = dict(input_size=(3, 224, 224), family='swin', attns=['bav2', 'dia'], attn_defaults={'dia': {'reduction': 16}})


@register_model(attn_widths=(96, 192, 384, 768), **_SWIN)
def swin_t(**kwargs: Any) -> SwinTransformer:
    """Swin-T, patch 4, window 7 (timm ``swin_tiny_patch4_window7_224``): 28,288,354 params."""
    return SwinTransformer(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), **kwargs)


@register_model(attn_widths=(96, 192, 384, 768), **_SWIN)
def swin_s(**kwargs: Any) -> SwinTransformer:
    """Swin-S, patch 4, window 7 (timm ``swin_small_patch4_window7_224``): 49,606,258 params."""
    return SwinTransformer(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), **kwargs)
