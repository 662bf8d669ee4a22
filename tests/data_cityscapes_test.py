"""Cityscapes fine builder from a fixture tree with the shipped file names."""
import os

import numpy as np
import pytest

from configs import default
from deeplax.data import cityscapes
from deeplax.data import pipeline
from tests import data_fixtures as fx

# trainId of label ids 0..33, transcribed from cityscapesScripts helpers/labels.py.
OFFICIAL_TRAIN_IDS = [255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255,
                      255, 5, 255, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18]


def _config(tmp_path, manual_dir):
  config = default.get_config()
  config.dataset.name = 'cityscapes'
  config.dataset.manual_dir = str(manual_dir)
  config.dataset.data_dir = str(tmp_path / 'tfds')
  config.dataset.train_split = 'train'
  config.augment.crop_size = (16, 16)
  config.eval.pad_size = (16, 32)
  config.eval.batch_size = 2
  config.batch_size = 2
  config.model.num_classes = 19
  return config


def test_id_to_train_id_table():
  ids = np.arange(34, dtype=np.uint8)
  np.testing.assert_array_equal(cityscapes.to_train_ids(ids), OFFICIAL_TRAIN_IDS)
  assert cityscapes.to_train_ids(np.array([255], np.uint8))[0] == 255
  with pytest.raises(cityscapes.DataError, match=r'x.png has ids \[40\]'):
    cityscapes.to_train_ids(np.array([7, 40], np.uint8), 'x.png')


def test_builder_splits_labels_and_pipeline(tmp_path):
  root = tmp_path / 'cityscapes'
  fx.write_cityscapes(str(root))
  config = _config(tmp_path, root)
  source = cityscapes.source(config)
  assert source.num_classes == 19 and source.class_names[0] == 'road'
  assert {s: source.num_examples(s) for s in ('train', 'val')} == {'train': 3, 'val': 2}
  expected_names = sorted(f'{c}/{c}_{f}' for c, f in fx.CITY_SPLITS['val'])
  seen = []
  for record in source.read('val', 0, 2):
    example = source.decode(record)
    name = example['file_name'].numpy().decode()
    seen.append(name)
    index = [f'{c}/{c}_{f}' for c, f in fx.CITY_SPLITS['val']].index(name)
    ids = fx.city_label_ids(index + 10 * len('val'))
    np.testing.assert_array_equal(example['label'].numpy(),
                                  np.array(OFFICIAL_TRAIN_IDS, np.uint8)[ids])
    np.testing.assert_array_equal(example['image'].numpy(), fx.paint(ids))  # PNG: exact
  assert sorted(seen) == expected_names
  info = pipeline.get_info(config)
  assert (info.num_train, info.num_eval) == (3, 2)
  assert tuple(info.palette[0]) == (128, 64, 128)
  batch = next(pipeline.create_train_iterator(config, seed=1))
  assert batch['label'].shape == (2, 16, 16)
  assert set(np.unique(batch['label'])) <= set(range(19)) | {255}


def test_missing_label_and_orphan_label_named(tmp_path):
  root = tmp_path / 'cityscapes'
  fx.write_cityscapes(str(root))
  city, frame = fx.CITY_SPLITS['train'][0]
  label = root / 'gtFine' / 'train' / city / f'{city}_{frame}_gtFine_labelIds.png'
  image = root / 'leftImg8bit' / 'train' / city / f'{city}_{frame}_leftImg8bit.png'
  moved = str(image) + '.bak'
  os.rename(image, moved)
  with pytest.raises(cityscapes.DataError, match=f'label .*{city}_{frame}_gtFine_labelIds.png'
                                                 ' has no image'):
    cityscapes.split_items(str(root), 'train')
  os.rename(moved, image)
  os.remove(label)
  with pytest.raises(cityscapes.DataError, match=f'label of image .*{city}_{frame}'
                                                 '_leftImg8bit.png: expected .* does not exist'):
    cityscapes.split_items(str(root), 'train')
  with pytest.raises(cityscapes.DataError, match='needs a login'):
    cityscapes.source(_config(tmp_path, ''))
  with pytest.raises(cityscapes.DataError, match='Cityscapes not found'):
    cityscapes.source(_config(tmp_path, tmp_path))


def test_reads_the_two_trainvaltest_zips(tmp_path):
  import zipfile  # pylint: disable=import-outside-toplevel
  tree = tmp_path / 'tree'
  fx.write_cityscapes(str(tree))
  archives = tmp_path / 'archives'
  archives.mkdir()
  for zip_name, top in zip(cityscapes.ZIPS, ('leftImg8bit', 'gtFine')):
    with zipfile.ZipFile(archives / zip_name, 'w') as z:
      z.writestr('README', 'x')
      for folder, _, names in os.walk(tree / top):
        for name in names:
          path = os.path.join(folder, name)
          z.write(path, os.path.relpath(path, tree))
  source = cityscapes.source(_config(tmp_path, archives))
  assert {s: source.num_examples(s) for s in ('train', 'val')} == {'train': 3, 'val': 2}
