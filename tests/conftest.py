"""Test setup shared by every test module.

torchvision on PyPI is a CUDA build whose compiled ops cannot load next to the CPU
torch wheel; registering the two op schemas its import touches lets the pure-Python
model code (our numerical reference) import and run. The shim lives here, never in
the library.
"""
import os
import sys

# Four host CPU devices for the multi-device tests; must be set before jax imports.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def import_torchvision():
  """Imports torchvision with the CPU torch wheel (see module docstring)."""
  import torch
  try:
    import torchvision  # noqa: F401
  except RuntimeError:
    lib = torch.library.Library('torchvision', 'DEF')  # pylint: disable=unused-variable
    lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    lib.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    import_torchvision.lib = lib  # keep the registration alive
    for name in [m for m in sys.modules if m.startswith('torchvision')]:
      del sys.modules[name]
    import torchvision  # noqa: F811
  return torchvision
