"""PyTorch state_dict -> deeplax variables, through a layout's mapping table.

The target is the variable tree of the deeplax model the weights describe (from
`jax.eval_shape` of its `init`, so nothing is computed); every torch tensor either
lands on exactly one Flax leaf of the same shape, or is dropped for a reason its
layout states. Anything else (an unmapped torch key, a Flax leaf left unfilled, a shape
mismatch) is collected and raised together in one `ConversionError`: nothing is
guessed, so a converted model computes what the PyTorch model computed.
"""
import collections
import dataclasses
import os
import re
from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from configs import default as default_config
from deeplax import models
from deeplax.convert import layouts as layouts_lib
from deeplax.convert import readers
from deeplax.models import layers

MAX_LISTED = 40  # per problem category in the error message
INIT_SIZE = 65  # image side used to trace the model's variable shapes


class ConversionError(ValueError):
  """The checkpoint does not fit the model; the message names every offending key."""


@dataclasses.dataclass
class Conversion:
  """The converted variables plus everything the summary and meta.json report."""
  variables: Dict  # {'params': ..., 'batch_stats': ...}, numpy float32 leaves
  meta: Dict
  mapped: int  # torch tensors copied
  num_params: int
  num_batch_stats: int
  dropped: Dict[str, List[str]]  # reason -> torch keys
  reinitialised: List[str]  # Flax leaves freshly initialised (--reinit_head)
  notes: List[str]


def _oihw_to_hwio(x):
  if x.ndim != 4:
    raise ValueError(f'expected a 4-d conv weight (O, I, kh, kw), got shape {x.shape}')
  return np.transpose(x, (2, 3, 1, 0))


TRANSFORMS = {None: lambda x: x, 'oihw_to_hwio': _oihw_to_hwio}


def model_config(name: str, num_classes: int, output_stride: int, backbone_variant: str,
                 aux_head: bool = False, aspp_dropout: Optional[float] = None):
  """The `config.model` of deeplax's defaults with what the weights determine."""
  config = default_config.get_config().model
  config.name = name
  config.num_classes = num_classes
  config.output_stride = output_stride
  config.backbone_variant = backbone_variant
  config.aux_head = aux_head
  if aspp_dropout is not None:
    config.aspp_dropout = aspp_dropout
  return config


def target_shapes(config) -> Dict[str, Tuple[int, ...]]:
  """'collection/module/.../leaf' -> shape of every variable of the model."""
  module = models.create_model(config)
  shapes = jax.eval_shape(lambda: module.init(
      jax.random.key(0), jnp.zeros((1, INIT_SIZE, INIT_SIZE, 3)), train=False))
  flat = traverse_util.flatten_dict(jax.tree.map(lambda s: tuple(s.shape), shapes,
                                                 is_leaf=lambda x: hasattr(x, 'shape')),
                                    sep='/')
  return dict(flat)


def _backbone_name(state, layout, src):
  if layout.backbone == 'mobilenetv2':
    return 'mobilenetv2'
  return f'resnet{layouts_lib.resnet_depth(list(state), layout, src)}'


def _resolve_model(state, layout, model_name, src):
  backbone = _backbone_name(state, layout, src)
  if layout.backbone_only:
    choices = [n for n in models.model_names() if n.endswith('_' + backbone)]
    if not model_name:
      raise ConversionError(
          f'{src}: layout {layout.name} holds only a {backbone} backbone, so the model is '
          f'not in the file; pass --model (one of {", ".join(choices)})')
    if model_name not in choices:
      raise ConversionError(f'{src}: the weights are a {backbone} backbone; --model '
                            f'{model_name} has another (use one of {", ".join(choices)})')
    return model_name
  inferred = f'deeplab{layout.version}_{backbone}'
  if model_name and model_name != inferred:
    raise ConversionError(f'{src}: the weights are a {inferred} ({layout.name}); --model '
                          f'{model_name} would not fit them')
  return inferred


def _resolve_output_stride(layout, output_stride, src):
  if output_stride:
    return output_stride, None
  if layout.output_stride:
    return layout.output_stride, None
  if layout.backbone_only:
    return 16, 'output stride 16 (the default; any stride fits a backbone)'
  m = re.search(r'(?:^|[^a-z0-9])os_?(8|16)(?:[^0-9]|$)', os.path.basename(src).lower())
  if m:
    return int(m[1]), f'output stride {m[1]} read from the file name'
  raise ConversionError(
      f'{src}: {layout.name} checkpoints do not record the output stride they were '
      'trained with (VainF: --output_stride 8 or 16; its file names end in _os8/_os16); '
      'pass --output_stride')


