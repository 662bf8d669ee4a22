"""Folder data set: matching by name, generated lists, palette PNGs, and every bad-input
case giving an error that names the file (or, for corrupt files, the skip-and-count policy)."""
import os

import numpy as np
import pytest
from PIL import Image

from configs import default
from deeplax.data import folder
from deeplax.data import palettes
from deeplax.data import pipeline
from tests import data_fixtures as fx

NUM_CLASSES = 5
NAMES = ['a', 'b', 'c', 'sub/d', 'e', 'f', 'g', 'h']


def _write_tree(root, names=NAMES, palette_png=True):
  for index, name in enumerate(names):
    label = fx.label_map(index, 12, 16, NUM_CLASSES)
    label[0, 0] = 255
    ext = '.jpg' if index % 2 else '.png'
    fx.save_image(os.path.join(root, 'images', name + ext), fx.paint(label))
    path = os.path.join(root, 'labels', name + '.png')
    if palette_png and index % 2 == 0:
      fx.save_palette_png(path, label, palettes.voc_palette()[:NUM_CLASSES])
    else:
      fx.save_grey_png(path, label)
  return root


def _config(tmp_path, root, **dataset):
  config = default.get_config()
  config.dataset.name = 'folder'
  config.dataset.manual_dir = str(root)
  config.dataset.data_dir = str(tmp_path / 'tfds')
  config.dataset.train_split = 'train'
  config.dataset.val_fraction = 0.25
  config.model.num_classes = NUM_CLASSES
  config.augment.crop_size = (8, 8)
  config.eval.pad_size = (16, 16)
  config.eval.batch_size = 2
  config.batch_size = 2
  for key, value in dataset.items():
    config.dataset[key] = value
  return config


def _labels(source, split):
  out = {}
  for record in source.read(split, 0, source.num_examples(split)):
    example = source.decode(record)
    out[example['file_name'].numpy().decode()] = example['label'].numpy()
  return out


def test_generated_lists_palette_labels_and_pipeline(tmp_path):
  root = _write_tree(str(tmp_path / 'data'))
  config = _config(tmp_path, root, class_names=('bg', 'w', 'x', 'y', 'z'))
  source = folder.source(config)
  for split in ('train', 'val'):
    assert os.path.isfile(os.path.join(root, f'{split}.txt'))
  train, val = _labels(source, 'train'), _labels(source, 'val')
  assert sorted(list(train) + list(val)) == sorted(NAMES)
  assert val and not set(train) & set(val)
  for name, label in {**train, **val}.items():
    expected = fx.label_map(NAMES.index(name), 12, 16, NUM_CLASSES)
    expected[0, 0] = 255
    np.testing.assert_array_equal(label, expected)  # palette PNGs read as indices
  with open(os.path.join(root, 'val.txt')) as f:
    first = f.readline().split()
  assert first[0].startswith('images/') and first[1].startswith('labels/')
  info = pipeline.get_info(config)
  assert info.class_names == ('bg', 'w', 'x', 'y', 'z') and info.num_classes == 5
  assert info.num_train + info.num_eval == len(NAMES)
  batch = next(pipeline.create_train_iterator(config, seed=0))
  assert batch['label'].shape == (2, 8, 8)
  # The lists now exist: a second source reads them and finds the same prepared copy.
  assert sorted(_labels(folder.source(config), 'val')) == sorted(val)


def test_name_lists_and_rgb_masks_with_palette(tmp_path):
  root = str(tmp_path / 'data')
  os.makedirs(root)
  palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
  for index, name in enumerate(['p', 'q', 'r']):
    label = fx.label_map(index, 8, 8, NUM_CLASSES)
    fx.save_image(os.path.join(root, 'img', name + '.png'), fx.paint(label))
    fx.save_image(os.path.join(root, 'ann', name + '.png'), palette[label])  # RGB mask
  fx.write_lines(os.path.join(root, 'train.txt'), ['p', 'q'])
  fx.write_lines(os.path.join(root, 'val.txt'), ['r'])
  config = _config(tmp_path, root, image_dir='img', label_dir='ann',
                   palette=tuple(map(tuple, palette.tolist())))
  source = folder.source(config)
  labels = _labels(source, 'train')
  assert sorted(labels) == ['p', 'q']
  np.testing.assert_array_equal(labels['q'], fx.label_map(1, 8, 8, NUM_CLASSES))
  np.testing.assert_array_equal(source.palette, palette)


