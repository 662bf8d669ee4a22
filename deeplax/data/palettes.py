"""Class colour palettes and label colourisation.

The VOC palette is the bit pattern of the VOC devkit's `labelcolormap.m` (the colours
of the `SegmentationClass` PNGs), so our colourised labels look like the data set's
own; Cityscapes uses the official colours of its 19 train ids (cityscapesScripts
`labels.py`). Any other class count gets the same bit pattern, whose first colours
are distinct and which extends to 2**24 ids.
"""
from typing import Optional, Sequence

import numpy as np

IGNORE_LABEL = 255
# Ignored pixels (label 255) are drawn white: visible against the black background
# class, and unlike VOC's own cream (224, 224, 192) never confused with a class colour.
IGNORE_COLOR = (255, 255, 255)

VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus',
               'car', 'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike',
               'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')

CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole',
                      'traffic light', 'traffic sign', 'vegetation', 'terrain', 'sky',
                      'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
                      'bicycle')

# Official Cityscapes colours of train ids 0..18 (cityscapesScripts labels.py).
_CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32))


def bit_pattern_palette(num_classes: int) -> np.ndarray:
  """(num_classes, 3) uint8: the VOC devkit colour map (bits of the id spread over RGB)."""
  if num_classes < 1 or num_classes > 2**24:
    raise ValueError(f'num_classes={num_classes} must be in [1, 2**24]')
  ids = np.arange(num_classes, dtype=np.int64)
  palette = np.zeros((num_classes, 3), np.int64)
  for shift in range(8):
    for channel in range(3):
      bit = (ids >> (3 * shift + channel)) & 1
      palette[:, channel] |= bit << (7 - shift)
  return palette.astype(np.uint8)


def voc_palette() -> np.ndarray:
  """(21, 3) uint8 colours of the VOC classes (class 15, person, is (192, 128, 128))."""
  return bit_pattern_palette(len(VOC_CLASSES))


def cityscapes_palette() -> np.ndarray:
  """(19, 3) uint8 official colours of the Cityscapes train ids (0 road = (128, 64, 128))."""
  return np.array(_CITYSCAPES_COLORS, np.uint8)


def generic_palette(num_classes: int) -> np.ndarray:
  """(num_classes, 3) uint8 for a data set without its own colours (class 0 is black)."""
  return bit_pattern_palette(num_classes)


def as_palette(colors: Sequence[Sequence[int]], num_classes: int, what: str = 'palette'
               ) -> np.ndarray:
  """Checks a user palette (e.g. from the config) and returns it as (num_classes, 3) uint8."""
  array = np.asarray(colors)
  if array.shape != (num_classes, 3):
    raise ValueError(f'{what} has shape {array.shape}; expected ({num_classes}, 3): one RGB '
                     'colour per class')
  if array.min() < 0 or array.max() > 255:
    raise ValueError(f'{what} values must be in [0, 255]; found [{array.min()}, {array.max()}]')
  return array.astype(np.uint8)


def colorize(label: np.ndarray, palette: np.ndarray, ignore_label: int = IGNORE_LABEL,
             ignore_color: Sequence[int] = IGNORE_COLOR) -> np.ndarray:
  """Integer label map (..., H, W) -> uint8 RGB (..., H, W, 3).

  `ignore_label` pixels are drawn in `ignore_color` (white by default). Any other value
  outside [0, len(palette)) is an error: it means the labels and the palette disagree.
  """
  label = np.asarray(label)
  palette = np.asarray(palette, np.uint8)
  if not np.issubdtype(label.dtype, np.integer):
    raise ValueError(f'colorize needs an integer label map, got dtype {label.dtype}')
  ignore = label == ignore_label
  bad = ~ignore & ((label < 0) | (label >= len(palette)))
  if bad.any():
    raise ValueError(f'label values {np.unique(label[bad])[:10].tolist()} have no colour: the '
                     f'palette has {len(palette)} classes (and {ignore_label} is ignore)')
  out = palette[np.where(ignore, 0, label)]
  out[ignore] = np.asarray(ignore_color, np.uint8)
  return out


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            ignore_label: int = IGNORE_LABEL) -> np.ndarray:
  """Blends colourised `label` over uint8 `image` (H, W, 3): alpha=0 image, 1 colours.

  Ignored pixels show the image unchanged.
  """
  image = np.asarray(image)
  if image.shape[:-1] != np.shape(label) or image.shape[-1] != 3:
    raise ValueError(f'overlay needs image (H, W, 3) and label (H, W); got {image.shape} and '
                     f'{np.shape(label)}')
  colors = colorize(label, palette, ignore_label).astype(np.float32)
  blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colors
  blend = np.where((np.asarray(label) == ignore_label)[..., None], image, blend)
  return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def palette_for(name: str, num_classes: Optional[int] = None) -> np.ndarray:
  """The palette of a built-in data set by name, else a generic one of num_classes."""
  if name == 'voc':
    return voc_palette()
  if name == 'cityscapes':
    return cityscapes_palette()
  if num_classes is None:
    raise ValueError(f'no built-in palette for {name!r}; pass num_classes')
  return generic_palette(num_classes)
