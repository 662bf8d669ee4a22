"""Tests of deeplax.models: every config builds and runs, parameter counts equal the
PyTorch references, feature-map sizes per output stride, dilation semantics, dtypes."""
import glob
import importlib
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from deeplax import models
from deeplax.models import layers
from deeplax.models import mobilenet_v2
from deeplax.models import resnet
from tests.conftest import import_torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(os.path.basename(p)[:-3]
                      for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                      if not p.endswith(('__init__.py', 'default.py')))


def model_config(name, **overrides):
  config = default.get_config().model
  config.name = name
  config.update(overrides)
  return config


def count_params(module, size=65):
  variables = jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))


@pytest.mark.slow
@pytest.mark.parametrize('config_name', CONFIG_FILES)
def test_every_config_builds_inits_and_runs(config_name):
  """Full-size models; only the image is shrunk (odd size: exercises padding/resize)."""
  config = importlib.import_module(f'configs.{config_name}').get_config()
  module = models.create_model(config.model)
  images = jax.random.normal(jax.random.key(1), (1, 49, 57, 3))
  variables = module.init(jax.random.key(0), images, train=False)
  logits = module.apply(variables, images, train=False)
  assert logits.shape == (1, 49, 57, config.model.num_classes)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert float(jnp.std(logits)) > 0


@pytest.mark.slow
@pytest.mark.parametrize('name,aux', [('deeplabv3_resnet50', False),
                                      ('deeplabv3_resnet101', False),
                                      ('deeplabv3_resnet50', True),
                                      ('deeplabv3_resnet101', True)])
def test_param_count_equals_torchvision(name, aux):
  """Counted with torchvision's own model code: the reference for layout."""
  tv = import_torchvision()
  builder = getattr(tv.models.segmentation, name)
  torch_model = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=aux)
  expected = sum(p.numel() for p in torch_model.parameters())
  # torchvision's ASPP projection drops out 0.5 and its aux head is 1024 -> 256.
  module = models.create_model(model_config(name, aux_head=aux, aspp_dropout=0.5))
  assert count_params(module) == expected


# VainF/DeepLabV3Plus-Pytorch is not an importable package. Its models are torchvision's
# ResNet / MobileNetV2 `features[:-1]` plus torchvision's ASPP structure and small conv
# heads (network/_deeplab.py), so the count is rebuilt from those torch pieces; its README
# quotes the rounded figures (21 classes, OS 16).
VAINF_README_MILLIONS = {'deeplabv3_resnet50': '39.64', 'deeplabv3plus_resnet101': '58.75',
                         'deeplabv3_mobilenetv2': '5.11', 'deeplabv3plus_mobilenetv2': '5.23'}


def vainf_param_count(name):
  tv = import_torchvision()
  from torch import nn
  from torchvision.models.segmentation.deeplabv3 import ASPP
  version, backbone = name.rsplit('_', 1)
  if backbone == 'mobilenetv2':
    net = tv.models.mobilenet_v2(weights=None).features[:-1]
    high, low = 320, 24
  else:
    net = getattr(tv.models, backbone)(weights=None)
    net.fc = nn.Identity()
    high, low = 2048, 256
  head = [ASPP(high, [6, 12, 18])]
  if version == 'deeplabv3plus':
    head += [nn.Conv2d(low, 48, 1, bias=False), nn.BatchNorm2d(48),
             nn.Conv2d(304, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256),
             nn.Conv2d(256, 21, 1)]
  else:
    head += [nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256),
             nn.Conv2d(256, 21, 1)]
  return sum(p.numel() for m in [net, *head] for p in m.parameters())


@pytest.mark.parametrize('name', sorted(VAINF_README_MILLIONS))
def test_param_count_equals_vainf(name):
  count = count_params(models.create_model(model_config(name)))
  assert count == vainf_param_count(name)
  assert f'{count / 1e6:.2f}' == VAINF_README_MILLIONS[name]