def _resolve_classes(state, layout, num_classes, reinit_head, src):
  """(num_classes, checkpoint's class count or None)."""
  found = None
  if layout.classifier_bias and layout.classifier_bias in state:
    found = int(state[layout.classifier_bias].shape[0])
  if num_classes is None:
    num_classes = found if found is not None else 21
  if found is not None and found != num_classes and not reinit_head:
    raise ConversionError(
        f'{src}: the checkpoint classifies {found} classes ({layout.classifier_bias} has '
        f'shape ({found},)) but --num_classes is {num_classes}; pass --reinit_head to '
        'start the classifier afresh (everything else is converted), or drop --num_classes')
  return num_classes, found


def map_state_dict(state: Dict[str, np.ndarray], layout: layouts_lib.Layout,
                   targets: Dict[str, Tuple[int, ...]], skip_classifier: bool = False,
                   src: str = ''):
  """Fills `targets` from `state`. Returns (flat Flax leaves, dropped: reason -> keys).

  Raises ConversionError listing every unmapped key, unfilled leaf and mismatch.
  `skip_classifier` drops the final classifier rows (their leaves are not expected).
  """
  filled, dropped = {}, collections.defaultdict(list)
  unmapped, no_target, mismatched, duplicates = [], [], [], []
  skipped_leaves = set()  # classifier leaves to re-initialise, or already reported misfits
  for key, value in state.items():
    reason = layout.drop_reason(key)
    if reason:
      dropped[reason].append(key)
      continue
    module, _, leaf = key.rpartition('.')
    row, path = layout.lookup(module)
    leaf_map = row and layouts_lib.LEAVES[layouts_lib.kind_of(row, path)].get(leaf)
    if not leaf_map:
      unmapped.append(f'{key} {tuple(value.shape)}')
      continue
    collection, name, transform = leaf_map
    flax_key = f'{collection}/{path}/{name}'
    if skip_classifier and row.classifier:
      dropped['final classifier re-initialised (--reinit_head)'].append(key)
      skipped_leaves.add(flax_key)
      continue
    if flax_key not in targets:
      no_target.append(f'{key} -> {flax_key} (the model has no such variable)')
      continue
    try:
      value = TRANSFORMS[transform](value)
    except ValueError as e:
      mismatched.append(f'{key}: {e}')
      skipped_leaves.add(flax_key)
      continue
    if tuple(value.shape) != tuple(targets[flax_key]):
      skipped_leaves.add(flax_key)  # reported here, not again as unfilled
      mismatched.append(f'{key} {tuple(state[key].shape)} -> {flax_key}: converted shape '
                        f'{tuple(value.shape)}, the model expects {tuple(targets[flax_key])}')
      continue
    if flax_key in filled:
      duplicates.append(f'{key} -> {flax_key} (already filled by {filled[flax_key][0]})')
      continue
    filled[flax_key] = (key, np.asarray(value, dtype=np.float32))
  unfilled = [f'{k} {tuple(s)}' for k, s in targets.items()
              if k not in filled and k not in skipped_leaves]
  problems = [('torch keys no row of the table maps', unmapped),
              ('torch keys mapped to variables the model lacks', no_target),
              ('shape mismatches', mismatched),
              ('Flax variables filled twice', duplicates),
              ('Flax variables left unfilled', unfilled)]
  if any(items for _, items in problems):
    lines = [f'{src}: cannot convert with layout {layout.name} ({layout.description}); '
             'refusing to guess:']
    for title, items in problems:
      if items:
        lines.append(f'  {len(items)} {title}:')
        lines.extend(f'    {item}' for item in items[:MAX_LISTED])
        if len(items) > MAX_LISTED:
          lines.append(f'    ... and {len(items) - MAX_LISTED} more')
    raise ConversionError('\n'.join(lines))
  return {k: v for k, (_, v) in filled.items()}, dict(dropped)


def _fold_caffe_input(flat, std):
  """Makes the caffe stem read deeplax's input. pytorch-deeplab-resnet feeds BGR pixels in
  0..255 minus the mean; deeplax feeds RGB (x/255 - mean)/std. Reversing conv1's input
  channels and scaling them by 255*std makes conv1(ours) == conv1(theirs) exactly, zero
  padding included; the two means differ by under 1.1 grey levels (left as is)."""
  key = 'params/backbone/conv1/kernel'
  flat[key] = (flat[key][:, :, ::-1, :] * (255.0 * np.asarray(std, np.float32))[:, None])
  return flat


