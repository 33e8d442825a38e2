"""Augmentation against timm: RandAugment op-by-op parity, timm's transform for image folders, recipe pipelines."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from plugattn.data import AugConfig, DataError, build_loader
from plugattn.data.augment import _OPS, RANDAUGMENT_OPS

timm_aa = pytest.importorskip('timm.data.auto_augment')

FILL = (124, 116, 104)
MAGNITUDES = (0, 2, 5, 9, 10)
PIXEL_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Posterize', 'Solarize', 'SolarizeAdd', 'PosterizeIncreasing',
             'SolarizeIncreasing')
ENHANCE_OPS = ('Color', 'Contrast', 'Brightness', 'Sharpness', 'ColorIncreasing', 'ContrastIncreasing',
               'BrightnessIncreasing', 'SharpnessIncreasing')
GEOMETRIC_OPS = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


def _image() -> np.ndarray:
    """A fixed 40x40 RGB image: three gradients of different periods plus noise (every op changes it)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:40]
    img = np.stack([(xx * 6) % 256, (yy * 5 + 30) % 256, ((xx + yy) * 3 + 60) % 256], -1).astype(np.float64)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def _timm_op(name: str, img: np.ndarray, magnitude: float, negate: bool, resample: int,
             monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """timm's op at a fixed magnitude; ``negate`` fixes the random sign timm draws with ``random.random()``."""
    from PIL import Image

    level_fn = timm_aa.LEVEL_TO_ARG[name]
    with monkeypatch.context() as m:
        m.setattr(random, 'random', lambda: 0.9 if negate else 0.1)  # timm negates when random() > 0.5
        args = level_fn(magnitude, {'translate_const': 100, 'img_mean': FILL}) if level_fn else ()
    out = timm_aa.NAME_TO_OP[name](Image.fromarray(img), *args, fillcolor=FILL, resample=resample)
    return torch.from_numpy(np.array(out)).permute(2, 0, 1)[None]


def _ours(name: str, img: np.ndarray, magnitude: float, negate: bool, mode: str) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
    fill = torch.tensor(FILL, dtype=torch.float32).view(1, -1, 1, 1)
    return _OPS[name](x, torch.tensor([magnitude / 10.0]), torch.tensor([-1.0 if negate else 1.0]), fill, mode)


def test_op_lists_are_timms():
    assert list(RANDAUGMENT_OPS[False]) == timm_aa._RAND_TRANSFORMS
    assert list(RANDAUGMENT_OPS[True]) == timm_aa._RAND_INCREASING_TRANSFORMS
    assert set(_OPS) == set(PIXEL_OPS + ENHANCE_OPS + GEOMETRIC_OPS)


@pytest.mark.parametrize('name', PIXEL_OPS + ENHANCE_OPS + GEOMETRIC_OPS)
@pytest.mark.parametrize('mode', ['bilinear', 'bicubic'])
def test_randaugment_op_matches_timm(name: str, mode: str, monkeypatch: pytest.MonkeyPatch):
    """Every op at magnitudes 0, 2, 5, 9, 10 and both signs, on one fixed image, against timm's PIL op.

    Tolerances (uint8 levels): pixel-wise ops exact (AutoContrast within 1: PIL rounds its lookup table); the
    ImageEnhance blends within 1 (PIL rounds in integer arithmetic); geometric ops (rotate, shear, translate) mean
    absolute difference <= 1.5 with bilinear and <= 2.5 with bicubic, and >= 95 % / 85 % of the pixels within 2
    levels. The rest is the seam where the image meets the fill, where PIL fills a pixel whose sample point lies
    outside and ``grid_sample`` blends the fill with the edge pixels, and torch's bicubic kernel (a = -0.75)
    against PIL's (a = -0.5).
    """
    from PIL import Image

    img = _image()
    resample = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[mode]
    checked = 0
    for magnitude in MAGNITUDES:
        if 'Posterize' in name and timm_aa.LEVEL_TO_ARG[name](magnitude, {})[0] == 0:
            continue  # 0 bits: Pillow >= 9 refuses ImageOps.posterize(img, 0), so timm cannot run it (ours: black)
        for negate in (False, True):
            ref = _timm_op(name, img, magnitude, negate, resample, monkeypatch)
            out = _ours(name, img, magnitude, negate, mode)
            assert out.dtype == torch.uint8 and out.shape == ref.shape
            diff = (out.int() - ref.int()).abs()
            where = f'{name} m={magnitude} negate={negate} {mode}'
            if name in PIXEL_OPS:
                assert int(diff.max()) <= (1 if name == 'AutoContrast' else 0), where
            elif name in ENHANCE_OPS:
                assert int(diff.max()) <= 1, where
            else:
                bilinear = mode == 'bilinear'
                assert float(diff.float().mean()) <= (1.5 if bilinear else 2.5), where
                assert float((diff <= 2).float().mean()) >= (0.95 if bilinear else 0.85), where
            checked += 1
    assert checked >= 6
    if name not in ('AutoContrast', 'Equalize', 'Invert'):  # the magnitude reaches the op: levels differ
        assert not torch.equal(_ours(name, img, 2, False, mode), _ours(name, img, 10, False, mode))


# --------------------------------------------------------------------------------------------- image-folder path


def _folder(root: Path, n: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ('train', 'val'):
        for c in ('a', 'b'):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (30, 34, 3), dtype=np.uint8)).save(root / split / c / f'{i}.png')
    return root


