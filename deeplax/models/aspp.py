"""Atrous spatial pyramid pooling: DeepLabv3's (with image pooling) and DeepLab-v2's."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplax.models import layers


class ASPP(nn.Module):
  """1x1 + one 3x3 atrous branch per rate + image pooling, concatenated and projected.

  Layout of torchvision's `ASPP` (branch0..3 = convs.0..3, pool = convs.4,
  project = project.0/1, then dropout).
  """
  rates: Sequence[int]
  channels: int
  dropout: float
  conv: layers.ModuleDef
  norm: layers.ModuleDef

  @nn.compact
  def __call__(self, x, train: bool = False):
    branches = [layers.ConvBN(self.channels, self.conv, self.norm, name='branch0')(x)]
    for i, rate in enumerate(self.rates, 1):
      branches.append(layers.ConvBN(self.channels, self.conv, self.norm, kernel_size=3,
                                    dilation=rate, name=f'branch{i}')(x))
    # Image pooling: the mean in float32 (bf16 sums over a 65x65 map lose digits),
    # then broadcast back -- bilinear upsampling of a 1x1 map is a broadcast.
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    pooled = layers.ConvBN(self.channels, self.conv, self.norm, name='pool')(pooled)
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.channels,)))
    y = jnp.concatenate(branches, axis=-1)
    y = layers.ConvBN(self.channels, self.conv, self.norm, name='project')(y)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class DeepLabV2Classifier(nn.Module):
  """DeepLab-v2 ASPP-L: sum of 3x3 dilated classifiers with bias (`layer5` of
  pytorch-deeplab-resnet; classifier_i = conv2d_list.i)."""
  rates: Sequence[int]
  num_classes: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = 0.
    for i, rate in enumerate(self.rates):
      out = out + layers.Conv(self.num_classes, (3, 3),
                              padding=layers.same_padding(3, rate),
                              kernel_dilation=(rate, rate), dtype=self.dtype,
                              param_dtype=self.param_dtype,
                              kernel_init=layers.classifier_kernel_init,
                              name=f'classifier_{i}')(x)
    return out