def _error(tmp_path, root, match, **dataset):
  with pytest.raises(folder.DataError, match=match):
    folder.source(_config(tmp_path, root, **dataset))


def test_missing_directory(tmp_path):
  _error(tmp_path, tmp_path / 'absent', r'folder data set \(dataset.manual_dir\) directory '
         r'.*absent does not exist')
  os.makedirs(tmp_path / 'data' / 'images')
  _error(tmp_path, tmp_path / 'data', r'label directory .*data/labels does not exist')


def test_image_without_label(tmp_path):
  root = _write_tree(str(tmp_path / 'data'))
  os.remove(os.path.join(root, 'labels', 'sub', 'd.png'))
  _error(tmp_path, root, r'image .*images/sub/d.jpg has no label: expected .*labels/sub/d.png')


def test_label_size_differs_from_image(tmp_path):
  root = _write_tree(str(tmp_path / 'data'))
  fx.save_grey_png(os.path.join(root, 'labels', 'c.png'), np.zeros((10, 16), np.uint8))
  _error(tmp_path, root, r'label .*labels/c.png is 10x16 \(HxW\) but its image .*images/c.png '
         'is 12x16')


def test_label_value_out_of_range(tmp_path):
  root = _write_tree(str(tmp_path / 'data'))
  label = np.zeros((12, 16), np.uint8)
  label[3, 3] = 7
  fx.save_grey_png(os.path.join(root, 'labels', 'e.png'), label)
  _error(tmp_path, root, r'label .*labels/e.png has values \[7\]: expected class indices 0..4 '
         r'or 255')


def test_rgb_label_without_palette(tmp_path):
  root = _write_tree(str(tmp_path / 'data'))
  fx.save_image(os.path.join(root, 'labels', 'a.png'), np.zeros((12, 16, 3), np.uint8))
  _error(tmp_path, root, r"label .*labels/a.png has mode 'RGB'")


def test_corrupt_image_error_then_skip_and_count(tmp_path):
  root = _write_tree(str(tmp_path / 'data'))
  path = os.path.join(root, 'images', 'b.jpg')
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])  # truncated JPEG
  _error(tmp_path, root, r'images/b.jpg is corrupt or not an image')
  config = _config(tmp_path, root, corrupt_policy='skip')
  source = folder.source(config)
  assert len(source.skipped) == 1 and 'images/b.jpg' in source.skipped[0]
  total = source.num_examples('train') + source.num_examples('val')
  assert total == len(NAMES) - 1
  # The copy prepared with 'skip' is refused under 'error', naming what was skipped.
  _error(tmp_path, root, r'skipped 1 files .*images/b.jpg', corrupt_policy='error')


def test_bad_list_line_and_listed_missing_image(tmp_path):
  root = _write_tree(str(tmp_path / 'data'))
  fx.write_lines(os.path.join(root, 'train.txt'), ['a', 'zz'])
  fx.write_lines(os.path.join(root, 'val.txt'), ['b'])
  _error(tmp_path, root, r'train.txt:2 lists .zz. but no image')
  fx.write_lines(os.path.join(root, 'train.txt'), ['a b c'])
  _error(tmp_path, root, r'train.txt:1: expected')


def test_layout_generates_stable_lists(tmp_path):
  root = _write_tree(str(tmp_path / 'data'), palette_png=False)
  first = folder.FolderLayout(root, val_fraction=0.25).splits
  for split in ('train', 'val'):
    os.remove(os.path.join(root, f'{split}.txt'))
  again = folder.FolderLayout(root, val_fraction=0.25).splits
  assert first == again
  # Removing one list file alone is an error rather than a silent regeneration.
  os.remove(os.path.join(root, 'val.txt'))
  with pytest.raises(folder.DataError, match='val.txt does not exist'):
    folder.FolderLayout(root)
  assert Image.open(os.path.join(root, 'labels', 'a.png')).mode == 'L'
