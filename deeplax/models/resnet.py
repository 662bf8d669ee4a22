"""Atrous ResNet-50/101 in torchvision's layout (and the caffe ResNet of DeepLab-v2).

`output_stride` < 32 turns the strides of the last stages into dilations, following
torchvision's `replace_stride_with_dilation` (the first block of a dilated stage keeps
the previous dilation). `variant='caffe'` is the ResNet of pytorch-deeplab-resnet /
DeepLab-v2: stride on the first 1x1 conv, ceil-mode max pool, every block of a dilated
stage at the stage's dilation.
"""
from typing import Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from deeplax.models import layers

STAGE_SIZES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def stage_plan(stage_sizes: Sequence[int], output_stride: int, variant: str,
               multi_grid: Sequence[int] = ()) -> Tuple[Tuple[Tuple[int, int], ...], ...]:
  """(stride, dilation) of every block of every stage.

  Kept as a pure function so the tests (and readers) can see the dilation rule.
  """
  if output_stride not in (8, 16, 32):
    raise ValueError(f'model.output_stride must be 8, 16 or 32, got {output_stride}')
  if multi_grid and len(multi_grid) != stage_sizes[-1]:
    raise ValueError(f'model.multi_grid needs one rate per block of the last stage '
                     f'({stage_sizes[-1]}), got {tuple(multi_grid)}')
  plan = []
  current_stride, dilation = 4, 1  # after the stem and max pool
  for i, num_blocks in enumerate(stage_sizes):
    stride = 1 if i == 0 else 2
    previous_dilation = dilation
    if current_stride * stride > output_stride:
      dilation *= stride
      stride = 1
    else:
      current_stride *= stride
    blocks = []
    for j in range(num_blocks):
      if i == len(stage_sizes) - 1 and multi_grid:
        rate = dilation * multi_grid[j]
      elif variant == 'caffe':
        rate = dilation
      else:
        rate = previous_dilation if j == 0 else dilation
      blocks.append((stride if j == 0 else 1, rate))
    plan.append(tuple(blocks))
  return tuple(plan)


class Bottleneck(nn.Module):
  """ResNet bottleneck; torchvision names conv1..3, bn1..3, downsample_conv/bn."""
  planes: int
  strides: int
  dilation: int
  downsample: bool
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  stride_in_1x1: bool = False

  @nn.compact
  def __call__(self, x):
    s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    d = self.dilation
    y = self.conv(self.planes, (1, 1), strides=(s1, s1), padding=((0, 0), (0, 0)),
                  name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.planes, (3, 3), strides=(s3, s3), padding=((d, d), (d, d)),
                  kernel_dilation=(d, d), name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(self.planes * 4, (1, 1), padding=((0, 0), (0, 0)), name='conv3')(y)
    y = self.norm(name='bn3')(y)
    if self.downsample:
      s = self.strides
      x = self.conv(self.planes * 4, (1, 1), strides=(s, s), padding=((0, 0), (0, 0)),
                    name='downsample_conv')(x)
      x = self.norm(name='downsample_bn')(x)
    return layers.relu_once(y + x)


class ResNet(nn.Module):
  """Returns {'low_level': stride 4 (layer1), 'layer3': layer3, 'out': layer4}."""
  depth: int = 101
  output_stride: int = 16
  multi_grid: Sequence[int] = ()
  base_width: int = 64
  variant: str = 'torchvision'  # or 'caffe'
  freeze_bn: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: Sequence[str] = ()  # stage names, e.g. ('layer3', 'layer4')

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.variant not in ('torchvision', 'caffe'):
      raise ValueError(f"model.backbone_variant for ResNet must be 'torchvision' or "
                       f"'caffe', got {self.variant!r}")
    if self.depth not in STAGE_SIZES:
      raise ValueError(f'ResNet depth must be one of {sorted(STAGE_SIZES)}, got {self.depth}')
    stage_sizes = STAGE_SIZES[self.depth]
    conv = layers.make_conv(self.dtype, self.param_dtype)
    norm = layers.make_norm(train, self.freeze_bn, self.bn_momentum, self.bn_epsilon,
                            self.dtype, self.param_dtype)
    x = x.astype(self.dtype)
    x = conv(self.base_width, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
             name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    x = layers.max_pool_3x3_s2(x, ceil_mode=self.variant == 'caffe')
    features = {}
    plan = stage_plan(stage_sizes, self.output_stride, self.variant, self.multi_grid)
    for i, blocks in enumerate(plan):
      stage = f'layer{i + 1}'
      block_cls = nn.remat(Bottleneck) if stage in self.remat else Bottleneck
      for j, (strides, dilation) in enumerate(blocks):
        x = block_cls(planes=self.base_width * 2**i, strides=strides, dilation=dilation,
                      downsample=j == 0, conv=conv, norm=norm,
                      stride_in_1x1=self.variant == 'caffe', name=f'{stage}_{j}')(x)
      if i == 0:
        features['low_level'] = x
      elif i == 2:
        features['layer3'] = x
    features['out'] = x
    return features
