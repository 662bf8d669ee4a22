"""Atrous MobileNetV2 in torchvision's `features.N` layout.

The classifier and the final 1x1 -> 1280 conv are not built (DeepLab reads the
320-channel map, as VainF's DeepLabV3Plus-Pytorch). Dilation follows VainF's rule:
once the output stride is reached, strides become dilations and the first block of
a group keeps the previous dilation.

`variant='vainf'` reproduces VainF's TF-style padding so its checkpoints give the same
logits: an unpadded stem, and every inverted-residual block pads its *input* by the
dilation before the 1x1 expansion, with all inner convs unpadded (so the border holds
expand(0) rather than zeros). `multi_grid` gives seed 000's variant: the last
(320-channel) group is replaced by one block at the current rate plus one block per
multi-grid rate, all shaped like the 160-channel group.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplax.models import layers

# t (expansion), c (channels), n (blocks), s (stride): torchvision / the paper.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
LOW_LEVEL_BLOCK = 3  # features_3: the last stride-4 block (24 channels)


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's `_make_divisible`: round channels to a multiple of 8, >= 90% of v."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def block_plan(output_stride: int, multi_grid: Sequence[int] = ()):
  """[(expansion, out_channels_unscaled, stride, dilation)] for features_1, features_2, ..."""
  if output_stride not in (8, 16, 32):
    raise ValueError(f'model.output_stride must be 8, 16 or 32, got {output_stride}')
  setting = INVERTED_RESIDUAL_SETTING
  if multi_grid:
    setting = setting[:-1]
  plan = []
  current_stride, dilation = 2, 1
  for t, c, n, s in setting:
    previous_dilation = dilation
    if current_stride == output_stride:
      stride, dilation = 1, dilation * s
    else:
      stride, current_stride = s, current_stride * s
    for i in range(n):
      plan.append((t, c, stride if i == 0 else 1, previous_dilation if i == 0 else dilation))
  if multi_grid:
    t, c = setting[-1][:2]
    plan.append((t, c, 1, dilation))
    plan.extend((t, c, 1, dilation * rate) for rate in multi_grid)
  return plan


class InvertedResidual(nn.Module):
  """expand 1x1 (if t > 1) -> depthwise 3x3 -> linear 1x1, residual when shapes allow."""
  out_channels: int
  expansion: int
  strides: int
  dilation: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  tf_padding: bool = False  # VainF: pad the block input, inner convs unpadded

  @nn.compact
  def __call__(self, x):
    in_channels = x.shape[-1]
    d = self.dilation
    no_pad = ((0, 0), (0, 0))
    if self.tf_padding:
      y = jnp.pad(x, ((0, 0), (d, d), (d, d), (0, 0)))
      dw_padding = no_pad
    else:
      y = x
      dw_padding = ((d, d), (d, d))
    hidden = int(round(in_channels * self.expansion))
    if self.expansion != 1:
      y = self.conv(hidden, (1, 1), padding=no_pad, name='expand_conv')(y)
      y = nn.relu6(self.norm(name='expand_bn')(y))
    y = self.conv(hidden, (3, 3), strides=(self.strides, self.strides), padding=dw_padding,
                  kernel_dilation=(d, d), feature_group_count=hidden, name='dw_conv')(y)
    y = nn.relu6(self.norm(name='dw_bn')(y))
    y = self.conv(self.out_channels, (1, 1), padding=no_pad, name='project_conv')(y)
    y = self.norm(name='project_bn')(y)
    if self.strides == 1 and in_channels == self.out_channels:
      y = x + y
    return y


class MobileNetV2(nn.Module):
  """Returns {'low_level': stride 4 (features_3, 24 ch), 'out': final map (320 ch)}."""
  output_stride: int = 16
  width_multiplier: float = 1.0
  multi_grid: Sequence[int] = ()
  variant: str = 'torchvision'  # or 'vainf'
  freeze_bn: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: Sequence[str] = ()  # ('features',) rematerialises every inverted residual block

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.variant not in ('torchvision', 'vainf'):
      raise ValueError(f"model.backbone_variant for MobileNetV2 must be 'torchvision' or "
                       f"'vainf', got {self.variant!r}")
    conv = layers.make_conv(self.dtype, self.param_dtype)
    norm = layers.make_norm(train, self.freeze_bn, self.bn_momentum, self.bn_epsilon,
                            self.dtype, self.param_dtype)
    tf_padding = self.variant == 'vainf'
    x = x.astype(self.dtype)
    stem_padding = ((0, 0), (0, 0)) if tf_padding else ((1, 1), (1, 1))
    x = layers.ConvBN(make_divisible(32 * self.width_multiplier), conv, norm, kernel_size=3,
                      strides=2, padding=stem_padding, activation=nn.relu6,
                      name='features_0')(x)
    block_cls = nn.remat(InvertedResidual) if 'features' in self.remat else InvertedResidual
    features = {}
    for i, (t, c, s, d) in enumerate(block_plan(self.output_stride, self.multi_grid), 1):
      x = block_cls(make_divisible(c * self.width_multiplier), t, s, d, conv, norm,
                    tf_padding=tf_padding, name=f'features_{i}')(x)
      if i == LOW_LEVEL_BLOCK:
        features['low_level'] = x
    features['out'] = x
    return features
