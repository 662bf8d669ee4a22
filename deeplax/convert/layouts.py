"""One mapping table per PyTorch source layout: torch module name -> Flax module path.

A row is a regex matched (fullmatch) against a torch *module* name (the key minus its
last part: `backbone.layer1.0.conv1` of `backbone.layer1.0.conv1.weight`) and the Flax
module it fills. The row's kind says how the module's tensors map:

  conv: weight (OIHW) -> params/<path>/kernel (HWIO; a depthwise (C,1,kh,kw) becomes
        (kh,kw,1,C), what `feature_group_count=C` expects), bias -> params/<path>/bias
  bn:   weight -> params/<path>/scale, bias -> params/<path>/bias,
        running_mean -> batch_stats/<path>/mean, running_var -> batch_stats/<path>/var

Keys no row maps are either dropped on purpose (each layout lists them, with the
reason the summary prints) or reported as errors: the converter never guesses.
Layouts are detected from marker keys; no two layouts have all of each other's markers.
"""
import dataclasses
import re
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

# torch leaf name -> (collection, flax leaf name, transform)
LEAVES = {
    'conv': {'weight': ('params', 'kernel', 'oihw_to_hwio'), 'bias': ('params', 'bias', None)},
    'bn': {'weight': ('params', 'scale', None), 'bias': ('params', 'bias', None),
           'running_mean': ('batch_stats', 'mean', None),
           'running_var': ('batch_stats', 'var', None)},
}
BN_COUNTER = (r'.*num_batches_tracked', 'BatchNorm step counters (PyTorch bookkeeping; '
              'Flax BatchNorm keeps none)')


@dataclasses.dataclass(frozen=True)
class Row:
  pattern: str  # regex, fullmatch on the torch module name
  target: Union[str, Callable[[re.Match], str]]  # Flax module path; str.format(*groups)
  kind: str  # 'conv', 'bn' or 'auto' (from the Flax module name: '*bn' is a BatchNorm)
  classifier: bool = False  # a final classifier: re-initialised by --reinit_head

  def flax_path(self, match: re.Match) -> Optional[str]:
    """The Flax module path, or None when the row does not apply to this match."""
    if callable(self.target):
      return self.target(match)
    return self.target.format(*match.groups())


@dataclasses.dataclass(frozen=True)
class Layout:
  name: str
  description: str
  backbone: str  # 'resnet' or 'mobilenetv2'
  version: Optional[str]  # 'v2', 'v3', 'v3plus'; None: backbone only (ImageNet classifiers)
  backbone_variant: str  # deeplax model.backbone_variant the weights need
  rows: Tuple[Row, ...]
  drops: Tuple[Tuple[str, str], ...]  # (regex on the full torch key, why it is dropped)
  markers: Tuple[str, ...]  # regexes that must each match a key for auto-detection
  classifier_bias: Optional[str] = None  # key whose length is the checkpoint's class count
  aux_classifier_bias: Optional[str] = None  # present => torchvision aux head
  block_prefix: str = ''  # prefix of the ResNet stages' keys (depth is read from layer3)
  output_stride: Optional[int] = None  # fixed by the source; None: not recorded in the file
  aspp_dropout: float = 0.1

  @property
  def backbone_only(self) -> bool:
    return self.version is None

  def lookup(self, module: str):
    """(row, Flax module path) of the first row mapping a torch module, or (None, None)."""
    for row in self.rows:
      m = re.fullmatch(row.pattern, module)
      path = m and row.flax_path(m)
      if path:
        return row, path
    return None, None

  def drop_reason(self, key: str) -> Optional[str]:
    for pattern, reason in self.drops:
      if re.fullmatch(pattern, key):
        return reason
    return None


def _conv_bn(torch_prefix: str, flax_path: str) -> Tuple[Row, Row]:
  """A torch Sequential(conv, bn, ...) at `torch_prefix` -> a deeplax ConvBN."""
  return (Row(rf'{torch_prefix}\.0', f'{flax_path}/conv', 'conv'),
          Row(rf'{torch_prefix}\.1', f'{flax_path}/bn', 'bn'))


