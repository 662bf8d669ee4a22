"""Fuzzing the data readers: malformed files end in an error naming the file, or a counted
skip under dataset.corrupt_policy='skip'; never a crash inside TF, never a wrong label.

Seeded random mutations (flipped bytes, overwritten runs, truncation, appended junk) of
valid PNG / JPEG / BMP / TIFF images, PNG labels and SBD .mat labels, plus the hand-made
cases (zero bytes, random bytes, wrong modes, wrong size pairs, values out of range,
mismatched pairs) and one prepared folder data set mixing good and bad files.

What "never a wrong label" can mean per format: PNG carries a checksum per chunk, so a
mutated PNG label either fails or decodes to exactly the original indices (asserted).
JPEG, BMP, TIFF and .mat carry none: a flipped pixel byte is undetectable there, so the
guarantee is that what the reader accepts decodes in TF (the training pipeline) at the
size checked, and .mat values are range-checked before any cast.
"""
import io
import os
import re

import numpy as np
import pytest
import scipy.io
from PIL import Image

from configs import default
from deeplax.data import base
from deeplax.data import cityscapes
from deeplax.data import files
from deeplax.data import folder
from deeplax.data import voc
from deeplax.data.tf_cpu import tf
from tests import data_fixtures as fx

NUM_CLASSES = 5
MUTATIONS_PER_FORMAT = 150


def _encode(array, fmt, **kwargs) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def _mutate(data: bytes, rng) -> bytes:
  data = bytearray(data)
  kind = rng.integers(0, 4)
  if kind == 0:  # flip a few bytes
    for _ in range(rng.integers(1, 4)):
      data[rng.integers(0, len(data))] = rng.integers(0, 256)
  elif kind == 1:  # truncate (possibly to zero bytes)
    data = data[:rng.integers(0, len(data))]
  elif kind == 2:  # overwrite a run with random bytes
    position = rng.integers(0, len(data))
    data[position:position + 8] = rng.bytes(8)
  else:  # junk after the end
    data += rng.bytes(rng.integers(1, 64))
  return bytes(data)


def _write(path, data: bytes) -> str:
  with open(path, 'wb') as f:
    f.write(data)
  return str(path)


def _image():
  return fx.paint(fx.label_map(3, 24, 32, NUM_CLASSES))


@pytest.mark.parametrize('fmt,ext,lossless', [('PNG', 'png', True), ('JPEG', 'jpg', False),
                                              ('BMP', 'bmp', True), ('TIFF', 'tif', True)])
def test_mutated_images_fail_by_name_or_decode_in_tf(tmp_path, fmt, ext, lossless):
  rng = np.random.default_rng(['PNG', 'JPEG', 'BMP', 'TIFF'].index(fmt))
  image = _image()
  original = _encode(image, fmt)
  outcomes = {'error': 0, 'accepted': 0}
  for trial in range(MUTATIONS_PER_FORMAT):
    path = _write(tmp_path / f'{trial}.{ext}', _mutate(original, rng))
    try:
      data, size = files.read_image(path)
    except base.DataError as e:
      assert path in str(e), e
      outcomes['error'] += 1
      continue
    outcomes['accepted'] += 1
    # Exactly what the pipeline runs on the stored bytes: must not fail, size as checked.
    decoded = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    assert decoded.shape == (*size, 3), path
    if fmt == 'PNG':  # checksummed: accepted means unchanged
      np.testing.assert_array_equal(decoded, image, err_msg=path)
  assert outcomes['error'] > 0 and outcomes['accepted'] > 0, outcomes  # both paths exercised


@pytest.mark.parametrize('mode', ['L', 'P'])
def test_mutated_png_labels_fail_by_name_or_read_exactly(tmp_path, mode):
  rng = np.random.default_rng(7 if mode == 'L' else 8)
  label = fx.label_map(5, 24, 32, NUM_CLASSES)
  label[0, :] = 255
  buffer = io.BytesIO()
  if mode == 'P':
    fx.save_palette_png(str(tmp_path / 'p.png'), label, fx.COLORS[:NUM_CLASSES])
    original = open(tmp_path / 'p.png', 'rb').read()
  else:
    Image.fromarray(label, mode='L').save(buffer, format='PNG')
    original = buffer.getvalue()
  accepted = 0
  flips = [original[:i] + bytes([original[i] ^ 1]) + original[i + 1:]
           for i in range(len(original))]  # every single-bit flip, then random mutations
  mutants = flips + [_mutate(original, rng) for _ in range(MUTATIONS_PER_FORMAT)]
  for trial, data in enumerate(mutants):
    path = _write(tmp_path / f'{trial}.png', data)
    try:
      read = files.read_label(path)
      files.check_label(read, path, label.shape, NUM_CLASSES)
    except base.DataError as e:
      assert path in str(e), e
      continue
    accepted += 1
    np.testing.assert_array_equal(read, label, err_msg=f'{path} read as a different label')
  assert accepted > 0


