"""Training and evaluation: flat functions, one `jax.jit` step each.

Data parallelism is a 1-D ('data',) mesh over every device of every host: the batch is
sharded along its first axis, the state is replicated, and XLA inserts the collectives.
Batch norm therefore sees the global batch (sync BN) with no `axis_name`, and the loss
is the mean over every valid pixel of the global batch. Each host feeds only its own
slice (`jax.make_array_from_process_local_data`).

A training step is one micro-batch; with `optim.iter_size` k the optimizer (optax
MultiSteps) applies an update every k steps, so `state.step` and `num_train_steps` count
micro-batches and the learning-rate schedule counts updates.
"""
import functools
import json
import os
import time
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from clu import periodic_actions
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deeplax import checkpoint
from deeplax import compile_cache
from deeplax import host_memory
from deeplax import inference
from deeplax import losses
from deeplax import metrics as metrics_lib
from deeplax import models
from deeplax import nonfinite
from deeplax import optim
from deeplax import preemption
from deeplax import reporting
from deeplax import xla_options
from deeplax.models import layers

EVAL_JSON = 'eval_results.json'


class TrainState(train_state.TrainState):
  """flax TrainState plus the BN running statistics."""
  batch_stats: Any = None


# ---- devices and batches -------------------------------------------------------------


def create_mesh(devices=None) -> Mesh:
  """1-D ('data',) mesh over `devices` (default: every device of every host)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def global_batch(local_batch: Dict[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
  """This host's slice of the batch -> global arrays sharded over the 'data' axis."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def local_rows(array: jax.Array) -> np.ndarray:
  """The rows of a data-sharded global array that live on this host, in order."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for shard in shards:
    start = shard.index[0].start or 0
    if start not in seen:  # replicas of a row block on several local devices
      seen.add(start)
      rows.append(np.asarray(shard.data))
  return np.concatenate(rows, axis=0)


# ---- model and state -----------------------------------------------------------------


def eval_model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The model config used at evaluation: the training one at `eval.output_stride`."""
  model_config = ml_collections.ConfigDict(config.model.to_dict())
  if config.eval.output_stride:
    model_config.output_stride = config.eval.output_stride
  return model_config


def initial_variables(module, rng: jax.Array, input_shape, mesh: Mesh) -> Dict:
  """Random-init {'params', 'batch_stats'}, replicated over `mesh`."""
  images = jnp.zeros(input_shape, jnp.float32)

  def init(rng):
    variables = module.init(rng, images, train=False)
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}

  lowered = jax.jit(init, out_shardings=replicated(mesh)).lower(rng)
  # XLA:CPU spends most of an init compile optimising ~1 random op per parameter, code
  # that runs once: compiling it unoptimised is 4x faster (28s -> 7s for a ResNet-50).
  options = ({'xla_backend_optimization_level': 0}
             if mesh.devices.flat[0].platform == 'cpu' else None)
  return lowered.compile(options)(rng)


def load_init_from(config, variables: Dict, mesh: Mesh) -> Dict:
  """`variables` with the leaves of `config.init_from` copied in (scope as config)."""
  loaded, description = checkpoint.load_variables(config.init_from)
  host = jax.tree.map(np.asarray, variables)
  merged, report = checkpoint.merge_variables(host, loaded, config.init_scope,
                                              source=f'init_from={config.init_from}')
  logging.info('init_from: %s (scope %s): %s', description, config.init_scope,
               checkpoint.summarize_report(report))
  return jax.device_put(merged, replicated(mesh))


def create_train_state(config, module, rng: jax.Array, mesh: Mesh, input_shape,
                       learning_rate_fn: Optional[Callable] = None,
                       use_init_from: bool = True) -> TrainState:
  """Replicated TrainState with the optimizer of `config` (and `init_from` weights)."""
  variables = initial_variables(module, rng, input_shape, mesh)
  if use_init_from and config.init_from:
    variables = load_init_from(config, variables, mesh)
  tx = optim.create_optimizer(config, variables['params'], learning_rate_fn)

  def create(params, batch_stats):
    return TrainState.create(apply_fn=module.apply, params=params, tx=tx,
                             batch_stats=batch_stats).replace(step=jnp.zeros((), jnp.int32))

  return jax.jit(create, out_shardings=replicated(mesh))(variables['params'],
                                                          variables['batch_stats'])


