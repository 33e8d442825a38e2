"""Augmentation settings and batched, generator-driven tensor augmentations.

:class:`AugConfig` holds the user-facing settings. :class:`BatchAugmenter` applies them to a whole
uint8 batch ``(B, C, H, W)`` with tensor operations and returns normalised float32 images. Its
randomness is split in two steps so that it is reproducible and independent of how a batch is
sharded over processes:

* :meth:`BatchAugmenter.sample` draws every random parameter for ``n`` samples from an explicit
  :class:`torch.Generator` (never the global RNG);
* :meth:`BatchAugmenter.apply` applies a slice of those parameters to the matching images.

Order of operations (each only when enabled): random resized crop, random crop with zero padding,
horizontal flip, colour jitter (brightness, contrast, saturation in that fixed order), RandAugment,
normalisation, random erasing.

RandAugment follows timm's ``rand-m9-n2-mstd0.5-inc1`` strings (see :func:`parse_randaugment`):
the same 15 ops and magnitude-to-argument mappings, applied per sample but batched by op, with every
draw from the explicit generator (so a batch's augmentation does not depend on how it is sharded).
``tests/test_aug_timm.py`` checks every op against timm's at several magnitudes. Differences to timm:
the geometric ops resample with ``grid_sample`` in ``AugConfig.interpolation`` (nearest, bilinear or
bicubic: torch's bicubic kernel uses a = -0.75, PIL's a = -0.5) and blend the fill (the dataset mean,
as timm's ``img_mean``) into the edge pixels where PIL fills them whole; the ImageEnhance ops round
like PIL within one level; ``Posterize`` at 0 bits gives black (Pillow refuses 0 bits, so timm fails
there); op weights (``w``) are not supported. The ``imagefolder`` path can use timm's own transform
instead (``AugConfig.pipeline``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from .errors import DataError

__all__ = [
    "RANDAUGMENT_OPS",
    "AugConfig",
    "BatchAugmenter",
    "Normalizer",
    "RandAugmentSpec",
    "parse_randaugment",
    "sample_resized_crop",
]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
PIPELINES = ("auto", "plugattn", "timm")


# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RandAugmentSpec:
    """Parsed RandAugment setting (timm semantics).

    Attributes:
        magnitude: Magnitude ``m`` on timm's 0..10 scale.
        num_ops: Number ``n`` of ops applied per image.
        magnitude_std: Per-op Gaussian noise on the magnitude; ``inf`` (any value > 100) draws
            the magnitude uniformly from ``[0, m]``.
        magnitude_max: Upper clip of the noisy magnitude.
        increasing: Use timm's "increasing" op variants (``inc1``), whose severity grows with ``m``.
        prob: Probability that each chosen op is applied.
    """

    magnitude: float = 10.0
    num_ops: int = 2
    magnitude_std: float = 0.0
    magnitude_max: float = 10.0
    increasing: bool = False
    prob: float = 0.5


def parse_randaugment(text: str) -> RandAugmentSpec:
    """Parse a timm-style RandAugment string.

    Supported: ``rand`` followed by any of ``-m<float>`` (magnitude, default 10), ``-n<int>``
    (ops per image, default 2), ``-mstd<float>`` (magnitude noise, default 0), ``-mmax<float>``
    (magnitude clip, default 10), ``-inc<0|1>`` (increasing ops, default 0) and ``-p<float>``
    (per-op probability, default 0.5), e.g. ``rand-m9-mstd0.5-inc1``.

    Args:
        text: The string.

    Returns:
        The parsed spec.

    Raises:
        DataError: The string does not start with ``rand`` or has an unknown or bad part.
    """
    example = "e.g. 'rand-m9-mstd0.5-inc1' (keys m, n, mstd, mmax, inc, p)"
    parts = text.strip().split("-")
    if parts[0] != "rand":
        raise DataError(f"randaugment {text!r} must start with 'rand', {example}")
    values: dict[str, Any] = {}
    names = {"m": "magnitude", "n": "num_ops", "mstd": "magnitude_std", "mmax": "magnitude_max", "inc": "increasing"}
    names["p"] = "prob"
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?|\.\d+)", part)
        if match is None or match.group(1) not in names:
            raise DataError(f"randaugment {text!r}: cannot parse {part!r}, {example}")
        key, raw = match.groups()
        value = float(raw)
        if key == "n":
            if value != int(value) or value < 1:
                raise DataError(f"randaugment {text!r}: n must be a positive integer, {example}")
            value = int(value)
        elif key == "inc":
            value = bool(int(value))
        elif key == "mstd" and value > 100:
            value = math.inf
        elif key == "p" and value > 1:
            raise DataError(f"randaugment {text!r}: p must be in [0, 1], {example}")
        values[names[key]] = value
    return RandAugmentSpec(**values)


def invalid(section: str, key: str, value: Any, why: str) -> DataError:
    """The one-line error of a bad setting of a config-section dataclass (``aug``, ``mixup``).

    The error names the dotted key (``aug.scale``) and carries it as ``err.key``, so the config layer can add how to
    set it.
    """
    err = DataError(f"{section}.{key}={value!r} is invalid: {why}")
    err.key = f"{section}.{key}"
    return err


def _help(text: str, **extra: Any) -> dict[str, Any]:
    """Field metadata read by the config schema (:mod:`plugattn.engine.config`): one-line help and options."""
    return {"help": text, **extra}


@dataclass
class AugConfig:
    """Training augmentation settings; the defaults mean no augmentation.

    This dataclass is the ``aug:`` section of a recipe: the config schema is derived from its fields (type,
    default, ``metadata['help']``) and its ranges are checked here only. Only ``image_size`` and
    ``interpolation`` also apply to evaluation loaders.

    Attributes:
        random_crop_padding: Pad each side with zeros by this many pixels, then crop back to
            the original size at a random offset (0 disables).
        hflip: Flip horizontally with probability 0.5.
        random_resized_crop: Random resized crop to ``image_size`` (torchvision's algorithm);
            the usual choice for ``imagefolder``.
        scale: Area range of the random resized crop, as fractions of the image.
        ratio: Aspect-ratio range of the random resized crop.
        randaugment: timm-style RandAugment string such as ``rand-m9-mstd0.5-inc1`` (see
            :func:`parse_randaugment`), or None.
        color_jitter: Strength of random brightness, contrast and saturation changes, each factor
            drawn from ``[max(0, 1 - s), 1 + s]`` (0 disables). Applied as set, also with
            RandAugment (timm's ``create_transform`` drops it there unless forced: recipes that
            reproduce a timm run set it to 0 when RandAugment is on).
        random_erasing: Probability of erasing one random rectangle per image with Gaussian
            noise after normalisation (timm's ``mode='pixel'``).
        image_size: Side of the square output images; None keeps the native size (224 for
            ``imagefolder``).
        interpolation: Resampling for resizing and geometric ops: ``nearest``, ``bilinear`` or ``bicubic``.
        pipeline: Who augments the ``imagefolder`` training images (the in-memory datasets always
            use the batched tensor ops of :class:`BatchAugmenter`): ``plugattn`` (this module, one
            image at a time), ``timm`` (``timm.data.create_transform``, needs timm and
            ``random_resized_crop`` without ``random_crop_padding``) or ``auto`` (timm when it is
            installed and the settings map onto it, else plugattn). Both are seeded per sample.
    """

    random_crop_padding: int = field(default=0, metadata=_help("zero padding of the random crop (0: off)"))
    hflip: bool = field(default=False, metadata=_help("random horizontal flip"))
    random_resized_crop: bool = field(default=False, metadata=_help("RandomResizedCrop to image_size"))
    scale: tuple[float, float] = field(default=(0.08, 1.0), metadata=_help("area range of the random resized crop"))
    ratio: tuple[float, float] = field(
        default=(3.0 / 4.0, 4.0 / 3.0), metadata=_help("aspect range of the random resized crop")
    )
    randaugment: str | None = field(
        default=None, metadata=_help("timm RandAugment string, e.g. 'rand-m9-mstd0.5-inc1'")
    )
    color_jitter: float = field(default=0.0, metadata=_help("brightness/contrast/saturation jitter strength"))
    random_erasing: float = field(default=0.0, metadata=_help("random erasing probability"))
    image_size: int | None = field(default=None, metadata=_help("square input size (null: native size)"))
    interpolation: str = field(default="bilinear", metadata=_help("resampling", choices=INTERPOLATIONS))
    pipeline: str = field(
        default="auto", metadata=_help("imagefolder training transform: auto, plugattn or timm", choices=PIPELINES)
    )

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> DataError:
            return invalid("aug", key, getattr(self, key), why)

        if isinstance(self.random_crop_padding, bool) or not isinstance(self.random_crop_padding, int):
            raise bad("random_crop_padding", "use a whole number of pixels >= 0")
        if self.random_crop_padding < 0:
            raise bad("random_crop_padding", "use a whole number of pixels >= 0")
        for flag in ("hflip", "random_resized_crop"):
            if not isinstance(getattr(self, flag), bool):
                raise bad(flag, "use true or false")
        for key, lo_bound, hi_bound in (("scale", 0.0, 1.0), ("ratio", 0.0, math.inf)):
            value = getattr(self, key)
            try:
                lo, hi = (float(v) for v in value)
            except (TypeError, ValueError):
                raise bad(key, "use two numbers [low, high]") from None
            if not lo_bound < lo <= hi <= hi_bound:
                raise bad(key, f"need {lo_bound} < low <= high <= {hi_bound}")
            object.__setattr__(self, key, (lo, hi))
        if self.randaugment is not None:
            if not isinstance(self.randaugment, str):
                raise bad("randaugment", "use a string like 'rand-m9-mstd0.5-inc1' or null")
            try:
                parse_randaugment(self.randaugment)
            except DataError as err:
                err.key = "aug.randaugment"
                raise
        for key, hi_bound in (("color_jitter", math.inf), ("random_erasing", 1.0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= hi_bound:
                raise bad(key, f"use a number in [0, {hi_bound}]")
        if self.image_size is not None and (
            isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size <= 0
        ):
            raise bad("image_size", "use a positive whole number of pixels or null")
        if self.interpolation not in INTERPOLATIONS:
            raise bad("interpolation", f"choose one of {', '.join(INTERPOLATIONS)}")
        if self.pipeline not in PIPELINES:
            raise bad("pipeline", f"choose one of {', '.join(PIPELINES)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | AugConfig | None) -> AugConfig:
        """Build from a mapping (e.g. a recipe's ``aug:`` section), rejecting unknown keys.

        Args:
            data: Mapping of field names to values; None gives the defaults; an
                :class:`AugConfig` is returned as is.

        Returns:
            The validated config.

        Raises:
            DataError: Unknown key (with the closest valid key suggested) or invalid value.
        """
        if data is None:
            return cls()
        if isinstance(data, AugConfig):
            return data
        if not isinstance(data, Mapping):
            raise DataError(f"augmentation settings must be a mapping, got {type(data).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            import difflib

            key = str(unknown[0])
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DataError(f"unknown augmentation key {key!r}: {hint}valid keys are {', '.join(valid)}")
        values = dict(data)
        for key in ("scale", "ratio"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (``from_dict(to_dict())`` round-trips)."""
        return asdict(self)

    @property
    def randaugment_spec(self) -> RandAugmentSpec | None:
        """The parsed ``randaugment`` string, or None."""
        return None if self.randaugment is None else parse_randaugment(self.randaugment)

    @property
    def enabled(self) -> bool:
        """Whether any random training augmentation is switched on."""
        return bool(
            self.random_crop_padding
            or self.hflip
            or self.random_resized_crop
            or self.randaugment
            or self.color_jitter
            or self.random_erasing
        )


# --------------------------------------------------------------------------------------------- helpers


class Normalizer:
    """uint8 ``(B, C, H, W)`` → float32 ``(x / 255 - mean) / std`` per channel.

    Args:
        mean: Per-channel mean of pixel values in [0, 1].
        std: Per-channel standard deviation.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        mean_t = torch.tensor(mean, dtype=torch.float64)
        std_t = torch.tensor(std, dtype=torch.float64)
        self.scale = (1.0 / (255.0 * std_t)).float().view(1, -1, 1, 1)
        self.bias = (-mean_t / std_t).float().view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).mul_(self.scale).add_(self.bias)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _uniform(generator: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64) * (hi - lo) + lo


def sample_resized_crop(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Draw random-resized-crop boxes with torchvision's algorithm, vectorised.

    Ten attempts per sample draw an area fraction from ``scale`` and a log-uniform aspect ratio
    from ``ratio``; the first box that fits is placed uniformly; without one, a centre crop with the
    aspect ratio clamped to ``ratio`` is used.

    Args:
        n: Number of boxes.
        height: Source image height.
        width: Source image width.
        scale: Area range as fractions of the image.
        ratio: Aspect-ratio (width / height) range.
        generator: Source of randomness.

    Returns:
        int64 tensor ``(n, 4)`` of ``(top, left, h, w)``.
    """
    area = float(height * width)
    target = area * _uniform(generator, (n, 10), scale[0], scale[1])
    aspect = torch.exp(_uniform(generator, (n, 10), math.log(ratio[0]), math.log(ratio[1])))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)
    found = ok.any(dim=1)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    pos = torch.rand((n, 2), generator=generator, dtype=torch.float64)
    top = torch.floor(pos[:, 0] * (height - h + 1))
    left = torch.floor(pos[:, 1] * (width - w + 1))
    h = torch.where(found, h, float(fh))
    w = torch.where(found, w, float(fw))
    top = torch.where(found, top, float((height - fh) // 2))
    left = torch.where(found, left, float((width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def _grid_sample(x: torch.Tensor, grid: torch.Tensor, fill: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample uint8 images at normalised ``grid`` positions, outside points take ``fill``."""
    xf = x.to(torch.float32) - fill
    out = F.grid_sample(xf, grid.to(torch.float32), mode=mode, padding_mode="zeros", align_corners=False)
    return _to_uint8(out + fill)


def _warp(x: torch.Tensor, mats: torch.Tensor, fill: torch.Tensor, mode: str) -> torch.Tensor:
    """Affine warp with per-sample matrices mapping output to input pixel coordinates (PIL convention)."""
    _, _, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij"
    )
    pts = torch.stack([xs.flatten(), ys.flatten(), torch.ones(h * w, dtype=torch.float64)])  # (3, HW)
    src = mats.to(torch.float64) @ pts  # (k, 2, HW)
    grid = torch.stack([src[:, 0] * (2.0 / w) - 1.0, src[:, 1] * (2.0 / h) - 1.0], dim=-1).view(-1, h, w, 2)
    return _grid_sample(x, grid, fill, mode)


def _gray(xf: torch.Tensor) -> torch.Tensor:
    if xf.shape[1] == 3:
        return xf[:, 0:1] * 0.299 + xf[:, 1:2] * 0.587 + xf[:, 2:3] * 0.114
    return xf.mean(dim=1, keepdim=True)


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: ``degenerate + factor * (x - degenerate)``, per-sample factor."""
    xf = x.to(torch.float32)
    f = factor.to(torch.float32).view(-1, 1, 1, 1)
    return _to_uint8(degenerate + f * (xf - degenerate))


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre weight 5) with border pixels kept, as ImageEnhance.Sharpness."""
    xf = x.to(torch.float32)
    c = x.shape[1]
    kernel = torch.ones(3, 3)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    out = xf.clone()
    if x.shape[-1] > 2 and x.shape[-2] > 2:
        out[:, :, 1:-1, 1:-1] = F.conv2d(xf, kernel, groups=c)
    return out


# --------------------------------------------------------------------------------------------- RandAugment ops
# Each op: (x uint8 (k, C, H, W), level in [0, 1] (k,), sign ±1 (k,), fill (1, C, 1, 1), mode) -> uint8.


def _op_autocontrast(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    xf = x.to(torch.float32)
    lo = xf.amin(dim=(2, 3), keepdim=True)
    hi = xf.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 255.0 / (hi - lo).clamp_min(1.0))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return _to_uint8((xf - lo) * scale)


def _op_equalize(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    return TF.equalize(x)


def _op_invert(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    return 255 - x


def _op_rotate(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    _, _, h, w = x.shape
    theta = torch.deg2rad(level * 30.0 * sign).to(torch.float64)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    mats = torch.stack(
        [torch.stack([cos, -sin, cx - cos * cx + sin * cy], -1), torch.stack([sin, cos, cy - sin * cx - cos * cy], -1)],
        dim=1,
    )
    return _warp(x, mats, fill, mode)


def _affine_mats(
    k: int,
    a: float | Tensor = 0.0,
    b: float | Tensor = 0.0,
    c: float | Tensor = 0.0,
    d: float | Tensor = 0.0,
    e: float | Tensor = 0.0,
    f: float | Tensor = 0.0,
) -> Tensor:
    mats = torch.zeros(k, 2, 3, dtype=torch.float64)
    mats[:, 0, 0], mats[:, 0, 1], mats[:, 0, 2] = 1.0 + a, b, c
    mats[:, 1, 0], mats[:, 1, 1], mats[:, 1, 2] = d, 1.0 + e, f
    return mats


def _op_shear_x(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    return _warp(x, _affine_mats(len(x), b=level * 0.3 * sign), fill, mode)


def _op_shear_y(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    return _warp(x, _affine_mats(len(x), d=level * 0.3 * sign), fill, mode)


def _op_translate_x(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    return _warp(x, _affine_mats(len(x), c=level * 0.45 * sign * x.shape[-1]), fill, mode)


def _op_translate_y(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    return _warp(x, _affine_mats(len(x), f=level * 0.45 * sign * x.shape[-2]), fill, mode)


def _posterize_bits(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    bits = bits.to(torch.int64).clamp(0, 8)
    mask = ((255 << (8 - bits)) & 255).to(torch.uint8).view(-1, 1, 1, 1)
    return x & mask


def _op_posterize(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    return _posterize_bits(x, torch.floor(level * 4))


def _op_posterize_inc(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    return _posterize_bits(x, 4 - torch.floor(level * 4))


def _solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    t = threshold.to(torch.int16).view(-1, 1, 1, 1)
    return torch.where(x.to(torch.int16) >= t, 255 - x, x)


def _op_solarize(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    return _solarize(x, torch.floor(level * 256))


def _op_solarize_inc(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    return _solarize(x, 256 - torch.floor(level * 256))


def _op_solarize_add(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
    add = torch.floor(level * 110).to(torch.int16).view(-1, 1, 1, 1)
    xi = x.to(torch.int16)
    return torch.where(xi < 128, (xi + add).clamp(max=255), xi).to(torch.uint8)


def _enhance_factor(level: Tensor, sign: Tensor, increasing: bool) -> Tensor:
    if increasing:
        return (1.0 + sign * level * 0.9).clamp_min(0.1)
    return level * 1.8 + 0.1


def _color(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, _gray(x.to(torch.float32)), factor)


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, _gray(x.to(torch.float32)).mean(dim=(1, 2, 3), keepdim=True), factor)


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, torch.zeros(()), factor)


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, _smooth(x), factor)


def _enhance_op(fn: Callable[[Tensor, Tensor], Tensor], increasing: bool) -> Callable[..., Tensor]:
    def op(x: Tensor, level: Tensor, sign: Tensor, fill: Tensor, mode: str) -> Tensor:
        return fn(x, _enhance_factor(level, sign, increasing))

    return op


_OPS = {
    "AutoContrast": _op_autocontrast,
    "Equalize": _op_equalize,
    "Invert": _op_invert,
    "Rotate": _op_rotate,
    "Posterize": _op_posterize,
    "Solarize": _op_solarize,
    "SolarizeAdd": _op_solarize_add,
    "Color": _enhance_op(_color, False),
    "Contrast": _enhance_op(_contrast, False),
    "Brightness": _enhance_op(_brightness, False),
    "Sharpness": _enhance_op(_sharpness, False),
    "ShearX": _op_shear_x,
    "ShearY": _op_shear_y,
    "TranslateXRel": _op_translate_x,
    "TranslateYRel": _op_translate_y,
    "PosterizeIncreasing": _op_posterize_inc,
    "SolarizeIncreasing": _op_solarize_inc,
    "ColorIncreasing": _enhance_op(_color, True),
    "ContrastIncreasing": _enhance_op(_contrast, True),
    "BrightnessIncreasing": _enhance_op(_brightness, True),
    "SharpnessIncreasing": _enhance_op(_sharpness, True),
}

RANDAUGMENT_OPS: dict[bool, tuple[str, ...]] = {
    False: (
        "AutoContrast",
        "Equalize",
        "Invert",
        "Rotate",
        "Posterize",
        "Solarize",
        "SolarizeAdd",
        "Color",
        "Contrast",
        "Brightness",
        "Sharpness",
        "ShearX",
        "ShearY",
        "TranslateXRel",
        "TranslateYRel",
    ),
    True: (
        "AutoContrast",
        "Equalize",
        "Invert",
        "Rotate",
        "PosterizeIncreasing",
        "SolarizeIncreasing",
        "SolarizeAdd",
        "ColorIncreasing",
        "ContrastIncreasing",
        "BrightnessIncreasing",
        "SharpnessIncreasing",
        "ShearX",
        "ShearY",
        "TranslateXRel",
        "TranslateYRel",
    ),
}
"""timm's RandAugment op lists (``_RAND_TRANSFORMS`` / ``_RAND_INCREASING_TRANSFORMS``), keyed by ``inc``."""


# --------------------------------------------------------------------------------------------- augmenter

Params = dict[str, torch.Tensor]


def slice_params(params: Params, start: int, stop: int) -> Params:
    """The parameters of samples ``start:stop`` of a batch drawn by :meth:`BatchAugmenter.sample`."""
    return {k: v[start:stop] for k, v in params.items()}


class BatchAugmenter:
    """Training augmentation of uint8 batches with per-sample random parameters.

    Args:
        aug: The settings.
        mean: Dataset per-channel mean (normalisation, and fill of RandAugment's geometric ops).
        std: Dataset per-channel std.
        size: ``(H, W)`` of the images given to :meth:`apply` (and returned by it).
        resized_crop: Whether to do the random resized crop here; the streaming path does it
            on the PIL image instead and passes False.
    """

    def __init__(
        self,
        aug: AugConfig,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        size: tuple[int, int],
        *,
        resized_crop: bool = True,
    ) -> None:
        self.aug = aug
        self.size = (int(size[0]), int(size[1]))
        self.normalize = Normalizer(mean, std)
        self.resized_crop = resized_crop and aug.random_resized_crop
        self.ra = aug.randaugment_spec
        self.ra_ops = [_OPS[n] for n in RANDAUGMENT_OPS[self.ra.increasing]] if self.ra else []
        self.fill = torch.tensor([round(m * 255.0) for m in mean], dtype=torch.float32).view(1, -1, 1, 1)
        self.mode = aug.interpolation

    def sample(self, n: int, generator: torch.Generator) -> Params:
        """Draw the random parameters of ``n`` samples.

        The draws happen in a fixed order from ``generator`` only, so equal generator states give
        equal parameters, and the parameters of sample ``i`` do not depend on how the batch is later
        sliced.

        Args:
            n: Number of samples.
            generator: Source of randomness.

        Returns:
            A dict of tensors whose first dimension is ``n``.
        """
        aug, (h, w), p = self.aug, self.size, {}
        if self.resized_crop:
            p["rrc"] = sample_resized_crop(n, h, w, aug.scale, aug.ratio, generator)
        if aug.random_crop_padding:
            p["crop"] = torch.randint(0, 2 * aug.random_crop_padding + 1, (n, 2), generator=generator)
        if aug.hflip:
            p["flip"] = torch.rand(n, generator=generator) < 0.5
        if aug.color_jitter:
            s = float(aug.color_jitter)
            p["jitter"] = _uniform(generator, (n, 3), max(0.0, 1.0 - s), 1.0 + s).float()
        if self.ra is not None:
            shape = (n, self.ra.num_ops)
            p["ra_op"] = torch.randint(0, len(self.ra_ops), shape, generator=generator)
            p["ra_apply"] = torch.rand(shape, generator=generator) < self.ra.prob
            mag = torch.full(shape, float(self.ra.magnitude), dtype=torch.float64)
            if math.isinf(self.ra.magnitude_std):
                mag = mag * torch.rand(shape, generator=generator, dtype=torch.float64)
            elif self.ra.magnitude_std > 0:
                mag = mag + self.ra.magnitude_std * torch.randn(shape, generator=generator, dtype=torch.float64)
            p["ra_level"] = (mag.clamp(0.0, self.ra.magnitude_max) / 10.0).float()
            p["ra_sign"] = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
        if aug.random_erasing:
            p.update(self._sample_erasing(n, generator))
        return p

    def _sample_erasing(self, n: int, generator: torch.Generator) -> Params:
        """timm RandomErasing boxes: area 2%..1/3, aspect 0.3..3.3, up to 10 attempts."""
        h, w = self.size
        target = (h * w) * _uniform(generator, (n, 10), 0.02, 1.0 / 3.0)
        aspect = torch.exp(_uniform(generator, (n, 10), math.log(0.3), math.log(1.0 / 0.3)))
        eh = torch.round(torch.sqrt(target * aspect))
        ew = torch.round(torch.sqrt(target / aspect))
        ok = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
        first = ok.to(torch.int8).argmax(dim=1, keepdim=True)
        eh = eh.gather(1, first).squeeze(1)
        ew = ew.gather(1, first).squeeze(1)
        pos = torch.rand((n, 2), generator=generator, dtype=torch.float64)
        top = torch.floor(pos[:, 0] * (h - eh + 1))
        left = torch.floor(pos[:, 1] * (w - ew + 1))
        on = (torch.rand(n, generator=generator) < self.aug.random_erasing) & ok.any(dim=1)
        seeds = torch.randint(0, 2**62, (n,), generator=generator)
        return {"erase": on, "erase_box": torch.stack([top, left, eh, ew], 1).to(torch.int64), "erase_seed": seeds}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Augment and normalise a batch.

        Args:
            x: uint8 images ``(B, C, H, W)`` with ``(H, W) == size``; not modified.
            params: Parameters of exactly these ``B`` samples (see :func:`slice_params`).

        Returns:
            float32 normalised images ``(B, C, H, W)``.
        """
        if x.shape[0] == 0:
            return self.normalize(x)
        if "rrc" in params:
            x = self._resized_crop(x, params["rrc"])
        if "crop" in params:
            x = self._crop(x, params["crop"], params.get("flip"))
        elif "flip" in params:
            x = torch.where(params["flip"].view(-1, 1, 1, 1), x.flip(-1), x)
        if "jitter" in params:
            x = self._jitter(x, params["jitter"])
        if self.ra is not None:
            x = self._randaugment(x, params)
        out = self.normalize(x)
        if "erase" in params:
            self._erase(out, params)
        return out

    def _resized_crop(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        top, left, bh, bw = (boxes[:, i].to(torch.float64) for i in range(4))
        theta = torch.zeros(len(x), 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = bw / w
        theta[:, 0, 2] = (2 * left + bw) / w - 1
        theta[:, 1, 1] = bh / h
        theta[:, 1, 2] = (2 * top + bh) / h - 1
        grid = F.affine_grid(theta.float(), [len(x), c, h, w], align_corners=False)
        return _grid_sample(x, grid, torch.zeros(()), self.mode)

    def _crop(self, x: torch.Tensor, offsets: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
        """Random crop from the zero-padded batch by two gathers (rows, then columns); a flip is
        folded into the column indices."""
        pad = self.aug.random_crop_padding
        b, c, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (offsets[:, 0:1] + torch.arange(h)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
        cols = (offsets[:, 1:2] + torch.arange(w)).view(b, 1, 1, w)
        if flip is not None:
            cols = torch.where(flip.view(b, 1, 1, 1), cols.flip(-1), cols)
        return padded.gather(2, rows).gather(3, cols.expand(b, c, h, w))

    def _jitter(self, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.float32) * factors[:, 0].view(-1, 1, 1, 1)
        xf = xf.clamp_(0, 255)
        m = _gray(xf).mean(dim=(1, 2, 3), keepdim=True)
        xf = (m + factors[:, 1].view(-1, 1, 1, 1) * (xf - m)).clamp_(0, 255)
        if xf.shape[1] == 3:
            g = _gray(xf)
            xf = (g + factors[:, 2].view(-1, 1, 1, 1) * (xf - g)).clamp_(0, 255)
        return _to_uint8(xf)

    def _randaugment(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        x = x.clone()
        for layer in range(params["ra_op"].shape[1]):
            ops = params["ra_op"][:, layer]
            active = params["ra_apply"][:, layer]
            for op_id in torch.unique(ops[active]).tolist():
                sel = torch.nonzero(active & (ops == op_id)).squeeze(1)
                level = params["ra_level"][sel, layer]
                sign = params["ra_sign"][sel, layer]
                x.index_copy_(0, sel, self.ra_ops[op_id](x.index_select(0, sel), level, sign, self.fill, self.mode))
        return x

    def _erase(self, out: torch.Tensor, params: Params) -> None:
        c = out.shape[1]
        for i in torch.nonzero(params["erase"]).squeeze(1).tolist():
            top, left, h, w = params["erase_box"][i].tolist()
            g = torch.Generator().manual_seed(int(params["erase_seed"][i]))
            out[i, :, top : top + h, left : left + w] = torch.randn((c, h, w), generator=g)
