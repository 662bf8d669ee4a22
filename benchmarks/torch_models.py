"""The PyTorch references the benchmarks race, built from torchvision's own modules.

- deeplabv3_resnet{50,101}: torchvision's ResNet with `replace_stride_with_dilation`
  ([F, T, T] at output stride 8, [F, F, T] at 16) under torchvision's `DeepLabHead`.
  At OS 8 with rates (12, 24, 36) this is exactly `deeplabv3_resnet50(aux_loss=False)`;
  at OS 16 the rates are (6, 12, 18), as deeplax's (DeepLabv3's own setting).
- deeplabv3_mobilenetv2: torchvision has no MobileNetV2 DeepLab, so: torchvision's
  `mobilenet_v2(width_mult).features[:-1]` (the 320-channel map, as VainF and deeplax)
  with the stride -> dilation rule of deeplax (`mobilenet_v2.block_plan`, VainF's rule)
  applied to its depthwise convs, under torchvision's `DeepLabHead`. We chose this over
  torchvision's `deeplabv3_mobilenet_v3_large` because it is the same network as
  deeplax's: same layers, same FLOPs, so the ratio compares frameworks, not models.
- deeplabv3plus_resnet101: VainF's DeepLabV3+ as rebuilt in tests/reference/vainf.py
  (torchvision ResNet + ASPP + the 48-channel low-level decoder).

Every builder returns a module whose forward gives the logits tensor (N, K, H, W).
"""
from torch import nn

from deeplax.models import mobilenet_v2 as deeplax_mobilenet_v2
from deeplax.models import default_rates


class _Logits(nn.Module):
  """Backbone features -> head -> logits at input size, as torchvision's DeepLabV3."""

  def __init__(self, model):
    super().__init__()
    self.model = model

  def forward(self, x):
    out = self.model(x)
    return out['out'] if isinstance(out, dict) else out


class _MobileNetV2Features(nn.Module):
  def __init__(self, features):
    super().__init__()
    self.features = features

  def forward(self, x):
    return {'out': self.features(x)}


def _dilated_mobilenet_v2(tv, output_stride: int, width_multiplier: float) -> nn.Module:
  features = tv.models.mobilenet_v2(weights=None, width_mult=width_multiplier).features[:-1]
  plan = deeplax_mobilenet_v2.block_plan(output_stride)
  for block, (_, _, stride, dilation) in zip(list(features)[1:], plan):
    depthwise = [m for m in block.modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    if len(depthwise) != 1:
      raise RuntimeError(f'expected one depthwise conv in {block}')
    conv = depthwise[0]
    conv.stride, conv.dilation, conv.padding = (stride, stride), (dilation, dilation), (
        dilation, dilation)
  return _MobileNetV2Features(features)


def build_reference(tv, name: str, output_stride: int, num_classes: int = 21,
                    width_multiplier: float = 1.0) -> nn.Module:
  """The reference network of deeplax model `name` at `output_stride`."""
  # pylint: disable=import-outside-toplevel
  from torchvision.models._utils import IntermediateLayerGetter
  from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
  version, backbone = name.rsplit('_', 1)
  rates = default_rates('v3', output_stride)
  if version == 'deeplabv3' and backbone.startswith('resnet'):
    dilate = {8: [False, True, True], 16: [False, False, True]}[output_stride]
    resnet = getattr(tv.models, backbone)(weights=None, replace_stride_with_dilation=dilate)
    body = IntermediateLayerGetter(resnet, return_layers={'layer4': 'out'})
    return _Logits(DeepLabV3(body, DeepLabHead(2048, num_classes, rates), None))
  if version == 'deeplabv3' and backbone == 'mobilenetv2':
    body = _dilated_mobilenet_v2(tv, output_stride, width_multiplier)
    channels = deeplax_mobilenet_v2.make_divisible(320 * width_multiplier)
    return _Logits(DeepLabV3(body, DeepLabHead(channels, num_classes, rates), None))
  if version == 'deeplabv3plus' and backbone.startswith('resnet'):
    from tests.reference import vainf
    return _Logits(vainf.build(tv, 'v3plus', backbone, num_classes, output_stride))
  raise ValueError(f'no PyTorch reference for {name!r}')
