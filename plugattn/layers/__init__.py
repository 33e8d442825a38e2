"""Attention modules, one family per file, reachable by name through :func:`create_attn`."""
from .base import BlockAttention, GateAttention, StageAttention
from .bridge_attn import BridgeAttentionV1, BridgeAttentionV2
from .cbam import CBAM
from .coord_attn import CoordAttention
from .dia import DIAUnit
from .eca import EfficientChannelAttention, eca_kernel_size
from .ela import ELA_VARIANTS, EfficientLocalAttention
from .registry import (
    ATTN_REGISTRY,
    AttnInfo,
    attn_info,
    attn_level,
    create_attn,
    get_attn,
    list_attn,
    register_attn,
)
from .squeeze_excite import SqueezeExcite

__all__ = [
    'ATTN_REGISTRY',
    'CBAM',
    'ELA_VARIANTS',
    'AttnInfo',
    'BlockAttention',
    'BridgeAttentionV1',
    'BridgeAttentionV2',
    'CoordAttention',
    'DIAUnit',
    'EfficientChannelAttention',
    'EfficientLocalAttention',
    'GateAttention',
    'SqueezeExcite',
    'StageAttention',
    'attn_info',
    'attn_level',
    'create_attn',
    'eca_kernel_size',
    'get_attn',
    'list_attn',
    'register_attn',
]
