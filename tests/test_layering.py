"""The package's layering: every import of a plugattn module (function-local ones included) goes down the order
docs/developing.md states, never up and never sideways into another package of the same layer."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'plugattn'

# Bottom up; a package may import packages of lower layers only (and its own modules).
ORDER = (
    ('errors', 'version'),
    ('layers',),
    ('models', 'data'),
    ('attach',),
    ('hub',),
    ('dense',),
    ('engine', 'yolo'),
    ('analysis', 'export', 'demos'),
    ('experiments',),
    ('cli',),
)
LAYER = {pkg: i for i, layer in enumerate(ORDER) for pkg in layer}
TOP = len(ORDER)  # plugattn/__init__.py (imports everything): no package may import it
FREE = ('plugattn/__init__.py', 'plugattn/__main__.py')  # the entry points may import anything
DOC_ORDER = ' < '.join(', '.join(f'`{p}`' for p in layer) for layer in ORDER).replace('`errors`, ', '`errors`/')


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _package_of(module: str) -> str:
    """``'layers'`` for ``plugattn.layers.registry``, ``'plugattn'`` for the top-level package itself."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else 'plugattn'


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The plugattn modules an import statement (or ``importlib.import_module('plugattn...')``) names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split('.')
            base = base[:len(base) - node.level + (1 if is_package else 0)]
            target = '.'.join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ''
        if target == 'plugattn':  # from plugattn import models / from .. import attach: the names are packages
            return [f'plugattn.{a.name}' for a in node.names]
        return [target]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'import_module'
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]
    return []


def climbing_imports(path: Path, source: str) -> list[str]:
    """One line per import in ``source`` (the file ``path`` of the package) that climbs the layer order."""
    rel = path.relative_to(PACKAGE.parent).as_posix()
    if rel in FREE:
        return []
    module = _module_name(path)
    own = _package_of(module)
    if own not in LAYER:
        return [f'{rel}: package {own!r} is not in the layer order; add it to ORDER and docs/developing.md']
    problems = []
    for node in ast.walk(ast.parse(source, filename=rel)):
        for target in _targets(node, module, path.name == '__init__.py'):
            if target != 'plugattn' and not target.startswith('plugattn.'):
                continue
            pkg = _package_of(target)
            if pkg == own:
                continue
            layer = LAYER.get(pkg, TOP)
            if layer >= LAYER[own]:
                where = 'the package top' if layer == TOP else f'layer {layer} ({pkg})'
                problems.append(f'{rel}:{node.lineno}: {own} (layer {LAYER[own]}) imports {target}, {where}')
    return problems


def test_no_import_climbs():
    files = sorted(PACKAGE.rglob('*.py'))
    assert len(files) > 50
    problems = [p for f in files for p in climbing_imports(f, f.read_text(encoding='utf-8'))]
    assert not problems, 'imports that climb the layer order:\n' + '\n'.join(problems)


@pytest.mark.parametrize('rel, source, expected', [
    ('models/_registry.py', 'def f():\n    from ..attach.build import x\n',
     'plugattn/models/_registry.py:2: models (layer 2) imports plugattn.attach.build, layer 3 (attach)'),
    ('attach/build.py', 'import plugattn.engine.checkpoint\n',
     'plugattn/attach/build.py:1: attach (layer 3) imports plugattn.engine.checkpoint, layer 6 (engine)'),
    ('models/__init__.py', 'from ..data import loader\n',  # sideways: same layer, another package
     'plugattn/models/__init__.py:1: models (layer 2) imports plugattn.data, layer 2 (data)'),
    ('layers/base.py', 'from .. import hub\n', 'plugattn/layers/base.py:1: layers (layer 1) imports plugattn.hub, '
                                               'layer 4 (hub)'),
    ('engine/x.py', 'import importlib\nm = importlib.import_module("plugattn.cli")\n',
     'plugattn/engine/x.py:2: engine (layer 6) imports plugattn.cli, layer 9 (cli)'),
    ('data/x.py', 'import plugattn\n', 'plugattn/data/x.py:1: data (layer 2) imports plugattn, the package top'),
])
def test_checker_reports_climbs(rel, source, expected):
    assert climbing_imports(PACKAGE / rel, source) == [expected]


@pytest.mark.parametrize('rel, source', [
    ('engine/trainer.py', 'from ..hub import create_model\nfrom .checkpoint import x\nfrom ..data import y\n'),
    ('models/resnet.py', 'from ._registry import register_model\nfrom ..layers.registry import AttnSpec\n'),
    ('__init__.py', 'from .cli import main\n'),
    ('cli/x.py', 'import torch\nfrom plugattn.experiments import compare\n'),
])
def test_checker_accepts_downward_imports(rel, source):
    assert climbing_imports(PACKAGE / rel, source) == []


def test_new_package_must_be_placed():
    assert climbing_imports(PACKAGE / 'serving' / 'x.py', '') == [
        "plugattn/serving/x.py: package 'serving' is not in the layer order; add it to ORDER and docs/developing.md"]


def test_every_package_is_in_the_order():
    found = {p.name for p in PACKAGE.iterdir() if (p / '__init__.py').is_file()}
    found |= {p.stem for p in PACKAGE.glob('*.py') if p.name not in ('__init__.py', '__main__.py')}
    assert found == set(LAYER)


def test_developing_page_states_the_order():
    assert DOC_ORDER == ('`errors`/`version` < `layers` < `models`, `data` < `attach` < `hub` < `dense` < '
                         '`engine`, `yolo` < `analysis`, `export`, `demos` < `experiments` < `cli`')
    assert DOC_ORDER in ' '.join((ROOT / 'docs' / 'developing.md').read_text(encoding='utf-8').split())


def test_hub_is_the_one_entry_point():
    import torchvision

    import plugattn
    from plugattn import hub, models

    assert (plugattn.create_model, plugattn.attachable, plugattn.list_models) == (
        hub.create_model, hub.attachable, hub.list_models)
    with pytest.raises(ValueError, match="unknown model 'tv:resnet18'"):  # models builds plugattn's names only
        models.create_model('tv:resnet18')
    entry = hub.get_model_entry('tv:resnet18+eca')
    assert (entry.backbone, entry.attn, entry.cfg['family']) == ('tv:resnet18', 'eca', 'tv')
    assert hub.get_model_entry('se_resnet20') is models.get_model_entry('se_resnet20')
    # by name (built on the meta device) as for the model itself
    assert hub.attachable('tv:resnet18') == plugattn.attachable(torchvision.models.resnet18()) == [
        'bav1', 'bav2', 'ca', 'cbam', 'dia', 'eca', 'ela_b', 'ela_l', 'ela_s', 'ela_t', 'se']
    assert 'ela_t' not in hub.attachable('resnet20')  # GroupNorm(32) cannot take 16 channels
