"""Reads a PyTorch checkpoint into a flat {torch key: numpy array} dict.

`.pth`/`.pt` files hold either a state_dict or a training checkpoint that nests one
(VainF: `model_state`; many trainers: `state_dict` or `model`); DataParallel adds a
`module.` prefix to every key. `.safetensors` files are read with `safetensors.numpy`,
so converting them needs no torch.
"""
import collections
import os
from typing import Dict

import numpy as np

NESTED_KEYS = ('model_state', 'state_dict', 'model')  # tried in this order
STRIPPED_PREFIXES = ('module.',)


class ReadError(ValueError):
  """The file is not a checkpoint this converter can read (the message says why)."""


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Returns the checkpoint's tensors by key (prefixes stripped, insertion order kept)."""
  if not os.path.isfile(path):
    raise ReadError(f'{path}: no such file')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.safetensors':
    raw = _read_safetensors(path)
  elif ext in ('.pth', '.pt', '.bin', '.ckpt'):
    raw = _read_torch(path)
  else:
    raise ReadError(f'{path}: unknown checkpoint extension {ext!r}; expected .pth, .pt '
                    '(torch.save) or .safetensors')
  return strip_prefixes(raw, path)


def _read_safetensors(path):
  from safetensors import numpy as st_numpy  # pylint: disable=import-outside-toplevel
  try:
    return st_numpy.load_file(path)
  except Exception as e:  # safetensors raises several types; all mean "cannot read"
    raise ReadError(f'{path}: cannot read as safetensors ({type(e).__name__}: {e}); '
                    'bfloat16 files must be re-saved as float32') from e


def _read_torch(path):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ReadError(f'{path}: reading .pth/.pt needs torch (pip install torch, the CPU '
                    'wheel is enough), or convert the file to .safetensors first') from e
  try:
    with torch.serialization.safe_globals(_numpy_globals()):
      obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pickle errors come in many types
    raise ReadError(
        f'{path}: torch.load(weights_only=True) failed ({type(e).__name__}: {e}). Only '
        'tensors and plain containers are loaded (no arbitrary pickled code); re-save the '
        'checkpoint as torch.save(model.state_dict(), path) in the project that wrote it.'
    ) from e
  state = _find_state_dict(obj, path, torch.Tensor)
  arrays = collections.OrderedDict()
  for key, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise ReadError(f'{path}: entry {key!r} is a {type(value).__name__}, not a tensor')
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype != torch.float32:
      value = value.float()  # numpy has no bfloat16; float16 is widened exactly
    arrays[key] = value.numpy()
  return arrays


def _numpy_globals():
  """numpy scalars, arrays and dtypes, allowed in weights-only loading: training
  checkpoints (VainF's `best_score`, `cur_itrs`) store numpy numbers next to the weights.
  They rebuild data, never call code. Files written under numpy 1 name them
  `numpy.core...`, under numpy 2 `numpy._core...`: both are listed."""
  multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray  # pylint: disable=protected-access
  allowed = [np.ndarray, np.dtype]
  for fn in (multiarray.scalar, multiarray._reconstruct):  # pylint: disable=protected-access
    allowed += [fn, (fn, f'numpy.core.multiarray.{fn.__name__}'),
                (fn, f'numpy._core.multiarray.{fn.__name__}')]
  allowed += [type(np.dtype(code)) for code in '?bBhHiIlLqQefdgFDG']
  return allowed


def _find_state_dict(obj, path, tensor_type):
  """The dict of tensors: `obj` itself or the first of NESTED_KEYS that holds one."""
  def is_state_dict(d):
    return isinstance(d, dict) and d and all(isinstance(v, tensor_type) for v in d.values())

  if not isinstance(obj, dict):
    raise ReadError(f'{path}: holds a {type(obj).__name__}, expected a state_dict (a dict '
                    'of tensors); save model.state_dict(), not the model')
  if is_state_dict(obj):
    return obj
  for key in NESTED_KEYS:
    if is_state_dict(obj.get(key)):
      return obj[key]
  raise ReadError(f'{path}: found no state_dict: the top level has keys '
                  f'{sorted(map(str, obj))[:10]} and none of {list(NESTED_KEYS)} holds a '
                  'dict of tensors')


def strip_prefixes(state: Dict[str, np.ndarray], path: str = '') -> Dict[str, np.ndarray]:
  """Removes a prefix (DataParallel's `module.`) carried by every key."""
  for prefix in STRIPPED_PREFIXES:
    if state and all(k.startswith(prefix) for k in state):
      state = collections.OrderedDict((k[len(prefix):], v) for k, v in state.items())
  if not state:
    raise ReadError(f'{path}: the state_dict is empty')
  return state
