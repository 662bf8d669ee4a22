"""Config validation: each bad value is named with its key and the allowed values."""
import json
import os

import pytest

from configs import default
from configs import voc_resnet101
from deeplax import validate


def test_published_configs_are_valid():
  validate.validate_config(voc_resnet101.get_config(), num_devices=4, num_processes=1,
                           dataset_num_classes=21)


@pytest.mark.parametrize('key,value,expected', [
    ('model.name', 'deeplabv3_vgg16', ['model.name', 'deeplabv3plus_resnet101']),
    ('model.name', 'deeplabv2_mobilenetv2', ['model.name', 'deeplabv2_resnet101']),
    ('model.output_stride', 4, ['model.output_stride', '8, 16 or 32']),
    ('eval.output_stride', 12, ['eval.output_stride']),
    ('model.backbone_variant', 'vainf', ['model.backbone_variant', 'torchvision, caffe']),
    ('model.multi_grid', (1, 2), ['model.multi_grid', '(1, 2, 4)']),
    ('model.dtype', 'float64', ['model.dtype', 'bfloat16']),
    ('augment.crop_size', (8, 8), ['augment.crop_size', 'output_stride=16']),
    ('batch_size', 6, ['batch_size=6', 'device count (4)']),
    ('eval.batch_size', 2, ['eval.batch_size=2']),
    ('optim.iter_size', 0, ['optim.iter_size']),
    ('nonfinite_policy', 'ignore', ['nonfinite_policy', 'stop, skip']),
    ('init_scope', 'head', ['init_scope', 'backbone, all']),
    ('dataset.name', 'ade20k', ['dataset.name', 'voc, cityscapes, folder, shapes']),
    ('init_from', '/nonexistent/ckpt', ['init_from', '/nonexistent/ckpt', 'deeplax.convert']),
])
def test_each_bad_value_is_named(key, value, expected):
  config = voc_resnet101.get_config()
  section, _, leaf = key.rpartition('.')
  (config[section] if section else config)[leaf] = value
  with pytest.raises(validate.ConfigError) as err:
    validate.validate_config(config, num_devices=4)
  for text in expected:
    assert text in str(err.value)


def test_num_classes_must_match_the_data_set():
  with pytest.raises(validate.ConfigError, match=r"model.num_classes=21 but data set 'voc' has 19"):
    validate.validate_config(voc_resnet101.get_config(), dataset_num_classes=19)


def test_all_problems_reported_together():
  config = default.get_config()
  config.model.output_stride = 12
  config.batch_size = 3
  config.optim.learning_rate = 0.0
  problems = validate.config_problems(config, num_devices=2)
  assert len(problems) == 3


def test_workdir_guard(tmp_path):
  workdir = str(tmp_path / 'run')
  config = default.get_config()
  validate.check_workdir_config(workdir, config)
  saved = json.load(open(os.path.join(workdir, validate.CONFIG_FILE)))
  assert saved['model']['name'] == config.model.name
  config.num_train_steps = 60000  # extending a run is the same experiment
  validate.check_workdir_config(workdir, config)
  config.model.name = 'deeplabv3plus_resnet50'
  config.batch_size = 8
  with pytest.raises(validate.ConfigError) as err:
    validate.check_workdir_config(workdir, config)
  message = str(err.value)
  assert "model.name: workdir has 'deeplabv3_resnet101', this run has 'deeplabv3plus_resnet50'" in message
  assert 'batch_size: workdir has 16, this run has 8' in message
  assert 'overwrite' in message
  config.overwrite = True
  validate.check_workdir_config(workdir, config)
  saved = json.load(open(os.path.join(workdir, validate.CONFIG_FILE)))
  assert saved['model']['name'] == 'deeplabv3plus_resnet50'
  assert not [f for f in os.listdir(workdir) if '.tmp' in f]


def _converted(tmp_path, **meta):
  """A converted-checkpoint directory as `python -m deeplax.convert` writes it (only
  meta.json matters here: validation reads no array)."""
  path = tmp_path / 'converted'
  os.makedirs(path / 'variables', exist_ok=True)
  full = {'model': 'deeplabv3_resnet101', 'num_classes': 21, 'output_stride': 16,
          'backbone_variant': 'torchvision', 'layout': 'torchvision_segmentation',
          'backbone_only': False, 'aux_head': False, **meta}
  with open(path / 'meta.json', 'w') as f:
    json.dump(full, f)
  return str(path)


def _init_config(path, scope='all', **model):
  config = voc_resnet101.get_config()
  config.init_from = path
  config.init_scope = scope
  for key, value in model.items():
    config.model[key] = value
  return config