def torchvision_resnet_feature_sizes(depth, output_stride, size):
  """Spatial sizes of layer1 and layer4 from torchvision's dilated ResNet (meta tensors)."""
  tv = import_torchvision()
  import torch
  dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}
  net = getattr(tv.models, f'resnet{depth}')(
      weights=None, replace_stride_with_dilation=dilate[output_stride]).to('meta')
  x = torch.empty(1, 3, size, size, device='meta')
  x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
  low = net.layer1(x)
  out = net.layer4(net.layer3(net.layer2(low)))
  return low.shape[-1], out.shape[-1]


@pytest.mark.parametrize('output_stride', [8, 16, 32])
@pytest.mark.parametrize('size', [513, 321])
def test_resnet_feature_sizes_match_torchvision(output_stride, size):
  backbone = resnet.ResNet(depth=50, output_stride=output_stride)
  features = jax.eval_shape(
      lambda: backbone.init_with_output(jax.random.key(0), jnp.zeros((1, size, size, 3)))[0])
  low, out = torchvision_resnet_feature_sizes(50, output_stride, size)
  assert features['low_level'].shape[1:3] == (low, low)
  assert features['out'].shape[1:3] == (out, out)
  assert features['out'].shape[-1] == 2048
  if size == 513:  # the DeepLab numbers everybody quotes
    assert out == {8: 65, 16: 33, 32: 17}[output_stride]


@pytest.mark.parametrize('output_stride,expected', [(8, 65), (16, 33), (32, 17)])
def test_mobilenet_feature_sizes(output_stride, expected):
  # Conv arithmetic of torchvision's MobileNetV2 (pad 1 stem, stride-2 3x3 pad d):
  # 513 -> 257 -> 129 (low level) -> 65 -> 33 -> 17.
  backbone = mobilenet_v2.MobileNetV2(output_stride=output_stride)
  features = jax.eval_shape(
      lambda: backbone.init_with_output(jax.random.key(0), jnp.zeros((1, 513, 513, 3)))[0])
  assert features['low_level'].shape[1:] == (129, 129, 24)
  assert features['out'].shape[1:] == (expected, expected, 320)


@pytest.mark.parametrize('name', ['deeplabv3_resnet50', 'deeplabv3plus_mobilenetv2',
                                  'deeplabv2_resnet50'])
@pytest.mark.parametrize('size', [513, 321])
def test_logits_at_input_size_for_every_output_stride(name, size):
  for output_stride in (8, 16, 32):
    module = models.create_model(model_config(name, output_stride=output_stride))
    images = jnp.zeros((2, size, size, 3))
    out = jax.eval_shape(
        lambda: module.init_with_output(jax.random.key(0), images)[0])
    assert out.shape == (2, size, size, 21)


def tiny_backbone(kind, output_stride):
  if kind == 'resnet':
    return resnet.ResNet(depth=50, output_stride=output_stride, base_width=8)
  return mobilenet_v2.MobileNetV2(output_stride=output_stride, width_multiplier=0.25)


@pytest.mark.parametrize('kind', ['resnet', 'mobilenet'])
def test_dilation_is_the_atrous_equivalent_of_striding(kind):
  """Same weights, OS 8 vs OS 16: the OS-8 map is twice as fine, and its even pixels
  are exactly the OS-16 map (the 'algorithme a trous': dilation 2 on the fine grid is
  dilation 1 on the coarse grid). Without real dilation the two would differ."""
  x = jax.random.normal(jax.random.key(0), (1, 97, 129, 3))
  os16, os8 = tiny_backbone(kind, 16), tiny_backbone(kind, 8)
  variables = os16.init(jax.random.key(1), x)
  # Non-trivial BN statistics so that every layer matters.
  rng = np.random.default_rng(2)
  stats = jax.tree_util.tree_map_with_path(
      lambda path, v: (rng.uniform(0.5, 1.5, v.shape) if path[-1].key == 'var'
                       else rng.normal(0, 0.1, v.shape)).astype(np.float32),
      variables['batch_stats'])
  variables = {'params': variables['params'], 'batch_stats': stats}
  f16 = os16.apply(variables, x)['out']
  f8 = os8.apply(variables, x)['out']
  assert f16.shape[1:3] == (7, 9)
  assert f8.shape[1:3] == (13, 17)
  scale = float(jnp.abs(f16).max())
  np.testing.assert_allclose(f8[:, ::2, ::2], f16, rtol=1e-4, atol=1e-4 * scale)
  # And the odd pixels are new information, not a copy: the map really is finer.
  assert float(jnp.abs(f8[:, 1::2, ::2] - f16[:, :-1]).max()) > 1e-2 * scale