def _timm_aug(**kw) -> AugConfig:
    return AugConfig(random_resized_crop=True, hflip=True, randaugment='rand-m9-mstd0.5-inc1', random_erasing=0.5,
                     image_size=16, interpolation='bicubic', **kw)


def _collect(loader) -> list[torch.Tensor]:
    return [x for x, _ in loader]


def test_imagefolder_uses_timms_transform_seeded_per_sample(tmp_path: Path):
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import RandomResizedCropAndInterpolation

    root = _folder(tmp_path / 'f')
    kw = dict(train=True, data_dir=root, seed=3, batch_size=3)
    loader = build_loader('imagefolder', 'train', aug=_timm_aug(), **kw)
    steps = loader.dataset.transform.timm.transforms
    kinds = [type(t) for t in steps]
    assert RandomResizedCropAndInterpolation in kinds and RandAugment in kinds and RandomErasing in kinds
    assert loader.dataset.transform.augmenter is None  # no second augmentation on top

    torch.manual_seed(123)
    random.seed(123)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    first = _collect(loader)
    after = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    assert torch.equal(before[0], after[0]) and before[1] == after[1] and np.array_equal(before[2], after[2])
    assert all(x.shape == (3, 3, 16, 16) for x in first)
    again = _collect(build_loader('imagefolder', 'train', aug=_timm_aug(), num_workers=2, **kw))
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # workers or not, the same tensors
    loader.set_epoch(1)
    assert not all(torch.equal(a, b) for a, b in zip(first, _collect(loader)))  # a new epoch draws anew

    # Each sample is timm's transform with the global generators seeded from (seed, epoch, index).
    from PIL import Image

    from plugattn.data.loader import _seeded_global_rngs, derive_seed

    index = int(next(iter(loader.sampler.base)))
    path = loader.dataset.samples[index][0]
    with _seeded_global_rngs(derive_seed(3, 1, 'sample', index)):
        ref = loader.dataset.transform.timm(Image.open(path).convert('RGB'))
    torch.testing.assert_close(_collect(loader)[0][0], ref, rtol=0, atol=0)


def test_pipeline_choice_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    from plugattn.data.loader import use_timm_pipeline

    assert use_timm_pipeline(_timm_aug())  # auto with timm installed
    assert not use_timm_pipeline(_timm_aug(pipeline='plugattn'))
    assert not use_timm_pipeline(AugConfig(random_crop_padding=4, hflip=True))  # auto: timm cannot pad-crop
    with pytest.raises(DataError, match=r'aug\.pipeline=timm needs random_resized_crop=true'):
        use_timm_pipeline(AugConfig(hflip=True, pipeline='timm'))
    with pytest.raises(DataError, match=r"aug\.pipeline='tim' is invalid: choose one of auto, plugattn, timm"):
        AugConfig(pipeline='tim')
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'timm' else real(name, *a))
    assert not use_timm_pipeline(_timm_aug())  # auto without timm: plugattn's pipeline
    with pytest.raises(DataError, match='needs timm, which is not installed'):
        use_timm_pipeline(_timm_aug(pipeline='timm'))


# --------------------------------------------------------------------------------------------- recipes


def test_bav2_recipe_pipeline_has_randaugment_and_no_colour_jitter(tmp_path: Path):
    """The transform pipeline the bav2-imagenet-300ep recipe builds, on both pipelines: RandAugment on, no jitter."""
    from timm.data.auto_augment import RandAugment
    from torchvision.transforms import ColorJitter

    from plugattn.engine import resolve_config

    cfg = resolve_config('bav2-imagenet-300ep')
    assert cfg['aug']['randaugment'] == 'rand-m9-mstd0.5-inc1' and cfg['aug']['color_jitter'] == 0.0
    root = _folder(tmp_path / 'f')
    aug = {**cfg['aug'], 'image_size': 16}  # the recipe at a test size
    timm_path = build_loader('imagefolder', 'train', batch_size=2, train=True, data_dir=root, aug=aug)
    steps = [type(t) for t in timm_path.dataset.transform.timm.transforms]
    assert RandAugment in steps and ColorJitter not in steps
    ours = build_loader('imagefolder', 'train', batch_size=2, train=True, data_dir=root,
                        aug={**aug, 'pipeline': 'plugattn'})
    params = ours.dataset.transform.augmenter.sample(8, torch.Generator().manual_seed(0))
    assert 'ra_op' in params and 'erase' in params and 'jitter' not in params
    # A config that does ask for jitter with RandAugment gets it on both pipelines (timm's is forced on).
    jitter = build_loader('imagefolder', 'train', batch_size=2, train=True, data_dir=root,
                          aug={**aug, 'color_jitter': 0.4})
    assert ColorJitter in [type(t) for t in jitter.dataset.transform.timm.transforms]