@pytest.mark.parametrize('meta,scope,model,expected', [
    ({'backbone_variant': 'vainf', 'model': 'deeplabv3plus_mobilenetv2'}, 'backbone',
     {'name': 'deeplabv3plus_mobilenetv2', 'backbone_variant': 'torchvision'},
     ["model.backbone_variant='torchvision'", "made for 'vainf'",
      '--config.model.backbone_variant=vainf']),
    ({'backbone_variant': 'caffe', 'model': 'deeplabv2_resnet101'}, 'backbone',
     {'name': 'deeplabv2_resnet101'}, ["made for 'caffe'"]),
    ({'num_classes': 19}, 'all', {}, ['model.num_classes=21', '19-class head',
                                       '--num_classes 21 --reinit_head']),
    ({}, 'all', {'name': 'deeplabv3plus_resnet101'},
     ["model.name='deeplabv3plus_resnet101'", "holds 'deeplabv3_resnet101'",
      "init_scope='backbone'"]),
    ({}, 'backbone', {'name': 'deeplabv3_resnet50'}, ["backbone 'resnet50'",
                                                       "(backbone 'resnet101'"]),
])
def test_init_from_checkpoint_must_fit_the_model(tmp_path, meta, scope, model, expected):
  config = _init_config(_converted(tmp_path, **meta), scope, **model)
  with pytest.raises(validate.ConfigError) as err:
    validate.validate_config(config, num_devices=4)
  for text in expected:
    assert text in str(err.value), err.value
  assert 'meta.json' in str(err.value)  # names the file that says what the weights are


def test_init_from_compatible_cases_pass_some_with_a_warning(tmp_path, caplog):
  # Another head (v3 -> v3+) or another class count only matters for init_scope='all'.
  path = _converted(tmp_path, num_classes=19)
  validate.validate_config(_init_config(path, 'backbone', name='deeplabv3plus_resnet101'),
                           num_devices=4)
  assert not caplog.records
  # Another output stride: loads, with a warning.
  path = _converted(tmp_path, output_stride=8)
  with caplog.at_level('WARNING'):
    validate.validate_config(_init_config(path, 'all'), num_devices=4)
  assert any('output stride 8' in r.getMessage() for r in caplog.records)
  # A backbone-only (classification) checkpoint with scope 'all': the head is left at init.
  caplog.clear()
  path = _converted(tmp_path, backbone_only=True, num_classes=1000)
  with caplog.at_level('WARNING'):
    validate.validate_config(_init_config(path, 'all', name='deeplabv3plus_resnet101'),
                             num_devices=4)
  assert any('holds only a backbone' in r.getMessage() for r in caplog.records)


def test_init_from_training_workdir_is_checked_through_its_config(tmp_path):
  workdir = str(tmp_path / 'run')
  validate.check_workdir_config(workdir, _init_config('', 'all', num_classes=19))
  step_dir = os.path.join(workdir, 'checkpoints', '100')
  os.makedirs(step_dir)
  for path in (workdir, step_dir):
    with pytest.raises(validate.ConfigError, match=r'19-class head .*run/config.json'):
      validate.validate_config(_init_config(path, 'all'), num_devices=4)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write('{not json')
  with pytest.raises(validate.ConfigError, match='cannot read its description'):
    validate.validate_config(_init_config(workdir, 'all'), num_devices=4)


def test_class_count_known_before_reading_any_data():
  config = default.get_config()  # voc, 21 classes
  config.dataset.name = 'cityscapes'
  with pytest.raises(validate.ConfigError, match="model.num_classes=21 but data set "
                     "'cityscapes' has 19 classes"):
    validate.validate_config(config, num_devices=4)
  config.dataset.name = 'folder'  # its count comes from the config
  validate.validate_config(config, num_devices=4)
  config.dataset.class_names = ('a', 'b')
  with pytest.raises(validate.ConfigError, match="'folder' has 2 classes"):
    validate.validate_config(config, num_devices=4)
  validate.check_num_classes(config, 21)
  with pytest.raises(validate.ConfigError, match="'folder' has 3 classes"):
    validate.check_num_classes(config, 3)


def test_trainer_validates_before_reading_data_or_compiling(tmp_path, monkeypatch):
  from deeplax import train  # pylint: disable=import-outside-toplevel

  def no_data():
    raise AssertionError('the data set was opened before the config was validated')

  monkeypatch.setattr(train, '_data', no_data)
  monkeypatch.setattr(train, 'create_train_state', no_data)
  config = default.get_config()
  config.model.output_stride = 12
  config.dataset.name = 'cityscapes'  # 19 classes, model.num_classes=21
  for run in (train.train_and_evaluate, train.evaluate_checkpoint):
    with pytest.raises(validate.ConfigError) as err:
      run(config, str(tmp_path / 'run'))
    assert 'model.output_stride=12' in str(err.value)
    assert "data set 'cityscapes' has 19 classes" in str(err.value)
  # A workdir holding another experiment is refused before any data read as well.
  validate.check_workdir_config(str(tmp_path / 'other'), default.get_config())
  config = default.get_config()
  config.batch_size = 8
  with pytest.raises(validate.ConfigError, match='batch_size: workdir has 16'):
    train.train_and_evaluate(config, str(tmp_path / 'other'))