def test_mutated_sbd_mat_fails_by_name_or_gives_checked_indices(tmp_path):
  rng = np.random.default_rng(11)
  label = fx.label_map(2, 12, 16, 21)
  scipy.io.savemat(str(tmp_path / 'good.mat'), {'GTcls': {'Segmentation': label}})
  original = open(tmp_path / 'good.mat', 'rb').read()
  for trial in range(MUTATIONS_PER_FORMAT):
    path = _write(tmp_path / f'{trial}.mat', _mutate(original, rng))
    try:
      read = voc.read_sbd_mat(path)
      files.check_label(read, path, label.shape, 21)
    except base.DataError as e:
      assert path in str(e), e
      continue
    assert read.dtype == np.uint8 and read.shape == label.shape


@pytest.mark.parametrize('values', [[[0, 300], [1, 2]], [[0, -1], [1, 2]], [[0, 1.5], [1, 2]],
                                    [[0, np.nan], [1, 2]], [['a', 'b'], ['c', 'd']]])
def test_sbd_values_that_a_uint8_cast_would_wrap_are_refused(tmp_path, values):
  path = str(tmp_path / 'x.mat')
  array = np.array(values, dtype=object if isinstance(values[0][0], str) else None)
  scipy.io.savemat(path, {'GTcls': {'Segmentation': array}})
  with pytest.raises(base.DataError, match=re.escape(path) + ': GTcls.Segmentation has '
                     r'(dtype .*integer class indices|values .*class indices in \[0, 255\])'):
    voc.read_sbd_mat(path)


def test_handmade_bad_files_name_the_file(tmp_path):
  rng = np.random.default_rng(0)
  good = _image()
  cases = {
      'zero.png': (b'', files.read_image, 'corrupt or not an image'),
      'random.jpg': (rng.bytes(500), files.read_image, 'corrupt or not an image'),
      'header_only.png': (_encode(good, 'PNG')[:40], files.read_image, 'corrupt'),
      'zero_label.png': (b'', files.read_label, 'corrupt or not an image'),
      'rgba_label.png': (_encode(np.zeros((4, 4, 4), np.uint8), 'PNG'), files.read_label,
                         "mode 'RGBA'"),
      'float_label.tif': (_encode(np.zeros((4, 4), np.float32), 'TIFF'), files.read_label,
                          "mode 'F'"),
      'jpeg_label.png': (_encode(np.zeros((4, 4), np.uint8), 'JPEG'), files.read_label,
                         'is a JPEG'),
      'random.mat': (rng.bytes(300), voc.read_sbd_mat, 'corrupt or not a .mat'),
      'zero.mat': (b'', voc.read_sbd_mat, 'corrupt or not a .mat'),
  }
  for name, (data, reader, message) in cases.items():
    path = _write(tmp_path / name, data)
    with pytest.raises(base.DataError) as err:
      reader(path)
    assert path in str(err.value) and message in str(err.value), (name, err.value)
  # An RGB image in 16-bit or palette form is converted, not rejected, and decodes in TF.
  data, size = files.read_image(_write(tmp_path / 'pal.png', _encode(
      np.zeros((5, 7), np.uint8), 'PNG')))
  assert tf.io.decode_image(data, channels=3).shape == (5, 7, 3) and size == (5, 7)
  # A 16-bit label with values above 255 and a label of the wrong size.
  path = _write(tmp_path / 'wide.png', _encode(np.full((4, 4), 300, np.uint16), 'PNG'))
  with pytest.raises(base.DataError, match=f'label {path} has values in \\[300, 300\\]'):
    files.read_label(path)
  # A Cityscapes label id that does not exist (34..254) is refused, not mapped to ignore.
  ids = np.full((4, 4), 7, np.uint8)
  ids[1, 2] = 40
  path = _write(tmp_path / 'x_gtFine_labelIds.png', _encode(ids, 'PNG'))
  with pytest.raises(base.DataError, match=f'label {re.escape(path)} has ids \\[40\\]'):
    cityscapes.read_label_ids(path)
  with pytest.raises(base.DataError, match='label l.png is 4x4 .HxW. but its image i.png is 4x5'):
    files.check_label(np.zeros((4, 4), np.uint8), 'l.png', (4, 5), 3, image_path='i.png')


