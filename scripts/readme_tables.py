"""Write README.md's modules table and backbone list from the registries.

The modules table comes from ``register_attn(..., paper=, arxiv=, repo=)`` (one row per paper; ELA's four sizes
share one) and each module's level; the backbone list from the model registry's families. Both sit between
``<!-- --8<-- [start:NAME] -->`` / ``[end:NAME]`` markers, which the documentation site includes as they are
(``pymdownx.snippets``). Nothing is measured: no machine enters these tables.

Run ``python scripts/readme_tables.py`` after registering an attention or a backbone family;
``--check`` exits 1 when README.md differs from what it would write (``tests/test_docs.py`` asserts it).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / 'README.md'

# The family registry's names, as a reader looks for them, and the papers behind the architectures.
FAMILY_LABELS = {
    'resnet': 'ResNet, ResNeXt (ImageNet)',
    'resnet_cifar': 'CIFAR ResNet',
    'preresnet': 'pre-activation ResNet (CIFAR)',
    'wrn': 'Wide ResNet (CIFAR)',
    'mobilenetv2': 'MobileNetV2',
    'regnety': 'RegNet-Y',
    'swin': 'Swin Transformer',
    'pvt': 'PVT v1',
    'vit': 'DeiT',
    'cswin': 'CSWin Transformer',
}


def modules_table() -> str:
    """The attention modules: level, paper, arXiv id, official repository."""
    from plugattn.layers import ATTN_REGISTRY, attn_level

    by_paper: dict[tuple[str, str], list[str]] = {}
    for name, info in ATTN_REGISTRY.items():
        by_paper.setdefault((info.paper, info.arxiv), []).append(name)
    order = {'gate': 0, 'block': 1, 'stage': 2}
    rows = []
    for (paper, arxiv), names in by_paper.items():
        info = ATTN_REGISTRY[names[0]]
        level = attn_level(names[0])
        repo = info.repo.removeprefix('https://github.com/')
        rows.append((order[level], names[0], '<br>'.join(f'`{n}`' for n in names), level, paper,
                     f'[{arxiv}](https://arxiv.org/abs/{arxiv})' if arxiv else '-',
                     f'[{repo}]({info.repo})' if info.repo else 'none published'))
    # the baselines first, then the papers' modules, as the model tables order them; a new module after its level's
    known = ('se', 'eca', 'cbam', 'ca', 'ela_t', 'bav1', 'bav2', 'dia')
    rows.sort(key=lambda r: (r[0], known.index(r[1]) if r[1] in known else len(known), r[1]))
    lines = ['| name | level | paper | arXiv | official code |', '|:---|:---|:---|:---|:---|']
    lines += [f'| {names} | {level} | {paper} | {arxiv} | {repo} |' for _, _, names, level, paper, arxiv, repo in rows]
    return '\n'.join(lines)


def backbone_list() -> str:
    """The backbone families with their registered backbones."""
    import plugattn
    from plugattn.models import get_model_entry

    families: dict[str, set[str]] = {}
    for name in plugattn.list_models():
        entry = get_model_entry(name)
        families.setdefault(entry.cfg['family'], set()).add(entry.backbone)
    import torch

    def size(backbone: str) -> tuple[str, int]:
        """By depth where the name has it (resnet20 ... resnet164, resnext50_32x4d), else by parameter count."""
        prefix, depth = re.match(r'([a-z]+)(\d*)', backbone).groups()
        if depth:
            return prefix, int(depth)
        with torch.device('meta'):  # no weights
            return prefix, sum(p.numel() for p in plugattn.create_model(backbone).parameters())

    order = list(FAMILY_LABELS)
    lines = []
    for family in sorted(families, key=lambda f: (order.index(f) if f in order else len(order), f)):
        label = FAMILY_LABELS.get(family, family)
        lines.append(f'- **{label}**: ' + ', '.join(f'`{b}`' for b in sorted(families[family], key=size)))
    return '\n'.join(lines)


def render(text: str) -> str:
    """``text`` (README.md) with every marked section regenerated."""
    for section, make in (('modules', modules_table), ('backbones', backbone_list)):
        start, end = f'<!-- --8<-- [start:{section}] -->', f'<!-- --8<-- [end:{section}] -->'
        if start not in text or end not in text:
            raise SystemExit(f'README.md has no {start} ... {end} section')
        head, rest = text.split(start, 1)
        text = f'{head}{start}\n{make()}\n{end}{rest.split(end, 1)[1]}'
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true', help='exit 1 when README.md is not up to date')
    args = parser.parse_args()
    text = README.read_text(encoding='utf-8')
    new = render(text)
    if args.check:
        if new != text:
            print('README.md: the modules table or backbone list is out of date; run python scripts/readme_tables.py',
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new, encoding='utf-8')
    print(f'wrote {README}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
