"""Config validation before any compile or data read, and the workdir config guard.

A mistake found here costs a second; the same mistake found by XLA or by the data
pipeline costs a compile, or hours. Every problem is collected and reported at once,
each naming its key, the value found and what is allowed.
"""
import json
import os
from typing import Iterable, List, Optional

import ml_collections

from deeplax import models

CONFIG_FILE = 'config.json'
DATASETS = ('voc', 'cityscapes', 'folder', 'shapes')
BACKBONE_VARIANTS = {'resnet50': ('torchvision', 'caffe'), 'resnet101': ('torchvision', 'caffe'),
                     'mobilenetv2': ('torchvision', 'vainf')}
RESNET_LAST_STAGE_BLOCKS = 3
DTYPES = ('float32', 'bfloat16', 'float16')
# Keys whose change makes a workdir's checkpoints a different experiment (or unloadable).
RUN_IDENTITY_KEYS = ('model.name', 'model.num_classes', 'model.output_stride',
                     'model.multi_grid', 'model.width_multiplier', 'model.base_width',
                     'model.backbone_variant', 'model.aspp_channels', 'model.aspp_rates',
                     'model.low_level_channels', 'model.decoder_channels',
                     'model.decoder_convs', 'model.aux_head', 'model.aux_channels',
                     'model.freeze_bn', 'dataset.name', 'dataset.train_split',
                     'batch_size', 'seed', 'optim.iter_size')


class ConfigError(ValueError):
  """One or more config keys hold values that cannot work; the message lists them all."""

  def __init__(self, problems: Iterable[str]):
    self.problems = list(problems)
    super().__init__('Invalid config:\n' + '\n'.join(f'  - {p}' for p in self.problems))


def _pair(value) -> tuple:
  return (value, value) if isinstance(value, int) else tuple(value)


