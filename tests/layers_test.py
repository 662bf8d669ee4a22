"""deeplax.models.layers.Conv against XLA's own convolution and PyTorch's conv2d.

`layers.Conv` lowers 1x1 convs to dots, sparse dilated convs to per-tap matmuls,
depthwise convs to shifted elementwise products and the kernel gradient of other dilated
convs to per-tap matmuls (for speed on XLA:CPU); outputs and gradients must equal
`lax.conv_general_dilated` (and torch) up to float summation order, and the parameters
must be exactly `nn.Conv`'s (the converter maps names and shapes).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplax.models import layers

# (kernel, dilation, stride, groups, padding (top, bottom, left, right), bias, channels in/out)
CASES = [
    (3, 12, 1, 1, (12, 12, 12, 12), False, 8, 16),  # ASPP-like: taps partly outside
    (3, 30, 1, 1, (30, 30, 30, 30), True, 8, 16),  # rate > map: only the centre tap
    (3, 2, 1, 1, (2, 2, 2, 2), True, 8, 16),  # dense enough: XLA's conv, tap kernel grad
    (3, 2, 2, 1, (0, 1, 0, 2), False, 8, 16),  # dilated, strided, asymmetric padding
    (3, 3, 1, 1, (1, 3, 2, 2), True, 8, 16),  # dilated, asymmetric: no tap lowering
    (3, 1, 2, 1, (1, 1, 1, 1), False, 8, 16),
    (1, 1, 1, 1, (0, 0, 0, 0), True, 8, 16),  # pointwise: a dot
    (1, 1, 2, 1, (0, 0, 0, 0), False, 8, 16),  # strided pointwise (ResNet downsample)
    (7, 1, 2, 1, (3, 3, 3, 3), False, 3, 8),
    (3, 1, 1, 16, (1, 1, 1, 1), False, 16, 16),  # depthwise
    (3, 1, 2, 16, (1, 1, 1, 1), False, 16, 16),  # strided depthwise
    (3, 4, 1, 16, (4, 4, 4, 4), False, 16, 16),  # dilated depthwise
    (3, 2, 2, 16, (0, 1, 0, 2), False, 16, 16),  # depthwise, asymmetric padding (VainF)
    (3, 2, 1, 4, (2, 2, 2, 2), False, 16, 16),  # grouped, not depthwise
]


@pytest.mark.parametrize('case', CASES, ids=[str(c[:4]) for c in CASES])
def test_conv_equals_xla_convolution_and_its_gradients(case):
  _check_against_xla_convolution(case, (2, 21, 23, case[6]))


def _check_against_xla_convolution(case, x_shape):
  """layers.Conv of `case` on an `x_shape` input: the parameters are nn.Conv's, the output
  and the gradients (parameters and input) lax.conv_general_dilated's. Returns the
  output shape."""
  k, d, s, g, pad, bias, cin, cout = case
  kwargs = dict(strides=(s, s), padding=((pad[0], pad[1]), (pad[2], pad[3])),
                kernel_dilation=(d, d), feature_group_count=g, use_bias=bias,
                precision=jax.lax.Precision.HIGHEST)
  ours = layers.Conv(cout, (k, k), **kwargs)
  shapes = jax.eval_shape(lambda: ours.init(jax.random.key(1), jnp.zeros(x_shape)))
  flax_shapes = jax.eval_shape(
      lambda: nn.Conv(cout, (k, k), **kwargs).init(jax.random.key(1), jnp.zeros(x_shape)))
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, flax_shapes)

  # Inputs from numpy: XLA:CPU takes seconds to compile jax.random's samplers.
  rng = np.random.default_rng(0)
  x = rng.standard_normal(x_shape, dtype=np.float32)
  params = {name: rng.standard_normal(leaf.shape, dtype=np.float32)
            for name, leaf in shapes['params'].items()}
  out_shape = jax.eval_shape(lambda p: ours.apply({'params': p}, x), params).shape
  cotangent = rng.standard_normal(out_shape, dtype=np.float32)

  def reference(p, x):
    y = jax.lax.conv_general_dilated(
        x, p['kernel'], (s, s), kwargs['padding'], rhs_dilation=(d, d),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=g,
        precision=jax.lax.Precision.HIGHEST)
    return y + p['bias'] if bias else y

  @jax.jit  # one program: op-by-op dispatch would compile every op separately
  def run(params, x, cotangent):
    results = []
    for fn in (lambda p, x: ours.apply({'params': p}, x), reference):
      y = fn(params, x)
      grads = jax.grad(lambda p, x: jnp.vdot(fn(p, x), cotangent), argnums=(0, 1))(params, x)
      results.append((y, grads))
    return results

  (y, grads), (expected, expected_grads) = run(params, x, cotangent)
  assert y.shape == expected.shape
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  return y.shape


# (input height, case as in CASES): output heights of 37, 35 and 34 rows give the
# depthwise kernel gradient two whole groups of `DEPTHWISE_GRAD_ROWS` rows and a rest.
TALL_DEPTHWISE = [
    (37, (3, 2, 1, 16, (2, 2, 1, 1), False, 16, 16)),
    (70, (3, 1, 2, 16, (1, 1, 1, 1), False, 16, 16)),
    (69, (3, 2, 2, 16, (0, 3, 1, 1), False, 16, 16)),
]


@pytest.mark.parametrize('height, case', TALL_DEPTHWISE, ids=[str(h) for h, _ in TALL_DEPTHWISE])
def test_depthwise_gradients_on_maps_taller_than_one_row_group(height, case):
  assert layers.DEPTHWISE_GRAD_ROWS == 16  # the heights above are chosen for it
  out_shape = _check_against_xla_convolution(case, (2, height, 9, case[6]))
  assert out_shape[1] >= 2 * layers.DEPTHWISE_GRAD_ROWS + 1


def test_tap_lowering_is_chosen_only_where_taps_hit_padding():
  x = jnp.zeros((1, 41, 41, 4))
  taps = lambda d: layers.tap_fraction(x.shape[1:3], 3, d) < layers.TAP_FRACTION_THRESHOLD
  # Hand-computed: rate 36 on 41 rows: taps overlap 41 + 5 + 5 rows of 123 -> (51/123)^2.
  assert layers.tap_fraction((41, 41), 3, 36) == pytest.approx((51 / 123) ** 2)
  assert layers.tap_fraction((41, 41), 3, 1) == pytest.approx((121 / 123) ** 2)
  assert taps(36) and taps(24) and not taps(2) and not taps(1)
  conv = layers.Conv(4, (3, 3), padding=((36, 36), (36, 36)), kernel_dilation=(36, 36))
  variables = jax.eval_shape(lambda: conv.init(jax.random.key(0), x))
  jaxpr = str(jax.make_jaxpr(conv.apply)(variables, x))
  assert 'conv_general_dilated' not in jaxpr and 'dot_general' in jaxpr


def test_only_dilated_convs_take_the_per_tap_kernel_gradient():
  x = jnp.zeros((1, 41, 41, 4))

  def kernel_grad_jaxpr(dilation):
    conv = layers.Conv(4, (3, 3), padding=((dilation, dilation),) * 2,
                       kernel_dilation=(dilation, dilation))
    variables = conv.init(jax.random.key(0), x)
    return str(jax.make_jaxpr(jax.grad(lambda v: conv.apply(v, x).sum()))(variables))

  assert 'scan' in kernel_grad_jaxpr(2)  # the loop over taps
  assert 'scan' not in kernel_grad_jaxpr(1)


def test_conv_matches_torch_conv2d():
  """An atrous conv through the tap lowering, against PyTorch's own conv2d."""
  import torch  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(0).standard_normal((2, 8, 19, 17), dtype=np.float32)  # NCHW
  conv = torch.nn.Conv2d(8, 6, 3, padding=18, dilation=18, bias=True)
  with torch.no_grad():
    expected = conv(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  params = {'kernel': jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0)),
            'bias': jnp.asarray(conv.bias.detach().numpy())}
  ours = layers.Conv(6, (3, 3), padding=((18, 18), (18, 18)), kernel_dilation=(18, 18))
  y = ours.apply({'params': params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_relu_once_equals_relu_in_value_and_gradient():
  x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.5, jnp.inf, -jnp.inf, jnp.nan])
  np.testing.assert_array_equal(layers.relu_once(x), nn.relu(x))  # NaN stays NaN
  finite = x[:-1]
  np.testing.assert_array_equal(jax.grad(lambda v: layers.relu_once(v).sum())(finite),
                                jax.grad(lambda v: nn.relu(v).sum())(finite))


