"""Class-activation maps (Grad-CAM and relatives) of plugattn models, overlaid on the input images.

Uses the ``grad-cam`` package (jacobgil/pytorch-grad-cam; optional extra ``plugattn[viz]``). The default target
layer is the last block of the last stage (``model.stages()[-1][-1]``), the layer Grad-CAM is usually shown for on
ResNets. In a DIA stage the blocks are driven by the stage (each block's ``body``, then the shared unit's merge) rather
than called, so hooks on them never fire: there the default is the stage itself, whose output *is* its last block's
output.

Preprocessing: the image is converted to RGB (3-channel models) or grey (1-channel models), resized to the model's
input size (without cropping, so the map covers the whole image) and normalised with the mean/std a checkpoint
records (its training data's), else with the ImageNet mean/std (their average for grey images). The map is
resized back to the original image size and overlaid on it.

Output: one labelled composite per image (:func:`compose_cam`, needs matplotlib): the original image, the overlay,
the predicted class name and probability, the class the map explains, and a colour bar of the map's scale (the
overlay uses OpenCV's JET colour map through grad-cam, the bar matplotlib's ``jet``, the same map).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import StageAttention
from ..models._base import AttnNet
from ._common import AnalysisError, model_stages, require

__all__ = [
    'CAM_METHODS',
    'COMPOSITE_LAYOUT',
    'COMPOSITE_SIZE',
    'CamResult',
    'compose_cam',
    'compute_cam',
    'default_target_layer',
    'preprocess',
    'run_cam',
]

# CLI name -> class name in pytorch_grad_cam.
CAM_METHODS: dict[str, str] = {
    'gradcam': 'GradCAM',
    'gradcam++': 'GradCAMPlusPlus',
    'hirescam': 'HiResCAM',
    'xgradcam': 'XGradCAM',
    'layercam': 'LayerCAM',
    'eigencam': 'EigenCAM',
    'eigengradcam': 'EigenGradCAM',
    'scorecam': 'ScoreCAM',
    'ablationcam': 'AblationCAM',
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

COMPOSITE_SIZE = (760, 400)
"""``(width, height)`` in pixels of the composite :func:`compose_cam` draws."""
COMPOSITE_LAYOUT: dict[str, tuple[float, float, float, float]] = {
    'image': (0.02, 0.04, 0.43, 0.71),
    'overlay': (0.47, 0.04, 0.43, 0.71),
    'colorbar': (0.915, 0.08, 0.02, 0.63),
}
"""Panel rectangles ``(left, bottom, width, height)`` as fractions of the composite (matplotlib convention)."""


@dataclass
class CamResult:
    """One image's map.

    Attributes:
        image: Input image path.
        output: PNG written (original size, heatmap overlaid).
        method: CAM method.
        target_layer: Qualified name of the layer the map is computed on.
        pred_class: Predicted class index.
        pred_name: Its name, when known (ImageNet classes for 1000-class models, or the checkpoint's data set).
        pred_prob: Softmax probability of the predicted class.
        target_class: Class the map explains (``pred_class`` unless ``--class`` was given).
        target_name: Its name, when known.
        target_prob: Softmax probability of the target class.
    """

    image: str
    output: str
    method: str
    target_layer: str
    pred_class: int
    pred_name: str | None
    pred_prob: float
    target_class: int
    target_name: str | None = None
    target_prob: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _foreign_cam(model: nn.Module) -> tuple[str, Any] | None:
    """The target layer and reshape of a torchvision / timm token model (attached or not), else ``None``."""
    if hasattr(model, 'cam_target_layer') or isinstance(model, AttnNet):
        return None
    from ..attach._core import cam_layer

    return cam_layer(model)


def cam_reshape(model: nn.Module) -> Any:
    """The transform of the target layer's output to ``(B, C, h, w)`` maps: the model's own (plugattn transformers)
    or its family's (torchvision / timm ViT and Swin: tokens without the class token, NHWC maps); ``None`` for CNNs."""
    if hasattr(model, 'cam_reshape_transform'):
        return model.cam_reshape_transform()
    foreign = _foreign_cam(model)
    return foreign[1] if foreign is not None else None


def default_target_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of the last block of the last stage (the stage itself for a DIA stage), or the layer a
    model names itself through ``cam_target_layer()`` (the transformers; for torchvision / timm ViT and Swin the
    layer their :mod:`plugattn.attach` family names)."""
    if hasattr(model, 'cam_target_layer'):
        name = model.cam_target_layer()
        return name, model.get_submodule(name)
    foreign = _foreign_cam(model)
    if foreign is not None:
        return foreign[0], model.get_submodule(foreign[0])
    stages = model_stages(model)
    if not stages:
        raise AnalysisError(f'{type(model).__name__} has no stages()', 'pass --target-layer NAME')
    stage = stages[-1][1]
    shared = any(isinstance(m, StageAttention) for m in stage.children())  # a DIA unit: the stage is the target
    target = stage if shared else stage[-1]
    return _module_name(model, target), target


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise AnalysisError('target layer is not part of the model')


def resolve_target_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The module called ``name`` (qualified, e.g. ``layer4.1`` or ``layer4.1.conv2``), or the default."""
    if name is None:
        return default_target_layer(model)
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        stages = [n for n, _ in model_stages(model) or ()]
        raise AnalysisError(f'model has no layer {name!r}',
                            f'use a qualified module name such as {stages[-1] + ".0" if stages else "layer4.1"} '
                            '(see model.named_modules())') from None


def preprocess(
        image: Any,
        size: tuple[int, int],
        in_chans: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
) -> tuple[np.ndarray, Tensor]:
    """Load and prepare one image.

    Args:
        image: Path, PIL image or ``(H, W[, 3])`` uint8 array.
        size: Model input ``(H, W)``.
        in_chans: Model input channels (1: grey, 3: RGB).
        mean: Normalisation mean per channel (default ImageNet; its average for grey).
        std: Normalisation std per channel.

    Returns:
        ``(rgb, x)``: the original-size image as float RGB in [0, 1] ``(H0, W0, 3)`` for the overlay, and the
        normalised model input ``(1, in_chans, H, W)``.
    """
    from PIL import Image

    from ..data import DataError
    from ..data.images import read_image, to_mode

    if in_chans not in (1, 3):
        raise AnalysisError(f'cam supports 1- and 3-channel models, got {in_chans} input channels')
    mode = 'L' if in_chans == 1 else 'RGB'
    try:  # 16-bit, float and palette images as the loaders and predict read them, with predict's messages
        if isinstance(image, (str, Path)):
            src = read_image(image, mode)
        else:
            src = to_mode(Image.fromarray(image) if isinstance(image, np.ndarray) else image, mode)
    except DataError as e:
        raise AnalysisError(e.problem, e.fix) from None
    rgb = np.asarray(src.convert('RGB'), dtype=np.float32) / 255.0
    resized = src.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).reshape(size[0], size[1], in_chans).permute(2, 0, 1)
    if mean is None or std is None:
        mean = IMAGENET_MEAN if in_chans == 3 else (sum(IMAGENET_MEAN) / 3,)
        std = IMAGENET_STD if in_chans == 3 else (sum(IMAGENET_STD) / 3,)
    x = (x - torch.tensor(mean).reshape(-1, 1, 1)) / torch.tensor(std).reshape(-1, 1, 1)
    return rgb, x.unsqueeze(0)


