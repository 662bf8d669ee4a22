"""Data parallelism: a step with the batch sharded over 4 CPU devices equals the same
global batch on 1 device (loss, gradients, BN statistics, updated parameters, dropout),
which is what makes batch norm synchronised without an axis_name. Eval likewise."""
import jax
import numpy as np

from deeplax import optim
from deeplax import train
from tests.train_utils import TinySeg, tiny_config

RTOL, ATOL = 1e-5, 1e-6  # float32 reductions in a different order


def _batch(n=8, size=8, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, size=(n, size, size)).astype(np.int32)
  labels[:, :2, :3] = 255
  return {'image': rng.normal(size=(n, size, size, 3)).astype(np.float32), 'label': labels}


def _step_on(devices, config, module, batch):
  mesh = train.create_mesh(devices)
  lr_fn = optim.create_learning_rate_fn(config)
  state = train.create_train_state(config, module, jax.random.PRNGKey(0), mesh,
                                   (1, 8, 8, 3), lr_fn)
  global_batch = train.global_batch(batch, mesh)
  rng = jax.random.PRNGKey(7)
  grads_fn = jax.jit(lambda s, b: train.loss_and_grads(s, b, module, config, rng))
  (loss, (stats, _)), grads = grads_fn(state, global_batch)
  step_fn = train.make_train_step(config, module, lr_fn, jax.random.PRNGKey(3), mesh)
  new_state, step_metrics = step_fn(state, global_batch)
  return {'loss': loss, 'grads': grads, 'stats': stats, 'params': new_state.params,
          'new_stats': new_state.batch_stats, 'step_loss': step_metrics['loss'],
          'sharding': global_batch['image'].sharding, 'state_sharding':
          jax.tree.leaves(new_state.params)[0].sharding}


def _assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)


def test_four_devices_equal_one_device():
  assert jax.device_count() >= 4, 'tests/conftest.py sets 4 host CPU devices'
  config = tiny_config()
  module = TinySeg(num_classes=4, dropout=0.5)
  batch = _batch()
  four = _step_on(jax.devices()[:4], config, module, batch)
  one = _step_on(jax.devices()[:1], config, module, batch)
  # The batch really is split 2 images per device; the state is replicated.
  assert four['sharding'].shard_shape((8, 8, 8, 3)) == (2, 8, 8, 3)
  assert len(four['sharding'].device_set) == 4
  assert four['state_sharding'].is_fully_replicated
  np.testing.assert_allclose(float(four['loss']), float(one['loss']), rtol=RTOL)
  np.testing.assert_allclose(float(four['step_loss']), float(one['step_loss']), rtol=RTOL)
  for key in ('grads', 'stats', 'params', 'new_stats'):
    _assert_close(four[key], one[key])
  # BN statistics are those of the global batch, not of one device's slice: the
  # running mean moved by 0.1 x the batch mean of the backbone conv output.
  assert np.abs(np.asarray(four['new_stats']['backbone']['bn']['mean'])).max() > 0


def test_eval_on_four_devices_equals_one():
  config = tiny_config()
  config.eval.scales, config.eval.flip = (0.5, 1.0), True
  module = TinySeg(num_classes=4)
  batch = dict(_batch(seed=1), valid=np.array([True] * 6 + [False] * 2))
  matrices = []
  for devices in (jax.devices()[:4], jax.devices()[:1]):
    mesh = train.create_mesh(devices)
    variables = train.initial_variables(module, jax.random.PRNGKey(0), (1, 8, 8, 3), mesh)
    matrix, count, _ = train.evaluate(config, module, variables, mesh, iter([batch]), 4)
    assert count == 6
    matrices.append(matrix)
  np.testing.assert_array_equal(matrices[0], matrices[1])
  assert matrices[0].sum() == (batch['label'][:6] != 255).sum()
