"""The input pipeline: tf.data on the CPU, numpy batches out.

    info = get_info(config)
    train = create_train_iterator(config, seed, process_index, process_count, start_step)
    evals = create_eval_iterator(config, process_index, process_count)

Sharding: host i of k reads the contiguous examples [n*i//k, n*(i+1)//k) of a split:
disjoint and covering by construction, and the same on every run.

Training order and resume: each host shuffles its shard once per epoch with a seed made
from (seed, host, epoch) through a shuffle buffer of encoded records, and every example
is augmented with stateless random ops seeded by (seed, host, its position in the host's
stream). The stream is therefore a pure function of (seed, host, position), and resuming
at `start_step` is a documented skip-ahead: start at epoch (start_step * B) // n and drop
the first (start_step * B) % n records of that epoch's shuffle. Skipped records are read
but never decoded or augmented (under one epoch of file reading, seconds for VOC).
We chose this over checkpointing the tf.data iterator because that checkpoint holds the
whole shuffle buffer (1000 encoded images: ~100 MB for VOC, ~2 GB for Cityscapes) per
host per checkpoint, while the skip-ahead needs nothing beyond the step number the
trainer already saves, and gives exactly the batches of the uninterrupted run.

Evaluation: each host's shard is padded to the same number of batches with entries
marked valid=False (all-ignore labels), so every image is counted exactly once and every
host runs the same number of eval steps.
"""
import math
from typing import Iterator, Optional

import numpy as np

from deeplax.data import augment
from deeplax.data import base
from deeplax.data import sources
from deeplax.data.base import DataError, DatasetInfo  # noqa: F401  (re-exported)
from deeplax.data.tf_cpu import tf

AUTOTUNE = tf.data.AUTOTUNE
_MAX_EPOCHS = 2**40


def shard_range(num_examples: int, process_index: int, process_count: int):
  """[start, end) of the examples host `process_index` of `process_count` reads."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, {process_count})')
  return (num_examples * process_index // process_count,
          num_examples * (process_index + 1) // process_count)


def _local_batch(global_batch: int, process_count: int, key: str) -> int:
  if global_batch < 1 or global_batch % process_count:
    raise ValueError(f'{key}={global_batch} must be a positive multiple of the process count '
                     f'({process_count})')
  return global_batch // process_count


def _eval_count(config, source: base.Source) -> int:
  count = source.num_examples(config.dataset.eval_split)
  if config.eval.num_images:
    count = min(count, config.eval.num_images)
  return count


def get_info(config) -> DatasetInfo:
  """Names, class count, palette and split sizes of the configured data set."""
  source = sources.get_source(config)
  return DatasetInfo(
      name=source.name, num_classes=source.num_classes,
      class_names=tuple(source.class_names), palette=np.asarray(source.palette, np.uint8),
      ignore_label=config.dataset.ignore_label,
      num_train=source.num_examples(config.dataset.train_split),
      num_eval=_eval_count(config, source))


class NumpyIterator:
  """Iterates a tf.data pipeline as numpy dicts; data errors become DataError."""

  def __init__(self, dataset, num_batches=None):
    self.dataset = dataset
    self.num_batches = num_batches  # eval: batches per host; train: None (infinite)
    self._iterator = None  # started on the first next(): no work before it is used

  def __iter__(self) -> Iterator[dict]:
    return self

  def __len__(self):
    if self.num_batches is None:
      raise TypeError('the training iterator is infinite')
    return self.num_batches

  def __next__(self) -> dict:
    if self._iterator is None:
      self._iterator = iter(self.dataset.as_numpy_iterator())
    try:
      batch = next(self._iterator)
    except tf.errors.OpError as e:
      raise DataError(f'input pipeline failed: {e.message}') from None
    if 'file_name' in batch:
      batch['file_name'] = np.array([n.decode('utf-8', 'replace') for n in batch['file_name']])
    return batch


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def create_train_iterator(config, seed: int, process_index: int = 0, process_count: int = 1,
                          start_step: int = 0, source: Optional[base.Source] = None
                          ) -> NumpyIterator:
  """Infinite iterator of {'image': float32 (B, cropH, cropW, 3), 'label': int32 (B, cropH,
  cropW)} with B = config.batch_size // process_count; deterministic given `seed`, and
  `start_step=k` yields exactly what the uninterrupted run yields from step k on.
  `source` replaces the configured data set (benchmarks, tests)."""
  source = source or sources.get_source(config)
  split = config.dataset.train_split
  start, end = shard_range(source.num_examples(split), process_index, process_count)
  num_local = end - start
  if num_local == 0:
    raise DataError(f'training split {split!r} of {source.name!r} has no examples for host '
                    f'{process_index} of {process_count}')
  batch = _local_batch(config.batch_size, process_count, 'batch_size')
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0')
  first_epoch, skip = divmod(start_step * batch, num_local)
  host_key = (int(seed) * 1_000_003 + process_index) % (2**62)
  buffer = max(1, min(int(config.dataset.shuffle_buffer), num_local))
  records = source.read(split, start, end)

  def epoch(e):
    shuffle_seed = (host_key * 7919 + 17) % (2**61) + e
    shuffled = records.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    return shuffled.enumerate().map(lambda pos, record: (e * num_local + pos, record))

  def preprocess(position, record):
    example_seed = tf.stack([tf.constant(host_key, tf.int64), position])
    return augment.train_example(source.decode(record), example_seed, config.augment,
                                 config.dataset.ignore_label)

  ds = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(epoch).skip(skip)
  ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.batch(batch, drop_remainder=True, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.prefetch(AUTOTUNE).with_options(_options())
  return NumpyIterator(ds)


def create_eval_iterator(config, process_index: int = 0, process_count: int = 1,
                         source: Optional[base.Source] = None) -> NumpyIterator:
  """Finite iterator of eval batches (see module docstring); len() = batches per host."""
  source = source or sources.get_source(config)
  split = config.dataset.eval_split
  total = _eval_count(config, source)
  start, end = shard_range(total, process_index, process_count)
  batch = _local_batch(config.eval.batch_size, process_count, 'eval.batch_size')
  largest_shard = math.ceil(total / process_count)
  num_batches = math.ceil(largest_shard / batch)
  padding = num_batches * batch - (end - start)

  def preprocess(record):
    return augment.eval_example(source.decode(record), config.augment, config.eval,
                                config.dataset.ignore_label)

  ds = source.read(split, start, end).map(preprocess, num_parallel_calls=AUTOTUNE,
                                          deterministic=True)
  filler = augment.eval_padding_example(config.augment, config.eval,
                                        config.dataset.ignore_label)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(filler).repeat(padding))
  ds = ds.batch(batch, drop_remainder=False).prefetch(AUTOTUNE).with_options(_options())
  return NumpyIterator(ds, num_batches)