def test_stage_plans():
  assert resnet.stage_plan((3, 4, 23, 3), 16, 'torchvision')[3] == ((1, 1), (1, 2), (1, 2))
  assert resnet.stage_plan((3, 4, 23, 3), 16, 'torchvision', (1, 2, 4))[3] == (
      (1, 2), (1, 4), (1, 8))
  assert resnet.stage_plan((3, 4, 23, 3), 8, 'torchvision', (1, 2, 4))[3] == (
      (1, 4), (1, 8), (1, 16))
  caffe = resnet.stage_plan((3, 4, 23, 3), 8, 'caffe')
  assert set(caffe[2]) == {(1, 2)} and set(caffe[3]) == {(1, 4)}
  assert resnet.stage_plan((3, 4, 6, 3), 32, 'torchvision')[1][0] == (2, 1)
  # seed 000's MobileNetV2 multi-grid: the 320 group replaced by 1 + 3 blocks of 160.
  plan = mobilenet_v2.block_plan(16, (1, 2, 4))
  assert plan[-4:] == [(6, 160, 1, 2), (6, 160, 1, 2), (6, 160, 1, 4), (6, 160, 1, 8)]
  assert all(c != 320 for _, c, _, _ in plan)


def test_mobilenet_multi_grid_model_runs():
  module = models.create_model(model_config('deeplabv3_mobilenetv2', multi_grid=(1, 2, 4),
                                            width_multiplier=0.25, aspp_channels=16,
                                            decoder_channels=16))
  x = jnp.zeros((1, 65, 65, 3))
  variables = module.init(jax.random.key(0), x)
  assert 'features_20' in variables['params']['backbone']
  assert module.apply(variables, x).shape == (1, 65, 65, 21)


def test_bfloat16_compute_runs_with_float32_params():
  module = models.create_model(model_config(
      'deeplabv3plus_resnet50', base_width=8, aspp_channels=16, decoder_channels=16,
      low_level_channels=8, dtype='bfloat16', aux_head=True, aux_channels=8))
  x = jax.random.normal(jax.random.key(0), (2, 33, 33, 3))
  variables = module.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))
  (logits, aux), updates = module.apply(variables, x, train=True, return_aux=True,
                                        mutable=['batch_stats'],
                                        rngs={'dropout': jax.random.key(1)})
  assert logits.dtype == jnp.float32 and aux.shape == logits.shape
  assert bool(jnp.all(jnp.isfinite(logits)))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), updates['batch_stats'],
                         variables['batch_stats'])
  assert all(jax.tree.leaves(changed))


def test_freeze_bn_keeps_running_statistics():
  module = models.create_model(model_config('deeplabv2_resnet50', base_width=8,
                                            backbone_variant='caffe', freeze_bn=True))
  x = jax.random.normal(jax.random.key(0), (2, 33, 33, 3))
  variables = module.init(jax.random.key(0), x)
  _, updates = module.apply(variables, x, train=True, mutable=['batch_stats'])
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), updates['batch_stats'],
                      variables['batch_stats'])
  assert all(jax.tree.leaves(same))


def test_unknown_model_names_the_known_ones():
  with pytest.raises(ValueError) as err:
    models.create_model(model_config('deeplabv3_resnet152'))
  for name in ('deeplabv3plus_resnet101', 'deeplabv3_mobilenetv2', 'deeplabv2_resnet101'):
    assert name in str(err.value)


