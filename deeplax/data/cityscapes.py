"""Cityscapes fine annotations with the 19 train ids, as a tfds builder.

Why not tfds's `cityscapes`: it gives the raw label ids (mappable), but reads only the
zip archives and extracts them again; most people hold the extracted tree, so this
builder reads `leftImg8bit/` + `gtFine/` as shipped (and the two zips when that is what
manual_dir holds). Labels are mapped from `*_gtFine_labelIds.png` through the official
id -> trainId table (cityscapesScripts labels.py); every other id becomes 255.

Splits: train (2,975), val (500). The test split has no public labels and is left out.
Cityscapes needs a login to download, so dataset.manual_dir must hold:
  leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
or leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip.
"""
import os
from typing import Dict, List

import numpy as np

from deeplax.data import files
from deeplax.data import palettes
from deeplax.data import tfds_source
from deeplax.data.base import DataError

SPLITS = ('train', 'val')
SPLIT_SIZES = {'train': 2975, 'val': 500}  # of the real data set
ZIPS = ('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip')
IMAGE_SUFFIX = '_leftImg8bit.png'
LABEL_SUFFIX = '_gtFine_labelIds.png'

# Official label id -> train id (cityscapesScripts/helpers/labels.py); unlisted -> 255.
ID_TO_TRAIN_ID: Dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NUM_LABEL_IDS = 34  # ids 0..33 exist; 255 (license plate's -1 as uint8) is also accepted


def _lookup_table() -> np.ndarray:
  table = np.full(256, 255, np.uint8)
  for label_id, train_id in ID_TO_TRAIN_ID.items():
    table[label_id] = train_id
  return table


_TABLE = _lookup_table()


def to_train_ids(label_ids: np.ndarray, path: str = '') -> np.ndarray:
  """uint8 label ids -> train ids (0..18, others 255); an id Cityscapes lacks is an error."""
  bad = np.unique(label_ids[(label_ids >= NUM_LABEL_IDS) & (label_ids != 255)])
  if len(bad):
    raise DataError(f'label {path} has ids {bad.tolist()[:10]}: expected Cityscapes label '
                    f'ids 0..{NUM_LABEL_IDS - 1} (a *_gtFine_labelIds.png)')
  return _TABLE[label_ids]


def read_label_ids(path: str) -> np.ndarray:
  return to_train_ids(files.read_label(path), path)


def _find_root(source_dir: str, dl_manager) -> str:
  if not source_dir:
    raise DataError('Cityscapes cannot be downloaded automatically (it needs a login at '
                    'cityscapes-dataset.com): set dataset.manual_dir to the directory '
                    'holding leftImg8bit/ and gtFine/ (or the two *_trainvaltest.zip)')
  files.require_dir(source_dir, 'dataset.manual_dir')
  if all(os.path.isdir(os.path.join(source_dir, d)) for d in ('leftImg8bit', 'gtFine')):
    return source_dir
  zips = [os.path.join(source_dir, z) for z in ZIPS]
  if all(os.path.isfile(z) for z in zips):
    extracted = [os.fspath(p) for p in dl_manager.extract(zips)]
    # Each zip holds its own top directory; link both under one root.
    root = os.path.join(os.path.dirname(extracted[0]), 'cityscapes_root')
    os.makedirs(root, exist_ok=True)
    for path, name in zip(extracted, ('leftImg8bit', 'gtFine')):
      link = os.path.join(root, name)
      if not os.path.exists(link):
        os.symlink(os.path.join(path, name), link)
    return root
  raise DataError(f'Cityscapes not found in dataset.manual_dir={source_dir!r}: expected '
                  f'{source_dir}/leftImg8bit/ and {source_dir}/gtFine/, or '
                  f'{" and ".join(ZIPS)} there')


def split_items(root: str, split: str) -> List[tfds_source.Item]:
  """(key, file_name, image, label, reader) for every image of the split, sorted."""
  image_root = files.require_dir(os.path.join(root, 'leftImg8bit', split), 'Cityscapes image')
  label_root = files.require_dir(os.path.join(root, 'gtFine', split), 'Cityscapes label')
  items = []
  for city in sorted(os.listdir(image_root)):
    for name in sorted(os.listdir(os.path.join(image_root, city))):
      if not name.endswith(IMAGE_SUFFIX):
        continue
      stem = name[:-len(IMAGE_SUFFIX)]
      image_path = os.path.join(image_root, city, name)
      label_path = os.path.join(label_root, city, stem + LABEL_SUFFIX)
      files.require_file(label_path, f'label of image {image_path}: expected')
      items.append((f'{city}/{stem}', f'{city}/{stem}', image_path, label_path,
                    read_label_ids))
  if not items:
    raise DataError(f'no *{IMAGE_SUFFIX} images under {image_root}')
  labelled = {item[3] for item in items}
  for city in sorted(os.listdir(label_root)):
    for name in sorted(os.listdir(os.path.join(label_root, city))):
      path = os.path.join(label_root, city, name)
      if name.endswith(LABEL_SUFFIX) and path not in labelled:
        raise DataError(f'label {path} has no image: expected '
                        f'{os.path.join(image_root, city, name[:-len(LABEL_SUFFIX)])}'
                        f'{IMAGE_SUFFIX}')
  return items


class CityscapesFine(tfds_source.SegmentationBuilder):
  """Cityscapes gtFine, 19 train ids (255 = ignore), full 1024x2048 frames."""
  NUM_CLASSES = len(palettes.CITYSCAPES_CLASSES)

  def _split_generators(self, dl_manager):
    root = _find_root(self.source_dir, dl_manager)
    return {split: self._generate_examples(split_items(root, split), split) for split in SPLITS}


def builder(dataset_config) -> CityscapesFine:
  return CityscapesFine(**tfds_source.builder_kwargs(dataset_config, allow_download=False))


def source(config) -> tfds_source.TfdsSource:
  return tfds_source.TfdsSource(tfds_source.prepare(builder(config.dataset)), 'cityscapes',
                                palettes.CITYSCAPES_CLASSES, palettes.cityscapes_palette())
