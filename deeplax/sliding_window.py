"""Whole-image and sliding-window ('slide', as mmsegmentation) inference, shape-bucketed.

A fully convolutional net can take a whole image at once; when an image is beyond what
fits in accelerator memory (or beyond the sizes the model was trained on), mmsegmentation's
`slide` mode runs it on overlapping windows of the crop size and averages the overlapping
logits. Both modes are pure JAX on static shapes, so they run under one `jax.jit`; images
are padded up to a size bucket (`bucket_shape`) so that a folder of differently sized
images compiles once per bucket, not once per image.
"""
from typing import Callable, List, Tuple

import jax.numpy as jnp
import numpy as np

LogitsFn = Callable[[jnp.ndarray], jnp.ndarray]
MODES = ('whole', 'slide', 'auto')


def _pair(value) -> Tuple[int, int]:
  if isinstance(value, (int, np.integer)):
    return int(value), int(value)
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ValueError(f'expected an int or (height, width), got {value!r}')
  return value


def window_starts(size: int, window: int, stride: int) -> List[int]:
  """Start offsets of the windows along one axis, exactly as mmsegmentation's
  `slide_inference`: ceil((size - window) / stride) + 1 windows, the last one shifted
  back to end at the border; a window larger than the image is clipped to it."""
  if window < 1 or stride < 1:
    raise ValueError(f'window={window} and stride={stride} must be >= 1')
  count = max(size - window + stride - 1, 0) // stride + 1
  starts = []
  for i in range(count):
    end = min(i * stride + window, size)
    starts.append(max(end - window, 0))
  return starts


def window_grid(height: int, width: int, window, stride) -> List[Tuple[int, int, int, int]]:
  """(top, left, window height, window width) of every window over an image."""
  win_h, win_w = _pair(window)
  stride_h, stride_w = _pair(stride)
  crop_h, crop_w = min(win_h, height), min(win_w, width)
  return [(top, left, crop_h, crop_w)
          for top in window_starts(height, win_h, stride_h)
          for left in window_starts(width, win_w, stride_w)]


def slide_logits(logits_fn: LogitsFn, images: jnp.ndarray, window, stride,
                 windows_per_call: int = 0) -> jnp.ndarray:
  """Logits (N, H, W, C) of `images` (N, H, W, 3) from overlapping windows.

  `logits_fn` maps (B, h, w, 3) to (B, h, w, C). Windows are stacked along the batch
  axis and run `windows_per_call` at a time (0 = all at once); each pixel's logits are
  the mean over the windows that cover it. Trace-time Python over a static grid.
  """
  n, height, width = images.shape[:3]
  grid = window_grid(height, width, window, stride)
  chunk = len(grid) if windows_per_call <= 0 else windows_per_call
  counts = np.zeros((height, width), np.float32)
  for top, left, h, w in grid:
    counts[top:top + h, left:left + w] += 1
  total = None
  for first in range(0, len(grid), chunk):
    part = grid[first:first + chunk]
    crops = jnp.concatenate([images[:, t:t + h, l:l + w] for t, l, h, w in part], axis=0)
    logits = logits_fn(crops)
    if total is None:
      total = jnp.zeros((n, height, width, logits.shape[-1]), jnp.float32)
    for k, (t, l, h, w) in enumerate(part):
      total = total.at[:, t:t + h, l:l + w].add(logits[k * n:(k + 1) * n].astype(jnp.float32))
  return total / jnp.asarray(counts)[None, :, :, None]


def use_slide(mode: str, height: int, width: int, max_whole_pixels: int) -> bool:
  """Whether an image of this (padded) size goes through slide mode."""
  if mode not in MODES:
    raise ValueError(f'predict.mode={mode!r}; allowed: {", ".join(MODES)}')
  if mode == 'auto':
    return height * width > max_whole_pixels
  return mode == 'slide'


def image_logits(logits_fn: LogitsFn, images: jnp.ndarray, slide: bool, window, stride,
                 windows_per_call: int = 0) -> jnp.ndarray:
  """Whole-image logits, or slide-mode logits when `slide`."""
  if slide:
    return slide_logits(logits_fn, images, window, stride, windows_per_call)
  return logits_fn(images)


def bucket_shape(height: int, width: int, multiple: int) -> Tuple[int, int]:
  """(height, width) rounded up to multiples of `multiple`: the padded size class an
  image is computed at, so nearby sizes share one compiled function."""
  if multiple < 1:
    raise ValueError(f'predict.pad_multiple={multiple} must be >= 1')
  return -(-height // multiple) * multiple, -(-width // multiple) * multiple

