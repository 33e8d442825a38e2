"""Backbones with plug-in attention, one family per file, built by name with :func:`create_model`."""
from . import mobilenetv2, preact_resnet, regnet, resnet  # noqa: F401  (registers the models)
from ._base import AttnNet, AttnStage, FeatureInfo
from ._registry import (
    ModelEntry,
    ModelFamily,
    create_model,
    get_model_entry,
    get_model_family,
    list_models,
    pretrained_cfg,
    register_model,
    register_model_family,
)
from ._timm import register_if_timm_imported, register_with_timm, timm_names
from .cswin import CSWinTransformer as CSWinTransformer
from .mobilenetv2 import MobileNetV2
from .official import load_official
from .preact_resnet import PreActResNet
from .pvt import PyramidVisionTransformer as PyramidVisionTransformer
from .regnet import RegNet
from .resnet import ResNet
from .swin import SwinTransformer as SwinTransformer
from .vit import VisionTransformer as VisionTransformer

register_if_timm_imported()

__all__ = [
    'AttnNet',
    'AttnStage',
    'FeatureInfo',
    'MobileNetV2',
    'ModelEntry',
    'ModelFamily',
    'PreActResNet',
    'RegNet',
    'ResNet',
    'create_model',
    'get_model_entry',
    'get_model_family',
    'list_models',
    'load_official',
    'pretrained_cfg',
    'register_model',
    'register_model_family',
    'register_with_timm',
    'timm_names',
]
