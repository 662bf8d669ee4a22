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
  """Box fill of an isolated shape: circle pi/4; rotated square in [1/2, 1] (1/2 at 45
  degrees); triangle at most 1/2 (plus edge pixels), so on the whole below the squares."""
  images, labels = shapes.load_split('train', 300, 64)
  ratios = {1: [], 2: [], 3: []}
  for label in labels:
    components, count = ndimage.label(label > 0, structure=np.ones((3, 3)))
    for index in range(1, count + 1):
      ys, xs = np.nonzero(components == index)
      kind = int(label[ys[0], xs[0]])
      box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
      ratios[kind].append(len(ys) / box)
  assert all(len(r) > 50 for r in ratios.values())
  assert np.abs(np.array(ratios[1]) - np.pi / 4).max() < 0.1
  assert min(ratios[2]) > 0.45 and max(ratios[2]) <= 1.0
  assert max(ratios[3]) < 0.6
  assert np.median(ratios[2]) > np.median(ratios[3]) + 0.05


def test_shapes_whole_and_apart():
  """Every shape is whole and on its own: each connected foreground region holds one
  kind, and no shape touches the border."""
  _, labels = shapes.load_split('val', 200, 64)
  for label in labels:
    components, count = ndimage.label(label > 0, structure=np.ones((3, 3)))
    assert 1 <= count <= shapes.MAX_SHAPES
    for index in range(1, count + 1):
      assert len(np.unique(label[components == index])) == 1
  border = np.concatenate([labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]],
                          axis=1)
  assert not border.any()


def _hue(rgb: np.ndarray) -> np.ndarray:
  """Hue in [0, 1) of (n, 3) RGB (the HSV definition, written out independently)."""
  r, g, b = (rgb.astype(np.float64) / 255.0).T
  top, bottom = rgb.max(1) / 255.0, rgb.min(1) / 255.0
  span = np.maximum(top - bottom, 1e-9)
  hue = np.where(top == r, (g - b) / span % 6, np.where(top == g, (b - r) / span + 2,
                                                        (r - g) / span + 4))
  return hue / 6.0


def test_each_kind_has_its_hue_family():
  """Circles red, squares green, triangles blue (shape colour plus a little noise);
  backgrounds spread over the whole colour wheel."""
  images, labels = shapes.load_split('train', 200, 64)
  for kind, centre in ((1, 0.0), (2, 1 / 3), (3, 2 / 3)):
    hue = _hue(images[labels == kind])
    distance = np.abs((hue - centre + 0.5) % 1.0 - 0.5)  # around the wheel
    assert np.median(distance) < 0.05, kind
  background_hue = _hue(images[labels == 0])
  assert np.histogram(background_hue, bins=6, range=(0, 1))[0].min() > 0.05 * len(
      background_hue)


def test_bad_arguments():
  with pytest.raises(ValueError, match="'train' and 'val'"):
    shapes.load_split('test', 1, 64)
  with pytest.raises(ValueError, match='image_size'):
    shapes.generate(1, 4, 0)
