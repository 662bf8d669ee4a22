"""Input pipeline: augmentation geometry against numpy, padding, determinism, resume,
sharding and eval padding (on the built-in shapes source and hand-made arrays)."""
import os

import numpy as np
import pytest

from configs import default
from deeplax.data import augment
from deeplax.data import pipeline
from deeplax.data import shapes
from deeplax.data.tf_cpu import tf

MEAN = np.array((0.485, 0.456, 0.406), np.float32)
STD = np.array((0.229, 0.224, 0.225), np.float32)
COLORS = np.array([[0, 0, 0], [250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]],
                  np.float32)


def _config(**augment_overrides):
  config = default.get_config()
  config.dataset.name = 'shapes'
  config.dataset.train_split = 'train'
  config.dataset.eval_split = 'val'
  config.dataset.num_train_images = 20
  config.dataset.num_eval_images = 11
  config.dataset.image_size = 32
  config.augment.crop_size = (32, 32)
  config.eval.pad_size = (32, 32)
  config.eval.batch_size = 4
  config.batch_size = 8
  for key, value in augment_overrides.items():
    config.augment[key] = value
  return config


def _painted_example(height=40, width=52, block=4, seed=0):
  """A blocky label map and an image painted from it with one colour per class."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, len(COLORS), (height // block + 1, width // block + 1))
  label = np.kron(coarse, np.ones((block, block), np.int64))[:height, :width].astype(np.uint8)
  image = COLORS[label].astype(np.uint8)
  return image, label


def _augment(image, label, seed, config):
  example = {'image': tf.constant(image), 'label': tf.constant(label),
             'file_name': tf.constant('x')}
  out = augment.train_example(example, tf.constant([7, seed], tf.int64), config.augment, 255)
  return out['image'].numpy(), out['label'].numpy()


def _denormalize(image):
  return (image * STD + MEAN) * 255.0


def _find_slice(big, small):
  """All (top, left) where `small` equals a window of `big`."""
  hits = []
  for top in range(big.shape[0] - small.shape[0] + 1):
    for left in range(big.shape[1] - small.shape[1] + 1):
      if np.array_equal(big[top:top + small.shape[0], left:left + small.shape[1]], small):
        hits.append((top, left))
  return hits


def test_crop_and_flip_are_exact_slices():
  """At scale 1 the output is a window of the input (flipped or not), image and label alike."""
  image, label = _painted_example()
  config = _config(crop_size=(24, 30), min_scale=1.0, max_scale=1.0)
  flips = set()
  for seed in range(12):
    out_image, out_label = _augment(image, label, seed, config)
    assert out_image.shape == (24, 30, 3) and out_image.dtype == np.float32
    assert out_label.shape == (24, 30) and out_label.dtype == np.int32
    pixels = np.round(_denormalize(out_image)).astype(np.int64)
    for flipped in (False, True):
      src_label = label[:, ::-1] if flipped else label
      src_image = image[:, ::-1] if flipped else image
      hits = [h for h in _find_slice(src_label.astype(np.int32), out_label)
              if np.array_equal(src_image[h[0]:h[0] + 24, h[1]:h[1] + 30].astype(np.int64),
                                pixels)]
      if hits:
        flips.add(flipped)
        break
    else:
      pytest.fail(f'seed {seed}: output is not a window of the (flipped) input')
  assert flips == {False, True}


def test_upscale_by_two_is_pixel_repeat():
  """Nearest-neighbour x2 with half-pixel centres repeats each label pixel 2x2 (numpy)."""
  image, label = _painted_example(height=20, width=24)
  config = _config(crop_size=(16, 16), min_scale=2.0, max_scale=2.0, flip=False)
  repeated = np.repeat(np.repeat(label, 2, 0), 2, 1).astype(np.int32)
  for seed in range(4):
    _, out_label = _augment(image, label, seed, config)
    hits = _find_slice(repeated, out_label)
    assert hits, f'seed {seed}: label crop is not a window of the 2x upsampled label'


def test_image_and_label_stay_aligned_under_random_scale():
  """Paint the label into the image; after scale/pad/crop/flip every interior pixel's
  colour still names its label, and padded pixels are the mean (0 after normalising)."""
  image, label = _painted_example(height=40, width=52, block=6)
  config = _config(crop_size=(48, 48), min_scale=0.5, max_scale=2.0, scale_step=0.25)
  seen_padding = False
  for seed in range(16):
    out_image, out_label = _augment(image, label, seed, config)
    pad = out_label == 255
    if pad.any():
      seen_padding = True
      np.testing.assert_allclose(out_image[pad], 0.0, atol=1e-5)
    # Interior pixels: the 3x3 neighbourhood has one label (bilinear blends at edges).
    padded = np.pad(out_label, 1, mode='edge')
    uniform = np.ones_like(pad)
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        uniform &= padded[1 + dy:1 + dy + 48, 1 + dx:1 + dx + 48] == out_label
    interior = uniform & ~pad
    assert interior.sum() > 100
    colours = _denormalize(out_image[interior])
    nearest = np.argmin(((colours[:, None, :] - COLORS[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest, out_label[interior])
  assert seen_padding


def test_scale_grid_and_short_side():
  seeds = [tf.constant([1, s], tf.int64) for s in range(60)]
  scales = {round(float(augment.draw_scale(s, 0.5, 2.0, 0.25)), 6) for s in seeds}
  assert scales == {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0}
  # short_side 30 with scale 1: a 40x52 image becomes 30x39, then padded to the crop.
  image, label = _painted_example(height=40, width=52)
  config = _config(crop_size=(32, 48), min_scale=1.0, max_scale=1.0, short_side=30,
                   flip=False)
  _, out_label = _augment(image, label, 0, config)
  real = out_label != 255
  assert real.sum(0).max() == 30 and real.sum(1).max() == 39


def test_photometric_changes_colours_not_labels():
  image, label = _painted_example()
  plain = _config(crop_size=(40, 52), min_scale=1.0, max_scale=1.0, flip=False)
  jitter = _config(crop_size=(40, 52), min_scale=1.0, max_scale=1.0, flip=False,
                   photometric=True)
  a_image, a_label = _augment(image, label, 3, plain)
  b_image, b_label = _augment(image, label, 3, jitter)
  np.testing.assert_array_equal(a_label, b_label)
  assert np.abs(a_image - b_image).mean() > 0.01


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def test_train_deterministic_and_resume_equivalent():
  config = _config()
  # 20 images, batch 8: epochs end mid-batch, so resuming crosses an epoch boundary.
  run = _take(pipeline.create_train_iterator(config, seed=3), 7)
  again = _take(pipeline.create_train_iterator(config, seed=3), 7)
  other = _take(pipeline.create_train_iterator(config, seed=4), 1)
  for a, b in zip(run, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert not np.array_equal(run[0]['image'], other[0]['image'])
  resumed = _take(pipeline.create_train_iterator(config, seed=3, start_step=4), 3)
  for a, b in zip(run[4:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  batch = run[0]
  assert batch['image'].shape == (8, 32, 32, 3) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (8, 32, 32) and batch['label'].dtype == np.int32


def test_train_epoch_visits_every_image_once():
  """Without geometric change each output is an original image: one epoch covers all."""
  config = _config(min_scale=1.0, max_scale=1.0, flip=False)
  config.batch_size = 4
  images, _ = shapes.load_split('train', 20, 32)
  out = np.concatenate([b['image'] for b in _take(pipeline.create_train_iterator(config, 0), 5)])
  pixels = np.round(_denormalize(out)).astype(np.uint8)
  found = [int(np.flatnonzero((images == p).all(axis=(1, 2, 3)))[0]) for p in pixels]
  assert sorted(found) == list(range(20))
  assert found != list(range(20))  # shuffled


def test_shard_ranges_disjoint_and_covering():
  for num in (0, 1, 7, 100, 1449):
    for count in (1, 2, 3, 8):
      ranges = [pipeline.shard_range(num, i, count) for i in range(count)]
      covered = [j for start, end in ranges for j in range(start, end)]
      assert covered == list(range(num))
      sizes = [end - start for start, end in ranges]
      assert max(sizes) - min(sizes) <= 1


def test_eval_counts_every_image_once_over_hosts():
  config = _config()  # 11 eval images, global batch 4
  names, batches_per_host = [], []
  for host in range(2):
    it = pipeline.create_eval_iterator(config, process_index=host, process_count=2)
    batches = list(it)
    batches_per_host.append(len(batches))
    assert len(batches) == len(it)
    for batch in batches:
      assert batch['image'].shape == (2, 32, 32, 3) and batch['label'].dtype == np.int32
      names += list(batch['file_name'][batch['valid']])
      invalid = ~batch['valid']
      assert (batch['label'][invalid] == 255).all()
      assert (batch['height'][invalid] == 0).all()
      assert (batch['height'][batch['valid']] == 32).all()
  assert batches_per_host == [3, 3]  # hosts hold 5 and 6 images: ceil(6 / 2) batches each
  assert sorted(names) == [f'shapes/val/{i:06d}' for i in range(11)]
  info = pipeline.get_info(config)
  assert info.num_eval == 11 and info.num_train == 20 and info.num_classes == 4


def test_eval_padding_values_and_crop_val():
  config = _config()
  config.eval.pad_size = (40, 36)
  batch = next(pipeline.create_eval_iterator(config))
  assert (batch['label'][:, 32:, :] == 255).all() and (batch['label'][:, :, 32:] == 255).all()
  np.testing.assert_allclose(batch['image'][:, 32:, :], 0.0, atol=1e-5)
  images, labels = shapes.load_split('val', 11, 32)
  np.testing.assert_array_equal(batch['label'][:, :32, :32], labels[:4])
  np.testing.assert_allclose(_denormalize(batch['image'][:, :32, :32]), images[:4], atol=1e-3)
  config.eval.crop_val = True
  config.eval.pad_size = (16, 24)
  batch = next(pipeline.create_eval_iterator(config))
  assert batch['label'].shape == (4, 16, 24) and (batch['height'] == 16).all()
  assert (batch['label'] != 255).all()


def test_eval_image_larger_than_pad_size_names_file():
  config = _config()
  config.eval.pad_size = (24, 40)
  with pytest.raises(pipeline.DataError, match=r'(?s)eval.pad_size.*shapes/val/000000'):
    next(pipeline.create_eval_iterator(config))


def test_bad_split_and_batch():
  config = _config()
  config.dataset.train_split = 'train_aug'
  with pytest.raises(pipeline.DataError, match="no split 'train_aug'"):
    pipeline.create_train_iterator(config, 0)
  config = _config()
  config.batch_size = 9
  with pytest.raises(ValueError, match='batch_size=9'):
    pipeline.create_train_iterator(config, 0, process_count=2)


def test_prepare_command_prints_splits():
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(
      [sys.executable, '-m', 'deeplax.data.prepare', '--config', 'configs/default.py',
       '--config.dataset.name=shapes', '--config.dataset.train_split=train',
       '--config.dataset.eval_split=val', '--config.dataset.num_train_images=6',
       '--config.dataset.num_eval_images=3'], cwd=repo, capture_output=True, text=True,
      timeout=120)
  assert done.returncode == 0, done.stderr
  assert 'shapes: 4 classes: background, circle, square, triangle' in done.stdout
  assert 'train: 6 examples' in done.stdout and 'val: 3 examples' in done.stdout
