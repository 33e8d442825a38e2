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


def _misuse_cases():
    import torchvision

    import plugattn
    from plugattn import create_attn, create_model
    from plugattn.export import export_model

    def ba_at_batch_one():
        create_model('bav1_resnet20', num_classes=2).train()(torch.randn(1, 3, 32, 32))

    def wrong_channels_at_forward():
        create_model('resnet20', in_chans=1).eval()(torch.randn(2, 3, 32, 32))

    def attach_twice():
        plugattn.attach(plugattn.attach(torchvision.models.resnet18(), 'se'), 'eca')

    return [  # (case, call, the built-in type callers catch today, message)
        ('model typo', lambda: create_model('resnet2O'), ValueError, r"unknown model 'resnet2O': did you mean"),
        ('tv model typo', lambda: create_model('tv:resnet1'), ValueError, r"unknown torchvision .* 'resnet1'"),
        ('timm model typo', lambda: create_model('timm:resnet1'), ValueError, r"unknown timm model 'resnet1'"),
        ('attention typo', lambda: create_attn('bav3', 64), ValueError, r"unknown attention 'bav3': did you mean"),
        ('attention typo in a model', lambda: create_model('resnet20', attn='bav3'), ValueError, 'unknown attention'),
        ('attention spec type', lambda: create_attn(3.5, 64), TypeError, 'attention spec must be a name'),
        ('reduction as a string', lambda: create_attn('se', 64, reduction='16'), TypeError,
         r"^SqueezeExcite: reduction must be an int, got '16' \(str\); pass reduction=16"),
        ('ELA channels/groups', lambda: create_attn('ela_t', 16), ValueError,
         r'ELA-T needs channels divisible by its 32 GroupNorm groups, got 16'),
        ('ELA model', lambda: create_model('ela_t_resnet20'), ValueError, 'ELA-T needs channels divisible'),
        ('BA at batch 1', ba_at_batch_one, ValueError, 'cannot train at batch size 1'),
        ('in_chans=0', lambda: create_model('resnet20', in_chans=0), ValueError, 'in_chans >= 1, got 10 and 0'),
        ('tv in_chans=0', lambda: create_model('tv:resnet18', in_chans=0), ValueError, 'in_chans must be >= 1'),
        ('wrong channels', wrong_channels_at_forward, ValueError, 'built for 1 input channels, got 3'),
        ('attach twice', attach_twice, ValueError, 'already has attention attached'),
        ('unknown keyword, model', lambda: create_model('resnet20', foo=1), (ValueError, TypeError),
         r"^resnet20: ResNet.__init__\(\) got an unexpected keyword argument 'foo'"),
        ('unknown keyword, attention', lambda: create_attn('se', 64, foo=1), TypeError,
         r"^SqueezeExcite.__init__\(\) got an unexpected keyword argument 'foo'$"),
        ('unknown keyword, tv', lambda: create_model('tv:resnet18', foo=1), TypeError,
         r"^tv:resnet18: ResNet.__init__\(\) got an unexpected keyword argument 'foo'"),
        ('unknown keyword, timm', lambda: create_model('timm:test_resnet', foo=1), TypeError,
         "unexpected keyword argument 'foo'"),
        ('export format', lambda: export_model(nn.Conv2d(3, 3, 1), 'x.pdf', fmt='pdf'), ValueError,
         "format must be 'onnx' or 'torchscript', got 'pdf'"),
        ('export input size', lambda: export_model(nn.Conv2d(3, 3, 1), 'x.onnx', input_size=(32, 32)), ValueError,
         r'input_size must be \(channels, height, width\), got \(32, 32\)'),
    ] + [
        (f'out_indices={indices!r} of {name}', lambda name=name, indices=indices: create_model(
            name, features_only=True, out_indices=indices), builtin, message)
        for name in ('resnet20', 'deit_tiny', 'tv:resnet18', 'timm:test_resnet', 'timm:test_resnet+se')
        for indices, builtin, message in (
            ((1, 1), ValueError, r'out_indices \(1, 1\) of \S+ names levels \[1\] more than once'),
            ('12', TypeError, r'out_indices of \S+ must be a tuple of ints'),
            ((1, 99), ValueError, r'out_indices \(1, 99\) of \S+: \[99\] out of range for \d+ feature levels'),
        )
    ]


def test_documented_misuse_raises_plugattn_errors_of_the_builtin_type():
    """Every user error of the Python API is a PlugattnError and the built-in type callers already catch."""
    for case, call, builtin, message in _misuse_cases():
        with pytest.raises(PlugattnError, match=message) as exc:
            call()
        assert isinstance(exc.value, builtin), (case, type(exc.value).__mro__)
        assert '\n' not in str(exc.value), case


def test_out_indices_negative_from_the_end_as_timm():
    from plugattn import create_model

    x = torch.randn(2, 3, 32, 32)
    for name in ('resnet20', 'tv:resnet18', 'timm:test_resnet', 'timm:test_resnet+se'):
        model = create_model(name, features_only=True, out_indices=(-1, 0)).eval()
        maps = model(x)
        full = create_model(name, features_only=True).eval()
        full.load_state_dict(model.state_dict())
        every = full(x)
        assert len(maps) == 2, name
        for want in (every[0], every[-1]):  # the first and the last level (in the host's order)
            assert sum(m.shape == want.shape and torch.equal(m, want) for m in maps) == 1, name