def convert_state_dict(state: Dict[str, np.ndarray], src: str = '', model_name: str = None,
                       layout_name: str = None, num_classes: int = None,
                       reinit_head: bool = False, output_stride: int = None,
                       caffe_input: str = 'fold', seed: int = 0) -> Conversion:
  """Converts a read state_dict; see `convert_file`."""
  if layout_name:
    if layout_name not in layouts_lib.LAYOUTS:
      raise ConversionError(f'unknown --layout {layout_name!r}; known: '
                            f'{", ".join(layouts_lib.LAYOUTS)}')
    layout = layouts_lib.LAYOUTS[layout_name]
  else:
    layout = layouts_lib.detect_layout(list(state), src)
  if caffe_input not in ('fold', 'keep'):
    raise ConversionError(f"caffe_input must be 'fold' or 'keep', got {caffe_input!r}")
  notes = []
  name = _resolve_model(state, layout, model_name, src)
  stride, note = _resolve_output_stride(layout, output_stride, src)
  notes += [note] if note else []
  num_classes, found = _resolve_classes(state, layout, num_classes, reinit_head, src)
  aux = bool(layout.aux_classifier_bias and layout.aux_classifier_bias in state)
  config = model_config(name, num_classes, stride, layout.backbone_variant, aux,
                        layout.aspp_dropout)
  targets = target_shapes(config)
  if layout.backbone_only:
    targets = {k: s for k, s in targets.items() if k.split('/')[1] == 'backbone'}
  flat, dropped = map_state_dict(state, layout, targets, skip_classifier=reinit_head, src=src)
  reinitialised = sorted(k for k in targets if k not in flat)
  rng = jax.random.key(seed)
  for i, key in enumerate(reinitialised):
    if key.endswith('/kernel'):
      flat[key] = np.asarray(layers.classifier_kernel_init(jax.random.fold_in(rng, i),
                                                           targets[key]), np.float32)
    else:
      flat[key] = np.zeros(targets[key], np.float32)
  if reinitialised:
    notes.append(f'final classifier re-initialised for {num_classes} classes (checkpoint: '
                 f'{found}): {", ".join(reinitialised)}')
  input_fold = None
  if layout.backbone_variant == 'caffe' and caffe_input == 'fold':
    std = tuple(default_config.get_config().augment.std)
    flat = _fold_caffe_input(flat, std)
    input_fold = {'from': 'caffe BGR 0..255 minus mean', 'to': 'RGB (x/255-mean)/std',
                  'std': list(std)}
    notes.append('conv1 folded from the caffe input (BGR, 0..255 minus mean) to the deeplax '
                 f'input (RGB, (x/255 - mean)/std): channels reversed, scaled by 255*std {std}')
  variables = traverse_util.unflatten_dict(flat, sep='/')
  variables.setdefault('batch_stats', {})
  num_params = sum(v.size for k, v in flat.items() if k.startswith('params/'))
  num_stats = sum(v.size for k, v in flat.items() if k.startswith('batch_stats/'))
  meta = {
      'model': name, 'num_classes': num_classes, 'output_stride': stride,
      'backbone_variant': layout.backbone_variant, 'layout': layout.name,
      'source': os.path.abspath(src) if src else '',
      'dropped': [{'reason': r, 'count': len(keys), 'keys': keys} for r, keys in dropped.items()],
      'backbone_only': layout.backbone_only,
      'aux_head': aux, 'reinitialised': reinitialised, 'input_fold': input_fold,
  }
  mapped = len(state) - sum(len(k) for k in dropped.values())
  return Conversion(variables, meta, mapped, num_params, num_stats, dropped, reinitialised,
                    notes)


def convert_file(src: str, **kwargs) -> Conversion:
  """Reads `src` (.pth/.pt/.safetensors) and converts it (keyword arguments as the CLI:
  model_name, layout_name, num_classes, reinit_head, output_stride, caffe_input)."""
  return convert_state_dict(readers.read_state_dict(src), src=src, **kwargs)


def summary(conv: Conversion, out: str = '') -> str:
  """The human-readable report the CLI prints."""
  m = conv.meta
  lines = [f'Converted {m["source"]}',
           f'  layout    {m["layout"]}: {layouts_lib.LAYOUTS[m["layout"]].description}',
           f'  model     {m["model"]} ({m["num_classes"]} classes, output stride '
           f'{m["output_stride"]}, backbone_variant {m["backbone_variant"]}'
           f'{", aux head" if m["aux_head"] else ""}'
           f'{", backbone only" if m["backbone_only"] else ""})',
           f'  mapped    {conv.mapped} tensors -> {conv.num_params:,} parameters + '
           f'{conv.num_batch_stats:,} BatchNorm statistics']
  total = sum(len(k) for k in conv.dropped.values())
  lines.append(f'  dropped   {total} tensors on purpose' + (':' if total else ''))
  for reason, keys in conv.dropped.items():
    example = ', '.join(keys[:3]) + (', ...' if len(keys) > 3 else '')
    lines.append(f'    {len(keys):4d}  {reason}  [{example}]')
  for note in conv.notes:
    lines.append(f'  note      {note}')
  if out:
    lines.append(f'  wrote     {out} (variables/ + meta.json)')
  return '\n'.join(lines)
