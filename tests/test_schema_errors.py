"""One config schema derived from the settings dataclasses, one user-error base class, one count_params."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from plugattn.analysis import AnalysisError
from plugattn.cli._common import CliError
from plugattn.data import AugConfig, DataError, MixupConfig
from plugattn.engine import EngineError, resolve_config
from plugattn.engine.config import SCHEMA, defaults, section_from_dataclass
from plugattn.engine.metrics import count_params
from plugattn.errors import PlugattnError


@pytest.mark.parametrize(('section', 'cls'), [('aug', AugConfig), ('mixup', MixupConfig)])
def test_sections_are_derived_from_the_dataclasses(section, cls):
    fields = dataclasses.fields(cls)
    assert list(SCHEMA[section]) == [f.name for f in fields]
    for f in fields:
        entry = SCHEMA[section][f.name]
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        assert entry.default == default and entry.help == f.metadata['help'], f.name
        assert entry.min is None and entry.max is None, f'{section}.{f.name} restates a range'
    # The schema defaults build the dataclass unchanged: one set of defaults.
    assert cls.from_dict(defaults()[section]) == cls()
    assert section_from_dataclass(cls) == SCHEMA[section]


def test_schema_kinds_of_the_aug_section():
    aug = SCHEMA['aug']
    assert (aug['scale'].kind, aug['scale'].length, aug['image_size'].kind, aug['image_size'].nullable) == (
        'list[float]', 2, 'int', True)
    assert aug['interpolation'].choices == ('nearest', 'bilinear', 'bicubic')
    assert aug['pipeline'].choices == ('auto', 'plugattn', 'timm')


@pytest.mark.parametrize(('override', 'message'), [
    (('aug.random_erasing', 1.5), r'aug\.random_erasing=1\.5 is invalid: use a number in \[0, 1\.0\]; '
                                   r'set it with --set aug\.random_erasing=VALUE'),
    (('aug.scale', [0.9, 0.1]), r'aug\.scale=\(0\.9, 0\.1\) is invalid: need 0\.0 < low <= high <= 1\.0'),
    (('aug.randaugment', 'rund-m9'), r"randaugment 'rund-m9' must start with 'rand'.*--set aug\.randaugment"),
    (('mixup.switch_prob', 2), r'mixup\.switch_prob=2\.0 is invalid: use a number in \[0, 1\.0\]; set it with --set'),
    (('aug.hflip', 'yes'), r'aug\.hflip must be true or false'),  # types: the schema
])
def test_ranges_are_checked_by_the_dataclass_once(override, message):
    with pytest.raises(EngineError, match=message) as exc:
        resolve_config(None, [override])
    assert '\n' not in str(exc.value)


def test_one_error_base_class():
    for cls in (DataError, EngineError, AnalysisError, CliError):
        assert issubclass(cls, PlugattnError) and issubclass(cls, ValueError)
        err = cls('it broke', 'do this')
        assert (str(err), err.problem, err.fix) == ('it broke; do this', 'it broke', 'do this')
    assert str(DataError('one line')) == 'one line'
    with pytest.raises(PlugattnError):
        AugConfig(hflip=1)


def test_count_params_total_trainable_and_attention():
    from plugattn.models import create_model

    model = create_model('se_resnet20', num_classes=10, in_chans=1)
    assert count_params(model) == 274_202
    assert count_params(model, attention_only=True) == 2016
    model.fc.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 274_202 - (64 * 10 + 10)
    shared = nn.Linear(3, 3)
    assert count_params(nn.Sequential(shared, shared)) == 12 and count_params(shared, attention_only=True) == 0
    import plugattn.analysis as analysis

    assert analysis.count_params is count_params  # one public function
    assert isinstance(count_params(torch.nn.Conv2d(1, 1, 1)), int)
