"""Training input pipeline throughput: images/s (and per CPU core) at 513x513 crops.

Runs anywhere, no download: it encodes synthetic 500x375 JPEGs (VOC's typical size)
with PNG labels in memory and feeds them through the real training pipeline (decode,
random scale 0.5-2.0, pad, crop 513, flip, [photometric], normalise, batch), once pinned
to one thread and once with every core. It reports wall-clock images/s and images per
CPU-second of the process (the per-core rate, and the number that stays meaningful on a
machine shared with other work).

  python benchmarks/input_pipeline.py [--batches 20] [--out FILE.json]

Compare the images/s with the model's training rate on the same machine (images per
step x steps/s): the pipeline must stay ahead of it.
"""
import argparse
import io
import json
import os
import platform
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # noqa: E402  pylint: disable=wrong-import-position
from deeplax.data import base  # noqa: E402  pylint: disable=wrong-import-position
from deeplax.data import pipeline  # noqa: E402  pylint: disable=wrong-import-position
from deeplax.data import tfds_source  # noqa: E402  pylint: disable=wrong-import-position
from deeplax.data.tf_cpu import tf  # noqa: E402  pylint: disable=wrong-import-position

HEIGHT, WIDTH = 375, 500


def synthetic_records(count: int, seed: int = 0) -> dict:
  """JPEG images (gradient + noise + rectangles) and PNG labels of the rectangles."""
  rng = np.random.default_rng(seed)
  images, labels = [], []
  yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
  for _ in range(count):
    base_colour = rng.uniform(0, 255, 3)
    image = base_colour + 0.2 * (xx[..., None] + yy[..., None]) % 255 + rng.normal(
        0, 12, (HEIGHT, WIDTH, 3))
    label = np.zeros((HEIGHT, WIDTH), np.uint8)
    for _ in range(rng.integers(1, 5)):
      top, left = rng.integers(0, HEIGHT - 60), rng.integers(0, WIDTH - 60)
      h, w = rng.integers(40, 200, 2)
      cls = rng.integers(1, 21)
      image[top:top + h, left:left + w] = rng.uniform(0, 255, 3)
      label[top:top + h, left:left + w] = cls
    label[np.roll(label, 1, 0) != label] = 255  # VOC-like boundaries
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, 'JPEG', quality=90)
    images.append(buffer.getvalue())
    buffer = io.BytesIO()
    Image.fromarray(label, 'L').save(buffer, 'PNG')
    labels.append(buffer.getvalue())
  return {'image': images, 'label': labels,
          'file_name': [f'synthetic/{i:04d}' for i in range(count)]}


class InMemorySource(base.Source):
  """Encoded records held in memory, decoded exactly as the tfds sources decode them."""
  name = 'synthetic'
  num_classes = 21
  class_names = tuple(f'class_{i}' for i in range(21))
  palette = np.zeros((21, 3), np.uint8)

  def __init__(self, records: dict):
    self._records = records

  def num_examples(self, split):
    return len(self._records['image'])

  def read(self, split, start, end):
    return tf.data.Dataset.from_tensor_slices(
        {k: v[start:end] for k, v in self._records.items()})

  def decode(self, record):
    return tfds_source.decode_record(record)


def measure(config, source, batches: int, single_thread: bool) -> float:
  iterator = pipeline.create_train_iterator(config, seed=0, source=source)
  if single_thread:
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    iterator = pipeline.NumpyIterator(iterator.dataset.with_options(options))
  for _ in range(3):  # warm up: tracing, thread start, prefetch fill
    next(iterator)
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    batch = next(iterator)
  elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
  assert batch['image'].shape[1:3] == tuple(config.augment.crop_size)
  images = batches * config.batch_size
  return images / elapsed, images / cpu


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batches', type=int, default=20, help='timed batches per setting')
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--images', type=int, default=64, help='distinct synthetic images')
  parser.add_argument('--out', default='benchmarks/results/input_pipeline.json')
  args = parser.parse_args()

  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  source = InMemorySource(synthetic_records(args.images))
  results = []
  for photometric in (False, True):
    config = default.get_config()
    config.batch_size = args.batch_size
    config.augment.crop_size = (513, 513)
    config.augment.photometric = photometric
    config.dataset.shuffle_buffer = args.images
    for single in (True, False):
      rate, per_cpu_second = measure(config, source, args.batches, single)
      threads = 1 if single else cores
      results.append({'photometric': photometric, 'threads': threads,
                      'images_per_s': round(rate, 1),
                      'images_per_cpu_second': round(per_cpu_second, 1)})
      print(f'photometric={photometric!s:5}  threads={threads:3d}  {rate:7.1f} images/s wall'
            f'  {per_cpu_second:6.1f} images per CPU-second (= per fully used core)',
            flush=True)
  report = {'benchmark': 'input_pipeline', 'crop': [513, 513],
            'source_image': [HEIGHT, WIDTH], 'scale': [0.5, 2.0, 0.25], 'flip': True,
            'batch_size': args.batch_size, 'cpu_cores': cores,
            'machine': platform.platform(), 'processor': platform.processor(),
            'tensorflow': tf.__version__, 'results': results}
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f'{args.out}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
      json.dump(report, f, indent=2)
    os.replace(tmp, args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
