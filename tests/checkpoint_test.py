"""Checkpoints: exact round trip, keep newest N + best, half-written saves ignored, and
the init_from loaders (converted checkpoint, training workdir) with their report."""
import os

import jax
import numpy as np
import pytest

from deeplax import checkpoint
from deeplax import optim
from deeplax import train
from deeplax.convert import store
from tests.train_utils import TinySeg, tiny_config


def _state(seed=0, num_classes=4):
  config = tiny_config()
  mesh = train.create_mesh(jax.devices()[:1])
  return train.create_train_state(config, TinySeg(num_classes), jax.random.PRNGKey(seed), mesh,
                                  (1, 8, 8, 3), optim.create_learning_rate_fn(config))


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact(tmp_path):
  state = _state(0)
  state = state.replace(step=state.step + 7,
                        opt_state=jax.tree.map(lambda x: x + 1, state.opt_state))
  manager = checkpoint.create_manager(str(tmp_path))
  assert checkpoint.save(manager, 7, state)
  manager.wait_until_finished()
  restored, step = checkpoint.restore_or_initialize(
      checkpoint.create_manager(str(tmp_path)), _state(1))
  assert step == 7 and int(restored.step) == 7
  _assert_trees_equal((restored.params, restored.batch_stats, restored.opt_state),
                      (state.params, state.batch_stats, state.opt_state))


def test_fresh_workdir_keeps_the_initial_state(tmp_path):
  state = _state(0)
  restored, step = checkpoint.restore_or_initialize(checkpoint.create_manager(str(tmp_path)),
                                                    state)
  assert step == 0 and restored is state


def test_keeps_newest_n_plus_best(tmp_path):
  manager = checkpoint.create_manager(str(tmp_path), keep=2)
  state = _state(0)
  scores = {2: 0.5, 4: 0.9, 6: 0.3, 8: 0.4}
  for step in range(1, 9):
    metrics = {'mIoU': scores[step]} if step in scores else None
    checkpoint.save(manager, step, state, metrics=metrics)
  manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [4, 7, 8]
  assert manager.best_step() == 4


def test_half_written_checkpoint_is_ignored(tmp_path):
  manager = checkpoint.create_manager(str(tmp_path))
  state = _state(0)
  checkpoint.save(manager, 3, state)
  manager.wait_until_finished()
  # What a kill during Orbax's write of step 5 leaves: a temporary directory, never renamed.
  partial = tmp_path / 'checkpoints' / '5.orbax-checkpoint-tmp-1234'
  (partial / 'default').mkdir(parents=True)
  (partial / 'default' / 'garbage').write_bytes(b'\x00' * 10)
  restarted = checkpoint.create_manager(str(tmp_path))
  assert restarted.latest_step() == 3
  restored, step = checkpoint.restore_or_initialize(restarted, _state(1))
  assert step == 3
  _assert_trees_equal(restored.params, state.params)


def _variables(state):
  return jax.tree.map(np.asarray, {'params': state.params, 'batch_stats': state.batch_stats})


def test_init_from_converted_backbone_only(tmp_path):
  source = _variables(_state(1))
  backbone_only = {c: {'backbone': source[c]['backbone']} for c in source}
  path = store.save_converted(str(tmp_path / 'converted'), backbone_only, {'model': 'tiny'})
  loaded, description = checkpoint.load_variables(path)
  assert 'converted' in description
  init = _variables(_state(0))
  merged, report = checkpoint.merge_variables(init, loaded, 'backbone')
  _assert_trees_equal(merged['params']['backbone'], source['params']['backbone'])
  _assert_trees_equal(merged['batch_stats']['backbone'], source['batch_stats']['backbone'])
  _assert_trees_equal(merged['params']['head'], init['params']['head'])
  assert 'params/backbone/conv/kernel' in report['loaded']
  assert 'params/head/classifier/kernel' in report['kept_init']
  assert report['unused'] == []
  with pytest.raises(ValueError, match='no parameter'):
    checkpoint.merge_variables(init, {'params': {'other': {}}}, 'backbone')


def test_init_from_training_workdir_all_and_shape_mismatch(tmp_path):
  state = _state(2)
  manager = checkpoint.create_manager(str(tmp_path / 'run'))
  checkpoint.save(manager, 5, state)
  manager.wait_until_finished()
  for path in (tmp_path / 'run', tmp_path / 'run' / 'checkpoints',
               tmp_path / 'run' / 'checkpoints' / '5'):
    loaded, description = checkpoint.load_variables(str(path))
    assert 'step 5' in description
    merged, report = checkpoint.merge_variables(_variables(_state(0)), loaded, 'all')
    _assert_trees_equal(merged, _variables(state))
    assert report['kept_init'] == []
  other = _variables(_state(0, num_classes=3))
  with pytest.raises(ValueError, match=r'head/classifier/kernel: checkpoint \(1, 1, 4, 4\)'):
    checkpoint.merge_variables(other, loaded, 'all')
  merged, report = checkpoint.merge_variables(other, loaded, 'backbone')
  assert 'params/head/classifier/kernel' in report['unused']


def test_init_from_missing_path_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing_here'):
    checkpoint.load_variables(str(tmp_path / 'nothing_here'))
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='neither a converted checkpoint'):
    checkpoint.load_variables(str(tmp_path / 'empty'))
