"""Config validation before any compile or data read, and the workdir config guard.

A mistake found here costs a second; the same mistake found by XLA or by the data
pipeline costs a compile, or hours. Every problem is collected and reported at once,
each naming its key, the value found and what is allowed.
"""
import json
import logging
import os
from typing import Iterable, List, Optional, Tuple

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
  if dataset_num_classes is None:
    dataset_num_classes = known_num_classes(config)
  problems += _num_classes_problems(config, dataset_num_classes)

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
  elif config.init_from:
    problems += init_from_findings(config)[0]
  return problems


def _init_from_description(path: str):
  """(what the weights at `path` were made for, the file that says so), read from a
  converted checkpoint's meta.json or a training workdir's config.json (found in `path`
  or up to two parents: workdir/checkpoints/<step>); (None, None) when neither exists.
  Only small JSON files are read: no array is loaded here."""
  from deeplax.convert import store  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(os.path.expanduser(path))
  meta_path = os.path.join(path, store.META_FILE)
  if os.path.isfile(meta_path):
    with open(meta_path) as f:
      return json.load(f), meta_path
  for directory in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    config_path = os.path.join(directory, CONFIG_FILE)
    if os.path.isfile(config_path):
      with open(config_path) as f:
        model = json.load(f).get('model', {})
      return {'model': model.get('name'), 'num_classes': model.get('num_classes'),
              'output_stride': model.get('output_stride'),
              'backbone_variant': model.get('backbone_variant'),
              'aux_head': model.get('aux_head'), 'backbone_only': False}, config_path
  return None, None


def init_from_findings(config: ml_collections.ConfigDict) -> Tuple[List[str], List[str]]:
  """(problems, warnings) of `config.init_from` against `config.model`.

  Errors: another backbone (or, for init_scope='all', another model), another
  backbone_variant (e.g. VainF MobileNetV2 weights need 'vainf', DeepLab-v2 caffe
  ResNets 'caffe': the padding or layer layout differs, so the weights would load and
  compute something else), another num_classes under init_scope='all'. Warnings:
  another output_stride (the weights work at any stride, results differ from the
  published ones), a head left at init by a backbone-only checkpoint or a missing aux head.
  """
  try:
    meta, source = _init_from_description(config.init_from)
  except (OSError, json.JSONDecodeError) as e:
    return [f'init_from={config.init_from!r}: cannot read its description ({e})'], []
  if meta is None:
    return [], []
  m = config.model
  scope = config.init_scope
  problems, warnings = [], []
  name = meta.get('model')
  if name and m.name != name:
    backbone, theirs = m.name.rsplit('_', 1)[-1], name.rsplit('_', 1)[-1]
    if scope == 'all' and not meta.get('backbone_only'):
      problems.append(f'model.name={m.name!r} but init_from={config.init_from!r} holds '
                      f'{name!r} ({source}); with init_scope=all the whole model must match '
                      "(or set init_scope='backbone')")
    elif backbone != theirs:
      problems.append(f'model.name={m.name!r} has backbone {backbone!r} but init_from='
                      f'{config.init_from!r} holds {name!r} (backbone {theirs!r}; {source})')
  variant = meta.get('backbone_variant')
  if variant and m.backbone_variant != variant:
    problems.append(f'model.backbone_variant={m.backbone_variant!r} but init_from='
                    f'{config.init_from!r} was made for {variant!r} ({source}): set '
                    f"--config.model.backbone_variant={variant} (VainF MobileNetV2 weights "
                    "need 'vainf', DeepLab-v2 caffe ResNets 'caffe')")
  classes = meta.get('num_classes')
  if scope == 'all' and classes is not None and not meta.get('backbone_only') and (
      classes != m.num_classes):
    problems.append(f'model.num_classes={m.num_classes} but init_from={config.init_from!r} '
                    f'has a {classes}-class head ({source}): convert again with '
                    f'--num_classes {m.num_classes} --reinit_head, or set '
                    "init_scope='backbone'")
  stride = meta.get('output_stride')
  if stride and stride != m.output_stride and not meta.get('backbone_only'):
    warnings.append(f'model.output_stride={m.output_stride} but init_from='
                    f'{config.init_from!r} was trained at output stride {stride}: the weights '
                    'load (strides only change dilations), the results will differ')
  if scope == 'all' and meta.get('backbone_only'):
    warnings.append(f'init_scope=all but init_from={config.init_from!r} holds only a '
                    'backbone: the head starts from random init')
  if scope == 'all' and m.aux_head and meta.get('aux_head') is False:
    warnings.append(f'model.aux_head=True but init_from={config.init_from!r} has no aux '
                    'head: it starts from random init')
  return problems, warnings


def known_num_classes(config: ml_collections.ConfigDict) -> Optional[int]:
  """The class count of the configured data set, known without reading it (None for a
  folder data set without dataset.class_names: its count is model.num_classes)."""
  from deeplax.data import palettes, shapes  # pylint: disable=import-outside-toplevel
  name = config.dataset.name
  if name == 'folder':
    return len(config.dataset.class_names) or None
  return {'voc': len(palettes.VOC_CLASSES), 'cityscapes': len(palettes.CITYSCAPES_CLASSES),
          'shapes': shapes.NUM_CLASSES}.get(name)


def _num_classes_problems(config, dataset_num_classes: Optional[int]) -> List[str]:
  if dataset_num_classes is not None and dataset_num_classes != config.model.num_classes:
    return [f'model.num_classes={config.model.num_classes} but data set '
            f'{config.dataset.name!r} has {dataset_num_classes} classes']
  return []


def check_num_classes(config: ml_collections.ConfigDict, dataset_num_classes: int) -> None:
  """Raises ConfigError if the data set, once opened, has another class count."""
  problems = _num_classes_problems(config, dataset_num_classes)
  if problems:
    raise ConfigError(problems)


def validate_config(config, num_devices: int = 1, num_processes: int = 1,
                    dataset_num_classes: Optional[int] = None) -> None:
  """Raises ConfigError listing every problem of `config`."""
  problems = config_problems(config, num_devices, num_processes, dataset_num_classes)
  if problems:
    raise ConfigError(problems)
  if config.init_from:
    for warning in init_from_findings(config)[1]:
      logging.warning('%s', warning)


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
