"""Make the Grad-CAM example figure of the README (``docs/cam_example.png``) with ``plugattn cam`` itself.

Writes the first test image of a class of the checkpoint's data set (default: the first ankle boot of the
Fashion-MNIST test split) to ``docs/cam_input.png`` at its native size, then runs::

    plugattn cam --checkpoint RUN --image docs/cam_input.png --output docs/cam_example.png

so the README's picture is exactly what the command writes. Usage::

    plugattn train --epochs 1                                     # a BAv2-ResNet-20 on Fashion-MNIST
    python benchmarks/make_cam_example.py --checkpoint runs/fashion-mnist-bav2_resnet20-...
"""
from __future__ import annotations

import argparse
from pathlib import Path

from plugattn.cli import main as plugattn_main

ROOT = Path(__file__).resolve().parents[1]


def write_test_image(checkpoint: str, class_name: str, path: Path) -> None:
    """Save the first test image of ``class_name`` of the checkpoint's data set as a PNG at its native size."""
    from PIL import Image

    from plugattn.data import build_loader
    from plugattn.engine import read_weights
    from plugattn.engine.evaluation import resolve_checkpoint

    _, meta = read_weights(resolve_checkpoint(checkpoint))
    data = meta['data']['name']
    loader = build_loader(data, 'test', batch_size=512, train=False)
    classes = list(loader.info.classes or [])
    if class_name not in classes:
        raise SystemExit(f'{data} has no class {class_name!r}; choose one of {", ".join(classes)}')
    label = classes.index(class_name)
    index = int((loader.labels == label).nonzero()[0])
    image = loader.images[index].permute(1, 2, 0).squeeze(-1).numpy()  # uint8, as stored
    Image.fromarray(image).save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True, help='a trained run directory or .safetensors file')
    parser.add_argument('--class-name', default='Ankle boot', help='class of the test image shown')
    parser.add_argument('--method', default='gradcam')
    parser.add_argument('--input', type=Path, default=ROOT / 'docs' / 'cam_input.png')
    parser.add_argument('--output', type=Path, default=ROOT / 'docs' / 'cam_example.png')
    args = parser.parse_args()
    write_test_image(args.checkpoint, args.class_name, args.input)
    return plugattn_main(['cam', '--checkpoint', args.checkpoint, '--image', str(args.input), '--method', args.method,
                          '--output', str(args.output)])


if __name__ == '__main__':
    raise SystemExit(main())