@pytest.mark.parametrize('overrides,message', [
    (dict(output_stride=4), 'output_stride'),
    (dict(multi_grid=(1, 2)), 'multi_grid'),
    (dict(backbone_variant='vainf'), 'backbone_variant'),
    (dict(dtype='float64'), 'dtype'),
])
def test_bad_model_config_names_the_key(overrides, message):
  with pytest.raises(ValueError, match=message):
    module = models.create_model(model_config('deeplabv3_resnet50', base_width=8, **overrides))
    module.init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)))


def test_aux_head_needs_resnet():
  with pytest.raises(ValueError, match='aux_head'):
    models.create_model(model_config('deeplabv3_mobilenetv2', aux_head=True))


@pytest.mark.parametrize('src,dst', [((33, 33), (513, 513)), ((17, 23), (97, 129)),
                                     ((97, 129), (49, 65)), ((65, 65), (33, 33))])
def test_bilinear_resize_matches_torch_align_corners_false(src, dst):
  import torch
  x = np.random.default_rng(0).normal(size=(2, *src, 3)).astype(np.float32)
  expected = torch.nn.functional.interpolate(
      torch.from_numpy(x).permute(0, 3, 1, 2), size=dst, mode='bilinear',
      align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(layers.resize_bilinear(jnp.asarray(x), dst), expected,
                             atol=1e-4)


@pytest.mark.parametrize('size', [(160, 161), (33, 34), (7, 8)])
@pytest.mark.parametrize('ceil_mode', [False, True])
def test_max_pool_matches_torch(size, ceil_mode):
  import torch
  x = np.random.default_rng(0).normal(size=(1, *size, 2)).astype(np.float32)
  expected = torch.nn.functional.max_pool2d(
      torch.from_numpy(x).permute(0, 3, 1, 2), 3, 2, 1, ceil_mode=ceil_mode
  ).permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(layers.max_pool_3x3_s2(jnp.asarray(x), ceil_mode), expected)
  # The gradient too: each output's cotangent goes to its window's maximum (no ties here).
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
  cotangent = np.random.default_rng(1).normal(size=expected.shape).astype(np.float32)
  torch.nn.functional.max_pool2d(xt, 3, 2, 1, ceil_mode=ceil_mode).backward(
      torch.from_numpy(cotangent).permute(0, 3, 1, 2))
  grad = jax.grad(lambda v: jnp.sum(layers.max_pool_3x3_s2(v, ceil_mode) * cotangent))(
      jnp.asarray(x))
  np.testing.assert_allclose(grad, xt.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5)


@pytest.mark.parametrize('ceil_mode', [False, True])
def test_max_pool_gradient_breaks_ties_as_torch(ceil_mode):
  """After a ReLU most windows tie (at 0) and small integers tie everywhere: torch gives
  each output's whole cotangent to its window's first maximum, and so must we."""
  import torch
  rng = np.random.default_rng(2)
  x = np.concatenate([np.maximum(rng.normal(size=(1, 33, 34, 2)), 0),
                      rng.integers(0, 3, size=(1, 33, 34, 2))], -1).astype(np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
  out = torch.nn.functional.max_pool2d(xt, 3, 2, 1, ceil_mode=ceil_mode)
  cotangent = rng.normal(size=out.shape).astype(np.float32)
  out.backward(torch.from_numpy(cotangent))
  grad = jax.grad(lambda v: jnp.sum(layers.max_pool_3x3_s2(v, ceil_mode)
                                    * cotangent.transpose(0, 2, 3, 1)))(jnp.asarray(x))
  np.testing.assert_allclose(grad, xt.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5)

def test_model_names_registry_is_complete():
  assert set(models.model_names()) == {
      'deeplabv2_resnet50', 'deeplabv2_resnet101', 'deeplabv3_resnet50',
      'deeplabv3_resnet101', 'deeplabv3_mobilenetv2', 'deeplabv3plus_resnet50',
      'deeplabv3plus_resnet101', 'deeplabv3plus_mobilenetv2'}
  assert isinstance(default.get_config(), ml_collections.ConfigDict)
