"""A small DDPM-style UNet for diffusion, with an optional DIA unit per resolution level.

Papers: "Denoising Diffusion Probabilistic Models" (DDPM), Ho, Jain, Abbeel, NeurIPS 2020, arXiv:2006.11239
(official code: hojonathanho/diffusion, TensorFlow, ``diffusion_tf/models/unet.py``: ResBlocks with a time-embedding
projection, GroupNorm + SiLU, self-attention at one resolution, strided-conv downsampling, nearest upsampling and
skip concatenation); DIA: "Layer-wise shared attention network on dynamical system perspective", arXiv:2210.16101,
whose UNet integration has no published code (specs §10, [GAP]).

DIA placement (ours, specs D12 and the §10 proposal): one unit per resolution level, shared by every ResBlock that
works at that level: the encoder ResBlocks, the middle ResBlocks for the lowest level, and the decoder ResBlocks.
Each level has its own recurrent (h, c) state, zero at the start of every forward pass, carried through that level's
ResBlocks in execution order (encoder, [middle], decoder), and never passed to another level. Each ResBlock hands its
residual-branch output (after the second conv, before the addition) to its level's unit, which gates it
channel-wise before the addition. The official DIA gate-map reduction 4 is used (the widths are CIFAR-like):
2,832 / 10,784 / 10,784 parameters at widths 32 / 64 / 64, 24,400 in all for the default UNet.

Differences from the reference (DDPM):
    * Smaller than the CIFAR-10 DDPM (35.7 M parameters): base width 32, channel multipliers (1, 2, 2), two
      ResBlocks per encoder level, self-attention at the lowest level only (7x7 for 28x28 Fashion-MNIST), GroupNorm
      with 8 groups, sized for a few hundred CPU training steps.
    * The plain UNet (``attn=None``) is the baseline; ``attn='dia'`` (or any stage-level module) adds the units.
    * Self-attention is written with explicit matmuls so that ``FlopCounterMode`` counts it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...layers import GateAttention, StageAttention, attn_level, create_attn
from ...layers.base import AttnState
from ...layers.registry import AttnSpec
from ...models._base import stage_step

__all__ = ['DiffusionUNet', 'ResBlock', 'timestep_embedding']


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``(B,) -> (B, dim)`` of (integer or real) diffusion steps, [sin, cos] as DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> + time projection -> GN -> SiLU -> dropout -> conv3x3, plus a (1x1) skip.

    Args:
        in_channels: input channels.
        out_channels: output channels (the width of the gated residual branch).
        temb_channels: width of the time embedding.
        dropout: dropout before the second conv.
        groups: GroupNorm groups.
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            temb_channels: int,
            dropout: float = 0.1,
            groups: int = 8,
    ) -> None:
        super().__init__()
        for c in (in_channels, out_channels):
            if c % groups:
                raise ValueError(f'GroupNorm with {groups} groups cannot take {c} channels')
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # DDPM: the branch starts (almost) at zero
        nn.init.zeros_(self.conv2.bias)

    def forward_branch(self, x: Tensor, temb: Tensor) -> tuple[Tensor, Tensor]:
        """Residual-branch output (before the addition) and the skip path."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h, self.skip(x)

    def merge(self, h: Tensor, skip: Tensor) -> Tensor:
        """The residual addition of the (gated) branch output ``h``."""
        return skip + h

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        return self.merge(*self.forward_branch(x, temb))


class SelfAttention2d(nn.Module):
    """Single-head self-attention over the positions of a map, with a residual connection (DDPM ``AttnBlock``).

    Args:
        channels: map channels.
        groups: GroupNorm groups.
    """

    def __init__(self, channels: int, groups: int = 8) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.scale = channels ** -0.5
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        attn = ((q.transpose(1, 2) * self.scale) @ k).softmax(-1)  # (B, HW, HW)
        out = (v @ attn.transpose(1, 2)).reshape(B, C, H, W)
        return x + self.proj(out)


class _Level(nn.Module):
    """ResBlocks (``blocks``), optional self-attention after each (``attns``) and a resampler (``resample``)."""

    def __init__(self, blocks: list[ResBlock], attns: list[nn.Module], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)
        self.resample = resample


class Upsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3 (DDPM)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