# ---- losses and steps --------------------------------------------------------------------


def compute_loss(params, batch_stats, module, batch: Dict[str, jax.Array], rng: jax.Array,
                 config) -> Tuple[jax.Array, Tuple[Any, Dict]]:
  """(loss, (new_batch_stats, parts)) of one training micro-batch.

  The cross entropy over the logits at input size; plus `loss.aux_weight` x that of the
  auxiliary head; with `loss.multiscale`, DeepLab-v2's loss: the image at each of
  `loss.scales`, each against the labels resized (nearest) to its size, plus their
  max-fused output (at input size) against the labels, all summed.
  """
  images, labels = batch['image'], batch['label']
  ignore = config.dataset.ignore_label
  aux_weight = config.loss.aux_weight if config.model.aux_head else 0.0
  _, h, w, _ = images.shape
  stats = batch_stats
  parts = {}

  def forward(x, stats, rng):
    (logits, aux), updates = module.apply(
        {'params': params, 'batch_stats': stats}, x, train=True, return_aux=True,
        mutable=['batch_stats'], rngs={'dropout': rng})
    return logits, aux, updates.get('batch_stats', stats)

  if not config.loss.multiscale:
    logits, aux, stats = forward(images, stats, rng)
    loss, _ = losses.cross_entropy(logits, labels, ignore)
    parts['ce'] = loss
    if aux is not None and aux_weight:
      aux_loss, _ = losses.cross_entropy(aux, labels, ignore)
      parts['aux'] = aux_loss
      loss = loss + aux_weight * aux_loss
    return loss, (stats, parts)

  loss = 0.0
  full_size = []
  for i, scale in enumerate(config.loss.scales):
    size = (losses.scaled_size(h, scale), losses.scaled_size(w, scale))
    x = images if size == (h, w) else layers.resize_bilinear(images, size)
    logits, aux, stats = forward(x, stats, jax.random.fold_in(rng, i))
    y = labels if size == (h, w) else losses.resize_labels_nearest(labels, size)
    scale_loss, _ = losses.cross_entropy(logits, y, ignore)
    parts[f'ce_scale{scale:g}'] = scale_loss
    loss = loss + scale_loss
    if aux is not None and aux_weight:
      loss = loss + aux_weight * losses.cross_entropy(aux, y, ignore)[0]
    full_size.append(layers.resize_bilinear(logits, (h, w)))
  fused_loss, _ = losses.cross_entropy(losses.max_fuse(full_size), labels, ignore)
  parts['ce_fused'] = fused_loss
  return loss + fused_loss, (stats, parts)


def loss_and_grads(state: TrainState, batch: Dict[str, jax.Array], module, config,
                   rng: jax.Array):
  """((loss, (new_batch_stats, parts)), grads) of one micro-batch."""

  def loss_fn(params):
    return compute_loss(params, state.batch_stats, module, batch, rng, config)

  return jax.value_and_grad(loss_fn, has_aux=True)(state.params)


def train_step(state: TrainState, batch: Dict[str, jax.Array], *, module, config,
               learning_rate_fn: Callable, base_rng: jax.Array):
  """One micro-batch: gradients, optimizer (update every iter_size), BN statistics.

  Dropout randomness is fold_in(base_rng, step): a function of the step alone, so a
  resumed run draws what the uninterrupted one would have.
  """
  rng = jax.random.fold_in(base_rng, state.step)
  (loss, (batch_stats, parts)), grads = loss_and_grads(state, batch, module, config, rng)
  grad_norm = optax.global_norm(grads)
  new_state, finite = nonfinite.apply_if_finite(  # never apply NaN/Inf
      state, loss, grad_norm,
      apply=lambda s: s.apply_gradients(grads=grads, batch_stats=batch_stats),
      skip=lambda s: s.replace(step=s.step + 1))
  step_metrics = {
      'finite': finite,
      'loss': loss,
      'grad_norm': grad_norm,
      'learning_rate': optim.current_learning_rate(learning_rate_fn, state.step,
                                                   config.optim.iter_size),
      **{f'loss_{k}': v for k, v in parts.items()},
  }
  return new_state, step_metrics