def resnet_rows(prefix: str) -> Tuple[Row, ...]:
  """torchvision ResNet (and the caffe ResNet of pytorch-deeplab-resnet, same names)."""
  p = re.escape(prefix)
  return (
      Row(rf'{p}conv1', 'backbone/conv1', 'conv'),
      Row(rf'{p}bn1', 'backbone/bn1', 'bn'),
      Row(rf'{p}layer(\d)\.(\d+)\.conv(\d)', 'backbone/layer{0}_{1}/conv{2}', 'conv'),
      Row(rf'{p}layer(\d)\.(\d+)\.bn(\d)', 'backbone/layer{0}_{1}/bn{2}', 'bn'),
      Row(rf'{p}layer(\d)\.(\d+)\.downsample\.0', 'backbone/layer{0}_{1}/downsample_conv',
          'conv'),
      Row(rf'{p}layer(\d)\.(\d+)\.downsample\.1', 'backbone/layer{0}_{1}/downsample_bn',
          'bn'),
  )


def mobilenet_rows(stem: Optional[str], block: str,
                   index: Callable[[int], int]) -> Tuple[Row, ...]:
  """torchvision-style MobileNetV2. `stem` is the torch name of the stem Sequential(conv,
  bn, relu6) (None: not in this table); `block` a regex capturing a block's torch
  number, `index` maps it to the deeplax `features_<i>`. Block 1 (expansion 1) has no
  expand conv, so its `conv.0` is the depthwise conv and `conv.1`/`conv.2` the
  projection; later blocks start with the expand conv. The kind ('auto') follows the
  Flax module's name.
  """
  def target(block_1, other):
    def fn(m):
      i = index(int(m[1]))
      part = block_1 if i == 1 else other
      return None if part is None else f'backbone/features_{i}/{part}'
    return fn
  stem_rows = () if stem is None else (
      Row(rf'{stem}\.0', 'backbone/features_0/conv', 'conv'),
      Row(rf'{stem}\.1', 'backbone/features_0/bn', 'bn'))
  return stem_rows + (
      Row(rf'{block}\.conv\.0\.0', target('dw_conv', 'expand_conv'), 'auto'),
      Row(rf'{block}\.conv\.0\.1', target('dw_bn', 'expand_bn'), 'auto'),
      Row(rf'{block}\.conv\.1\.0', target(None, 'dw_conv'), 'auto'),
      Row(rf'{block}\.conv\.1\.1', target(None, 'dw_bn'), 'auto'),
      Row(rf'{block}\.conv\.1', target('project_conv', None), 'auto'),
      Row(rf'{block}\.conv\.2', target('project_bn', 'project_conv'), 'auto'),
      Row(rf'{block}\.conv\.3', target(None, 'project_bn'), 'auto'),
  )


def aspp_rows(prefix: str) -> Tuple[Row, ...]:
  """torchvision / VainF ASPP: convs.0 (1x1), convs.1-3 (atrous), convs.4 (pooling:
  AdaptiveAvgPool2d, conv, bn, relu), project (conv, bn, relu, dropout)."""
  p = re.escape(prefix)
  return (
      *_conv_bn(rf'{p}convs\.([0-3])', 'head/aspp/branch{0}'),
      Row(rf'{p}convs\.4\.1', 'head/aspp/pool/conv', 'conv'),
      Row(rf'{p}convs\.4\.2', 'head/aspp/pool/bn', 'bn'),
      *_conv_bn(rf'{p}project', 'head/aspp/project'),
  )


def kind_of(row: Row, flax_path: str) -> str:
  """A row's kind; 'auto' rows (MobileNetV2) take it from the Flax module's name."""
  if row.kind != 'auto':
    return row.kind
  return 'bn' if flax_path.rsplit('/', 1)[-1].endswith('bn') else 'conv'