def _fused_blocks(relu, depth):
  """Most bn3 layers (one per block) any single fusion of a ResNet stage's compiled
  forward reads from."""
  import re  # pylint: disable=import-outside-toplevel
  from deeplax.models import resnet  # pylint: disable=import-outside-toplevel

  class Stage(nn.Module):
    @nn.compact
    def __call__(self, x):
      conv = layers.make_conv(jnp.float32, jnp.float32)
      norm = layers.make_norm(False, False, 0.9, 1e-5, jnp.float32, jnp.float32)
      for j in range(depth):
        x = resnet.Bottleneck(planes=8, strides=1, dilation=2, downsample=j == 0, conv=conv,
                              norm=norm, name=f'block{j}')(x)
      return x

  stage, x = Stage(), jnp.zeros((1, 17, 17, 32))
  variables = stage.init(jax.random.key(0), x)
  original = layers.relu_once
  try:
    layers.relu_once = relu
    hlo = jax.jit(stage.apply).lower(variables, x).compile().as_text()
  finally:
    layers.relu_once = original
  calls = re.findall(r'fusion\((.*?)\), kind=', hlo)
  return max(len(set(re.findall(r'block(\d+).{0,12}bn3', c))) for c in calls)


def test_block_outputs_are_computed_once_not_per_consumer():
  """With max(x, 0) at block outputs XLA recomputes every earlier block's batch norm and
  residual add inside each later block (quadratic in depth); `relu_once` stops that."""
  assert _fused_blocks(nn.relu, 6) >= 5, (
      'XLA no longer duplicates max(x, 0) chains into consumers: relu_once may be unneeded')
  assert _fused_blocks(layers.relu_once, 6) <= 1
