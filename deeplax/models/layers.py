"""Building blocks shared by the backbones and heads.

Every conv/BN pair is a `ConvBN` whose children are named `conv` and `bn`, so that
the PyTorch converter maps names (a table), never positions. Padding is explicit and
symmetric, as PyTorch's, so that outputs match the reference to float rounding.
"""
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any
Padding = Sequence[Tuple[int, int]]

# torchvision's ResNet/MobileNetV2 init: kaiming normal, fan_out.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# DeepLab's final classifiers: N(0, 0.01), as in the caffe models.
classifier_kernel_init = nn.initializers.normal(0.01)


def same_padding(kernel_size: int, dilation: int = 1) -> Padding:
  """PyTorch-style symmetric padding that keeps the size of a stride-1 conv."""
  p = dilation * (kernel_size - 1) // 2
  return ((p, p), (p, p))


def make_conv(dtype, param_dtype) -> ModuleDef:
  return functools.partial(nn.Conv, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                           kernel_init=conv_kernel_init)


def make_norm(train: bool, freeze: bool, momentum: float, epsilon: float, dtype,
              param_dtype) -> ModuleDef:
  """BatchNorm partial. Under `jit` with a globally sharded batch the statistics are
  already global (sync BN) without an `axis_name`. `freeze` keeps running statistics
  in training too (caffe's use_global_stats)."""
  return functools.partial(nn.BatchNorm, use_running_average=(not train) or freeze,
                           momentum=momentum, epsilon=epsilon, dtype=dtype,
                           param_dtype=param_dtype)


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm -> optional activation."""
  features: int
  conv: ModuleDef
  norm: ModuleDef
  kernel_size: int = 1
  strides: int = 1
  dilation: int = 1
  groups: int = 1
  padding: Optional[Padding] = None  # None: same_padding(kernel_size, dilation).
  activation: Optional[Callable] = nn.relu

  @nn.compact
  def __call__(self, x):
    padding = self.padding
    if padding is None:
      padding = same_padding(self.kernel_size, self.dilation)
    x = self.conv(self.features, (self.kernel_size, self.kernel_size),
                  strides=(self.strides, self.strides), padding=padding,
                  kernel_dilation=(self.dilation, self.dilation),
                  feature_group_count=self.groups, name='conv')(x)
    x = self.norm(name='bn')(x)
    return self.activation(x) if self.activation is not None else x


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear NHWC resize with PyTorch's `align_corners=False` semantics.

  `jax.image.resize` samples at half-pixel centres like torch; antialiasing is off
  so that downscaling also matches `F.interpolate`.
  """
  n, h, w, c = x.shape
  if (h, w) == tuple(size):
    return x
  return jax.image.resize(x, (n, size[0], size[1], c), 'bilinear',
                          antialias=False).astype(x.dtype)


def max_pool_3x3_s2(x: jax.Array, ceil_mode: bool = False) -> jax.Array:
  """torch.nn.MaxPool2d(3, 2, padding=1, ceil_mode=...) on NHWC, padding with -inf."""
  pads = []
  for size in x.shape[1:3]:
    if ceil_mode:
      out = -(-(size + 2 - 3) // 2) + 1
      if (out - 1) * 2 >= size + 1:  # torch drops a window starting in the right padding
        out -= 1
    else:
      out = (size + 2 - 3) // 2 + 1
    pads.append((1, (out - 1) * 2 + 3 - size - 1))
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads)
