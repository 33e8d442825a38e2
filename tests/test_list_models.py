"""``plugattn list-models`` on torchvision and timm names: the hosts ``plugattn.attach`` takes; ``--version``."""
from __future__ import annotations

import pytest

from plugattn import __version__
from plugattn.cli import main


def test_torchvision_hosts_attach_takes(capsys):
    out = {}
    for pattern in ('tv:regnet_y_4*', 'tv:res*50*', 'tv:retinanet*'):
        assert main(['list-models', pattern, '--params']) == 0
        out.update(line.split() for line in capsys.readouterr().out.splitlines())
    # regnet_y_* cannot be built on the meta device (its widths are computed with tensors): built without init
    assert out['tv:regnet_y_400mf'] == '4,344,144' and out['tv:resnext50_32x4d'] == '25,028,904'
    assert 'tv:retinanet_resnet50_fpn' in out  # detection builders too
    assert main(['list-models', 'tv:*deeplab*']) == 0
    assert capsys.readouterr().out.split() == ['tv:deeplabv3_mobilenet_v3_large', 'tv:deeplabv3_resnet101',
                                               'tv:deeplabv3_resnet50']


def test_hosts_without_a_supported_block_are_left_out(capsys):
    assert main(['list-models', 'tv:squeezenet*']) == 2
    err = capsys.readouterr().err
    assert err.startswith("plugattn: error: no torchvision or timm model that attach takes matches 'tv:squeezenet*'")


def test_timm_hosts_attach_takes(capsys):
    pytest.importorskip('timm')
    assert main(['list-models', 'timm:resnet18*']) == 0
    names = capsys.readouterr().out.split()
    assert {'timm:resnet18', 'timm:resnet18d'} <= set(names) and names == sorted(names)


def test_plugattn_names_are_unchanged(capsys):
    assert main(['list-models', 'bav2_resnet5*']) == 0
    assert capsys.readouterr().out.split() == ['bav2_resnet50', 'bav2_resnet56']


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--version'])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f'plugattn {__version__}'