def config_problems(config: ml_collections.ConfigDict, num_devices: int = 1,
                    num_processes: int = 1,
                    dataset_num_classes: Optional[int] = None) -> List[str]:
  """Everything wrong with `config`; [] when it is fine."""
  problems = []
  m = config.model
  name = m.name
  if name not in models.model_names():
    problems.append(f'model.name={name!r} is unknown; known models: '
                    f'{", ".join(models.model_names())}')
    backbone = None
  else:
    backbone = name.rsplit('_', 1)[1]
  if m.output_stride not in (8, 16, 32):
    problems.append(f'model.output_stride={m.output_stride} must be 8, 16 or 32')
  eval_os = config.eval.output_stride
  if eval_os not in (0, 8, 16, 32):
    problems.append(f'eval.output_stride={eval_os} must be 0 (as training), 8, 16 or 32')
  if backbone is not None:
    allowed = BACKBONE_VARIANTS[backbone]
    if m.backbone_variant not in allowed:
      problems.append(f'model.backbone_variant={m.backbone_variant!r} does not exist for '
                      f'{backbone}; allowed: {", ".join(allowed)}')
    if m.multi_grid and backbone.startswith('resnet') and (
        len(m.multi_grid) != RESNET_LAST_STAGE_BLOCKS):
      problems.append(f'model.multi_grid={tuple(m.multi_grid)} needs '
                      f'{RESNET_LAST_STAGE_BLOCKS} rates for {backbone} (one per layer4 '
                      'block), e.g. (1, 2, 4)')
    if m.aux_head and backbone == 'mobilenetv2':
      problems.append('model.aux_head=True needs a ResNet backbone (it reads layer3)')
  if any(int(r) < 1 for r in m.multi_grid):
    problems.append(f'model.multi_grid={tuple(m.multi_grid)} rates must be >= 1')
  for key in ('dtype', 'param_dtype'):
    if m[key] not in DTYPES:
      problems.append(f'model.{key}={m[key]!r}; allowed: {", ".join(DTYPES)}')
  if m.num_classes < 1:
    problems.append(f'model.num_classes={m.num_classes} must be >= 1')
  if dataset_num_classes is not None and dataset_num_classes != m.num_classes:
    problems.append(f'model.num_classes={m.num_classes} but data set '
                    f'{config.dataset.name!r} has {dataset_num_classes} classes')

  if config.dataset.name not in DATASETS:
    problems.append(f'dataset.name={config.dataset.name!r}; allowed: {", ".join(DATASETS)}')
  crop = _pair(config.augment.crop_size)
  if len(crop) != 2 or min(crop) < max(m.output_stride, 1):
    problems.append(f'augment.crop_size={crop} must be (height, width), each side >= '
                    f'model.output_stride={m.output_stride} (the feature map would be empty)')
  if config.augment.min_scale <= 0 or config.augment.min_scale > config.augment.max_scale:
    problems.append(f'augment.min_scale={config.augment.min_scale} and augment.max_scale='
                    f'{config.augment.max_scale} must satisfy 0 < min_scale <= max_scale')

  for key, value in (('batch_size', config.batch_size),
                     ('eval.batch_size', config.eval.batch_size)):
    if value < 1 or value % num_devices:
      problems.append(f'{key}={value} must be a positive multiple of the device count '
                      f'({num_devices}): the batch is split evenly over devices')
    elif value % num_processes:
      problems.append(f'{key}={value} must be a multiple of the host count ({num_processes})')
  if config.num_train_steps < 0:
    problems.append(f'num_train_steps={config.num_train_steps} must be >= 0')
  o = config.optim
  if o.learning_rate <= 0:
    problems.append(f'optim.learning_rate={o.learning_rate} must be > 0')
  if o.iter_size < 1:
    problems.append(f'optim.iter_size={o.iter_size} must be >= 1')
  if o.warmup_steps < 0 or (config.num_train_steps and o.warmup_steps >= config.num_train_steps):
    problems.append(f'optim.warmup_steps={o.warmup_steps} must be in [0, num_train_steps='
                    f'{config.num_train_steps})')
  for key, allowed in (('nonfinite_policy', ('stop', 'skip')),
                       ('init_scope', ('backbone', 'all'))):
    if config[key] not in allowed:
      problems.append(f'{key}={config[key]!r}; allowed: {", ".join(allowed)}')
  if config.dataset.corrupt_policy not in ('error', 'skip'):
    problems.append(f'dataset.corrupt_policy={config.dataset.corrupt_policy!r}; '
                    'allowed: error, skip')
  if config.init_from and not os.path.exists(os.path.expanduser(config.init_from)):
    problems.append(f'init_from={config.init_from!r} does not exist (expected a converted '
                    'checkpoint directory from `python -m deeplax.convert` or a workdir)')
  return problems


def validate_config(config, num_devices: int = 1, num_processes: int = 1,
                    dataset_num_classes: Optional[int] = None) -> None:
  """Raises ConfigError listing every problem of `config`."""
  problems = config_problems(config, num_devices, num_processes, dataset_num_classes)
  if problems:
    raise ConfigError(problems)


def _lookup(config_dict: dict, dotted: str):
  value = config_dict
  for part in dotted.split('.'):
    if not isinstance(value, dict) or part not in value:
      return None
    value = value[part]
  return list(value) if isinstance(value, (list, tuple)) else value


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to train in a workdir whose saved config is a different experiment.

  The run's config is saved beside its checkpoints (atomically) on first use; a later
  start compares RUN_IDENTITY_KEYS and raises ConfigError naming each differing key
  with both values, unless `config.overwrite` is set (then the new config is saved).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path) and not config.get('overwrite', False):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ConfigError([f'{path} exists but is unreadable ({e}); move it away or set '
                         '--config.overwrite=True']) from e
    diffs = [f'{key}: workdir has {_lookup(old, key)!r}, this run has {_lookup(new, key)!r}'
             for key in RUN_IDENTITY_KEYS if _lookup(old, key) != _lookup(new, key)]
    if diffs:
      raise ConfigError([f'workdir {workdir} holds a run with a different config '
                         '(set --config.overwrite=True to reuse it anyway):'] + diffs)
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(new, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