def _compiler_options(mesh: Mesh) -> Dict[str, str]:
  """XLA options that make the steps fast on the mesh's platform (deeplax.xla_options)."""
  return xla_options.compiler_options(mesh.devices.flat[0].platform)


def make_train_step(config, module, learning_rate_fn, base_rng, mesh: Mesh):
  """The jitted train step: state donated and replicated, batch sharded over 'data'."""
  step = functools.partial(train_step, module=module, config=config,
                           learning_rate_fn=learning_rate_fn, base_rng=base_rng)
  return jax.jit(step, donate_argnums=0, out_shardings=(replicated(mesh), replicated(mesh)),
                 compiler_options=_compiler_options(mesh))


def eval_step(variables, confusion: metrics_lib.ConfusionMatrix, batch, *, module,
              scales, flip: bool, ignore_label: int):
  """Adds one eval batch to the confusion matrix; returns it and the predictions."""
  logits = inference.predict_logits(module, variables, batch['image'], scales, flip)
  mask = metrics_lib.pixel_mask(batch['label'], batch.get('valid'), ignore_label)
  update = metrics_lib.ConfusionMatrix.from_model_output(logits=logits, labels=batch['label'],
                                                         mask=mask)
  return confusion.merge(update), jnp.argmax(logits, axis=-1).astype(jnp.int32)


def make_eval_step(config, module, mesh: Mesh):
  step = functools.partial(eval_step, module=module, scales=tuple(config.eval.scales),
                           flip=bool(config.eval.flip),
                           ignore_label=config.dataset.ignore_label)
  return jax.jit(step, donate_argnums=1,
                 out_shardings=(replicated(mesh), data_sharded(mesh)),
                 compiler_options=_compiler_options(mesh))


# ---- evaluation ----------------------------------------------------------------------------


def evaluate(config, eval_module, variables: Dict, mesh: Mesh, eval_iterator: Iterator,
             num_classes: int, eval_step_fn: Optional[Callable] = None
             ) -> Tuple[np.ndarray, int, Optional[Dict[str, np.ndarray]]]:
  """Runs the whole eval set. Returns (confusion matrix, images counted, first batch
  with its predictions, this host's rows, for logging)."""
  eval_step_fn = eval_step_fn or make_eval_step(config, eval_module, mesh)
  confusion = jax.device_put(metrics_lib.ConfusionMatrix.empty(num_classes), replicated(mesh))
  num_images = 0
  first = None
  for local in eval_iterator:
    valid = np.asarray(local.get('valid', np.ones(len(local['image']), bool)), bool)
    batch = global_batch({'image': local['image'], 'label': local['label'],
                          'valid': valid}, mesh)
    confusion, predictions = eval_step_fn(variables, confusion, batch)
    num_images += int(valid.sum())
    if first is None:
      first = dict(local, prediction=local_rows(predictions))
  matrix = np.asarray(jax.device_get(confusion.compute()), np.int64)
  return matrix, num_images, first


def eval_panels(first: Dict[str, np.ndarray], palette: np.ndarray, config,
                count: int) -> Dict[str, np.ndarray]:
  """{'eval/panel_i': (1, h, 3w, 3) uint8}: input | label | prediction, each image
  cropped back to its real size."""
  from deeplax.data import palettes  # pylint: disable=import-outside-toplevel
  mean = np.asarray(config.augment.mean, np.float32) * 255
  std = np.asarray(config.augment.std, np.float32) * 255
  valid = np.asarray(first.get('valid', np.ones(len(first['image']), bool)), bool)
  panels = {}
  for i in range(min(count, len(first['image']))):
    if not valid[i]:
      continue
    h = int(first['height'][i]) if 'height' in first else first['image'].shape[1]
    w = int(first['width'][i]) if 'width' in first else first['image'].shape[2]
    image = np.clip(first['image'][i, :h, :w] * std + mean, 0, 255).astype(np.uint8)
    label = palettes.colorize(first['label'][i, :h, :w], palette)
    prediction = palettes.colorize(first['prediction'][i, :h, :w], palette)
    panels[f'eval/panel_{i}'] = np.concatenate([image, label, prediction], axis=1)[None]
  return panels