def compute_cam(
        model: nn.Module,
        x: Tensor,
        target_layer: nn.Module,
        method: str = 'gradcam',
        class_idx: int | None = None,
) -> tuple[np.ndarray, Tensor]:
    """The class-activation map of one batch.

    Args:
        model: The model (put in eval mode).
        x: Normalised input ``(B, C, H, W)``.
        target_layer: Module whose output the map is computed on (it must output ``(B, C, h, w)``).
        method: A key of :data:`CAM_METHODS`.
        class_idx: Class to explain (default: each image's predicted class).

    Returns:
        ``(maps, probs)``: maps ``(B, H, W)`` in [0, 1] at the input resolution, and the softmax outputs.
    """
    cam_lib = require('pytorch_grad_cam', 'plugattn cam')
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    key = method.lower()
    if key not in CAM_METHODS:
        raise AnalysisError(f'unknown CAM method {method!r}', f'choose one of {", ".join(CAM_METHODS)}')
    model.eval()
    # Token layouts (ViT, PVT, Swin's NHWC maps) need the model's own transform to NCHW.
    reshape = cam_reshape(model)
    seen: list[Tensor] = []
    handle = target_layer.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            probs = model(x).softmax(1)
    finally:
        handle.remove()
    if not seen:
        raise AnalysisError('the target layer is never called by the model\'s forward (blocks of a DIA stage are '
                            'driven by the stage)', 'pick the stage (e.g. layer3) or a conv inside the block')
    if reshape is not None and isinstance(seen[0], Tensor):
        seen[0] = reshape(seen[0])
    if not isinstance(seen[0], Tensor) or seen[0].ndim != 4:
        raise AnalysisError('the target layer does not output a (batch, channels, height, width) feature map',
                            'pick a block, stage or conv layer')
    num_classes = probs.shape[1]
    if class_idx is not None and not 0 <= class_idx < num_classes:
        raise AnalysisError(f'class {class_idx} is out of range for {num_classes} classes',
                            f'pass --class between 0 and {num_classes - 1}')
    targets = [ClassifierOutputTarget(class_idx)] * x.shape[0] if class_idx is not None else None
    cam_cls = getattr(cam_lib, CAM_METHODS[key])
    with cam_cls(model=model, target_layers=[target_layer], reshape_transform=reshape) as cam:
        if hasattr(cam, 'batch_size'):  # ScoreCAM / AblationCAM: bound the masked batches
            cam.batch_size = 32
        maps = cam(input_tensor=x, targets=targets)
    return np.nan_to_num(np.asarray(maps, dtype=np.float32)), probs