def _tree(root, names):
  for index, name in enumerate(names):
    label = fx.label_map(index, 12, 16, NUM_CLASSES)
    fx.save_image(os.path.join(root, 'images', name + '.png'), fx.paint(label))
    fx.save_grey_png(os.path.join(root, 'labels', name + '.png'), label)


def _folder_config(tmp_path, root, policy):
  config = default.get_config()
  config.dataset.name = 'folder'
  config.dataset.manual_dir = str(root)
  config.dataset.data_dir = str(tmp_path / f'tfds_{policy}')
  config.dataset.train_split = 'train'
  config.dataset.corrupt_policy = policy
  config.model.num_classes = NUM_CLASSES
  return config


def test_prepared_folder_skips_exactly_the_corrupt_files(tmp_path):
  """Random corruptions of some images and labels: 'error' names the first one; 'skip'
  prepares the rest, counts and lists exactly the corrupt ones, and every prepared
  example decodes to its true label."""
  rng = np.random.default_rng(5)
  root = tmp_path / 'data'
  names = [f'n{i:02d}' for i in range(12)]
  _tree(str(root), names + ['val0'])
  fx.write_lines(str(root / 'train.txt'), names)
  fx.write_lines(str(root / 'val.txt'), ['val0'])
  corrupt = set()
  for name in rng.choice(names, 5, replace=False):
    kind = 'images' if len(corrupt) % 2 else 'labels'
    path = str(root / kind / f'{name}.png')
    data = open(path, 'rb').read()
    _write(path, data[:len(data) // 2] if len(corrupt) < 3 else
           data[:60] + bytes([data[60] ^ 0xFF]) + data[61:])  # truncated / flipped pixel byte
    corrupt.add(path)
  with pytest.raises(base.DataError) as err:
    folder.source(_folder_config(tmp_path, root, 'error'))
  assert any(path in str(err.value) for path in corrupt), err.value
  source = folder.source(_folder_config(tmp_path, root, 'skip'))
  assert len(source.skipped) == len(corrupt)
  assert {p for p in corrupt for s in source.skipped if p in s} == corrupt
  kept = [n for n in names if not any(n + '.png' in p for p in corrupt)]
  assert source.num_examples('train') == len(kept)
  for record in source.read('train', 0, len(kept)):
    example = source.decode(record)
    name = example['file_name'].numpy().decode()
    np.testing.assert_array_equal(example['label'].numpy(),
                                  fx.label_map(names.index(name), 12, 16, NUM_CLASSES))


def test_split_left_empty_is_named_not_a_tfds_assertion(tmp_path):
  root = tmp_path / 'data'
  _tree(str(root), ['a', 'b'])
  fx.write_lines(str(root / 'train.txt'), ['a'])
  fx.write_lines(str(root / 'val.txt'), [])
  with pytest.raises(base.DataError, match="split 'val' lists no examples"):
    folder.source(_folder_config(tmp_path, root, 'skip'))
  fx.write_lines(str(root / 'val.txt'), ['b'])
  _write(str(root / 'images' / 'b.png'), b'')
  with pytest.raises(base.DataError, match=r"split 'val' has no usable example: all 1 listed "
                     r'were skipped as corrupt \(first: .*images/b.png'):
    folder.source(_folder_config(tmp_path, root, 'skip'))


def test_mismatched_pairs_name_both_sides(tmp_path):
  root = tmp_path / 'data'
  _tree(str(root), ['a', 'b'])
  os.rename(root / 'labels' / 'b.png', root / 'labels' / 'c.png')
  with pytest.raises(base.DataError, match=r'images/b.png has no label: expected .*labels/b.png'):
    folder.FolderLayout(str(root))
  os.remove(root / 'images' / 'b.png')
  with pytest.raises(base.DataError, match=r'label .*labels/c.png has no image'):
    folder.FolderLayout(str(root))
