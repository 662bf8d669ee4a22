"""Non-finite loss or gradients: never applied, then stopped on or skipped (config.nonfinite_policy).

Inside the jitted step, `guard` keeps params, optimizer state and BN statistics
unchanged when the loss or any gradient is NaN/Inf (a select per leaf, fused by XLA; the
step counter still advances so the data position and dropout keys stay those of the
uninterrupted run). The state in memory is therefore always finite.

On the host, `Monitor` reads each step's flag one step late (so checking never stalls
the device queue), and right before every checkpoint (so a checkpoint is never taken
past an unseen bad step): with policy 'stop' it raises NonFiniteError naming the step
and the last good checkpoint; with 'skip' it logs and counts the skipped updates.
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

POLICIES = ('stop', 'skip')


class NonFiniteError(FloatingPointError):
  """Training stopped at a non-finite loss/gradient (nonfinite_policy='stop')."""


def all_finite(tree) -> jax.Array:
  """Scalar bool: every float leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def guard(old_state, new_state, loss, grads) -> Tuple[object, jax.Array]:
  """(new_state, or old_state with new_state's step where loss/grads are non-finite;
  the finite flag). Pure jnp: call it inside the jitted step."""
  finite = jnp.isfinite(loss) & all_finite(grads)
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, old_state)
  return kept.replace(step=new_state.step), finite


class Monitor:
  """Host side: checks the step flags, one step late or on demand (see module doc)."""

  def __init__(self, policy: str, last_checkpoint_fn):
    if policy not in POLICIES:
      raise ValueError(f'nonfinite_policy={policy!r}; allowed: {", ".join(POLICIES)}')
    self.policy = policy
    self.skipped = 0
    self._last_checkpoint_fn = last_checkpoint_fn  # () -> description of the last good one
    self._pending: Optional[Tuple[int, jax.Array, jax.Array]] = None

  def after_step(self, step: int, finite: jax.Array, loss: jax.Array) -> None:
    """Records step `step`'s flag and checks the previous step's (already computed)."""
    previous, self._pending = self._pending, (step, finite, loss)
    if previous is not None:
      self._check(*previous)

  def flush(self) -> None:
    """Checks the last recorded step now (call before saving and at the end)."""
    pending, self._pending = self._pending, None
    if pending is not None:
      self._check(*pending)

  def _check(self, step: int, finite: jax.Array, loss: jax.Array) -> None:
    if bool(np.asarray(jax.device_get(finite))):
      return
    loss_value = float(np.asarray(jax.device_get(loss)))
    if self.policy == 'stop':
      raise NonFiniteError(
          f'Non-finite loss or gradients at step {step} (loss={loss_value}); the update was '
          f'not applied and training stopped (nonfinite_policy=stop). Last good checkpoint: '
          f'{self._last_checkpoint_fn()}. Lower optim.learning_rate, set '
          'optim.grad_clip_norm, check the input data, or set '
          '--config.nonfinite_policy=skip to skip such updates.')
    self.skipped += 1
    logging.warning('Step %d: non-finite loss or gradients (loss=%s): update skipped '
                    '(%d skipped so far, nonfinite_policy=skip)', step, loss_value,
                    self.skipped)