class DiffusionUNet(nn.Module):
    """DDPM UNet predicting the noise ``eps(x_t, t)``, optionally with one shared DIA unit per resolution level.

    Args:
        in_chans: image channels (input and output).
        base_channels: width of the first level.
        channel_mults: width multiplier per resolution level (each level but the last halves the resolution).
        num_res_blocks: ResBlocks per encoder level (the decoder has one more per level, as DDPM).
        attn_levels: levels (0 = full resolution) with self-attention after each ResBlock; the middle block always
            has one.
        dropout: ResBlock dropout.
        groups: GroupNorm groups.
        attn: stage-level attention shared per level (``'dia'``) or ``None`` for the plain UNet.
        attn_kwargs: options of the attention (default: DIA reduction 4).
    """

    def __init__(
            self,
            in_chans: int = 1,
            base_channels: int = 32,
            channel_mults: Sequence[int] = (1, 2, 2),
            num_res_blocks: int = 2,
            attn_levels: Sequence[int] = (2,),
            dropout: float = 0.1,
            groups: int = 8,
            *,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        level = attn_level(attn)
        if level not in (None, 'stage'):
            raise ValueError(f'the diffusion UNet takes stage-level attention (dia) shared per level, got {attn!r}')
        n = len(channel_mults)
        if any(not 0 <= i < n for i in attn_levels):
            raise ValueError(f'attn_levels {tuple(attn_levels)} out of range for {n} levels')
        widths = [base_channels * m for m in channel_mults]
        temb = 4 * base_channels
        self.in_chans = in_chans
        self.base_channels = base_channels
        self.num_levels = n
        self.time_embed = nn.Sequential(nn.Linear(base_channels, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(in_chans, base_channels, 3, padding=1)

        skips, cin = [base_channels], base_channels
        down = []
        for i, w in enumerate(widths):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(cin, w, temb, dropout, groups))
                attns += [SelfAttention2d(w, groups)] if i in attn_levels else []
                cin = w
                skips.append(w)
            resample = nn.Conv2d(w, w, 3, stride=2, padding=1) if i < n - 1 else None
            if resample is not None:
                skips.append(w)
            down.append(_Level(blocks, attns, resample))
        self.down = nn.ModuleList(down)
        self.mid_block1 = ResBlock(cin, cin, temb, dropout, groups)
        self.mid_attn = SelfAttention2d(cin, groups)
        self.mid_block2 = ResBlock(cin, cin, temb, dropout, groups)
        up = []
        for i in reversed(range(n)):
            w = widths[i]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(cin + skips.pop(), w, temb, dropout, groups))
                attns += [SelfAttention2d(w, groups)] if i in attn_levels else []
                cin = w
            up.append(_Level(blocks, attns, Upsample(w) if i > 0 else None))
        self.up = nn.ModuleList(up)
        self.norm_out = nn.GroupNorm(groups, cin)
        self.conv_out = nn.Conv2d(cin, in_chans, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        kwargs = {'reduction': 4, **(attn_kwargs or {})}
        self.level_attn = nn.ModuleList(create_attn(attn, w, **kwargs) for w in widths) if level else None

    def _res(self, block: ResBlock, i: int, h: Tensor, temb: Tensor, states: list[AttnState | None]) -> Tensor:
        """One ResBlock of level ``i``, gated by the level's unit with the level's state (updated in ``states``)."""
        h, states[i] = stage_step(block, None if self.level_attn is None else self.level_attn[i], h, states[i], temb)
        return h

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predicted noise for images ``x`` (B, C, H, W; H and W divisible by 2^(levels-1)) at steps ``t`` (B,)."""
        temb = self.time_embed(timestep_embedding(t, self.base_channels))
        states: list[AttnState | None] = [None] * self.num_levels
        h = self.conv_in(x)
        hs = [h]
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.blocks):
                h = self._res(block, i, h, temb, states)
                if len(level.attns):
                    h = level.attns[j](h)
                hs.append(h)
            if level.resample is not None:
                h = level.resample(h)
                hs.append(h)
        last = self.num_levels - 1
        h = self._res(self.mid_block1, last, h, temb, states)
        h = self.mid_attn(h)
        h = self._res(self.mid_block2, last, h, temb, states)
        for k, level in enumerate(self.up):
            i = last - k
            for j, block in enumerate(level.blocks):
                h = self._res(block, i, torch.cat([h, hs.pop()], dim=1), temb, states)
                if len(level.attns):
                    h = level.attns[j](h)
            if level.resample is not None:
                h = level.resample(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def attention_modules(self) -> dict[str, nn.Module]:
        """The plug-in attention units by qualified name (none for the plain UNet)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, (GateAttention, StageAttention))}