def write_json(path: str, payload: Dict) -> None:
  """Atomic JSON write: temp file in the same directory, then rename."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2)
  os.replace(tmp, path)


def eval_record(summary: Dict, step: int, num_images: int, config, source: str) -> Dict:
  return {'step': int(step), 'checkpoint': source, 'num_images': int(num_images),
          'output_stride': int(config.eval.output_stride or config.model.output_stride),
          'scales': list(config.eval.scales), 'flip': bool(config.eval.flip), **summary}


def scalar_summary(summary: Dict) -> Dict[str, float]:
  scalars = {'eval/mIoU': summary['mIoU'], 'eval/pixel_accuracy': summary['pixel_accuracy'],
             'eval/mean_class_accuracy': summary['mean_class_accuracy']}
  for name, value in summary['per_class_iou'].items():
    if value is not None:
      scalars[f'eval_iou/{name}'] = value
  return scalars


# ---- the main job ---------------------------------------------------------------------------


def _data():
  from deeplax.data import pipeline  # pylint: disable=import-outside-toplevel
  return pipeline


def dataset_info(config) -> Tuple[int, Tuple[str, ...], np.ndarray]:
  """(num_classes, class_names, palette) of the configured data set."""
  info = _data().get_info(config)
  get = (lambda k: info.get(k)) if isinstance(info, dict) else (lambda k: getattr(info, k, None))
  num_classes = int(get('num_classes'))
  names = tuple(get('class_names') or [f'class_{i}' for i in range(num_classes)])
  palette = get('palette')
  if palette is None:
    from deeplax.data import palettes  # pylint: disable=import-outside-toplevel
    palette = palettes.generic_palette(num_classes)
  return num_classes, names, np.asarray(palette, np.uint8)


def _validate_num_classes(config, num_classes: int) -> None:
  from deeplax import validate  # pylint: disable=import-outside-toplevel
  validate.check_num_classes(config, num_classes)


def _validate(config, workdir: str, num_classes: Optional[int], check_workdir: bool) -> None:
  from deeplax import validate  # pylint: disable=import-outside-toplevel
  validate.validate_config(config, num_devices=jax.device_count(),
                           num_processes=jax.process_count(), dataset_num_classes=num_classes)
  if check_workdir and jax.process_index() == 0:
    validate.check_workdir_config(workdir, config)


def _input_shape(config) -> Tuple[int, int, int, int]:
  crop = config.augment.crop_size
  crop = (crop, crop) if isinstance(crop, int) else tuple(crop)
  return (1, crop[0], crop[1], 3)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """Trains `config.num_train_steps` steps (resuming from WORKDIR/checkpoints), evaluates
  every `eval.every_steps` and at the end; returns the last eval record.

  SIGTERM / SIGINT finish the current step, save it and raise preemption.Preempted
  (main.py exits with preemption.EXIT_PREEMPTED); see deeplax.preemption.
  """
  with preemption.StopRequest(enabled=jax.process_count() == 1) as stop:
    return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        stop: preemption.StopRequest) -> Dict:
  workdir = os.path.abspath(os.path.expanduser(workdir))
  _validate(config, workdir, None, check_workdir=True)  # before any data read or compile
  num_classes, class_names, palette = dataset_info(config)
  _validate_num_classes(config, num_classes)
  is_chief = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  mesh = create_mesh()
  logging.info('%d devices (%s) on %d hosts; global batch %d', jax.device_count(),
               jax.devices()[0].platform, jax.process_count(), config.batch_size)

  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  module = models.create_model(config.model)
  eval_module = models.create_model(eval_model_config(config))
  learning_rate_fn = optim.create_learning_rate_fn(config)
  manager = checkpoint.create_manager(workdir, config.keep_checkpoints)
  resuming = manager.latest_step() is not None
  state = create_train_state(config, module, init_rng, mesh, _input_shape(config),
                             learning_rate_fn, use_init_from=not resuming)
  state, start_step = checkpoint.restore_or_initialize(manager, state)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  logging.info('Starting at step %d of %d', start_step, config.num_train_steps)

  data = _data()
  train_iter = data.create_train_iterator(config, seed=config.seed,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count(),
                                          start_step=start_step)
  train_step_fn = make_train_step(config, module, learning_rate_fn, dropout_rng, mesh)
  eval_step_fn = make_eval_step(config, eval_module, mesh)

  report = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps,
                                           writer=writer, every_steps=config.log_every_steps,
                                           every_secs=None)
  hooks = [report]
  if is_chief and config.profile_steps > 0:
    hooks.append(periodic_actions.Profile(num_profile_steps=config.profile_steps,
                                          logdir=workdir, every_secs=None))

  def run_eval(step: int) -> Dict:
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    eval_iter = data.create_eval_iterator(config, process_index=jax.process_index(),
                                          process_count=jax.process_count())
    t0 = time.time()
    matrix, count, first = evaluate(config, eval_module, variables, mesh, eval_iter,
                                    num_classes, eval_step_fn)
    summary = metrics_lib.summarize(matrix, class_names)
    record = eval_record(summary, step, count, config,
                         os.path.join(workdir, checkpoint.CHECKPOINT_DIR, str(step)))
    logging.info('Eval at step %d: mIoU %.4f, pixel acc %.4f on %d images (%.1fs)', step,
                 summary['mIoU'], summary['pixel_accuracy'], count, time.time() - t0)
    writer.write_scalars(step, scalar_summary(summary))
    if is_chief:
      if first is not None and config.eval.log_images:
        writer.write_images(step, eval_panels(first, palette, config, config.eval.log_images))
      write_json(os.path.join(workdir, EVAL_JSON), record)
      reporting.write_eval_report(workdir, matrix, class_names, writer, step)
    return record

  def last_checkpoint() -> str:
    try:
      checkpoint.wait_until_finished(manager)  # the save in flight, if any, counts
    except Exception:  # pylint: disable=broad-except
      pass
    steps = sorted(checkpoint.ocp.utils.checkpoint_steps(str(manager.directory)))
    return f'step {steps[-1]} in {manager.directory}' if steps else 'none (no checkpoint yet)'

  monitor = nonfinite.Monitor(config.nonfinite_policy, last_checkpoint)
  record = None
  train_metrics = None
  last_log = (start_step, time.time())
  examples_per_step = config.batch_size
  for step in range(start_step + 1, config.num_train_steps + 1):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      batch = global_batch(next(train_iter), mesh)
      if step == start_step + 1:
        t0 = time.time()
        with compile_cache.CacheEvents() as cache:
          train_step_fn = train_step_fn.lower(state, batch).compile()
        logging.info('Compiled the train step in %.1fs (persistent compilation cache: %s)',
                     time.time() - t0, cache.outcome)
        if config.keep_host_memory:  # the compiler's freed heap; steps keep their own
          host_memory.release_free_memory()
      state, step_metrics = train_step_fn(state, batch)
    monitor.after_step(step, step_metrics.pop('finite'), step_metrics['loss'])
    update = metrics_lib.TrainMetrics.single_from_model_output(**step_metrics)
    train_metrics = update if train_metrics is None else train_metrics.merge(update)
    for hook in hooks:
      hook(step)
    is_last = step == config.num_train_steps
    if step % config.log_every_steps == 0 or is_last:
      scalars = {f'train/{k}': float(v) for k, v in train_metrics.compute().items()}
      lr = float(step_metrics['learning_rate'])
      elapsed = time.time() - last_log[1]
      steps_per_sec = (step - last_log[0]) / max(elapsed, 1e-9)
      scalars.update({'train/learning_rate': lr,
                      'train/examples_per_sec': steps_per_sec * examples_per_step,
                      'train/nonfinite_skipped': monitor.skipped})
      writer.write_scalars(step, scalars)
      eta = (config.num_train_steps - step) / max(steps_per_sec, 1e-9)
      logging.info('step %d/%d  loss %.4f  lr %.3g  %.1f steps/s  %.0f examples/s  ETA %s',
                   step, config.num_train_steps, scalars['train/loss'], lr, steps_per_sec,
                   steps_per_sec * examples_per_step, _format_seconds(eta))
      train_metrics = None
      last_log = (step, time.time())
    preempted = not is_last and (stop.requested or manager.reached_preemption(step))
    eval_now = is_last or (config.eval.every_steps and step % config.eval.every_steps == 0)
    if eval_now and not preempted:
      with report.timed('eval'):
        record = run_eval(step)
      monitor.flush()  # a checkpoint never holds an unchecked step
      checkpoint.save(manager, step, state, metrics={'mIoU': record['mIoU']})
    elif step % config.checkpoint_every_steps == 0 or preempted:
      monitor.flush()
      checkpoint.save(manager, step, state)
    if preempted:
      checkpoint.wait_until_finished(manager)
      writer.flush()
      raise preemption.Preempted(step, str(manager.directory), stop.signal_name or 'preemption')
  monitor.flush()
  if record is None:  # nothing left to train: report on the restored state
    record = run_eval(start_step)
  checkpoint.wait_until_finished(manager)
  writer.flush()
  print_summary(record)
  return record


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def _flat_hparams(config) -> Dict[str, Any]:
  flat = flax.traverse_util.flatten_dict(config.to_dict(), sep='.')
  return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}


def print_summary(record: Dict) -> None:
  if jax.process_index() == 0:
    print(f'\nEvaluation at step {record["step"]} ({record["num_images"]} images):')
    print(metrics_lib.format_table(record), flush=True)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """--mode eval: the checkpoint `eval.checkpoint` of WORKDIR ('latest', 'best' or a step),
  or `init_from` (whole model) when WORKDIR has none. Writes eval_results.json."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  _validate(config, workdir, None, check_workdir=False)  # before any data read or compile
  num_classes, class_names, palette = dataset_info(config)
  _validate_num_classes(config, num_classes)
  mesh = create_mesh()
  eval_module = models.create_model(eval_model_config(config))
  manager = checkpoint.create_manager(workdir, config.keep_checkpoints, read_only=True) if (
      os.path.isdir(os.path.join(workdir, checkpoint.CHECKPOINT_DIR))) else None
  variables = initial_variables(eval_module, jax.random.PRNGKey(0),
                                _input_shape(config), mesh)
  step = 0
  if manager is not None and manager.latest_step() is not None:
    which = str(config.eval.checkpoint)
    step = {'latest': manager.latest_step(), 'best': manager.best_step()}.get(which)
    if step is None:
      if not which.isdigit() or int(which) not in manager.all_steps():
        raise ValueError(f'eval.checkpoint={which!r}: use latest, best or one of the saved '
                         f'steps {sorted(manager.all_steps())} of {manager.directory}')
      step = int(which)
    path = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, str(step))
  elif config.init_from:
    path = config.init_from
  else:
    raise FileNotFoundError(f'No checkpoint in {workdir}/{checkpoint.CHECKPOINT_DIR} and no '
                            'config.init_from: nothing to evaluate')
  loaded, source = checkpoint.load_variables(path)
  merged, report = checkpoint.merge_variables(jax.tree.map(np.asarray, variables), loaded,
                                              'all', source=path)
  if report['kept_init']:
    raise ValueError(f'{path} lacks {len(report["kept_init"])} arrays of the model, e.g. '
                     f'{report["kept_init"][:3]}: cannot evaluate it')
  variables = jax.device_put(merged, replicated(mesh))
  logging.info('Evaluating %s', source)
  eval_iter = _data().create_eval_iterator(config, process_index=jax.process_index(),
                                           process_count=jax.process_count())
  matrix, count, first = evaluate(config, eval_module, variables, mesh, eval_iter,
                                  num_classes)
  summary = metrics_lib.summarize(matrix, class_names)
  record = eval_record(summary, step, count, config, os.path.abspath(path))
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, EVAL_JSON), record)
    writer = metric_writers.create_default_writer(workdir, just_logging=False)
    writer.write_scalars(step, scalar_summary(summary))
    if first is not None and config.eval.log_images:
      writer.write_images(step, eval_panels(first, palette, config, config.eval.log_images))
    reporting.write_eval_report(workdir, matrix, class_names, writer, step)
    writer.flush()
  print_summary(record)
  return record