def class_names(model: nn.Module, meta: dict[str, Any] | None = None) -> list[str] | None:
    """Class names a checkpoint records (or its data set's), or the ImageNet classes for 1000-class models."""
    from ..engine.preprocess import checkpoint_classes

    recorded = checkpoint_classes(meta or {})
    if recorded:
        return recorded
    data = _meta_data_name(meta or {})
    if data is not None:
        try:
            from ..data import get_dataset_info

            classes = get_dataset_info(data).classes
            if classes:
                return list(classes)
        except ValueError:
            pass
    if getattr(model, 'num_classes', None) == 1000:
        try:
            from torchvision.models import ResNet50_Weights

            return list(ResNet50_Weights.IMAGENET1K_V2.meta['categories'])
        except (ImportError, AttributeError, KeyError):
            return None
    return None


def _meta_data_name(meta: dict[str, Any]) -> str | None:
    data = meta.get('data')
    name = data.get('name') if isinstance(data, dict) else data
    return name if isinstance(name, str) else None


def _norm_and_size(model: nn.Module, meta: dict[str, Any], img_size: int | None) -> tuple[Any, Any, tuple[int, int]]:
    """Normalisation and input size: the checkpoint's data set when known, else ImageNet and the default cfg."""
    _, h, w = model.default_cfg['input_size']
    mean = std = None
    data = meta.get('data') if isinstance(meta.get('data'), dict) else {}
    name = _meta_data_name(meta)
    if name is not None:
        try:
            from ..data import get_dataset_info

            info = get_dataset_info(name, data.get('data_dir'))
            if info.in_chans == model.in_chans:
                mean, std = info.mean, info.std
                h, w = info.image_size
        except ValueError:
            pass
    if data.get('input_size'):
        h, w = (int(v) for v in data['input_size'][1:])
    prep = meta.get('preprocessing')
    if isinstance(prep, dict) and int(prep['input_size'][0]) == model.in_chans:
        mean, std = tuple(prep['mean']), tuple(prep['std'])
        h, w = (int(v) for v in prep['input_size'][1:])
    if img_size:
        h = w = img_size
    return mean, std, (h, w)


def _overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    h, w = rgb.shape[:2]
    m = torch.from_numpy(mask)[None, None]
    m = F.interpolate(m, size=(h, w), mode='bilinear', align_corners=False)[0, 0].clamp(0, 1).numpy()
    return show_cam_on_image(rgb, m, use_rgb=True, image_weight=0.5)


def _label(names: list[str] | None, index: int) -> str:
    return names[index] if names and 0 <= index < len(names) else f'class {index}'


