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

from deeplax.models import batch_norm

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


def tap_fraction(size: Sequence[int], kernel_size: int, dilation: int) -> float:
  """Share of a 'same'-padded dilated conv's multiply-adds that touch real pixels.

  A tap at offset k*d overlaps the map on max(0, size - |k*d|) rows; the rest reads
  zero padding. At DeepLab's ASPP rates (12/24/36 at output stride 8) most taps fall
  mostly or wholly into the padding.
  """
  r = kernel_size // 2
  fraction = 1.0
  for n in size:
    fraction *= sum(max(0, n - abs(k * dilation)) for k in range(-r, r + 1)) / (kernel_size * n)
  return fraction


# Below this share of real work, a dilated conv runs as one matmul per tap on the
# overlapping window (`atrous_conv_taps`); above it XLA's convolution is as fast.
# Measured on XLA:CPU (benchmarks/README): break-even near 0.65.
TAP_FRACTION_THRESHOLD = 0.55


def atrous_conv_taps(x: jax.Array, kernel: jax.Array, dilation: int,
                     precision=None, preferred_element_type=None) -> jax.Array:
  """'Same'-padded stride-1 dilated conv (NHWC, HWIO) as a sum of per-tap matmuls,
  each over only the window where the tap overlaps the input.

  Equal to `lax.conv_general_dilated` with padding d*(k-1)/2 up to float summation
  order, with no multiply-adds on the zero padding; the gradients are matmuls too.
  """
  n, h, w, _ = x.shape
  kh, kw = kernel.shape[:2]
  out = None
  for ky in range(kh):
    dy = (ky - kh // 2) * dilation
    y0, y1 = max(0, -dy), min(h, h - dy)
    for kx in range(kw):
      dx = (kx - kw // 2) * dilation
      x0, x1 = max(0, -dx), min(w, w - dx)
      if y0 >= y1 or x0 >= x1:
        continue  # the tap reads only padding
      window = x[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx, :]
      part = jax.lax.dot_general(window, kernel[ky, kx], (((3,), (0,)), ((), ())),
                                 precision=precision,
                                 preferred_element_type=preferred_element_type)
      part = jnp.pad(part, ((0, 0), (y0, h - y1), (x0, w - x1), (0, 0)))
      out = part if out is None else out + part
  return out


def pointwise_conv_dot(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
                       precision=None) -> jax.Array:
  """1x1 conv (NHWC, kernel (1, 1, C, D)) as a dot over channels (after the stride's
  subsampling).

  The same product as XLA's convolution, but its gradients are dots too. XLA:CPU computes
  a convolution's kernel gradient as a convolution over transposed activations, and fuses
  the producers of those activations (batch norm, the residual adds of every earlier
  block) into each transpose: a ResNet-101 train step then recomputes its residual
  stream once per block (quadratic in depth). As dots, ResNet-101's train step is ~25%
  faster (benchmarks/README.md).
  """
  sh, sw = strides
  if (sh, sw) != (1, 1):
    x = x[:, ::sh, ::sw]
  return _pointwise_dot(x, kernel[0, 0], precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise_dot(x: jax.Array, w: jax.Array, precision) -> jax.Array:
  """x (N, H, W, C) . w (C, D), with a kernel gradient that transposes the narrower of
  the input and the output gradient.

  The kernel gradient x^T . dy contracts the leading (pixel) axis of both; XLA:CPU makes
  one of them pixel-minor with a transpose, and left alone it picks the output gradient
  even when it is 4x wider (a bottleneck's conv3), fusing the batch-norm backward into
  that transpose. Choosing the narrower one: ResNet-101 OS16 train step 3.13 -> 2.75 s
  (interleaved A/B).
  """
  return jax.lax.dot_general(x, w, (((3,), (0,)), ((), ())), precision=precision)


def _pointwise_dot_fwd(x, w, precision):
  return _pointwise_dot(x, w, precision), (x, w)


def _pointwise_dot_bwd(precision, residuals, g):
  x, w = residuals
  c, d = w.shape
  x_rows, g_rows = x.reshape(-1, c), g.reshape(-1, d)
  dx = jax.lax.dot_general(g, w, (((3,), (1,)), ((), ())), precision=precision)
  matmul = lambda a, b: jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())),  # noqa: E731
                                            precision=precision)
  if c <= d:
    dw = matmul(x_rows.T, g_rows)
  else:
    dw = matmul(g_rows.T, x_rows).T
  return dx, dw.astype(w.dtype)


_pointwise_dot.defvjp(_pointwise_dot_fwd, _pointwise_dot_bwd)


