"""Write docs/models.md: every registered model with its parameters, attention parameters and MACs.

Models are built on the meta device, so the whole registry takes seconds: parameter counts need only shapes, and
``FlopCounterMode`` counts conv/linear/matmul MACs from shapes too (spec D11: FLOPs / 2, batch 1, eval mode,
each model at its default input size). Run: ``.venv/bin/python scripts/model_table.py``.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

import plugattn
from plugattn.engine import count_macs
from plugattn.models import get_model_entry

# Reference counts the test suite asserts, quoted in the introduction (name, classes, parameters).
REFERENCE = (('se_resnet50', 1000), ('bav1_resnet50', 1000), ('bav2_resnet50', 1000), ('ca_mobilenetv2', 1000),
             ('dia_resnet164', 100))
# Published or library counts the plain transformers equal (tests/test_models.py, test_cswin.py).
TRANSFORMER_NOTES = {
    'swin_t': '= timm', 'swin_s': '= timm', 'deit_tiny': '= timm', 'deit_small': '= timm',
    'pvt_v1_tiny': 'published 13.2 M', 'pvt_v1_small': 'published 24.5 M',
    'cswin_t': '= official', 'cswin_s': '= official', 'cswin_b': '= official', 'cswin_l': '= official',
}
TRANSFORMER_FAMILIES = ('swin', 'pvt', 'vit', 'cswin')
# Row order of the matrices: ImageNet CNNs, CIFAR networks, mobile networks, then the transformers.
FAMILY_ORDER = ('resnet', 'resnet_cifar', 'preresnet', 'wrn', 'mobilenetv2', 'regnety', 'swin', 'pvt', 'vit', 'cswin')


def _params(name: str, **kwargs: object) -> int:
    with torch.device('meta'):
        return sum(p.numel() for p in plugattn.create_model(name, **kwargs).parameters())


def _matrix(rows: list[tuple], attns: list[str], labels: dict[str, str], transformers: bool) -> list[str]:
    """One row per backbone: its input size, the plain model's GMACs and the parameters of every variant."""
    by_name = {r[2]: r for r in rows}
    backbones = [r for r in rows if r[2] == r[1] and (r[0] in TRANSFORMER_FAMILIES) == transformers]

    def order(row: tuple) -> tuple:  # family, then depth where the name has it (resnet20 ... resnet164), else size
        prefix, depth = re.match(r'([a-z]+)(\d*)', row[1]).groups()
        family = FAMILY_ORDER.index(row[0]) if row[0] in FAMILY_ORDER else len(FAMILY_ORDER)
        return family, prefix, int(depth) if depth else row[3]

    backbones.sort(key=order)
    cols = [a for a in attns if any(f'{a}_{b[1]}' in by_name for b in backbones)]
    head = ['backbone', 'px', 'GMACs', 'plain', *(labels[a] for a in cols)]
    lines = ['| ' + ' | '.join(head) + ' |', '|:---|---:|---:|' + '---:|' * (1 + len(cols))]
    for family, backbone, _, params, _, macs, size in backbones:
        note = TRANSFORMER_NOTES.get(backbone) or ('native SE' if family == 'regnety' else '')
        cells = [f'`{backbone}`', str(size[1]), f'{macs / 1e9:.3f}', f'{params:,}' + (f' ({note})' if note else '')]
        cells += [f'{by_name[f"{a}_{backbone}"][3]:,}' if f'{a}_{backbone}' in by_name else '-' for a in cols]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def main() -> None:
    from plugattn.layers import ATTN_REGISTRY, attn_level

    rows = []
    for name in plugattn.list_models():
        entry = get_model_entry(name)
        with torch.device('meta'):
            model = plugattn.create_model(name)
        size = tuple(model.default_cfg['input_size'])
        params = sum(p.numel() for p in model.parameters())
        attn = sum(p.numel() for m in model.attention_modules().values() for p in m.parameters())
        macs = count_macs(model, size, device='meta')
        rows.append((entry.cfg['family'], entry.backbone, name, params, attn, macs, size))
    rows.sort(key=lambda r: (r[0], r[1], r[2] != r[1], r[2]))
    labels = {n: info.label for n, info in ATTN_REGISTRY.items()}
    # columns: the baselines, then the papers' gate modules, bridge attention and DIA; a new module by its level
    known = ('se', 'eca', 'cbam', 'ca', 'ela_t', 'ela_b', 'ela_s', 'ela_l', 'bav1', 'bav2', 'dia')
    levels = ('gate', 'block', 'stage')
    attns = sorted(ATTN_REGISTRY, key=lambda n: (levels.index(attn_level(n)), n not in known,
                                                 known.index(n) if n in known else 0, n))
    reference = ', '.join(f'{n} {_params(n, num_classes=c):,}' + ('' if c == 1000 else f' at {c} classes')
                          for n, c in REFERENCE)
    lines = [
        '# Models',
        '',
        f'{len(rows)} registered models. Parameters at the default number of classes (1000 for ImageNet-size models, '
        '10 for CIFAR-size ones); MACs: conv/linear/matmul multiply-adds of one image at the default input size, '
        'counted with `torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2); norms, pooling, activations and gating '
        'multiplies are not counted. ECA uses the paper\'s adaptive kernel size here. **Every parameter count of the '
        f'reference specification is asserted by the test suite and matches exactly** (e.g. {reference}). '
        'Generated by `scripts/model_table.py`, which builds every model on the meta device (no machine enters the '
        'numbers); `plugattn list-models \'PATTERN\' --params` prints the same counts.',
        '',
        '## Parameters by backbone and attention',
        '',
        *_matrix(rows, attns, labels, transformers=False),
        '',
        'ELA-T\'s 32 GroupNorm groups cannot take 16-wide CIFAR stages or MobileNetV2\'s 144-wide hidden layers, so '
        'those combinations are not registered and building them raises a `ValueError` that names the channels; DIA '
        'is not defined for MobileNetV2. ECA on MobileNetV2 uses the official per-block kernels (k=1 if c<96, else 3); '
        'on RegNet-Y a plug-in attention replaces the native SE (`keep_se=True` keeps both).',
        '',
        '## Transformers',
        '',
        'BAv2 and DIA placements are ours; timm or official keys, any input size (`img_size=` argument).',
        '',
        *_matrix(rows, attns, labels, transformers=True),
        '',
        '## Every registered model',
        '',
        'Attention parameters are those inside the attention modules (DIA\'s extra `bn_additional` in PreResNet/WRN '
        'is outside them).',
        '',
        '| family | model | input | params | attention params | GMACs |',
        '|---|---|---|---:|---:|---:|',
    ]
    for family, _, name, params, attn, macs, size in rows:
        lines.append(f'| {family} | `{name}` | {size[1]}x{size[2]} | {params:,} | {attn:,} | {macs / 1e9:.4f} |')
    out = Path(__file__).resolve().parents[1] / 'docs' / 'models.md'
    out.parent.mkdir(exist_ok=True)
    out.write_text('\n'.join(lines) + '\n')
    print(f'wrote {out} ({len(rows)} models)')


if __name__ == '__main__':
    main()
