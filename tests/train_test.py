"""The training loop end to end: main.py on the real model for 3 steps, resume after a
kill equals the uninterrupted run, gradient accumulation, the loss variants, and eval
counting every image once."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deeplax import checkpoint
from deeplax import losses
from deeplax import optim
from deeplax import train
from deeplax.data import pipeline
from deeplax.data import shapes
from tests.train_utils import TinySeg, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(workdir, *args):
  """Runs `python main.py --config tests/train_utils.py` (the real model, tiny) on 1 device."""
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  command = [sys.executable, 'main.py', '--config', 'tests/train_utils.py', '--workdir',
             str(workdir), *args]
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_main_trains_evaluates_and_writes_everything(tmp_path):
  workdir = tmp_path / 'run'
  result = _main(workdir, '--config.eval.output_stride=8')
  record = json.loads((workdir / 'eval_results.json').read_text())
  assert record['step'] == 3 and record['num_images'] == 10 and record['output_stride'] == 8
  assert list(record['per_class_iou']) == list(shapes.CLASS_NAMES)
  assert 0.0 <= record['mIoU'] <= 1.0 and 0.0 <= record['pixel_accuracy'] <= 1.0
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '3']
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))
  assert (workdir / 'config.json').exists()
  assert 'mIoU' in result.stdout and 'triangle' in result.stdout  # the per-class table
  assert 'Compiled the train step' in result.stderr
  assert 'step 3/3  loss' in result.stderr and 'ETA' in result.stderr  # the progress line


@pytest.fixture
def tiny_model(monkeypatch):
  """Trains TinySeg (dropout on) in place of the DeepLab of the config: the loop, not the
  model, is under test, and it compiles in a second."""
  monkeypatch.setattr(train.models, 'create_model',
                      lambda model_config: TinySeg(model_config.num_classes, dropout=0.3))


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, tiny_model):
  del tiny_model
  config = tiny_config(num_train_steps=5)
  config.checkpoint_every_steps = 2
  straight = tmp_path / 'straight'
  train.train_and_evaluate(config, str(straight))

  # A run killed during step 5 has written exactly what the straight run had written by
  # then (the run is deterministic): checkpoints 2 and 4, and at most a half-written
  # step-5 directory under Orbax's temporary name.
  killed = tmp_path / 'killed'
  shutil.copytree(straight, killed)
  shutil.rmtree(killed / 'checkpoints' / '5')
  (killed / 'checkpoints' / '5.orbax-checkpoint-tmp-99' / 'default').mkdir(parents=True)
  assert sorted(checkpoint.create_manager(str(killed)).all_steps()) == [2, 4]
  record = train.train_and_evaluate(config, str(killed))  # restart: resumes at 4
  assert record['step'] == 5
  expected, _ = checkpoint.load_variables(str(straight))
  resumed, description = checkpoint.load_variables(str(killed))
  assert 'step 5' in description
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)  # bit-identical on CPU
  manager = checkpoint.create_manager(str(killed))
  state = train.create_train_state(config, TinySeg(4), jax.random.PRNGKey(0),
                                   train.create_mesh(), (1, 16, 16, 3), use_init_from=False)
  assert int(checkpoint.restore(manager, state).step) == 5
  # --mode eval on the final checkpoint reproduces the run's final eval.
  os.remove(killed / 'eval_results.json')
  again = train.evaluate_checkpoint(config, str(killed))
  assert again == record and json.loads((killed / 'eval_results.json').read_text()) == record


@pytest.mark.parametrize('keep_host_memory', [True, False])
def test_compile_memory_is_released_once_before_the_first_step(tmp_path, monkeypatch,
                                                                tiny_model, keep_host_memory):
  """With keep_host_memory (freed memory stays mapped), the compiler's freed heap is
  handed back once, after the train step compiles and before it first runs; without it
  glibc trims by itself and the loop does nothing."""
  del tiny_model
  events = []
  monkeypatch.setattr(train.host_memory, 'release_free_memory',
                      lambda: events.append('release'))
  make_step = train.make_train_step

  def recording_make_step(*args, **kwargs):
    jitted = make_step(*args, **kwargs)

    class Recording:
      def lower(self, *a):
        lowered = jitted.lower(*a)

        class Lowered:
          def compile(self, *c):
            compiled = lowered.compile(*c)

            def run(*r):
              events.append('step')
              return compiled(*r)
            return run
        return Lowered()
    return Recording()
  monkeypatch.setattr(train, 'make_train_step', recording_make_step)
  config = tiny_config(num_train_steps=3)
  config.keep_host_memory = keep_host_memory
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert events == (['release'] if keep_host_memory else []) + ['step'] * 3


def test_eval_counts_every_image_once_with_a_remainder_batch():
  config = tiny_config()  # 10 images, eval batch 4: 3 batches, the last with 2 fillers
  mesh = train.create_mesh(jax.devices()[:4])
  module = TinySeg(4)
  variables = train.initial_variables(module, jax.random.PRNGKey(0), (1, 16, 16, 3), mesh)
  eval_iter = pipeline.create_eval_iterator(config)
  matrix, count, first = train.evaluate(config, module, variables, mesh, eval_iter, 4)
  _, labels = shapes.load_split('val', 10, 16)
  assert count == 10
  assert matrix.sum() == labels.size == 10 * 16 * 16  # every pixel of every image, once
  np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(labels.ravel(), minlength=4))
  assert first['prediction'].shape == (4, 16, 16)


def _loss_inputs(seed=0, n=4, size=12):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, size=(n, size, size)).astype(np.int32)
  labels[:, 0] = 255
  return {'image': rng.normal(size=(n, size, size, 3)).astype(np.float32), 'label': labels}


def _torch_ce(logits, labels):
  return F.cross_entropy(torch.from_numpy(np.array(logits)).permute(0, 3, 1, 2),
                         torch.from_numpy(np.asarray(labels)).long(), ignore_index=255).item()


def test_multiscale_loss_is_the_sum_of_four_reference_losses():
  config = tiny_config()
  config.loss.multiscale = True
  module = TinySeg(4)
  batch = _loss_inputs()
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), batch['image'])
  loss, (_, parts) = jax.jit(lambda v: train.compute_loss(
      v['params'], v['batch_stats'], module, batch, jax.random.PRNGKey(1), config))(variables)
  forward = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=['batch_stats']))
  expected, upsampled = 0.0, []
  for scale in (1.0, 0.75, 0.5):
    size = losses.scaled_size(12, scale)  # 12, 9, 6
    images = torch.from_numpy(batch['image']).permute(0, 3, 1, 2)
    x = F.interpolate(images, size=(size, size), mode='bilinear', align_corners=False)
    logits, _ = forward(variables, x.permute(0, 2, 3, 1).numpy())
    y = F.interpolate(torch.from_numpy(batch['label'])[:, None].float(), size=(size, size),
                      mode='nearest-exact')[:, 0].long().numpy()
    expected += _torch_ce(logits, y)
    upsampled.append(F.interpolate(torch.from_numpy(np.array(logits)).permute(0, 3, 1, 2),
                                   size=(12, 12), mode='bilinear', align_corners=False))
  fused = torch.maximum(torch.maximum(upsampled[0], upsampled[1]), upsampled[2])
  expected += _torch_ce(fused.permute(0, 2, 3, 1).numpy(), batch['label'])
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert set(parts) == {'ce_scale1', 'ce_scale0.75', 'ce_scale0.5', 'ce_fused'}


def test_aux_loss_is_weighted():
  config = tiny_config()
  config.model.aux_head, config.loss.aux_weight = True, 0.4
  module = TinySeg(4, aux_head=True)
  batch = _loss_inputs(1)
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), batch['image'])
  loss, _ = jax.jit(lambda v: train.compute_loss(
      v['params'], v['batch_stats'], module, batch, jax.random.PRNGKey(1), config))(variables)
  (logits, aux), _ = jax.jit(lambda v: module.apply(
      v, batch['image'], train=True, return_aux=True, mutable=['batch_stats']))(variables)
  expected = _torch_ce(logits, batch['label']) + 0.4 * _torch_ce(aux, batch['label'])
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_iter_size_two_half_batches_equal_one_full_batch():
  """With BN frozen (statistics do not depend on the batch split) and no dropout, two
  accumulated micro-batches of 2 give the update of one batch of 4."""
  module = TinySeg(4, freeze_bn=True)
  batch = _loss_inputs(2)
  batch['label'][:] = np.where(batch['label'] == 255, 0, batch['label'])  # equal pixel counts
  mesh = train.create_mesh(jax.devices()[:1])
  results = []
  for iter_size, batches in ((1, [batch]), (2, [{k: v[:2] for k, v in batch.items()},
                                                {k: v[2:] for k, v in batch.items()}])):
    config = tiny_config(num_train_steps=10 * iter_size)
    config.model.freeze_bn, config.optim.iter_size = True, iter_size
    lr_fn = optim.create_learning_rate_fn(config)
    state = train.create_train_state(config, module, jax.random.PRNGKey(0), mesh,
                                     (1, 12, 12, 3), lr_fn)
    step_fn = train.make_train_step(config, module, lr_fn, jax.random.PRNGKey(0), mesh)
    for b in batches:
      state, _ = step_fn(state, train.global_batch(b, mesh))
    results.append(state)
  assert int(results[1].step) == 2
  for a, b in zip(jax.tree.leaves(results[0].params), jax.tree.leaves(results[1].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  initial = train.create_train_state(tiny_config(), module, jax.random.PRNGKey(0), mesh,
                                     (1, 12, 12, 3))
  assert not np.allclose(np.asarray(initial.params['head']['conv']['kernel']),
                         np.asarray(results[1].params['head']['conv']['kernel']))
