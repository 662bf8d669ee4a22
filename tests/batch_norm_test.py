"""deeplax's BatchNorm against flax's (variables, running statistics, bf16) and torch's
batch norm (training-mode output and gradients): the hand-written gradient must be
the gradient."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplax.models import batch_norm


def _inputs(shape=(2, 9, 7, 16), seed=0):
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=shape) * 3 + 1.5).astype(np.float32)
  cotangent = rng.normal(size=shape).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
  bias = rng.normal(size=shape[-1]).astype(np.float32)
  return x, cotangent, scale, bias


def _apply_and_grad(module, variables, x, cotangent):
  """Output, updated batch_stats and gradients (x, scale, bias) of sum(out * cotangent)."""
  def loss(params, x):
    out, updates = module.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                x, mutable=['batch_stats'])
    return jnp.sum(out.astype(jnp.float32) * cotangent), (out, updates['batch_stats'])
  (_, (out, stats)), (d_params, dx) = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True)(variables['params'], x)
  return out, stats, dx, d_params


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('use_running_average', [False, True])
def test_matches_flax_batch_norm(dtype, use_running_average):
  x, cotangent, scale, bias = _inputs()
  x = jnp.asarray(x, dtype)
  kwargs = dict(use_running_average=use_running_average, momentum=0.9, epsilon=1e-5,
                dtype=dtype)
  ours, theirs = batch_norm.BatchNorm(**kwargs), nn.BatchNorm(**kwargs)
  ours_vars = ours.init(jax.random.key(0), x)
  theirs_vars = theirs.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours_vars) == jax.tree.map(jnp.shape, theirs_vars)
  assert jax.tree.map(lambda v: v.dtype, ours_vars) == jax.tree.map(
      lambda v: v.dtype, theirs_vars)
  variables = {'params': {'scale': jnp.asarray(scale), 'bias': jnp.asarray(bias)},
               'batch_stats': {'mean': jnp.full(16, 0.5), 'var': jnp.full(16, 2.0)}}
  got = _apply_and_grad(ours, variables, x, cotangent)
  want = _apply_and_grad(theirs, variables, x, cotangent)
  assert got[0].dtype == want[0].dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                               rtol=tol, atol=tol * 10)
  if use_running_average:
    assert jax.tree.leaves(jax.tree.map(np.array_equal, got[1], variables['batch_stats']))
  else:  # the running averages moved towards the batch's statistics
    batch_mean = np.asarray(x, np.float32).mean((0, 1, 2))
    np.testing.assert_allclose(got[1]['mean'], 0.9 * 0.5 + 0.1 * batch_mean, rtol=1e-2)


def test_training_output_and_gradients_match_torch():
  import torch
  x, cotangent, scale, bias = _inputs(shape=(2, 11, 13, 8), seed=1)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
  weight = torch.from_numpy(scale).requires_grad_()
  shift = torch.from_numpy(bias).requires_grad_()
  out_t = torch.nn.functional.batch_norm(xt, None, None, weight, shift, training=True,
                                         eps=1e-5)
  out_t.backward(torch.from_numpy(cotangent).permute(0, 3, 1, 2))
  module = batch_norm.BatchNorm(momentum=0.9, epsilon=1e-5)
  variables = module.init(jax.random.key(0), jnp.asarray(x))
  variables = {'params': {'scale': jnp.asarray(scale), 'bias': jnp.asarray(bias)},
               'batch_stats': variables['batch_stats']}
  out, _, dx, d_params = _apply_and_grad(module, variables, jnp.asarray(x), cotangent)
  np.testing.assert_allclose(out, out_t.detach().permute(0, 2, 3, 1).numpy(), atol=2e-5)
  np.testing.assert_allclose(dx, xt.grad.permute(0, 2, 3, 1).numpy(), atol=2e-5)
  np.testing.assert_allclose(d_params['scale'], weight.grad.numpy(), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(d_params['bias'], shift.grad.numpy(), rtol=1e-5, atol=1e-4)


def test_gradient_through_the_batch_statistics():
  """The statistics' cotangents (zero in training, where only the running averages read
  them) still get their exact gradient: against autodiff of the plain formula."""
  x, cotangent, scale, bias = _inputs(shape=(3, 5, 4, 6), seed=2)

  def plain(x, scale, bias):
    mean = x.mean((0, 1, 2))
    var = jnp.maximum(jnp.square(x).mean((0, 1, 2)) - jnp.square(mean), 0.)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias, mean, var

  def loss(fn):
    def f(x, scale, bias):
      y, mean, var = fn(x, scale, bias)
      return jnp.sum(y * cotangent) + jnp.sum(mean * 3.) - jnp.sum(var * bias)
    return jax.grad(f, argnums=(0, 1, 2))

  got = loss(lambda *a: batch_norm.batch_norm_train(*a, 1e-5))(x, scale, bias)
  want = loss(plain)(x, scale, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