def _pad_spatial(x: jax.Array, padding: Padding) -> jax.Array:
  return jax.lax.pad(x, jnp.zeros((), x.dtype),
                     ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))


def _padded_taps(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                 dilation: Sequence[int]) -> jax.Array:
  """The depthwise conv of an already padded `x`."""
  n, _, _, c = x.shape
  kh, kw = kernel.shape[:2]
  (sh, sw), (dh, dw) = strides, dilation
  ho = (x.shape[1] - dh * (kh - 1) - 1) // sh + 1
  wo = (x.shape[2] - dw * (kw - 1) - 1) // sw + 1
  out = None
  for ky in range(kh):
    for kx in range(kw):
      window = jax.lax.slice(x, (0, ky * dh, kx * dw, 0),
                             (n, ky * dh + (ho - 1) * sh + 1, kx * dw + (wo - 1) * sw + 1, c),
                             (1, sh, sw, 1))
      part = window * kernel[ky, kx, 0]
      out = part if out is None else out + part
  return out


# Output rows each partial sum of the depthwise kernel gradient adds up in registers.
DEPTHWISE_GRAD_ROWS = 16


def _depthwise_kernel_grad(x: jax.Array, g: jax.Array, kernel_size: Sequence[int],
                           strides: Sequence[int], dilation: Sequence[int]) -> jax.Array:
  """dk[ky, kx, c] = sum over n, i, j of x[n, i*sh + ky*dh, j*sw + kx*dw, c] * g[n, i, j, c],
  for the padded input `x` the forward pass read.

  Autodiff of the taps writes out every shifted window of x and reduces window * g:
  nine full-size copies per layer (in MobileNetV2's train step ~265 ms of kernel time,
  against ~40 ms for its depthwise forward). Here each tap is one elementwise fusion
  that adds up `DEPTHWISE_GRAD_ROWS` rows of products (strided slices of x and of g,
  read in place) into a map that many times smaller, and one reduction sums the nine
  maps: 3-5x faster on 81x81x144 and 161x161x96 (benchmarks/README). Sums in float32.
  """
  n, ho, wo, c = g.shape
  kh, kw = kernel_size
  (sh, sw), (dh, dw) = strides, dilation
  rows = min(DEPTHWISE_GRAD_ROWS, ho)
  # (first output row, groups, rows per group): whole groups, then the rest as one.
  blocks = [(0, ho // rows, rows)] + ([(ho - ho % rows, 1, ho % rows)] if ho % rows else [])
  # Row r of every group of g, the same for all taps.
  g_rows = {r: jax.lax.slice(g, (0, r, 0, 0), (n, r + (groups - 1) * size + 1, wo, c),
                             (1, size, 1, 1)).astype(jnp.float32)
            for first, groups, size in blocks for r in range(first, first + size)}
  taps = []
  for ky in range(kh):
    for kx in range(kw):
      parts = []
      for first, groups, size in blocks:
        partial = None
        for r in range(first, first + size):
          start = ky * dh + r * sh
          x_rows = jax.lax.slice(
              x, (0, start, kx * dw, 0),
              (n, start + (groups - 1) * size * sh + 1, kx * dw + (wo - 1) * sw + 1, c),
              (1, size * sh, sw, 1))
          term = x_rows.astype(jnp.float32) * g_rows[r]
          partial = term if partial is None else partial + term
        parts.append(partial)
      taps.append(jnp.concatenate(parts, axis=1))
  return jnp.sum(jnp.stack(taps), axis=(1, 2, 3)).reshape(kh, kw, 1, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise_conv_taps(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                        padding: Padding, dilation: Sequence[int]) -> jax.Array:
  """Depthwise conv (NHWC, kernel (kh, kw, 1, C)) as a sum of shifted, strided slices of
  the padded input times per-channel weights.

  One elementwise fusion instead of a grouped convolution: XLA:CPU runs depthwise convs
  at ~50 MFLOP/s and computes their weight gradient as a dense C x C convolution. The
  gradients are written out too (`_depthwise_input_grad`, `_depthwise_kernel_grad`),
  not left to autodiff of the slices, which copies every window (MobileNetV2 train step
  / PyTorch's: grouped conv 1.31; taps with only the stride-1 input gradient written
  out 1.08-1.15; both gradients 0.93-0.94).
  `strides`, `padding` and `dilation` are tuples.
  """
  return _padded_taps(_pad_spatial(x, padding), kernel, strides, dilation)


def _depthwise_fwd(x, kernel, strides, padding, dilation):
  # The padded input is the residual: the kernel gradient reads the same windows.
  x = _pad_spatial(x, padding)
  return _padded_taps(x, kernel, strides, dilation), (x, kernel)


def _phase_taps(phase: int, stride: int, dilation: int, before: int, size: int):
  """(tap, row offset into g) of the taps that reach input rows stride*i + phase:
  row y takes g[(y + before - k*dilation) / stride] where that divides."""
  return [(k, (phase + before - k * dilation) // stride) for k in range(size)
          if (phase + before - k * dilation) % stride == 0]


def _depthwise_input_grad(g: jax.Array, kernel: jax.Array, in_size: Sequence[int],
                          strides: Sequence[int], padding: Padding,
                          dilation: Sequence[int]) -> jax.Array:
  """dx of the depthwise taps, by phases: the input rows (and columns) a stride-s conv
  maps from fall into s classes y = s*i + p; each class is a stride-1 sum of shifted
  g times the taps that reach it, and the s*s classes are interleaved once.

  Autodiff of the strided slices instead pads g with holes once per tap and sums the
  nine copies in one fusion that costs ~30 ms on MobileNetV2's 161x161x96 layer
  (dx at stride 1 is the one-phase case: the flipped-kernel sum).
  """
  n, ho, wo, c = g.shape
  kh, kw = kernel.shape[:2]
  h, w = in_size
  (sh, sw), (dh, dw) = strides, dilation
  hq, wq = -(-h // sh), -(-w // sw)
  row_taps = [_phase_taps(p, sh, dh, padding[0][0], kh) for p in range(sh)]
  col_taps = [_phase_taps(p, sw, dw, padding[1][0], kw) for p in range(sw)]
  row_offsets = [o for taps in row_taps for _, o in taps] or [0]
  col_offsets = [o for taps in col_taps for _, o in taps] or [0]
  top, left = max(0, -min(row_offsets)), max(0, -min(col_offsets))
  g = jax.lax.pad(g, jnp.zeros((), g.dtype),
                  ((0, 0, 0), (top, max(0, hq + max(row_offsets) - ho), 0),
                   (left, max(0, wq + max(col_offsets) - wo), 0), (0, 0, 0)))
  rows = []
  for taps_y in row_taps:
    columns = []
    for taps_x in col_taps:
      phase = jnp.zeros((n, hq, wq, c), g.dtype)
      for ky, oy in taps_y:
        for kx, ox in taps_x:
          window = jax.lax.slice(g, (0, top + oy, left + ox, 0),
                                 (n, top + oy + hq, left + ox + wq, c))
          phase = phase + window * kernel[ky, kx, 0]
      columns.append(phase)
    rows.append(jnp.stack(columns, axis=3))
  return jnp.stack(rows, axis=2).reshape(n, hq * sh, wq * sw, c)[:, :h, :w]


def _depthwise_bwd(strides, padding, dilation, residuals, g):
  x, kernel = residuals
  in_size = [size - sum(pads) for size, pads in zip(x.shape[1:3], padding)]
  dx = _depthwise_input_grad(g, kernel, in_size, strides, padding, dilation)
  dk = _depthwise_kernel_grad(x, g, kernel.shape[:2], strides, dilation)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


depthwise_conv_taps.defvjp(_depthwise_fwd, _depthwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def dilated_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Padding,
                 dilation: Sequence[int], precision) -> jax.Array:
  """`lax.conv_general_dilated` (NHWC, HWIO, one group) whose kernel gradient is one
  matmul per tap (`_conv_kernel_grad`) instead of XLA's backward convolution.

  For the dilated convs dense enough for XLA's convolution (ResNet layer3/4 at OS 8 and
  16, ASPP at low rates). Train step, interleaved A/B in one process: ResNet-101 OS 16
  -2.5 to -3%, OS 8 -5.6%, ResNet-50 OS 8 unchanged. Undilated 3x3 convs keep XLA's
  kernel gradient: this one made their step slower (all 3x3 convs: ResNet-101 OS 16 +6%).
  """
  return _xla_conv(x, kernel, strides, padding, dilation, precision)


def _xla_conv(x, kernel, strides, padding, dilation, precision, groups=1):
  return jax.lax.conv_general_dilated(
      x, kernel, strides, padding, rhs_dilation=dilation,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups,
      precision=precision)


def _conv_kernel_grad(x: jax.Array, g: jax.Array, kernel_size: Sequence[int],
                      strides: Sequence[int], padding: Padding, dilation: Sequence[int],
                      precision) -> jax.Array:
  """dk[ky, kx] = window(ky, kx)^T . g over all pixels: the padded input's strided window
  under each tap (one copy) times the output gradient, a (C, N*H*W) x (N*H*W, D) matmul.

  XLA:CPU computes the kernel gradient as a convolution whose window is the whole output
  gradient, on batch-minor copies of x and g ((C, H, W, N) and (H, W, N, D): rows of N=2
  floats), with the producer of x (batch norm, ReLU) recomputed into its copy. Alone,
  with deeplax's XLA options, XLA's kernel gradient and this one take about the same
  time (XLA / taps, ResNet layer4 at OS 16, 2x21x21x512, dilation 2: 29 / 27 ms;
  41x41x256, dilation 2: 30 / 34 ms); the gain is in the step (`dilated_conv`), where x
  is padded in its own layout instead. The taps run in a loop so that one window is
  alive at a time: XLA:CPU cuts all nine first otherwise (ResNet-50 OS 8 train step:
  +460 MB of temporaries, +90 MB with the loop).
  """
  n, _, _, c = x.shape
  d = g.shape[-1]
  kh, kw = kernel_size
  (sh, sw), (dh, dw) = strides, dilation
  _, ho, wo, _ = g.shape
  xp = _pad_spatial(x, padding)
  g_rows = g.reshape(-1, d)

  def tap(t, dk):
    ky, kx = t // kw, t % kw
    window = jax.lax.dynamic_slice(xp, (0, ky * dh, kx * dw, 0),
                                   (n, (ho - 1) * sh + 1, (wo - 1) * sw + 1, c))
    window = window[:, ::sh, ::sw]
    part = jax.lax.dot_general(window.reshape(-1, c), g_rows, (((0,), (0,)), ((), ())),
                               precision=precision, preferred_element_type=jnp.float32)
    return jax.lax.dynamic_update_slice(dk, part[None], (t, 0, 0))

  dk = jax.lax.fori_loop(0, kh * kw, tap, jnp.zeros((kh * kw, c, d), jnp.float32))
  return dk.reshape(kh, kw, c, d)


def _dilated_conv_fwd(x, kernel, strides, padding, dilation, precision):
  return _xla_conv(x, kernel, strides, padding, dilation, precision), (x, kernel)


def _dilated_conv_bwd(strides, padding, dilation, precision, residuals, g):
  x, kernel = residuals
  _, input_vjp = jax.vjp(
      lambda x: _xla_conv(x, kernel, strides, padding, dilation, precision), x)
  dx, = input_vjp(g)
  dk = _conv_kernel_grad(x, g, kernel.shape[:2], strides, padding, dilation, precision)
  return dx, dk.astype(kernel.dtype)


dilated_conv.defvjp(_dilated_conv_fwd, _dilated_conv_bwd)


class Conv(nn.Module):
  """`nn.Conv` for NHWC images (same parameter `kernel` (kh, kw, in/groups, out), same
  optional `bias`) with four lowerings for what XLA's convolution does badly:

  - 1x1 convs -> dots (`pointwise_conv_dot`), whose gradients are dots as well;
  - sparse dilated convs -> per-tap matmuls (`atrous_conv_taps`): XLA computes every
    tap, so an ASPP branch at rate 36 on a 41x41 map does ~6x its real work;
  - depthwise convs -> shifted elementwise products (`depthwise_conv_taps`);
  - other dilated convs -> XLA's convolution, with a kernel gradient of per-tap matmuls
    (`dilated_conv`).

  The choice is static (shapes are known at trace time); results equal
  `lax.conv_general_dilated` up to float summation order.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Padding = ((0, 0), (0, 0))
  kernel_dilation: Sequence[int] = (1, 1)
  feature_group_count: int = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable = conv_kernel_init
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    in_features = x.shape[-1]
    if in_features % self.feature_group_count:
      raise ValueError(f'{self.name}: {in_features} input channels do not split into '
                       f'{self.feature_group_count} groups')
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, in_features // self.feature_group_count, self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    dilation = tuple(self.kernel_dilation)
    padding = tuple(tuple(p) for p in self.padding)
    same = all(p == (d * (k - 1) // 2,) * 2
               for p, d, k in zip(padding, dilation, (kh, kw)))
    if (kh, kw) == (1, 1) and self.feature_group_count == 1 and padding == ((0, 0), (0, 0)):
      y = pointwise_conv_dot(x, kernel, tuple(self.strides), self.precision)
    elif (dilation[0] == dilation[1] > 1 and kh == kw and kh % 2 == 1 and same
        and tuple(self.strides) == (1, 1) and self.feature_group_count == 1
        and tap_fraction(x.shape[1:3], kh, dilation[0]) < TAP_FRACTION_THRESHOLD):
      y = atrous_conv_taps(x, kernel, dilation[0], self.precision)
    elif self.feature_group_count == in_features == self.features > 1:
      y = depthwise_conv_taps(x, kernel, tuple(self.strides), padding, dilation)
    elif self.feature_group_count == 1 and max(dilation) > 1:
      y = dilated_conv(x, kernel, tuple(self.strides), padding, dilation, self.precision)
    else:
      y = _xla_conv(x, kernel, tuple(self.strides), padding, dilation, self.precision,
                    self.feature_group_count)
    if bias is not None:
      y = y + bias
    return y


def make_conv(dtype, param_dtype) -> ModuleDef:
  return functools.partial(Conv, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                           kernel_init=conv_kernel_init)


def make_norm(train: bool, freeze: bool, momentum: float, epsilon: float, dtype,
              param_dtype) -> ModuleDef:
  """`batch_norm.BatchNorm` partial. Under `jit` with a globally sharded batch the
  statistics are already global (sync BN) without an `axis_name`. `freeze` keeps running
  statistics in training too (caffe's use_global_stats)."""
  return functools.partial(batch_norm.BatchNorm, use_running_average=(not train) or freeze,
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


def relu_once(x: jax.Array) -> jax.Array:
  """ReLU for a value with several consumers (a ResNet block's output): XLA computes it
  once instead of once per consumer.

  XLA's fusion takes max(x, 0) for an effectively unary op and copies it, with all of its
  elementwise producers, into every consumer's fusion. At a block output, read by the
  next block's conv1 and by its residual add, that recomputes the stage's whole residual
  stream (every earlier block's batch norm and add) in every block: work quadratic in
  depth (ResNet-101 OS 8 forward at 513: ~350 ms of 2.8 s; its train step ~10%). A select
  reads two full-size operands, so fusion leaves it to be computed once. Same values as
  `nn.relu` (NaN stays NaN) and the same gradient (0 at 0).
  """
  return jnp.where(x <= 0, jnp.zeros((), x.dtype), x)


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
  x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
  return _max_of_window_taps(x, x.shape[1:3])


def _window_taps(xp: jax.Array) -> list:
  """The nine stride-2 taps of 3x3 windows over the padded input, in torch's scan order."""
  n, hp, wp, c = xp.shape
  ho, wo = (hp - 3) // 2 + 1, (wp - 3) // 2 + 1
  return [jax.lax.slice(xp, (0, ky, kx, 0),
                        (n, ky + 2 * (ho - 1) + 1, kx + 2 * (wo - 1) + 1, c), (1, 2, 2, 1))
          for ky in range(3) for kx in range(3)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_of_window_taps(xp: jax.Array, padded_size: Sequence[int]) -> jax.Array:
  """The maximum of the nine taps over `xp` (spatial size `padded_size`, static), with
  torch's gradient: all of an output's cotangent to its window's first maximum.

  Not XLA's reduce_window max: its gradient builds int32 index maps of the whole padded
  input (5 arrays of it). Not autodiff of the taps' max chain either: that gradient
  splits ties, and XLA fuses it into one loop over the padded input that recomputes the
  chain (and the producing batch norm and ReLU) for every tap of every pixel: 65 ms of a
  ResNet-101 train step at 321 (the stem's 2x161x161x64). This one keeps the winning tap
  as int8 and scatters the cotangent with nine strided pads: 9 ms with the forward.
  """
  return functools.reduce(jnp.maximum, _window_taps(xp))


def _max_of_window_taps_fwd(xp, padded_size):
  del padded_size
  taps = _window_taps(xp)
  out = functools.reduce(jnp.maximum, taps)
  winner = jnp.full(out.shape, len(taps) - 1, jnp.int8)
  for t in range(len(taps) - 2, -1, -1):  # the lowest tap equal to the maximum wins
    winner = jnp.where(taps[t] == out, jnp.int8(t), winner)
  return out, winner


def _max_of_window_taps_bwd(padded_size, winner, g):
  hp, wp = padded_size
  _, ho, wo, _ = g.shape
  zero = jnp.zeros((), g.dtype)
  dx = None
  for t in range(9):
    ky, kx = divmod(t, 3)
    part = jnp.where(winner == t, g, zero)
    part = jax.lax.pad(part, zero, ((0, 0, 0), (ky, hp - ky - 2 * (ho - 1) - 1, 1),
                                    (kx, wp - kx - 2 * (wo - 1) - 1, 1), (0, 0, 0)))
    dx = part if dx is None else dx + part
  return (dx,)


_max_of_window_taps.defvjp(_max_of_window_taps_fwd, _max_of_window_taps_bwd)