def compose_cam(
        rgb: np.ndarray,
        overlay: np.ndarray,
        *,
        pred: str,
        pred_prob: float,
        target: str,
        target_prob: float,
        caption: str = '',
) -> np.ndarray:
    """One labelled figure: original | overlay | colour bar, with the prediction and the explained class.

    Args:
        rgb: Original image, float RGB in [0, 1] ``(H, W, 3)``.
        overlay: Overlay at the same size, uint8 RGB.
        pred: Predicted class name.
        pred_prob: Its probability.
        target: Name of the class the map explains.
        target_prob: Its probability.
        caption: Small text under the title (method, layer, model).

    Returns:
        uint8 RGB ``(height, width, 3)`` of :data:`COMPOSITE_SIZE`.
    """
    require('matplotlib', 'plugattn cam')
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = COMPOSITE_SIZE
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    # nearest-neighbour display keeps tiny images (8x8, 28x28) sharp; larger ones are shown at about 1:1
    interp = 'nearest' if max(rgb.shape[:2]) < 128 else 'antialiased'
    for key, img, title in (('image', rgb, 'input'), ('overlay', overlay, 'class-activation map')):
        ax = fig.add_axes(COMPOSITE_LAYOUT[key])
        ax.imshow(img, interpolation=interp)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    cax = fig.add_axes(COMPOSITE_LAYOUT['colorbar'])
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0, 1), cmap='jet'), cax=cax)
    bar.set_label('activation (normalised)', fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.text(0.02, 0.95, f'predicted: {pred} (p = {pred_prob:.3f})', fontsize=12, weight='bold', va='top')
    explained = f'map of: {target} (the predicted class)' if target == pred else \
        f'map of: {target} (p = {target_prob:.3f})'
    fig.text(0.02, 0.875, explained, fontsize=10, va='top')
    if caption:
        fig.text(0.98, 0.875, caption, fontsize=8, va='top', ha='right', color='0.35')
    canvas.draw()
    out = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return out


def run_cam(
        model: nn.Module,
        images: Sequence[str | Path],
        *,
        method: str = 'gradcam',
        target_layer: str | None = None,
        class_idx: int | None = None,
        output: str | Path = 'cam',
        meta: dict[str, Any] | None = None,
        img_size: int | None = None,
        overlay_only: bool = False,
) -> list[CamResult]:
    """Write ``<stem>_<method>.png`` for every image (``plugattn cam``): a labelled composite (:func:`compose_cam`:
    original, overlay, predicted class and probability, explained class, colour bar), or with ``overlay_only`` the
    bare overlay at the original image size.

    Args:
        model: A plugattn model (eval mode is set).
        images: Image files.
        method: A key of :data:`CAM_METHODS`.
        target_layer: Qualified module name (default: see :func:`default_target_layer`).
        class_idx: Class to explain (default: the predicted class).
        output: Output folder, or a ``.png`` file for a single image.
        meta: Checkpoint metadata (data set for normalisation, input size and class names).
        img_size: Model input size override (square).
        overlay_only: Write the bare overlay instead of the composite.
    """
    from PIL import Image

    require('pytorch_grad_cam', 'plugattn cam')
    if not overlay_only:
        require('matplotlib', 'plugattn cam')
    if not images:
        raise AnalysisError('no image given', 'pass --image PATH (one or more)')
    meta = meta or {}
    layer_name, layer = resolve_target_layer(model, target_layer)
    mean, std, size = _norm_and_size(model, meta, img_size)
    names = class_names(model, meta)
    # read every image before creating the output folder, so a bad file leaves nothing behind
    single_file = Path(output).suffix.lower() == '.png'
    if single_file and len(images) != 1:
        raise AnalysisError(f'--output {output} names one file but {len(images)} images were given',
                            'pass an output folder for several images')
    inputs = [(path, *preprocess(path, size, model.in_chans, mean, std)) for path in images]
    out_dir = Path(output).parent if single_file else Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path, rgb, x in inputs:
        x = x.to(next(model.parameters()).device)
        maps, probs = compute_cam(model, x, layer, method, class_idx)
        pred = int(probs[0].argmax())
        target = pred if class_idx is None else class_idx
        out_path = Path(output) if single_file else out_dir / f'{Path(path).stem}_{method.lower()}.png'
        overlay = _overlay(rgb, maps[0])
        if not overlay_only:
            caption = f'{method.lower()} on {layer_name} of {getattr(model, "model_name", type(model).__name__)}'
            if not meta:
                caption += ' (random weights)'
            overlay = compose_cam(rgb, overlay, pred=_label(names, pred), pred_prob=float(probs[0, pred]),
                                  target=_label(names, target), target_prob=float(probs[0, target]),
                                  caption=caption)
        Image.fromarray(overlay).save(out_path)
        results.append(CamResult(
            image=str(path), output=str(out_path), method=method.lower(), target_layer=layer_name,
            pred_class=pred, pred_name=names[pred] if names and pred < len(names) else None,
            pred_prob=float(probs[0, pred]), target_class=target,
            target_name=names[target] if names and target < len(names) else None,
            target_prob=float(probs[0, target]),
        ))
    return results
