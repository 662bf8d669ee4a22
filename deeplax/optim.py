"""The optimizer, composed in optax: SGD with momentum on the poly schedule (optional
linear warmup), L2 weight decay with a mask, per-group learning-rate multipliers, frozen
BN parameters, gradient clipping and gradient accumulation (caffe's `iter_size`).

It behaves as PyTorch's `torch.optim.SGD` with parameter groups (the reference
recipes): d = g + wd * p; buf = momentum * buf + d; p -= lr * mult * buf.

Parameter groups are found by path in the model's tree:
  params/backbone/...                      -> optim.backbone_lr_mult
  params/head/... and params/aux_head/...  -> optim.head_lr_mult
  any module named classifier* in a head   -> optim.classifier_lr_mult
Normalisation layers are the modules holding a `scale` leaf (`batch_norm.BatchNorm`, in
flax's layout); their scale and bias, and every `bias`, get no weight decay when
`optim.wd_exclude_norm`.
With `model.freeze_bn` the normalisation parameters are not trained at all (caffe's
use_global_stats with requires_grad False): their gradients are zeroed before anything
else, so they receive neither update, momentum nor decay.
"""
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any
GROUPS = ('backbone', 'head', 'classifier')


def num_updates(config: ml_collections.ConfigDict) -> int:
  """Optimizer updates in the run: training steps (micro-batches) / iter_size."""
  return max(1, config.num_train_steps // max(1, config.optim.iter_size))


def create_learning_rate_fn(config: ml_collections.ConfigDict) -> optax.Schedule:
  """lr(u) at optimizer update u (not micro-step).

  Poly: lr(u) = (base - end) * (1 - u / T) ** power + end, with T = updates in the run.
  With warmup W: linear 0 -> base over W updates, then poly over the remaining T - W
  updates (u counted from the end of the warmup).
  """
  o = config.optim
  total = num_updates(config)
  warmup = int(o.warmup_steps)
  poly = optax.polynomial_schedule(init_value=o.learning_rate, end_value=o.end_learning_rate,
                                   power=o.power, transition_steps=max(1, total - warmup))
  if warmup <= 0:
    return poly
  linear = optax.linear_schedule(init_value=0.0, end_value=o.learning_rate,
                                 transition_steps=warmup)
  return optax.join_schedules([linear, poly], boundaries=[warmup])


def _key_name(key) -> str:
  return str(getattr(key, 'key', getattr(key, 'name', key)))


def _paths(params: PyTree):
  """(paths as tuples of names, treedef) of the leaves of `params`, in leaf order."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  return [tuple(_key_name(k) for k in path) for path, _ in leaves], treedef


def map_paths(fn: Callable, params: PyTree) -> PyTree:
  """A tree shaped like `params` with fn(path, all_paths) at every leaf."""
  paths, treedef = _paths(params)
  path_set = frozenset(paths)
  return jax.tree_util.tree_unflatten(treedef, [fn(p, path_set) for p in paths])


def is_norm_param(path: Tuple[str, ...], all_paths) -> bool:
  """True for scale/bias of a normalisation layer (a module that has a `scale` leaf)."""
  return path[-1] in ('scale', 'bias') and (path[:-1] + ('scale',)) in all_paths


def param_group(path: Tuple[str, ...]) -> str:
  """'backbone', 'head' or 'classifier' for a parameter path (see module docstring)."""
  if path and path[0] == 'backbone':
    return 'backbone'
  if any(part.startswith('classifier') for part in path[:-1]):
    return 'classifier'
  return 'head'


def weight_decay_mask(params: PyTree, exclude_norm: bool, freeze_bn: bool = False) -> PyTree:
  """Bool tree: True where L2 weight decay applies."""
  def decays(path, all_paths):
    norm = is_norm_param(path, all_paths)
    if freeze_bn and norm:
      return False
    if exclude_norm and (norm or path[-1] == 'bias'):
      return False
    return True

  return map_paths(decays, params)


def frozen_mask(params: PyTree, freeze_bn: bool) -> PyTree:
  """Bool tree: True for parameters that must never change (frozen BN scale/bias)."""
  return map_paths(lambda p, all_paths: bool(freeze_bn and is_norm_param(p, all_paths)), params)


def lr_multipliers(params: PyTree, config: ml_collections.ConfigDict) -> PyTree:
  """Float tree: the learning-rate multiplier of every parameter's group."""
  o = config.optim
  mults = {'backbone': o.backbone_lr_mult, 'head': o.head_lr_mult,
           'classifier': o.classifier_lr_mult}
  return map_paths(lambda p, _: float(mults[param_group(p)]), params)


def scale_by_tree(multipliers: PyTree) -> optax.GradientTransformation:
  """Multiplies each update by its leaf of `multipliers` (same structure as params)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def create_optimizer(config: ml_collections.ConfigDict, params: PyTree,
                     learning_rate_fn: Callable = None) -> optax.GradientTransformation:
  """The whole optimizer for `params` (the model's 'params' collection)."""
  o = config.optim
  learning_rate_fn = learning_rate_fn or create_learning_rate_fn(config)
  freeze_bn = bool(config.model.freeze_bn)
  parts = []
  if freeze_bn:
    parts.append(optax.masked(optax.set_to_zero(), frozen_mask(params, True)))
  if o.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  if o.weight_decay > 0:
    parts.append(optax.add_decayed_weights(
        o.weight_decay, mask=weight_decay_mask(params, o.wd_exclude_norm, freeze_bn)))
  if o.momentum > 0:
    parts.append(optax.trace(decay=o.momentum, nesterov=o.nesterov))
  parts.append(optax.scale_by_learning_rate(learning_rate_fn))
  mults = lr_multipliers(params, config)
  if any(m != 1.0 for m in jax.tree.leaves(mults)):
    parts.append(scale_by_tree(mults))
  tx = optax.chain(*parts)
  if o.iter_size > 1:
    # Averages the gradients of iter_size micro-batches (caffe normalises by iter_size)
    # and applies one update; the schedule's count advances once per update.
    tx = optax.MultiSteps(tx, every_k_schedule=int(o.iter_size))
  return tx


def current_learning_rate(learning_rate_fn: Callable, step: jax.Array,
                          iter_size: int) -> jax.Array:
  """Base learning rate in effect at training (micro-)step `step`."""
  return learning_rate_fn(step // max(1, iter_size))
