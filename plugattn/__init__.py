"""plugattn: paper-faithful plug-in attention for vision backbones.

Bridge attention (BAv1, BAv2), dense-and-implicit attention (DIA), efficient local attention (ELA-T/B/S/L) and
coordinate attention (CA), with SE, ECA and CBAM as baselines, in ResNet-family backbones, and ``plugattn.attach``
to plug any of them into torchvision and timm models.

    >>> import plugattn
    >>> model = plugattn.create_model('bav2_resnet50', num_classes=1000)
    >>> plugattn.list_models('bav2*')[:3]
    ['bav2_cswin_b', 'bav2_cswin_l', 'bav2_cswin_s']
    >>> names = plugattn.register_timm()  # timm.create_model('bav2_resnet50') from now on (timm is optional)
"""
from . import attach
from .hub import attachable, create_model, list_models
from .layers import attn_info, create_attn, get_attn, list_attn, register_attn
from .layers.norms import freeze_bn
from .models import load_official
from .models import register_with_timm as register_timm
from .version import __version__

__all__ = [
    '__version__',
    'attach',
    'attachable',
    'attn_info',
    'create_attn',
    'create_model',
    'freeze_bn',
    'get_attn',
    'list_attn',
    'list_models',
    'load_official',
    'register_attn',
    'register_timm',
]
