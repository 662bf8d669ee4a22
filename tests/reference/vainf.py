"""A PyTorch reconstruction of VainF/DeepLabV3Plus-Pytorch's DeepLabV3/V3+ models.

VainF's project cannot be imported here (it is not a package), so this file rebuilds
the same architecture from its published description -- written for these tests, not
copied: the module tree (and so every state_dict key and shape) and the forward pass
follow VainF's `network/_deeplab.py`, `network/modeling.py` and
`network/backbone/mobilenetv2.py`:

- ResNet backbones are torchvision's ResNet (VainF ships a copy of it) with
  `replace_stride_with_dilation` = [F, F, T] at OS 16 and [F, T, T] at OS 8, wrapped so
  that only `layer1` ('low_level') and `layer4` ('out') are returned.
- MobileNetV2 uses TF-style padding: the stem conv is unpadded, every inverted residual
  pads its *input* by (k_eff - 1) // 2 on each side and all its convs are unpadded;
  strides turn into dilations once the output stride is reached, the first block of a
  group keeping the previous dilation. Its `features` are split into
  `low_level_features` (0-3) and `high_level_features` (4-17; the 1280 conv removed).
- Heads: ASPP (1x1, three 3x3 atrous, image pooling; 256 channels; projection with
  dropout 0.1), then DeepLabHead (3x3 conv, 1x1 classifier) or DeepLabHeadV3Plus
  (48-channel projection of the low-level map, ASPP upsampled to it, concat, 3x3 conv,
  1x1 classifier); logits resized to the input bilinearly (align_corners=False).

The state_dict keys of these modules are exactly VainF's (`backbone.*`, `classifier.*`).
"""
import collections

import torch
from torch import nn
from torch.nn import functional as F


def _conv_bn_relu(cin, cout, kernel, dilation=1, relu=nn.ReLU):
  return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2),
                                 dilation=dilation, bias=False),
                       nn.BatchNorm2d(cout), relu(inplace=True))


class _Pooling(nn.Sequential):
  def __init__(self, cin, cout):
    super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False),
                     nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

  def forward(self, x):
    return F.interpolate(super().forward(x), size=x.shape[-2:], mode='bilinear',
                         align_corners=False)


class ASPP(nn.Module):
  def __init__(self, cin, rates, channels=256):
    super().__init__()
    branches = [_conv_bn_relu(cin, channels, 1)]
    branches += [_conv_bn_relu(cin, channels, 3, dilation=r) for r in rates]
    branches.append(_Pooling(cin, channels))
    self.convs = nn.ModuleList(branches)
    self.project = nn.Sequential(nn.Conv2d(len(branches) * channels, channels, 1, bias=False),
                                 nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                 nn.Dropout(0.1))

  def forward(self, x):
    return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Module):
  def __init__(self, cin, num_classes, rates):
    super().__init__()
    self.classifier = nn.Sequential(ASPP(cin, rates), nn.Conv2d(256, 256, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(256), nn.ReLU(inplace=True),
                                    nn.Conv2d(256, num_classes, 1))

  def forward(self, features):
    return self.classifier(features['out'])


class DeepLabHeadV3Plus(nn.Module):
  def __init__(self, cin, low_level_cin, num_classes, rates):
    super().__init__()
    self.project = _conv_bn_relu(low_level_cin, 48, 1)
    self.aspp = ASPP(cin, rates)
    self.classifier = nn.Sequential(nn.Conv2d(48 + 256, 256, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(256), nn.ReLU(inplace=True),
                                    nn.Conv2d(256, num_classes, 1))

  def forward(self, features):
    low = self.project(features['low_level'])
    x = F.interpolate(self.aspp(features['out']), size=low.shape[-2:], mode='bilinear',
                      align_corners=False)
    return self.classifier(torch.cat([low, x], dim=1))


class _UnpaddedConvBNReLU6(nn.Sequential):
  def __init__(self, cin, cout, kernel=3, stride=1, dilation=1, groups=1):
    super().__init__(nn.Conv2d(cin, cout, kernel, stride, 0, dilation=dilation, groups=groups,
                               bias=False),
                     nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class _TFPaddedInvertedResidual(nn.Module):
  def __init__(self, cin, cout, stride, dilation, expansion):
    super().__init__()
    hidden = int(round(cin * expansion))
    parts = [] if expansion == 1 else [_UnpaddedConvBNReLU6(cin, hidden, kernel=1)]
    parts += [_UnpaddedConvBNReLU6(hidden, hidden, stride=stride, dilation=dilation,
                                   groups=hidden),
              nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    self.conv = nn.Sequential(*parts)
    self.residual = stride == 1 and cin == cout
    effective = 3 + 2 * (dilation - 1)
    before = (effective - 1) // 2
    self.pad = (before, effective - 1 - before) * 2

  def forward(self, x):
    y = self.conv(F.pad(x, self.pad))
    return x + y if self.residual else y


class MobileNetV2Backbone(nn.Module):
  """VainF's MobileNetV2 after `_segm_mobilenet`'s renaming."""
  SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))

  def __init__(self, output_stride):
    super().__init__()
    blocks = [_UnpaddedConvBNReLU6(3, 32, stride=2)]
    cin, stride_so_far, dilation = 32, 2, 1
    for t, c, n, s in self.SETTING:
      previous = dilation
      if stride_so_far == output_stride:
        stride, dilation = 1, dilation * s
      else:
        stride, stride_so_far = s, stride_so_far * s
      for i in range(n):
        blocks.append(_TFPaddedInvertedResidual(cin, c, stride if i == 0 else 1,
                                                previous if i == 0 else dilation, t))
        cin = c
    self.low_level_features = nn.Sequential(*blocks[:4])
    self.high_level_features = nn.Sequential(*blocks[4:])

  def forward(self, x):
    low = self.low_level_features(x)
    return collections.OrderedDict(low_level=low, out=self.high_level_features(low))


class ResNetBackbone(nn.Module):
  """torchvision's ResNet returning layer1 and layer4; keys as VainF's wrapper."""

  def __init__(self, torchvision, depth, output_stride):
    super().__init__()
    dilate = [False, True, True] if output_stride == 8 else [False, False, True]
    net = getattr(torchvision.models, f'resnet{depth}')(weights=None,
                                                       replace_stride_with_dilation=dilate)
    for name in ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4'):
      self.add_module(name, getattr(net, name))

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    low = self.layer1(x)
    return collections.OrderedDict(low_level=low, out=self.layer4(self.layer3(self.layer2(low))))


class DeepLab(nn.Module):
  def __init__(self, backbone, classifier):
    super().__init__()
    self.backbone = backbone
    self.classifier = classifier

  def forward(self, x):
    logits = self.classifier(self.backbone(x))
    return F.interpolate(logits, size=x.shape[-2:], mode='bilinear', align_corners=False)


def build(torchvision, version, backbone, num_classes=21, output_stride=16):
  """version 'v3' or 'v3plus'; backbone 'resnet50', 'resnet101' or 'mobilenet'."""
  rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
  if backbone == 'mobilenet':
    body, cin, low_cin = MobileNetV2Backbone(output_stride), 320, 24
  else:
    body, cin, low_cin = ResNetBackbone(torchvision, int(backbone[6:]), output_stride), 2048, 256
  head = (DeepLabHead(cin, num_classes, rates) if version == 'v3'
          else DeepLabHeadV3Plus(cin, low_cin, num_classes, rates))
  return DeepLab(body, head)
