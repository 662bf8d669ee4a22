"""A PyTorch reconstruction of isht7/pytorch-deeplab-resnet's DeepLab-v2 (`MS_Deeplab`).

That project is not importable (a script collection written for PyTorch 0.x), so this
file rebuilds the architecture from its published description -- written for these
tests, not copied -- with the same module names, hence the same state_dict keys
(`Scale.conv1.weight`, `Scale.layer3.7.downsample.1.running_var`,
`Scale.layer5.conv2d_list.2.bias`, ...):

- the caffe ResNet-101 of DeepLab-v2: 7x7/2 stem (pad 3), max pool 3x3/2 pad 1 with
  ceil_mode=True; bottlenecks with the stride on the first 1x1 conv; layer3 dilation 2
  and layer4 dilation 4 in *every* block (no stride, output stride 8); a projection
  shortcut (1x1 conv, BN) in the first block of every stage;
- `layer5`: four 3x3 convs with bias, dilation = padding = 6, 12, 18, 24, summed.

`MSDeepLab.forward` runs the shared `Scale` network at the input scale only and
upsamples its stride-8 logits to the input (bilinear, align_corners=False), which is what
deeplax's single-scale DeepLab-v2 computes; the multi-scale max-fusion of the original
is a training-time loss (deeplax's `loss.multiscale`), not part of the weights. The
original expects BGR images in 0..255 minus the mean: the tests feed it that.
"""
from torch import nn
from torch.nn import functional as F


class CaffeBottleneck(nn.Module):
  def __init__(self, cin, planes, stride, dilation, shortcut):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, stride=stride, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = (nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride=stride, bias=False),
                                     nn.BatchNorm2d(planes * 4)) if shortcut else None)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class DilatedSum(nn.Module):
  """`layer5`: the ASPP-L classifier."""

  def __init__(self, cin, num_classes, rates=(6, 12, 18, 24)):
    super().__init__()
    self.conv2d_list = nn.ModuleList(
        nn.Conv2d(cin, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates)

  def forward(self, x):
    return sum(conv(x) for conv in self.conv2d_list)


class CaffeResNet(nn.Module):
  def __init__(self, num_classes, stage_sizes=(3, 4, 23, 3)):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    cin = 64
    for i, (n, stride, dilation) in enumerate(zip(stage_sizes, (1, 2, 1, 1), (1, 1, 2, 4))):
      planes = 64 * 2**i
      blocks = [CaffeBottleneck(cin if j == 0 else planes * 4, planes, stride if j == 0 else 1,
                                dilation, shortcut=j == 0) for j in range(n)]
      self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
      cin = planes * 4
    self.layer5 = DilatedSum(cin, num_classes)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.layer5(x)


class MSDeepLab(nn.Module):
  def __init__(self, num_classes=21):
    super().__init__()
    self.Scale = CaffeResNet(num_classes)  # pylint: disable=invalid-name

  def forward(self, x):
    return F.interpolate(self.Scale(x), size=x.shape[-2:], mode='bilinear',
                         align_corners=False)
