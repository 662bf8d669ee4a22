"""The converter refuses to guess: every problem is named, class counts are checked, and
nothing half-written is left behind."""
import os

import numpy as np
import pytest
import torch

from deeplax.convert import ConversionError, LayoutError, convert_state_dict, load_converted
from deeplax.convert.__main__ import main as convert_main
from tests.conftest import import_torchvision


def numpy_state(module):
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.fixture(scope='module')
def resnet50_state():
  return numpy_state(import_torchvision().models.resnet50(weights=None))


@pytest.fixture(scope='module')
def deeplabv3_state():
  torch.manual_seed(0)
  net = import_torchvision().models.segmentation.deeplabv3_resnet50(
      weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
  return numpy_state(net)


def test_one_error_names_missing_extra_and_misshaped_keys(resnet50_state):
  state = dict(resnet50_state)
  del state['layer2.1.conv2.weight']  # missing
  state['extra_head.weight'] = np.zeros((3, 3), np.float32)  # extra
  state['layer1.0.bn1.running_var'] = np.ones((63,), np.float32)  # wrong shape (64)
  with pytest.raises(ConversionError) as info:
    convert_state_dict(state, src='r50.pth', model_name='deeplabv3_resnet50')
  message = str(info.value)
  assert 'refusing to guess' in message
  assert 'params/backbone/layer2_1/conv2/kernel (3, 3, 128, 128)' in message  # unfilled
  assert 'extra_head.weight (3, 3)' in message  # unmapped
  assert 'layer1.0.bn1.running_var (63,)' in message and '(64,)' in message  # mismatch
  assert message.count('\n    ') == 3  # exactly those three, nothing else listed


def test_cli_reports_the_error_and_writes_nothing(tmp_path, resnet50_state, capsys):
  state = {k: torch.from_numpy(v) for k, v in resnet50_state.items()
           if k != 'layer4.2.bn3.weight'}
  torch.save(state, tmp_path / 'r50.pth')
  out = tmp_path / 'out'
  code = convert_main(['--src', str(tmp_path / 'r50.pth'), '--out', str(out),
                       '--model', 'deeplabv3_resnet50'])
  assert code == 2
  assert 'params/backbone/layer4_2/bn3/scale (2048,)' in capsys.readouterr().err
  assert os.listdir(tmp_path) == ['r50.pth']  # no output, no temp dir


def test_class_count_mismatch_is_an_error_without_reinit_head(deeplabv3_state):
  with pytest.raises(ConversionError, match=r'classifies 21 classes.*--num_classes is 5.*'
                                            r'--reinit_head'):
    convert_state_dict(deeplabv3_state, src='dl.pth', num_classes=5)


def test_reinit_head_converts_everything_but_the_classifiers(deeplabv3_state):
  same = convert_state_dict(deeplabv3_state, src='dl.pth')
  new = convert_state_dict(deeplabv3_state, src='dl.pth', num_classes=5, reinit_head=True)
  fresh = ['params/aux_head/classifier/bias', 'params/aux_head/classifier/kernel',
           'params/head/classifier/bias', 'params/head/classifier/kernel']
  assert new.reinitialised == fresh and new.meta['reinitialised'] == fresh
  assert new.meta['num_classes'] == 5
  [dropped] = [d for d in new.meta['dropped'] if 'reinit_head' in d['reason']]
  assert sorted(dropped['keys']) == ['aux_classifier.4.bias', 'aux_classifier.4.weight',
                                     'classifier.4.bias', 'classifier.4.weight']
  head = new.variables['params']['head']['classifier']
  assert head['kernel'].shape == (1, 1, 256, 5) and head['bias'].shape == (5,)
  assert np.all(head['bias'] == 0) and 0.005 < head['kernel'].std() < 0.02  # N(0, 0.01)
  # Everything else is the unchanged conversion (checked leaf by leaf).
  conv = np.asarray(deeplabv3_state['classifier.1.weight']).transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(new.variables['params']['head']['conv3x3_0']['conv']['kernel'],
                                conv)
  flat_same = _flatten(same.variables)
  flat_new = _flatten(new.variables)
  assert flat_same.keys() == flat_new.keys()
  for key in flat_same:
    if key not in fresh:
      np.testing.assert_array_equal(flat_same[key], flat_new[key], err_msg=key)


def _flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def test_unknown_layout_is_named(tmp_path):
  with pytest.raises(LayoutError, match='cannot tell the layout.*torchvision_deeplabv3'):
    convert_state_dict({'encoder.weight': np.zeros((2, 2), np.float32)}, src='x.pth')


def test_forced_wrong_layout_lists_the_keys(deeplabv3_state):
  with pytest.raises(ConversionError) as info:
    convert_state_dict(deeplabv3_state, src='dl.pth', layout_name='vainf_deeplabv3_resnet',
                       output_stride=16)
  message = str(info.value)
  assert 'classifier.0.convs.0.0.weight' in message
  assert 'params/head/aspp/branch0/conv/kernel' in message


def test_model_must_fit_the_weights(resnet50_state, deeplabv3_state):
  with pytest.raises(ConversionError, match='pass --model'):
    convert_state_dict(resnet50_state, src='r50.pth')  # a backbone says nothing of the head
  with pytest.raises(ConversionError, match='resnet50 backbone.*deeplabv3_resnet101'):
    convert_state_dict(resnet50_state, src='r50.pth', model_name='deeplabv3_resnet101')
  with pytest.raises(ConversionError, match='are a deeplabv3_resnet50'):
    convert_state_dict(deeplabv3_state, src='dl.pth', model_name='deeplabv3plus_resnet50')


def test_vainf_output_stride_is_required_unless_in_the_file_name():
  from tests.reference import vainf  # pylint: disable=import-outside-toplevel
  state = numpy_state(vainf.build(None, 'v3plus', 'mobilenet', 3, 16))
  with pytest.raises(ConversionError, match='--output_stride'):
    convert_state_dict(state, src='checkpoint.pth')
  assert convert_state_dict(state, src='best_x_os8.pth').meta['output_stride'] == 8
  assert convert_state_dict(state, src='c.pth', output_stride=16).meta['output_stride'] == 16


def test_existing_output_needs_overwrite(tmp_path, capsys):
  net = import_torchvision().models.mobilenet_v2(weights=None)
  torch.save(net.state_dict(), tmp_path / 'm.pth')
  args = ['--src', str(tmp_path / 'm.pth'), '--out', str(tmp_path / 'out'),
          '--model', 'deeplabv3_mobilenetv2']
  assert convert_main(args) == 0
  assert 'mapped    255 tensors' in capsys.readouterr().out
  assert convert_main(args) == 2
  assert 'exists; pass --overwrite' in capsys.readouterr().err
  assert convert_main(args + ['--overwrite']) == 0
  assert sorted(os.listdir(tmp_path)) == ['m.pth', 'out']
  variables, meta = load_converted(str(tmp_path / 'out'))
  kernel = variables['params']['backbone']['features_2']['dw_conv']['kernel']
  np.testing.assert_array_equal(
      kernel, net.state_dict()['features.2.conv.1.0.weight'].numpy().transpose(2, 3, 1, 0))
  assert kernel.shape == (3, 3, 1, 96)  # depthwise: (C, 1, 3, 3) -> (3, 3, 1, C)
  assert meta['model'] == 'deeplabv3_mobilenetv2' and meta['backbone_only']


def test_caffe_input_fold_is_optional():
  """pytorch-deeplab-resnet: conv1 is folded for deeplax inputs unless caffe_input='keep'
  (the parity test checks the folded model's logits)."""
  from tests.reference import deeplab_v2  # pylint: disable=import-outside-toplevel
  state = numpy_state(deeplab_v2.MSDeepLab(3))
  raw = state['Scale.conv1.weight'].transpose(2, 3, 1, 0)
  kept = convert_state_dict(state, src='ms.pth', caffe_input='keep')
  np.testing.assert_array_equal(kept.variables['params']['backbone']['conv1']['kernel'], raw)
  assert kept.meta['input_fold'] is None
  folded = convert_state_dict(state, src='ms.pth')
  std = np.array(folded.meta['input_fold']['std'], np.float32)
  np.testing.assert_allclose(folded.variables['params']['backbone']['conv1']['kernel'],
                             raw[:, :, ::-1, :] * 255 * std[:, None], rtol=1e-6)
