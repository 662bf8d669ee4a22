"""Numerical parity of converted weights: PyTorch model vs deeplax model, same weights.

For every source layout a reference PyTorch model gets random weights *and* random
BatchNorm running statistics (not their init values, which would hide a swapped mean
and var), its state_dict is saved to a file, converted through the CLI
(`python -m deeplax.convert`'s main) and loaded back with `load_converted`; both models
then run in eval mode on the same random image of an odd size (97x129, so padding,
ceil-mode pooling and resize conventions all matter).

Tolerance (float32): max |ours - reference| <= 1e-4 * max |reference|.

References: torchvision's own model code where it exists (ImageNet ResNet-50/101 and
MobileNetV2, segmentation deeplabv3_resnet50/101); for VainF's DeepLabV3Plus-Pytorch
and pytorch-deeplab-resnet (not importable) our reconstructions in tests/reference/,
whose key layouts and forward passes follow those projects' published code.
"""
import numpy as np
import pytest
import torch
from torch import nn

from configs import default
from deeplax import models
from deeplax.convert import load_converted
from deeplax.convert.__main__ import main as convert_main
from tests.conftest import import_torchvision
from tests.reference import deeplab_v2 as deeplab_v2_ref
from tests.reference import vainf as vainf_ref

RTOL = 1e-4  # max |diff| <= RTOL * max |reference logits|, float32
SIZE = (97, 129)  # odd on purpose
MEAN = np.array(default.get_config().augment.mean, np.float32)
STD = np.array(default.get_config().augment.std, np.float32)


