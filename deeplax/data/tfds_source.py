"""The part shared by our tfds builders (VOC, Cityscapes, folder) and their Source.

A builder stores, per example, the image's original bytes (JPEG/PNG kept as shipped), the
label as a greyscale PNG of class indices (already mapped, 255 = ignore) and a file
name. Every file is opened and checked with PIL while preparing (deeplax.data.files),
so a bad file is reported once, by name, before training; the pipeline then only reads
and decodes records it knows are good.
"""
import concurrent.futures
import logging
import os
from typing import Callable, Iterable, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from deeplax.data import base
from deeplax.data import files
from deeplax.data.tf_cpu import tf

# (key, file_name, image_path, label_path, label_reader)
Item = Tuple[str, str, str, str, Callable[[str], np.ndarray]]
_WINDOW = 64  # examples decoded ahead by the thread pool (bounds memory)


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder):
  """Base builder: subclasses list their Items per split; this reads and checks them."""
  VERSION = tfds.core.Version('1.0.0')
  NUM_CLASSES = 0
  # tfds looks for a url-checksums file next to the builder's code (we ship none); its
  # lookup imports `importlib_resources`, a tfds dependency only on Python < 3.9.
  code_path = None

  def __init__(self, *, source_dir: str = '', corrupt_policy: str = 'error',
               allow_download: bool = False, **kwargs):
    self.source_dir = os.path.expanduser(source_dir) if source_dir else ''
    self.allow_download = allow_download
    self.corrupt = files.CorruptPolicy(corrupt_policy)
    super().__init__(**kwargs)

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
            'file_name': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
        description=self.__doc__)

  def _load(self, item: Item):
    key, file_name, image_path, label_path, read_label = item
    image_bytes, size = files.read_image(image_path)
    label = read_label(label_path)
    files.check_label(label, label_path, size, self.NUM_CLASSES, image_path=image_path)
    return key, {'image': image_bytes, 'label': files.encode_label(label),
                 'file_name': file_name}

  def _generate_examples(self, items: Sequence[Item], split: str = ''):
    workers = min(8, os.cpu_count() or 1)
    skipped_before = len(self.corrupt.skipped)
    yielded = 0
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for start in range(0, len(items), _WINDOW):
        window = items[start:start + _WINDOW]
        for result in pool.map(lambda item: self.corrupt.run(self._load, item), window):
          if result is not None:
            yielded += 1
            yield result
    self.info.metadata['skipped'] = list(self.corrupt.skipped)
    if not yielded:  # tfds would fail with "No examples were yielded", naming nothing
      what = f'split {split!r}' if split else 'a split'
      if not items:
        raise base.DataError(f'{self.name}: {what} lists no examples ({self.source_dir or ""}'
                             '); every split needs at least one')
      skipped = self.corrupt.skipped[skipped_before:]
      raise base.DataError(f'{self.name}: {what} has no usable example: all {len(items)} '
                           f'listed were skipped as corrupt (first: {skipped[0]})')


def prepare(builder: SegmentationBuilder) -> SegmentationBuilder:
  """Prepares the builder once (no-op when already prepared) and reports skipped files."""
  if not builder.is_prepared():
    logging.info('preparing %s in %s (once)', builder.name, builder.data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  skipped = builder.info.metadata.get('skipped') if builder.info.metadata else None
  if skipped:
    if builder.corrupt.policy == 'error':
      raise base.DataError(
          f'{builder.data_dir} was prepared with corrupt_policy=skip and skipped '
          f'{len(skipped)} files (first: {skipped[0]}); delete it to prepare again, or set '
          'dataset.corrupt_policy=skip')
    logging.warning('%s: %d corrupt files were skipped when preparing (listed in %s/'
                    'metadata.json); first: %s', builder.name, len(skipped),
                    builder.data_dir, skipped[0])
  return builder


class TfdsSource(base.Source):
  """Reads a prepared SegmentationBuilder: encoded records, decoded after the shuffle."""

  def __init__(self, builder: SegmentationBuilder, name: str, class_names: Iterable[str],
               palette: np.ndarray):
    self.builder = builder
    self.name = name
    self.class_names = tuple(class_names)
    self.num_classes = len(self.class_names)
    self.palette = palette
    self.skipped = list(builder.info.metadata.get('skipped', ())) if builder.info.metadata \
        else []

  def num_examples(self, split: str) -> int:
    base.check_split(self.name, split, self.builder.info.splits.keys())
    return self.builder.info.splits[split].num_examples

  def read(self, split: str, start: int, end: int):
    self.num_examples(split)
    decoders = {'image': tfds.decode.SkipDecoding(), 'label': tfds.decode.SkipDecoding()}
    read_config = tfds.ReadConfig(try_autocache=False)
    if end <= start:
      return self.builder.as_dataset(split=split, decoders=decoders,
                                     read_config=read_config).take(0)
    return self.builder.as_dataset(split=f'{split}[{start}:{end}]', shuffle_files=False,
                                   decoders=decoders, read_config=read_config)

  def decode(self, record):
    return decode_record(record)


def decode_record(record: dict) -> dict:
  """{'image': encoded, 'label': greyscale PNG, 'file_name'} -> decoded uint8 tensors."""
  image = tf.io.decode_image(record['image'], channels=3, expand_animations=False)
  label = tf.io.decode_png(record['label'], channels=1)[..., 0]
  return {'image': image, 'label': label, 'file_name': record['file_name']}


def builder_kwargs(dataset_config, allow_download: bool) -> dict:
  """Constructor arguments shared by our builders, from config.dataset."""
  kwargs = {'corrupt_policy': dataset_config.corrupt_policy,
            'source_dir': dataset_config.manual_dir, 'allow_download': allow_download}
  if dataset_config.data_dir:
    kwargs['data_dir'] = os.path.expanduser(dataset_config.data_dir)
  return kwargs


def find_first(candidates: Sequence[str]) -> Optional[str]:
  for path in candidates:
    if os.path.exists(path):
      return path
  return None
