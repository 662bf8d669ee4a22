"""Model registry: `config.model.name` -> a DeepLab flax.linen Module.

Names are `deeplab{v2,v3,v3plus}_{resnet50,resnet101,mobilenetv2}` (v2 with ResNet only).
"""
from typing import Callable, Dict

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from deeplax.models.deeplab import DeepLab
from deeplax.models.mobilenet_v2 import MobileNetV2
from deeplax.models.resnet import ResNet

__all__ = ['DeepLab', 'MobileNetV2', 'ResNet', 'create_model', 'create_backbone',
           'model_names']

_VERSIONS = {'deeplabv2': 'v2', 'deeplabv3': 'v3', 'deeplabv3plus': 'v3plus'}
_BACKBONES = ('resnet50', 'resnet101', 'mobilenetv2')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def model_names():
  return sorted(f'{v}_{b}' for v in _VERSIONS for b in _BACKBONES
                if not (v == 'deeplabv2' and b == 'mobilenetv2'))


def _dtype(config, key):
  value = config.get(key, 'float32')
  if value not in _DTYPES:
    raise ValueError(f'model.{key} must be one of {sorted(_DTYPES)}, got {value!r}')
  return _DTYPES[value]


def _split_name(name: str):
  if name not in model_names():
    raise ValueError(f'Unknown model.name {name!r}; known models: {", ".join(model_names())}')
  version, backbone = name.rsplit('_', 1)
  return _VERSIONS[version], backbone


def create_backbone(config: ml_collections.ConfigDict) -> nn.Module:
  """The backbone of `config.name`, returning a dict of named features."""
  _, backbone = _split_name(config.name)
  common = dict(output_stride=config.output_stride, multi_grid=tuple(config.multi_grid),
                freeze_bn=config.freeze_bn, bn_momentum=config.bn_momentum,
                bn_epsilon=config.bn_epsilon, dtype=_dtype(config, 'dtype'),
                param_dtype=_dtype(config, 'param_dtype'), remat=tuple(config.remat))
  if backbone == 'mobilenetv2':
    variant = config.backbone_variant
    return MobileNetV2(width_multiplier=config.width_multiplier, variant=variant, **common)
  return ResNet(depth=int(backbone[len('resnet'):]), base_width=config.base_width,
                variant=config.backbone_variant, **common)


def default_rates(version: str, output_stride: int):
  """ASPP rates: DeepLabv3's (6, 12, 18) at OS 16, DeepLab-v2's (6, 12, 18, 24) at OS 8,
  scaled inversely with the output stride."""
  if version == 'v2':
    return tuple(r * 8 // output_stride for r in (6, 12, 18, 24))
  return tuple(r * 16 // output_stride for r in (6, 12, 18))


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """Builds the model described by `config` (the `model` section of a deeplax config)."""
  version, backbone = _split_name(config.name)
  if config.aux_head and backbone == 'mobilenetv2':
    raise ValueError('model.aux_head needs a ResNet backbone (it reads layer3); '
                     f'{config.name!r} has none')
  rates = tuple(config.aspp_rates) or default_rates(version, config.output_stride)
  return DeepLab(
      version=version, backbone=create_backbone(config), num_classes=config.num_classes,
      rates=rates, aspp_channels=config.aspp_channels, aspp_dropout=config.aspp_dropout,
      low_level_channels=config.low_level_channels, decoder_channels=config.decoder_channels,
      decoder_convs=config.decoder_convs, aux_head=config.aux_head,
      aux_channels=config.aux_channels, freeze_bn=config.freeze_bn,
      bn_momentum=config.bn_momentum, bn_epsilon=config.bn_epsilon,
      dtype=_dtype(config, 'dtype'), param_dtype=_dtype(config, 'param_dtype'))