TORCHVISION_HEAD = (
    *aspp_rows('classifier.0.'),
    Row(r'classifier\.1', 'head/conv3x3_0/conv', 'conv'),
    Row(r'classifier\.2', 'head/conv3x3_0/bn', 'bn'),
    Row(r'classifier\.4', 'head/classifier', 'conv', classifier=True),
)
TORCHVISION_AUX = (
    Row(r'aux_classifier\.0', 'aux_head/conv3x3/conv', 'conv'),
    Row(r'aux_classifier\.1', 'aux_head/conv3x3/bn', 'bn'),
    Row(r'aux_classifier\.4', 'aux_head/classifier', 'conv', classifier=True),
)
VAINF_V3_HEAD = (
    *aspp_rows('classifier.classifier.0.'),
    Row(r'classifier\.classifier\.1', 'head/conv3x3_0/conv', 'conv'),
    Row(r'classifier\.classifier\.2', 'head/conv3x3_0/bn', 'bn'),
    Row(r'classifier\.classifier\.4', 'head/classifier', 'conv', classifier=True),
)
VAINF_V3PLUS_HEAD = (
    *_conv_bn(r'classifier\.project', 'head/low_level'),
    *aspp_rows('classifier.aspp.'),
    *_conv_bn(r'classifier\.classifier', 'head/conv3x3_0'),
    Row(r'classifier\.classifier\.3', 'head/classifier', 'conv', classifier=True),
)
# VainF splits torchvision's `features` into low_level_features (0-3) and
# high_level_features (4-17 renumbered from 0; the final 1280 conv deleted).
VAINF_MOBILENET = (
    mobilenet_rows(r'backbone\.low_level_features\.0', r'backbone\.low_level_features\.([1-3])',
                   lambda k: k)
    + mobilenet_rows(None, r'backbone\.high_level_features\.(\d+)', lambda k: k + 4))
TORCHVISION_MOBILENET = mobilenet_rows(r'features\.0', r'features\.([1-9]|1[0-7])', lambda k: k)


def _vainf(version, backbone):
  head = VAINF_V3_HEAD if version == 'v3' else VAINF_V3PLUS_HEAD
  head_marker = (r'classifier\.classifier\.0\.convs\.0\.0\.weight' if version == 'v3'
                 else r'classifier\.aspp\.convs\.0\.0\.weight')
  v = 'deeplabv3' if version == 'v3' else 'deeplabv3plus'
  if backbone == 'resnet':
    rows, variant = resnet_rows('backbone.'), 'torchvision'
    marker = r'backbone\.layer1\.0\.conv1\.weight'
  else:
    rows, variant = VAINF_MOBILENET, 'vainf'
    marker = r'backbone\.low_level_features\.0\.0\.weight'
  bias = 'classifier.classifier.4.bias' if version == 'v3' else 'classifier.classifier.3.bias'
  return Layout(
      name=f'vainf_{v}_{"resnet" if backbone == "resnet" else "mobilenet"}',
      description=(f'VainF/DeepLabV3Plus-Pytorch {v} on '
                   f'{"ResNet-50/101" if backbone == "resnet" else "MobileNetV2"} (`model_state`; '
                   'the output stride is not in the file: --output_stride, or _os8/_os16 in '
                   'the file name)'),
      backbone=backbone, version=version, backbone_variant=variant,
      rows=tuple(rows) + head, drops=(BN_COUNTER,), markers=(marker, head_marker),
      classifier_bias=bias, block_prefix='backbone.', aspp_dropout=0.1)


