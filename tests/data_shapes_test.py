"""The synthetic shapes data set: deterministic, fixed splits, labels that follow the pixels."""
import numpy as np
import pytest
from scipy import ndimage

from deeplax.data import shapes


def test_deterministic_and_splits_differ():
  a_images, a_labels = shapes.generate(40, 32, 123)
  shapes.generate.cache_clear()
  b_images, b_labels = shapes.generate(40, 32, 123)
  np.testing.assert_array_equal(a_images, b_images)
  np.testing.assert_array_equal(a_labels, b_labels)
  train, _ = shapes.load_split('train', 40, 32)
  val, _ = shapes.load_split('val', 40, 32)
  assert not np.array_equal(train, val)
  assert shapes.TRAIN_SEED != shapes.EVAL_SEED


def test_shapes_and_types():
  images, labels = shapes.load_split('train', 300, 64)
  assert images.shape == (300, 64, 64, 3) and images.dtype == np.uint8
  assert labels.shape == (300, 64, 64) and labels.dtype == np.uint8
  assert set(np.unique(labels)) == {0, 1, 2, 3}
  assert shapes.CLASS_NAMES == ('background', 'circle', 'square', 'triangle')
  # Every image has at least one shape, and no image is all shape.
  foreground = (labels > 0).mean(axis=(1, 2))
  assert foreground.min() > 0.0 and foreground.max() < 1.0
  # Each kind is a sizeable share of the foreground (no kind starved).
  counts = np.bincount(labels.ravel(), minlength=4)[1:]
  assert counts.min() > 0.2 * counts.max()
  assert not images.flags.writeable


def test_labels_follow_colour_edges():
  """Where the label changes, the image changes much more than inside a region."""
  images, labels = shapes.load_split('val', 100, 64)
  image = images.astype(np.float32)
  diff = np.abs(image[:, :, 1:] - image[:, :, :-1]).sum(-1)
  edge = labels[:, :, 1:] != labels[:, :, :-1]
  inside_fg = ~edge & (labels[:, :, 1:] > 0)
  assert diff[edge].mean() > 4 * diff[inside_fg].mean()


def test_circle_is_round():
  """Box fill of an isolated shape: circle pi/4; rotated square in [1/2, 1]; triangle <= 1/2."""
  images, labels = shapes.load_split('train', 200, 64)
  ratios = {1: [], 2: [], 3: []}
  for label in labels:
    present = set(np.unique(label)) - {0}
    if len(present) != 1:
      continue
    kind = present.pop()
    if kind not in ratios or ndimage.label(label > 0)[1] != 1:  # one shape only
      continue
    ys, xs = np.nonzero(label)
    if ys.min() == 0 or xs.min() == 0 or ys.max() == 63 or xs.max() == 63:
      continue
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    ratios[kind].append(len(ys) / box)
  assert ratios[1] and np.abs(np.array(ratios[1]) - np.pi / 4).max() < 0.1
  assert ratios[2] and min(ratios[2]) > 0.45 and max(ratios[2]) <= 1.0
  assert ratios[3] and max(ratios[3]) < 0.58  # any triangle fills at most half its box (+ pixels)
  assert min(ratios[2]) > max(ratios[3])


def test_bad_arguments():
  with pytest.raises(ValueError, match="'train' and 'val'"):
    shapes.load_split('test', 1, 64)
  with pytest.raises(ValueError, match='image_size'):
    shapes.generate(1, 4, 0)
