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
