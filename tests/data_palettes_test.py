"""Palettes against the published colours; colourisation and overlay by hand."""
import numpy as np
import pytest

from deeplax.data import palettes

# The 21 VOC colours as printed by the VOC devkit's labelcolormap (VOC2012 SegmentationClass).
VOC_REFERENCE = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
    (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0),
    (64, 0, 128), (192, 0, 128), (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0),
    (0, 192, 0), (128, 192, 0), (0, 64, 128)]


def test_voc_palette_matches_devkit():
  palette = palettes.voc_palette()
  assert palette.dtype == np.uint8 and palette.shape == (21, 3)
  np.testing.assert_array_equal(palette, np.array(VOC_REFERENCE, np.uint8))
  assert tuple(palette[palettes.VOC_CLASSES.index('person')]) == (192, 128, 128)


def test_cityscapes_palette_known_entries():
  palette = palettes.cityscapes_palette()
  assert palette.shape == (19, 3)
  names = palettes.CITYSCAPES_CLASSES
  assert tuple(palette[names.index('road')]) == (128, 64, 128)
  assert tuple(palette[names.index('car')]) == (0, 0, 142)
  assert tuple(palette[names.index('sky')]) == (70, 130, 180)
  assert tuple(palette[names.index('bicycle')]) == (119, 11, 32)
  assert len({tuple(c) for c in palette}) == 19


def test_generic_palette_distinct_and_extends_voc():
  palette = palettes.generic_palette(300)
  assert palette.shape == (300, 3)
  assert len({tuple(c) for c in palette}) == 300  # 24 bits of id spread over RGB: all distinct
  np.testing.assert_array_equal(palette[:21], np.array(VOC_REFERENCE, np.uint8))


def test_colorize_and_ignore_white():
  palette = palettes.voc_palette()
  label = np.array([[0, 15], [255, 1]])
  out = palettes.colorize(label, palette)
  assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
  assert tuple(out[0, 0]) == (0, 0, 0)
  assert tuple(out[0, 1]) == (192, 128, 128)
  assert tuple(out[1, 0]) == (255, 255, 255)
  assert tuple(out[1, 1]) == (128, 0, 0)


def test_colorize_rejects_unknown_class():
  with pytest.raises(ValueError, match='21 classes'):
    palettes.colorize(np.array([[21]]), palettes.voc_palette())


def test_overlay_blends_and_keeps_ignored_pixels():
  image = np.full((1, 2, 3), 100, np.uint8)
  label = np.array([[1, 255]])
  out = palettes.overlay(image, label, palettes.voc_palette(), alpha=0.5)
  np.testing.assert_array_equal(out[0, 0], [114, 50, 50])  # (100 + 128) / 2, 100 / 2
  np.testing.assert_array_equal(out[0, 1], [100, 100, 100])


def test_as_palette_checks_shape():
  with pytest.raises(ValueError, match=r'expected \(2, 3\)'):
    palettes.as_palette([(0, 0, 0)], 2)
