"""DeepLab v2 / v3 / v3+ on a ResNet or MobileNetV2 backbone.

Parameter tree: `backbone/...`, `head/...`, optional `aux_head/...`; every final 1x1
classifier is a module named `classifier*` (the optimizer's LR multipliers find it by
name). Logits come back in float32 at the input size (bilinear, align_corners=False).
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplax.models import aspp as aspp_lib
from deeplax.models import layers


class DeepLabV3Head(nn.Module):
  """torchvision/VainF `DeepLabHead`: ASPP -> 3x3 conv -> 1x1 classifier."""
  num_classes: int
  rates: Sequence[int]
  aspp_channels: int
  aspp_dropout: float
  channels: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, features, train: bool = False):
    x = aspp_lib.ASPP(self.rates, self.aspp_channels, self.aspp_dropout, self.conv,
                      self.norm, name='aspp')(features['out'], train)
    x = layers.ConvBN(self.channels, self.conv, self.norm, kernel_size=3,
                      name='conv3x3_0')(x)
    return classifier(self.num_classes, self.dtype, self.param_dtype, 'classifier')(x)


class DeepLabV3PlusHead(nn.Module):
  """VainF `DeepLabHeadV3Plus`: ASPP, upsample to stride 4, concat with the projected
  low-level features, 3x3 conv(s), 1x1 classifier."""
  num_classes: int
  rates: Sequence[int]
  aspp_channels: int
  aspp_dropout: float
  low_level_channels: int
  channels: int
  num_convs: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, features, train: bool = False):
    low = layers.ConvBN(self.low_level_channels, self.conv, self.norm,
                        name='low_level')(features['low_level'])
    x = aspp_lib.ASPP(self.rates, self.aspp_channels, self.aspp_dropout, self.conv,
                      self.norm, name='aspp')(features['out'], train)
    x = layers.resize_bilinear(x, low.shape[1:3])
    x = jnp.concatenate([low, x], axis=-1)
    for k in range(self.num_convs):
      x = layers.ConvBN(self.channels, self.conv, self.norm, kernel_size=3,
                        name=f'conv3x3_{k}')(x)
    return classifier(self.num_classes, self.dtype, self.param_dtype, 'classifier')(x)


class FCNAuxHead(nn.Module):
  """torchvision `FCNHead` on layer3 (`aux_classifier`): 3x3 conv, dropout 0.1, 1x1."""
  num_classes: int
  channels: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = layers.ConvBN(self.channels, self.conv, self.norm, kernel_size=3, name='conv3x3')(x)
    x = nn.Dropout(0.1, deterministic=not train)(x)
    return classifier(self.num_classes, self.dtype, self.param_dtype, 'classifier')(x)


def classifier(num_classes, dtype, param_dtype, name):
  return nn.Conv(num_classes, (1, 1), use_bias=True, dtype=dtype, param_dtype=param_dtype,
                 kernel_init=layers.classifier_kernel_init, name=name)


class DeepLab(nn.Module):
  """Backbone + head (+ aux head). `backbone` is an unbound backbone module."""
  version: str  # 'v2', 'v3' or 'v3plus'
  backbone: nn.Module
  num_classes: int
  rates: Sequence[int]
  aspp_channels: int = 256
  aspp_dropout: float = 0.1
  low_level_channels: int = 48
  decoder_channels: int = 256
  decoder_convs: int = 1
  aux_head: bool = False
  aux_channels: int = 256
  freeze_bn: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False, return_aux: bool = False):
    size = images.shape[1:3]
    features = self.backbone(images, train=train)  # a field: its scope is 'backbone'
    conv = layers.make_conv(self.dtype, self.param_dtype)
    norm = layers.make_norm(train, self.freeze_bn, self.bn_momentum, self.bn_epsilon,
                            self.dtype, self.param_dtype)
    if self.version == 'v2':
      logits = aspp_lib.DeepLabV2Classifier(self.rates, self.num_classes, self.dtype,
                                            self.param_dtype, name='head')(features['out'])
    elif self.version == 'v3':
      logits = DeepLabV3Head(self.num_classes, self.rates, self.aspp_channels,
                             self.aspp_dropout, self.decoder_channels, conv, norm,
                             self.dtype, self.param_dtype, name='head')(features, train)
    elif self.version == 'v3plus':
      logits = DeepLabV3PlusHead(self.num_classes, self.rates, self.aspp_channels,
                                 self.aspp_dropout, self.low_level_channels,
                                 self.decoder_channels, self.decoder_convs, conv, norm,
                                 self.dtype, self.param_dtype, name='head')(features, train)
    else:
      raise ValueError(f"DeepLab version must be 'v2', 'v3' or 'v3plus', got {self.version!r}")
    logits = layers.resize_bilinear(logits.astype(jnp.float32), size)
    aux = None
    if self.aux_head:
      aux = FCNAuxHead(self.num_classes, self.aux_channels, conv, norm, self.dtype,
                       self.param_dtype, name='aux_head')(features['layer3'], train)
      aux = layers.resize_bilinear(aux.astype(jnp.float32), size)
    return (logits, aux) if return_aux else logits