def randomize(model: nn.Module, seed: int) -> nn.Module:
  """Random BN affine parameters and running statistics (and conv biases); eval mode."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
        m.num_batches_tracked.fill_(1234)
      elif isinstance(m, nn.Conv2d) and m.bias is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
  return model.eval()


def image(seed=0):
  """(NHWC numpy for deeplax, NCHW torch for the reference) of the same pixels."""
  x = np.random.RandomState(seed).randn(1, *SIZE, 3).astype(np.float32)
  return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def convert(tmp_path, state, filename, *flags):
  """Saves `state` with torch.save, converts it with the CLI, loads the result."""
  src = tmp_path / filename
  torch.save(state, src)
  out = tmp_path / 'converted'
  assert convert_main(['--src', str(src), '--out', str(out), *flags]) == 0
  return load_converted(str(out))


def model_config(meta, **overrides):
  """The config the trainer builds from meta.json."""
  config = default.get_config().model
  for key in ('model', 'num_classes', 'output_stride', 'backbone_variant'):
    config['name' if key == 'model' else key] = meta[key]
  config.aux_head = meta.get('aux_head', False)
  config.update(overrides)
  return config


def assert_parity(ours, reference, what):
  ours = np.asarray(ours)
  reference = reference.detach().numpy()
  if reference.ndim == 4:
    reference = reference.transpose(0, 2, 3, 1)  # NCHW -> NHWC
  assert ours.shape == reference.shape, what
  scale = float(np.abs(reference).max())
  err = float(np.abs(ours - reference).max())
  print(f'PARITY {what}: max|diff| = {err:.3g}, max|ref| = {scale:.3g}, '
        f'ratio = {err / scale:.2e}')
  assert scale > 0, what
  assert err <= RTOL * scale, f'{what}: max|diff| {err} > {RTOL} * {scale}'


def run_deeplab(meta, variables, x, **overrides):
  module = models.create_model(model_config(meta, **overrides))
  return module.apply(variables, x, train=False, return_aux=True)


def run_backbone(variables, x, **config):
  module = models.create_backbone(model_config(config))
  return module.apply({'params': variables['params']['backbone'],
                       'batch_stats': variables['batch_stats']['backbone']}, x, train=False)


@pytest.mark.slow
# Dilated ResNet-101 at OS 8 is covered by the deeplabv3_resnet101 tests below.
@pytest.mark.parametrize('depth,output_stride', [(50, 16), (101, 32)])
def test_torchvision_resnet_backbone(tmp_path, depth, output_stride):
  torchvision = import_torchvision()
  getter_cls = torchvision.models._utils.IntermediateLayerGetter  # pylint: disable=protected-access
  dilate = {8: [False, True, True], 16: [False, False, True], 32: None}[output_stride]
  torch.manual_seed(depth)
  net = randomize(getattr(torchvision.models, f'resnet{depth}')(
      weights=None, replace_stride_with_dilation=dilate), depth)
  variables, meta = convert(tmp_path, net.state_dict(), f'resnet{depth}.pth',
                            '--model', f'deeplabv3_resnet{depth}',
                            '--output_stride', str(output_stride))
  assert meta['backbone_only'] and meta['layout'] == 'torchvision_resnet'
  assert set(variables['params']) == {'backbone'}
  assert [d['keys'] for d in meta['dropped'] if d['reason'].startswith('ImageNet')] == [
      ['fc.weight', 'fc.bias']]
  x, xt = image()
  ours = run_backbone(variables, x, model=f'deeplabv3_resnet{depth}', num_classes=21,
                      output_stride=output_stride, backbone_variant='torchvision')
  getter = getter_cls(net, {'layer1': 'low_level', 'layer3': 'layer3',
                                         'layer4': 'out'})
  with torch.no_grad():
    ref = getter(xt)
  for name in ('low_level', 'layer3', 'out'):
    assert_parity(ours[name], ref[name], f'torchvision resnet{depth} OS{output_stride} {name}')


@pytest.mark.slow
def test_torchvision_mobilenet_v2_backbone(tmp_path):
  torchvision = import_torchvision()
  torch.manual_seed(2)
  net = randomize(torchvision.models.mobilenet_v2(weights=None), 2)
  variables, meta = convert(tmp_path, net.state_dict(), 'mobilenet_v2.pth',
                            '--model', 'deeplabv3plus_mobilenetv2', '--output_stride', '32')
  assert meta['layout'] == 'torchvision_mobilenet_v2' and meta['backbone_only']
  dropped = {d['reason'].split(' ')[0]: d['keys'] for d in meta['dropped']}
  assert dropped['ImageNet'] == ['classifier.1.weight', 'classifier.1.bias']
  assert all(k.startswith('features.18.') for k in dropped['final'])
  x, xt = image()
  # torchvision's MobileNetV2 has no dilation: compare at output stride 32.
  ours = run_backbone(variables, x, model='deeplabv3plus_mobilenetv2', num_classes=21,
                      output_stride=32, backbone_variant='torchvision')
  with torch.no_grad():
    low = net.features[:4](xt)
    out = net.features[4:18](low)
  assert_parity(ours['low_level'], low, 'torchvision mobilenet_v2 low_level')
  assert_parity(ours['out'], out, 'torchvision mobilenet_v2 out (320 channels)')


@pytest.mark.slow
@pytest.mark.parametrize('depth,aux', [(50, True), (101, False)])
def test_torchvision_deeplabv3(tmp_path, depth, aux):
  torchvision = import_torchvision()
  torch.manual_seed(depth + 1)
  net = getattr(torchvision.models.segmentation, f'deeplabv3_resnet{depth}')(
      weights=None, weights_backbone=None, num_classes=21, aux_loss=aux)
  net = randomize(net, depth + 1)
  variables, meta = convert(tmp_path, net.state_dict(), f'deeplabv3_resnet{depth}.pth')
  assert meta['model'] == f'deeplabv3_resnet{depth}' and meta['aux_head'] == aux
  assert (meta['layout'], meta['output_stride'], meta['num_classes']) == (
      'torchvision_deeplabv3', 8, 21)
  x, xt = image()
  logits, aux_logits = run_deeplab(meta, variables, x)
  with torch.no_grad():
    ref = net(xt)
  assert_parity(logits, ref['out'], f'torchvision deeplabv3_resnet{depth}')
  if aux:
    assert_parity(aux_logits, ref['aux'], f'torchvision deeplabv3_resnet{depth} aux')
  else:
    assert aux_logits is None


# Every VainF layout at both output strides; ResNet-101 (same table as ResNet-50, more
# blocks) once per head to keep the suite's time down.
VAINF_CASES = [(v, b, os_) for v in ('v3', 'v3plus') for b in ('resnet50', 'mobilenet')
               for os_ in (8, 16)] + [('v3', 'resnet101', 16), ('v3plus', 'resnet101', 8)]


@pytest.mark.slow
@pytest.mark.parametrize('version,backbone,output_stride', VAINF_CASES)
def test_vainf(tmp_path, version, backbone, output_stride):
  torchvision = import_torchvision()
  seed = len(backbone) + output_stride + len(version)
  torch.manual_seed(seed)
  net = randomize(vainf_ref.build(torchvision, version, backbone, 21, output_stride), seed)
  name = f'deeplab{version}_{backbone}'
  # As VainF saves it: a training checkpoint holding `model_state` (DataParallel's
  # `module.` prefix on one case), the stride in the file name.
  state = net.state_dict()
  if backbone == 'resnet50':
    state = {f'module.{k}': v for k, v in state.items()}
  checkpoint = {'cur_itrs': 30000, 'best_score': 0.77, 'model_state': state,
                'optimizer_state': {'state': {}, 'param_groups': [{'lr': 0.01}]}}
  variables, meta = convert(tmp_path, checkpoint, f'best_{name}_voc_os{output_stride}.pth')
  expected_model = name.replace('mobilenet', 'mobilenetv2')
  assert (meta['model'], meta['output_stride']) == (expected_model, output_stride)
  family = 'mobilenet' if backbone == 'mobilenet' else 'resnet'
  assert meta['layout'] == f'vainf_deeplab{version}_{family}'
  x, xt = image()
  logits, _ = run_deeplab(meta, variables, x)
  with torch.no_grad():
    ref = net(xt)
  assert_parity(logits, ref, f'VainF {name} OS{output_stride}')


@pytest.mark.slow
def test_pytorch_deeplab_resnet(tmp_path):
  torch.manual_seed(7)
  net = randomize(deeplab_v2_ref.MSDeepLab(21), 7)
  variables, meta = convert(tmp_path, net.state_dict(), 'MS_DeepLab_resnet_trained_VOC.pth')
  assert (meta['model'], meta['backbone_variant'], meta['output_stride']) == (
      'deeplabv2_resnet101', 'caffe', 8)
  x, _ = image()
  # The caffe net reads BGR pixels in 0..255 (minus its mean); conv1 was folded so that
  # deeplax reads RGB (x/255 - mean)/std. Same pixels: bgr255 - mean = 255 * std * x.
  caffe = (x * 255.0 * STD)[..., ::-1]
  logits, _ = run_deeplab(meta, variables, x)
  with torch.no_grad():
    ref = net(torch.from_numpy(caffe.transpose(0, 3, 1, 2).copy()))
  assert_parity(logits, ref, 'pytorch-deeplab-resnet MS_Deeplab (Scale)')
