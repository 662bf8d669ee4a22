"""Reading checkpoints: plain and nested state_dicts, DataParallel prefixes, safetensors
without torch, and clear errors for files that are not checkpoints."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import numpy as st_numpy

from deeplax.convert import ReadError, load_converted, read_state_dict
from deeplax.convert.__main__ import main as convert_main
from tests.conftest import import_torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = {'conv1.weight': torch.arange(6.).reshape(1, 2, 3, 1),
         'bn1.running_mean': torch.tensor([1., 2.]),
         'bn1.num_batches_tracked': torch.tensor(7)}


@pytest.mark.parametrize('wrap', [None, 'model_state', 'state_dict', 'model'])
def test_nested_state_dicts_and_module_prefix(tmp_path, wrap):
  state = {f'module.{k}': v for k, v in STATE.items()}
  # Training checkpoints hold numpy numbers next to the weights (VainF's best_score).
  obj = state if wrap is None else {wrap: state, 'epoch': 3, 'optimizer': {'lr': 0.1},
                                    'best_score': np.float64(0.77), 'cur_itrs': np.int64(9),
                                    'history': np.zeros(3)}
  torch.save(obj, tmp_path / 'c.pth')
  read = read_state_dict(str(tmp_path / 'c.pth'))
  assert list(read) == list(STATE)  # prefix stripped, order kept
  for key, value in STATE.items():
    np.testing.assert_array_equal(read[key], value.numpy())
  assert read['conv1.weight'].dtype == np.float32


def test_half_precision_is_widened(tmp_path):
  torch.save({'w': torch.tensor([0.5, 1.5], dtype=torch.bfloat16)}, tmp_path / 'h.pt')
  read = read_state_dict(str(tmp_path / 'h.pt'))
  assert read['w'].dtype == np.float32 and list(read['w']) == [0.5, 1.5]


def test_not_a_checkpoint(tmp_path):
  torch.save({'epoch': 3, 'stuff': {'a': 1}}, tmp_path / 'x.pth')
  with pytest.raises(ReadError, match=r"x.pth: found no state_dict.*'epoch'"):
    read_state_dict(str(tmp_path / 'x.pth'))
  (tmp_path / 'y.npz').write_bytes(b'')
  with pytest.raises(ReadError, match='unknown checkpoint extension'):
    read_state_dict(str(tmp_path / 'y.npz'))
  with pytest.raises(ReadError, match='no such file'):
    read_state_dict(str(tmp_path / 'missing.pth'))
  torch.save({'w': torch.ones(1), 'code': _Pickled()}, tmp_path / 'code.pth')
  with pytest.raises(ReadError, match=r'code.pth: torch.load\(weights_only=True\) failed'):
    read_state_dict(str(tmp_path / 'code.pth'))  # arbitrary pickled objects are refused
  (tmp_path / 'z.safetensors').write_bytes(b'not safetensors')
  with pytest.raises(ReadError, match='z.safetensors: cannot read as safetensors'):
    read_state_dict(str(tmp_path / 'z.safetensors'))


class _Pickled:
  """Stands for any object a pickle would have to import code to rebuild."""


def test_safetensors_converts_without_torch(tmp_path):
  """A .safetensors MobileNetV2 converts in a process where torch cannot be imported,
  to the same leaves as its .pth twin (whose logits parity convert_parity_test checks)."""
  torch.manual_seed(0)
  net = import_torchvision().models.mobilenet_v2(weights=None)
  state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
  st_numpy.save_file(state, str(tmp_path / 'mnv2.safetensors'))
  torch.save(net.state_dict(), tmp_path / 'mnv2.pth')
  flags = ['--model', 'deeplabv3_mobilenetv2']
  script = ('import sys; sys.modules["torch"] = None\n'  # any `import torch` now fails
            'from deeplax.convert.__main__ import main\n'
            f'sys.exit(main(sys.argv[1:]))')
  env = dict(os.environ, PYTHONPATH=ROOT)
  done = subprocess.run([sys.executable, '-c', script, '--src', str(tmp_path / 'mnv2.safetensors'),
                         '--out', str(tmp_path / 'from_st'), *flags],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert 'mapped    255 tensors' in done.stdout
  assert convert_main(['--src', str(tmp_path / 'mnv2.pth'), '--out', str(tmp_path / 'from_pth'),
                       *flags]) == 0
  from_st, meta = load_converted(str(tmp_path / 'from_st'))
  from_pth, _ = load_converted(str(tmp_path / 'from_pth'))
  assert meta['source'].endswith('mnv2.safetensors')
  leaves_st = dict(_leaves(from_st))
  leaves_pth = dict(_leaves(from_pth))
  assert leaves_st.keys() == leaves_pth.keys() and len(leaves_st) == 255  # one per mapped tensor
  for key in leaves_pth:
    np.testing.assert_array_equal(leaves_st[key], leaves_pth[key], err_msg=key)
  np.testing.assert_array_equal(
      from_st['batch_stats']['backbone']['features_5']['project_bn']['var'],
      state['features.5.conv.3.running_var'])


def _leaves(tree, prefix=''):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _leaves(v, f'{prefix}{k}/')
    else:
      yield f'{prefix}{k}', v
