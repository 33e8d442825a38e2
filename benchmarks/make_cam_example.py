"""Make the Grad-CAM example figure of the README (``docs/cam_example.png``).

Top row: scikit-image's ``chelsea`` photo and its Grad-CAM overlay from a BAv2-ResNet-18 with **random weights**: no
ImageNet-trained weights are available offline, so that map is meaningless and only shows what ``plugattn cam``
writes. Bottom row (with ``--checkpoint``): Fashion-MNIST test images with the Grad-CAM of a trained checkpoint,
the map that means something. Usage::

    python benchmarks/make_cam_example.py --checkpoint runs/fashion-mnist-bav2_resnet20-...  # both rows
    python benchmarks/make_cam_example.py                                                 # the chelsea row only
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch

import plugattn
from plugattn.analysis import load_model
from plugattn.analysis.gradcam import _overlay, compute_cam, default_target_layer, preprocess

ROOT = Path(__file__).resolve().parents[1]


def chelsea_row(method: str) -> tuple[np.ndarray, np.ndarray, str]:
    from skimage import data

    img = data.chelsea()
    torch.manual_seed(0)
    model = plugattn.create_model('bav2_resnet18').eval()
    name, layer = default_target_layer(model)
    rgb, x = preprocess(img, (224, 224), 3)
    maps, _ = compute_cam(model, x, layer, method)
    return img, _overlay(rgb, maps[0]), name


def fashion_row(checkpoint: str, method: str, count: int) -> tuple[list[np.ndarray], list[str], str]:
    from plugattn.data import build_loader, get_dataset_info

    model, meta = load_model(checkpoint=checkpoint)
    info = get_dataset_info(meta['data']['name'])
    loader = build_loader(info.name, 'test', batch_size=256, train=False)
    images, labels = next(iter(loader))
    name, layer = default_target_layer(model)
    picks, seen = [], set()
    for i, y in enumerate(labels.tolist()):  # one image of each of the first classes
        if y not in seen:
            seen.add(y)
            picks.append(i)
        if len(picks) == count:
            break
    tiles, captions = [], []
    for i in picks:
        x = images[i:i + 1]
        maps, probs = compute_cam(model, x, layer, method)
        grey = (x[0, 0] * info.std[0] + info.mean[0]).clamp(0, 1).numpy()
        big = np.kron(grey, np.ones((4, 4), dtype=np.float32))  # 28 -> 112, nearest
        rgb = np.repeat(big[..., None], 3, axis=2).astype(np.float32)
        tiles.append(_overlay(rgb, maps[0]))
        pred = int(probs[0].argmax())
        mark = 'ok' if pred == int(labels[i]) else 'wrong'
        captions.append(f'true {info.classes[int(labels[i])]}\npred {info.classes[pred]} ({mark})')
    top1 = (meta.get('metrics') or {}).get('top1')
    epochs = meta.get('epoch')
    where = f'{meta["model"]}, {epochs} epoch{"" if epochs == 1 else "s"} on {info.name}'
    where += f', {top1:.1f} % top-1' if top1 else ''
    return tiles, captions, f'{where}; target layer {name}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', default=None, help='a trained Fashion-MNIST run (bottom row)')
    parser.add_argument('--method', default='gradcam')
    parser.add_argument('--count', type=int, default=5, help='Fashion-MNIST images in the bottom row')
    parser.add_argument('--output', type=Path, default=ROOT / 'docs' / 'cam_example.png')
    args = parser.parse_args()

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    img, overlay, layer = chelsea_row(args.method)
    rows = 2 if args.checkpoint else 1
    fig = Figure(figsize=(8.0, 3.3 + 2.3 * (rows - 1)), dpi=90, layout='constrained')
    FigureCanvasAgg(fig)
    sub = fig.subfigures(rows, 1, height_ratios=[3.3, 2.3]) if rows == 2 else [fig]
    top = sub[0].subplots(1, 2)
    top[0].imshow(img)
    top[0].set_title('input (skimage chelsea)', fontsize=9)
    top[1].imshow(overlay)
    top[1].set_title(f'Grad-CAM, bav2_resnet18, {layer}', fontsize=9)
    sub[0].suptitle('Random weights: this map is meaningless; it only shows the output format of plugattn cam',
                    fontsize=9, color='darkred')
    if args.checkpoint:
        tiles, captions, where = fashion_row(args.checkpoint, args.method, args.count)
        axes = sub[1].subplots(1, len(tiles))
        for ax, tile, cap in zip(np.atleast_1d(axes), tiles, captions):
            ax.imshow(tile)
            ax.set_title(cap, fontsize=8)
        sub[1].suptitle(f'Trained: {where}', fontsize=9)
    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=90)
    buf.seek(0)
    # An adaptive 256-colour palette keeps the PNG small (< 200 KB) at no visible cost.
    Image.open(buf).convert('RGB').quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.output,
                                                                                               optimize=True)
    print(f'wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KB)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