LAYOUTS: Dict[str, Layout] = {layout.name: layout for layout in (
    Layout(
        name='torchvision_resnet',
        description='torchvision ImageNet ResNet-50/101 (backbone only; `fc` dropped)',
        backbone='resnet', version=None, backbone_variant='torchvision',
        rows=resnet_rows(''),
        drops=(BN_COUNTER, (r'fc\..*', 'ImageNet classifier (the backbone is what DeepLab uses)')),
        markers=(r'layer1\.0\.conv1\.weight',)),
    Layout(
        name='torchvision_mobilenet_v2',
        description='torchvision ImageNet MobileNetV2 (backbone only; classifier and the '
                    'final 1x1 conv to 1280 channels dropped)',
        backbone='mobilenetv2', version=None, backbone_variant='torchvision',
        rows=TORCHVISION_MOBILENET,
        drops=(BN_COUNTER,
               (r'classifier\..*', 'ImageNet classifier (the backbone is what DeepLab uses)'),
               (r'features\.18\..*', 'final 1x1 conv to 1280 channels (DeepLab reads the '
                                     '320-channel map)')),
        markers=(r'features\.1\.conv\.0\.0\.weight',)),
    Layout(
        name='torchvision_deeplabv3',
        description='torchvision deeplabv3_resnet50/101 (aux_classifier optional; OS 8)',
        backbone='resnet', version='v3', backbone_variant='torchvision',
        rows=resnet_rows('backbone.') + TORCHVISION_HEAD + TORCHVISION_AUX,
        drops=(BN_COUNTER,),
        markers=(r'backbone\.layer1\.0\.conv1\.weight', r'classifier\.0\.convs\.0\.0\.weight'),
        classifier_bias='classifier.4.bias', aux_classifier_bias='aux_classifier.4.bias',
        block_prefix='backbone.', output_stride=8, aspp_dropout=0.5),
    _vainf('v3', 'resnet'),
    _vainf('v3plus', 'resnet'),
    _vainf('v3', 'mobilenetv2'),
    _vainf('v3plus', 'mobilenetv2'),
    Layout(
        name='pytorch_deeplab_resnet',
        description='isht7/pytorch-deeplab-resnet MS_Deeplab (DeepLab-v2, caffe ResNet-101, '
                    '`Scale.` prefix, `layer5` = four dilated 3x3 classifiers; OS 8)',
        backbone='resnet', version='v2', backbone_variant='caffe',
        rows=resnet_rows('Scale.') + (
            Row(r'Scale\.layer5\.conv2d_list\.([0-3])', 'head/classifier_{0}', 'conv',
                classifier=True),),
        drops=(BN_COUNTER,),
        markers=(r'Scale\.layer5\.conv2d_list\.0\.weight',),
        classifier_bias='Scale.layer5.conv2d_list.0.bias', block_prefix='Scale.',
        output_stride=8),
)}


class LayoutError(ValueError):
  """The checkpoint's layout is unknown, ambiguous or not the one asked for."""


def detect_layout(keys: Sequence[str], path: str = '') -> Layout:
  """The one layout whose markers all match some key."""
  found = [layout for layout in LAYOUTS.values()
           if all(any(re.fullmatch(m, k) for k in keys) for m in layout.markers)]
  if len(found) == 1:
    return found[0]
  sample = ', '.join(list(keys)[:8])
  if not found:
    raise LayoutError(
        f'{path}: cannot tell the layout from the keys (first: {sample}). Known layouts: '
        + '; '.join(f'{l.name} ({l.description})' for l in LAYOUTS.values())
        + '. Pass --layout if it is one of them.')
  raise LayoutError(f'{path}: the keys fit several layouts ({[l.name for l in found]}); '
                    'pass --layout')


def resnet_depth(keys: Sequence[str], layout: Layout, path: str = '') -> int:
  """50 or 101, from the number of blocks in layer3 (6 or 23)."""
  pattern = re.escape(layout.block_prefix) + r'layer3\.(\d+)\.conv1\.weight'
  blocks = {int(m[1]) for m in (re.fullmatch(pattern, k) for k in keys) if m}
  depth = {6: 50, 23: 101}.get(len(blocks))
  if depth is None:
    raise LayoutError(f'{path}: layer3 has {len(blocks)} blocks; deeplax builds ResNet-50 '
                      '(6) and ResNet-101 (23)')
  return depth
