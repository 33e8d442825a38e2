"""Detection and segmentation with attention: backbones for torchvision's heads and torchvision's models by name.

* :mod:`plugattn.dense.backbones`: :func:`fpn_backbone` (a torchvision ``BackboneWithFPN`` on any classification
  name with attention) and :func:`segmentation_backbone` (the ``{'out', 'aux'}`` features of ``DeepLabV3`` / ``FCN``);
* :mod:`plugattn.dense.models`: :func:`build_dense_model`, torchvision's ``FasterRCNN``, ``RetinaNet``, ``FCOS``,
  ``MaskRCNN``, ``SSD`` (SSDLite), ``DeepLabV3``, ``FCN`` and ``LRASPP`` on such backbones, or on their own with the
  attention attached (what ``plugattn train --task detection|segmentation`` builds).
"""
from .backbones import FeatureDict, fpn_backbone, segmentation_backbone
from .models import DETECTION_MODELS, SEGMENTATION_MODELS, build_dense_model, dense_model_names, model_task

__all__ = [
    'DETECTION_MODELS',
    'SEGMENTATION_MODELS',
    'FeatureDict',
    'build_dense_model',
    'dense_model_names',
    'fpn_backbone',
    'model_task',
    'segmentation_backbone',
]
