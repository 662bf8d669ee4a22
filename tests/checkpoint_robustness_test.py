"""Damaged checkpoints are detected and the previous one is used, with a warning; a disk
full during a save leaves the previous checkpoint intact and stops with a clear error.

Orbax itself notices a truncated or missing data file, but restores a flipped byte in a
chunk silently as a different weight: the digest saved with each checkpoint
(deeplax.integrity) is what catches that, and both cases are tested here.
"""
import errno
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import serialization

from deeplax import checkpoint
from deeplax import integrity
from deeplax import train


def _state(seed, width=256):
  """A TrainState with a weight large enough for Orbax to store as a plain data chunk
  (small arrays sit in checksummed index nodes), momentum and BN statistics."""
  rng = np.random.default_rng(seed)
  params = {'conv': {'kernel': jnp.asarray(rng.normal(size=(width, 300)), jnp.float32)},
            'bn': {'scale': jnp.ones((width,))}}
  state = train.TrainState.create(apply_fn=None, params=params,
                                  tx=optax.sgd(0.1, momentum=0.9),
                                  batch_stats={'bn': {'mean': jnp.full((width,), seed / 10)}})
  return state.replace(opt_state=jax.tree.map(lambda x: x + seed, state.opt_state))


def _save_steps(workdir, steps):
  """Checkpoints `steps`, each of a different random state; returns {step: state}."""
  manager = checkpoint.create_manager(workdir, keep=10)
  states = {}
  for step in steps:
    states[step] = _state(step).replace(step=step)
    assert checkpoint.save(manager, step, states[step])
    checkpoint.wait_until_finished(manager)
  return states


def _largest_data_file(workdir, step):
  files = [f for f in glob.glob(f'{workdir}/checkpoints/{step}/**/d/*', recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def _flip_byte(path):
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0x10
  open(path, 'wb').write(bytes(data))


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('damage', [_flip_byte, _truncate])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_used(tmp_path, damage,
                                                                         caplog):
  workdir = str(tmp_path)
  states = _save_steps(workdir, [1, 2, 3])
  damage(_largest_data_file(workdir, 3))
  manager = checkpoint.create_manager(workdir)
  if damage is _flip_byte:  # Orbax alone restores it without complaint, wrongly
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          serialization.to_state_dict(states[3]))
    silent = manager.restore(3, args=ocp.args.StandardRestore(target))
    assert not np.array_equal(silent['params']['conv']['kernel'],
                              states[3].params['conv']['kernel'])
  with caplog.at_level('WARNING'):
    restored, step = checkpoint.restore_or_initialize(manager, _state(9))
  assert step == 2 and int(restored.step) == 2
  _assert_same((restored.params, restored.opt_state, restored.batch_stats),
               (states[2].params, states[2].opt_state, states[2].batch_stats))
  warning = ' '.join(r.getMessage() for r in caplog.records)
  assert 'Checkpoint 3' in warning and 'unusable' in warning
  # A flipped byte fails the digest, or, where it turned a value into NaN/Inf, the finite
  # check that runs first; a truncated file cannot be read.
  expected = (('does not match the digest', 'holds NaN/Inf') if damage is _flip_byte
              else ('cannot be read',))
  assert any(e in warning for e in expected), warning
  assert sorted(manager.all_steps()) == [1, 2]  # 3 moved aside, kept for inspection
  assert os.listdir(tmp_path / integrity.UNUSABLE_DIR)[0].startswith('3-')
  # Training goes on: step 3 can be saved again.
  assert checkpoint.save(manager, 3, restored.replace(step=3))
  checkpoint.wait_until_finished(manager)


def test_every_checkpoint_damaged_is_an_error_not_a_silent_fresh_start(tmp_path):
  workdir = str(tmp_path)
  _save_steps(workdir, [1, 2])
  for step in (1, 2):
    _flip_byte(_largest_data_file(workdir, step))
  with pytest.raises(integrity.CheckpointCorruptError, match=r'\(2, 1\) is unusable'):
    checkpoint.restore_or_initialize(checkpoint.create_manager(workdir), _state(9))


def test_checkpoint_of_another_model_is_reported_not_moved(tmp_path):
  workdir = str(tmp_path)
  _save_steps(workdir, [1])
  with pytest.raises(ValueError, match=r'another model configuration: .*conv/kernel: '
                                       r'checkpoint \(256, 300\) vs model \(128, 300\)'):
    checkpoint.restore_or_initialize(checkpoint.create_manager(workdir), _state(9, width=128))
  no_momentum = _state(9).replace(tx=optax.sgd(0.1))
  no_momentum = no_momentum.replace(opt_state=no_momentum.tx.init(no_momentum.params))
  with pytest.raises(ValueError, match=r"opt_state/0/trace/conv/kernel: only in the checkpoint"):
    checkpoint.restore_or_initialize(checkpoint.create_manager(workdir), no_momentum)
  assert checkpoint.create_manager(workdir).all_steps() == [1]


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  states = _save_steps(workdir, [1, 2])
  owner = next(c for c in type(epath.Path('/')).__mro__ if 'write_text' in c.__dict__)
  write_text = owner.write_text

  def disk_full(self, *args, **kwargs):
    if 'orbax-checkpoint-tmp' in str(self):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    return write_text(self, *args, **kwargs)

  monkeypatch.setattr(owner, 'write_text', disk_full)
  manager = checkpoint.create_manager(workdir, keep=1)  # 3 would replace 1 and 2
  with pytest.raises(integrity.CheckpointWriteError) as err:
    checkpoint.save(manager, 3, states[2].replace(step=3))
    checkpoint.wait_until_finished(manager)  # (an async write fails here)
  message = str(err.value)
  assert f'Could not write checkpoint 3 to {workdir}/checkpoints: the disk is full' in message
  assert 'the previous checkpoint (step 2) is intact' in message
  monkeypatch.setattr(owner, 'write_text', write_text)
  restarted = checkpoint.create_manager(workdir, keep=1)
  assert sorted(restarted.all_steps()) == [1, 2]
  restored, step = checkpoint.restore_or_initialize(restarted, _state(9))
  assert step == 2
  _assert_same(restored.params, states[2].params)
