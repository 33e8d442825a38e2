"""The documentation stays true: the site builds with ``mkdocs build --strict`` offline, every example marked
runnable in README.md and docs/ runs and prints what its comments say, README's generated sections are current,
and the pages agree with the command line where they quote it."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
MARKER = '<!-- runnable -->'
# A runnable block: the marker line, then a ```python fence.
BLOCK = re.compile(r'^<!-- runnable -->\n```python\n(.*?)^```', re.M | re.S)
# `print(EXPR)  # VALUE` states what the line prints.
PRINTED = re.compile(r'^print\(.*\)\s+# (.*)$')


def runnable_blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding='utf-8')
        blocks = BLOCK.findall(text)
        markers = len(re.findall(f'^{re.escape(MARKER)}$', text, re.M))
        assert len(blocks) == markers, f'{page.name}: a {MARKER} line not followed by a ```python block'
        found += [(f'{page.relative_to(ROOT)}:{i}', code) for i, code in enumerate(blocks, 1)]
    return found


BLOCKS = runnable_blocks()


def test_pages_have_runnable_examples():
    assert len(BLOCKS) >= 5 and any(name.startswith('README.md') for name, _ in BLOCKS)


@pytest.mark.parametrize('name,code', BLOCKS, ids=[name for name, _ in BLOCKS])
def test_runnable_example(name, code, tmp_path, monkeypatch):
    expected = [m.group(1) for line in code.splitlines() if (m := PRINTED.match(line))]
    assert expected, f'{name}: state what the example prints with `print(EXPR)  # VALUE` lines'
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, name, 'exec'), {'__name__': '__docs__'})
    assert out.getvalue().splitlines() == expected, name


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_generated_sections_are_current():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert _load_script('readme_tables').render(readme) == readme, \
        'README.md is out of date: run python scripts/readme_tables.py'
    assert '| `bav2` | block |' in readme and '[1709.01507](https://arxiv.org/abs/1709.01507)' in readme


def test_readme_is_a_front_page():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert len(readme.splitlines()) <= 220
    quick = readme[readme.index('## Quick start'):]
    fence = quick[quick.index('```bash\n') + 8:]
    commands = fence[:fence.index('```')].strip().splitlines()
    # .ci/run runs the second command; the first is the quick start the table measured
    assert commands == ['bash scripts/setup.sh && .venv/bin/plugattn train',
                        'bash scripts/setup.sh --dev && .venv/bin/python -m pytest -n 2']
    assert commands[1] in (ROOT / '.ci' / 'run').read_text(encoding='utf-8')
    table = readme[readme.index('[start:quickstart]'):readme.index('[end:quickstart]')]
    assert re.search(r'\| 1 \| \d\d\.\d\d % \|', table) and re.search(r'\b\d+ CPU threads?\b', table), table


def test_nav_lists_every_page():
    config = yaml.safe_load((ROOT / 'mkdocs.yml').read_text(encoding='utf-8').split('\nextra:')[0])
    in_nav = {next(iter(item.values())) for item in config['nav']}
    on_disk = {p.name for p in (ROOT / 'docs').glob('*.md')}
    assert in_nav == on_disk


def test_diffusion_minutes_agree_with_its_help():
    from plugattn.cli import diffusion_demo

    source = Path(diffusion_demo.__file__).read_text(encoding='utf-8')
    (minutes,) = re.findall(r'about (\d+) minutes on one CPU core', source)
    page = (ROOT / 'docs' / 'analysis.md').read_text(encoding='utf-8')
    assert re.findall(r'about (\d+) minutes on one CPU core', page) == [minutes]


def test_mkdocs_build_strict_offline(tmp_path):
    for module in ('mkdocs', 'material', 'mkdocstrings', 'mkdocstrings_handlers.python'):
        pytest.importorskip(module, reason=f"{module} is missing: pip install -e '.[docs]' to build the docs")
    site = tmp_path / 'site'
    env = {**os.environ, 'NO_MKDOCS_2_WARNING': '1', 'PYTHONPATH': str(ROOT)}
    proc = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '--site-dir', str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (site / 'api.html').read_text(encoding='utf-8')
    assert 'plugattn.create_model' in api and 'BridgeAttentionV2' in api and 'fpn_backbone' in api
    assert 'href="models.html"' in (site / 'index.html').read_text(encoding='utf-8')
    for page in site.glob('*.html'):  # nothing fetched from elsewhere when a page is viewed offline
        html = page.read_text(encoding='utf-8')
        assert not re.search(r'<(?:link|script|img)\b[^>]*(?:href|src)="(?:https?:)?//', html), page.name
    changelog = (site / 'changelog.html').read_text(encoding='utf-8')
    assert 'Attaching' in changelog and '--8&lt;--' not in changelog
