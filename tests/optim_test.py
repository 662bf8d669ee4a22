"""The optimizer against its formulas and against torch.optim.SGD with parameter groups
(the reference recipes' optimizer)."""
import jax
import numpy as np
import optax
import pytest
import torch

from deeplax import optim
from tests.train_utils import tiny_config


def _params(rng=np.random.default_rng(0)):
  """A tree with the model's layout: backbone conv+BN, head conv+BN, head/classifier."""
  f = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
  return {
      'backbone': {'conv': {'kernel': f(3, 3, 2, 4)}, 'bn': {'scale': f(4), 'bias': f(4)}},
      'head': {'conv': {'kernel': f(3, 3, 4, 4)}, 'bn': {'scale': f(4), 'bias': f(4)},
               'classifier': {'kernel': f(1, 1, 4, 3), 'bias': f(3)}},
  }


def _flat(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize('steps', [0, 1, 37, 99, 100])
def test_poly_schedule_matches_formula(steps):
  config = tiny_config(num_train_steps=100)
  config.optim.learning_rate, config.optim.end_learning_rate = 0.01, 1e-4
  fn = optim.create_learning_rate_fn(config)
  expected = (0.01 - 1e-4) * (1 - steps / 100) ** 0.9 + 1e-4
  assert float(fn(steps)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('update', [0, 5, 10, 11, 55, 100])
def test_warmup_then_poly_over_the_remaining_updates(update):
  config = tiny_config(num_train_steps=100)
  config.optim.learning_rate, config.optim.warmup_steps = 0.02, 10
  fn = optim.create_learning_rate_fn(config)
  if update < 10:
    expected = 0.02 * update / 10
  else:
    expected = 0.02 * (1 - (update - 10) / 90) ** 0.9
  assert float(fn(update)) == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_schedule_counts_updates_when_accumulating():
  config = tiny_config(num_train_steps=100)
  config.optim.iter_size = 4  # 25 updates
  fn = optim.create_learning_rate_fn(config)
  assert float(fn(10)) == pytest.approx(0.01 * (1 - 10 / 25) ** 0.9, rel=1e-5)
  assert float(optim.current_learning_rate(fn, 43, 4)) == pytest.approx(float(fn(10)))


def test_weight_decay_mask_and_groups():
  params = _params()
  mask = _flat(optim.weight_decay_mask(params, exclude_norm=True))
  assert mask == {'backbone/bn/bias': False, 'backbone/bn/scale': False,
                  'backbone/conv/kernel': True, 'head/bn/bias': False, 'head/bn/scale': False,
                  'head/classifier/bias': False, 'head/classifier/kernel': True,
                  'head/conv/kernel': True}
  assert all(_flat(optim.weight_decay_mask(params, exclude_norm=False)).values())
  frozen = _flat(optim.weight_decay_mask(params, exclude_norm=False, freeze_bn=True))
  assert [k for k, v in frozen.items() if not v] == [
      'backbone/bn/bias', 'backbone/bn/scale', 'head/bn/bias', 'head/bn/scale']
  config = tiny_config()
  config.optim.backbone_lr_mult, config.optim.classifier_lr_mult = 0.1, 10.0
  mults = _flat(optim.lr_multipliers(params, config))
  assert mults['backbone/conv/kernel'] == mults['backbone/bn/scale'] == 0.1
  assert mults['head/conv/kernel'] == mults['head/bn/bias'] == 1.0
  assert mults['head/classifier/kernel'] == mults['head/classifier/bias'] == 10.0


def _torch_reference(params, grads_seq, config):
  """torch.optim.SGD with one parameter group per (multiplier, decay) and LambdaLR poly."""
  o = config.optim
  flat = _flat(params)
  tensors = {k: torch.tensor(v, requires_grad=True) for k, v in flat.items()}
  wd_mask = _flat(optim.weight_decay_mask(params, o.wd_exclude_norm))
  mults = _flat(optim.lr_multipliers(params, config))
  groups = {}
  for k in flat:
    groups.setdefault((mults[k], wd_mask[k]), []).append(tensors[k])
  opt = torch.optim.SGD(
      [{'params': ps, 'lr': o.learning_rate * m, 'weight_decay': o.weight_decay if wd else 0.0}
       for (m, wd), ps in groups.items()], lr=o.learning_rate, momentum=o.momentum)
  total = config.num_train_steps
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / total) ** o.power)
  for grads in grads_seq:
    for k, g in _flat(grads).items():
      tensors[k].grad = torch.tensor(g)
    opt.step()
    sched.step()
  return {k: t.detach().numpy() for k, t in tensors.items()}


def _run_ours(params, grads_seq, config):
  tx = optim.create_optimizer(config, params)
  state = tx.init(params)
  for grads in grads_seq:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return _flat(params)


def test_matches_torch_sgd_with_param_groups_decay_and_poly():
  config = tiny_config(num_train_steps=6)
  o = config.optim
  o.learning_rate, o.weight_decay, o.momentum = 0.1, 0.01, 0.9
  o.backbone_lr_mult, o.head_lr_mult, o.classifier_lr_mult = 0.1, 1.0, 10.0
  params = _params()
  rng = np.random.default_rng(1)
  grads_seq = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
               for _ in range(5)]
  ours = _run_ours(params, grads_seq, config)
  theirs = _torch_reference(params, grads_seq, config)
  for k in theirs:
    np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert not np.allclose(ours['head/conv/kernel'], _flat(params)['head/conv/kernel'])


def test_frozen_bn_parameters_never_change():
  config = tiny_config(num_train_steps=10)
  config.model.freeze_bn = True
  config.optim.weight_decay, config.optim.wd_exclude_norm = 0.1, False  # caffe: decay all
  params = _params()
  grads = jax.tree.map(np.ones_like, params)
  out = _run_ours(params, [grads] * 3, config)
  for k, v in _flat(params).items():
    if '/bn/' in k:
      np.testing.assert_array_equal(out[k], v, err_msg=k)
    else:
      assert not np.allclose(out[k], v), k


def test_iter_size_averages_micro_batches_into_one_update():
  params = _params()
  rng = np.random.default_rng(2)
  g = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
       for _ in range(4)]
  accumulate = tiny_config(num_train_steps=8)
  accumulate.optim.iter_size = 2
  single = tiny_config(num_train_steps=4)
  mean = lambda a, b: jax.tree.map(lambda x, y: (x + y) / 2, a, b)  # noqa: E731
  ours = _run_ours(params, g, accumulate)
  reference = _run_ours(params, [mean(g[0], g[1]), mean(g[2], g[3])], single)
  for k in reference:
    np.testing.assert_allclose(ours[k], reference[k], rtol=1e-6, atol=1e-7, err_msg=k)
  # Between updates the parameters do not move.
  tx = optim.create_optimizer(accumulate, params)
  updates, _ = tx.update(g[0], tx.init(params), params)
  assert not any(np.any(np.asarray(u)) for u in jax.tree.leaves(updates))


def test_gradient_clipping_bounds_the_global_norm():
  config = tiny_config(num_train_steps=10)
  config.optim.grad_clip_norm, config.optim.momentum = 1.0, 0.0
  config.optim.weight_decay = 0.0
  params = _params()
  grads = jax.tree.map(lambda p: np.full(p.shape, 100.0, np.float32), params)
  tx = optim.create_optimizer(config, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = float(optim.create_learning_rate_fn(config)(0))
  assert float(optax.global_norm(updates)) == pytest.approx(lr, rel=1e-5)
