"""Non-finite loss or gradients: the update is never applied; nonfinite_policy='stop'
stops naming the step and the last good checkpoint, 'skip' skips and counts; a
non-finite state is never saved. NaN is injected as a batch with an inf pixel."""
import types

import jax
import numpy as np
import pytest

from deeplax import checkpoint
from deeplax import integrity
from deeplax import nonfinite
from deeplax import optim
from deeplax import train
from deeplax.data import pipeline
from tests.train_utils import TinySeg, tiny_config

BAD_STEP = 5


@pytest.fixture
def tiny_model(monkeypatch):
  """The tiny test model on one device: the loop, not the model, is under test."""
  monkeypatch.setattr(train.models, 'create_model',
                      lambda model_config: TinySeg(model_config.num_classes, dropout=0.3))
  create_mesh = train.create_mesh
  monkeypatch.setattr(train, 'create_mesh', lambda devices=None: create_mesh(jax.devices()[:1]))


@pytest.fixture
def poisoned_data(monkeypatch):
  """The real pipeline, with one inf pixel in the batch of training step BAD_STEP."""

  def create_train_iterator(config, seed, process_index=0, process_count=1, start_step=0):
    batches = pipeline.create_train_iterator(config, seed, process_index, process_count,
                                             start_step)
    for step in range(start_step + 1, 10**9):
      batch = next(batches)
      if step == BAD_STEP:
        batch = dict(batch, image=np.array(batch['image']))
        batch['image'][0, 0, 0, 0] = np.inf
      yield batch

  module = types.SimpleNamespace(get_info=pipeline.get_info,
                                 create_eval_iterator=pipeline.create_eval_iterator,
                                 create_train_iterator=create_train_iterator)
  monkeypatch.setattr(train, '_data', lambda: module)


def _host(tree):
  return jax.tree.map(np.asarray, tree)


def _assert_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_stop_names_the_step_and_the_last_good_checkpoint(tmp_path, tiny_model, poisoned_data):
  del tiny_model, poisoned_data
  config = tiny_config(num_train_steps=8, checkpoint_every_steps=2, nonfinite_policy='stop')
  workdir = tmp_path / 'run'
  with pytest.raises(nonfinite.NonFiniteError) as err:
    train.train_and_evaluate(config, str(workdir))
  message = str(err.value)
  assert f'at step {BAD_STEP}' in message
  assert f'Last good checkpoint: step 4 in {workdir}/checkpoints' in message
  manager = checkpoint.create_manager(str(workdir))
  assert sorted(manager.all_steps()) == [2, 4]  # nothing saved past the bad step
  loaded, _ = checkpoint.load_variables(str(workdir))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(loaded))


def test_skip_skips_and_counts_and_the_run_finishes(tmp_path, tiny_model, poisoned_data,
                                                    caplog):
  del tiny_model, poisoned_data
  config = tiny_config(num_train_steps=6, checkpoint_every_steps=1, nonfinite_policy='skip')
  workdir = str(tmp_path / 'run')
  with caplog.at_level('WARNING'):
    record = train.train_and_evaluate(config, workdir)
  assert record['step'] == 6
  assert any(f'Step {BAD_STEP}: non-finite loss or gradients' in r.getMessage() and
             '1 skipped so far' in r.getMessage() for r in caplog.records)
  # Checkpoints 4 and 5 hold the same weights, optimizer state and BN statistics: the
  # update of step 5 was skipped; 6 applied its update again.
  states = {}
  for step in (4, 5, 6):
    states[step], _ = checkpoint.load_variables(f'{workdir}/checkpoints/{step}')
  _assert_equal(states[4], states[5])
  assert not np.array_equal(states[5]['params']['head']['classifier']['kernel'],
                            states[6]['params']['head']['classifier']['kernel'])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(states[6]))


def test_a_nonfinite_state_is_never_saved(tmp_path):
  config = tiny_config()
  mesh = train.create_mesh(jax.devices()[:1])
  state = train.create_train_state(config, TinySeg(4), jax.random.PRNGKey(0), mesh,
                                   (1, 8, 8, 3), optim.create_learning_rate_fn(config))
  manager = checkpoint.create_manager(str(tmp_path))
  assert checkpoint.save(manager, 1, state)
  checkpoint.wait_until_finished(manager)
  kernel = state.params['head']['classifier']['kernel']
  bad = state.replace(params={**state.params, 'head': {**state.params['head'], 'classifier': {
      **state.params['head']['classifier'], 'kernel': kernel.at[0, 0, 0, 0].set(np.nan)}}})
  with pytest.raises(integrity.NonFiniteStateError,
                     match=r"Refusing to save checkpoint 2: .*\['params'\]\['head'\]"
                           r"\['classifier'\]\['kernel'\].*last good checkpoint is 1"):
    checkpoint.save(manager, 2, bad)
  checkpoint.wait_until_finished(manager)
  assert manager.all_steps() == [1]
