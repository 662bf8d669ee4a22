"""The built-in synthetic data set: coloured circles, squares and triangles on textures.

It lets a new user train and evaluate a real DeepLab with no download, on any machine,
in minutes. Everything is generated with vectorised numpy from fixed seeds, so the
training and validation sets are the same on every machine and every run (the data
order and augmentation still follow `config.seed`); 2,000 images of 64x64 take well
under a second.

Each image: a textured background (noise, a two-colour gradient or fine stripes, random
colours), then 1-3 whole shapes of random kind, size, position and rotation, kept apart
from each other (none overlaps or touches another, none is cut by the border). Each kind
takes its colours from its own hue family (circles red, squares green, triangles blue,
with random saturation and brightness), as object classes in photographs differ in
appearance and not in outline alone; backgrounds take any colour, so colour alone does
not find the shapes. The label of a pixel is the kind of the shape over it (0 =
background).
"""
import functools
from typing import Tuple

import numpy as np

CLASS_NAMES = ('background', 'circle', 'square', 'triangle')
NUM_CLASSES = len(CLASS_NAMES)
TRAIN_SEED = 1_000_003  # Fixed: the training set never depends on config.seed.
EVAL_SEED = 2_000_029  # Different from TRAIN_SEED: validation images are new images.
MAX_SHAPES = 3
MAX_ROTATION = np.pi  # Radians either way from upright.
# Each kind's colours come from its own hue family (red, green, blue, +- HUE_JITTER of
# the colour wheel, random saturation and brightness), as object classes in photographs
# differ in appearance and not in outline alone. With uniformly random colours a small
# DeepLab learns outline-only cues far too slowly for a minutes-long CPU job (measured:
# mIoU 0.43 after 1,500 steps, circles and squares at chance); backgrounds still take
# any colour, so colour alone does not find the shapes.
KIND_HUES = np.array([0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0])  # indexed by class id
HUE_JITTER = 0.07
MIN_RADIUS, MAX_RADIUS = 0.14, 0.24  # Shape size as a fraction of the image side.
CIRCUMRADIUS = 1.4  # Of the largest shape (the triangle), in units of the radius.
CANDIDATES = 8  # Positions tried per shape to keep it clear of the others.
GAP = 2.0  # Pixels between the circumcircles of any two shapes.
MIN_CONTRAST = 100.0  # Minimum RGB distance of a shape's colour from its background mean.
_CHUNK = 256  # Images generated at once (bounds memory; part of the definition of the data).


def _backgrounds(rng: np.random.Generator, n: int, size: int, yy: np.ndarray,
                 xx: np.ndarray) -> np.ndarray:
  """(n, size, size, 3) float32 textures: noise, gradient or stripes, random colours."""
  kind = rng.integers(0, 3, n)
  color_a = rng.uniform(0, 255, (n, 1, 1, 3)).astype(np.float32)
  color_b = rng.uniform(0, 255, (n, 1, 1, 3)).astype(np.float32)
  angle = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
  period = rng.uniform(0.05, 0.12, (n, 1, 1)).astype(np.float32) * size
  noise_sigma = rng.uniform(10, 35, (n, 1, 1, 1)).astype(np.float32)
  image = np.empty((n, size, size, 3), np.float32)
  # Each texture is computed only for the images that use it.
  sel = kind == 0
  image[sel] = color_a[sel] + noise_sigma[sel] * rng.standard_normal(
      (int(sel.sum()), size, size, 3), np.float32)
  for texture in (1, 2):
    sel = kind == texture
    along = (xx * np.cos(angle[sel]) + yy * np.sin(angle[sel])) / size  # ~[-1.4, 1.4]
    if texture == 1:
      ramp = np.clip(along * 0.5 + 0.5, 0, 1)[..., None]
      image[sel] = color_a[sel] * (1 - ramp) + color_b[sel] * ramp
    else:
      on = (np.sin(2 * np.pi * along * size / period[sel]) > 0)[..., None]
      image[sel] = np.where(on, color_a[sel], color_b[sel])
  return image


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
  """(n,) HSV in [0, 1] -> (n, 3) float32 RGB in [0, 255]."""
  k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] * 6.0) % 6.0
  rgb = value[:, None] - value[:, None] * saturation[:, None] * np.clip(
      np.minimum(k, 4.0 - k), 0.0, 1.0)
  return (rgb * 255.0).astype(np.float32)


def _shape_masks(kind: int, dy: np.ndarray, dx: np.ndarray, r: np.ndarray,
                 t: np.ndarray) -> np.ndarray:
  """Inside-masks of one shape kind, centred offsets (dy, dx), size r, rotation t."""
  if kind == 1:  # circle of radius r
    return dy * dy + dx * dx <= r * r
  if kind == 2:  # square of the circle's area (half side r * sqrt(pi) / 2), rotated by t
    half = r * (np.sqrt(np.pi) / 2)
    cos, sin = np.cos(t), np.sin(t)
    return (np.abs(dx * cos + dy * sin) <= half) & (np.abs(dy * cos - dx * sin) <= half)
  # Equilateral triangle of circumradius 1.4 r (area close to the circle's): inside all
  # three half-planes at distance R / 2 (the inradius) along the edge normals.
  inradius = 0.7 * r
  inside = np.ones(dy.shape, bool)
  for edge in range(3):
    phi = t + np.pi / 2 + 2 * np.pi * edge / 3  # t = 0: flat base at the bottom, apex up
    inside &= dx * np.cos(phi) + dy * np.sin(phi) <= inradius
  return inside


def _generate_chunk(rng: np.random.Generator, n: int, size: int
                    ) -> Tuple[np.ndarray, np.ndarray]:
  yy, xx = np.meshgrid(np.arange(size, dtype=np.float32) + 0.5,
                       np.arange(size, dtype=np.float32) + 0.5, indexing='ij')
  background = _backgrounds(rng, n, size, yy, xx)
  background_mean = background.mean(axis=(1, 2))  # (n, 3)
  label = np.zeros((n, size, size), np.uint8)
  owner = np.full((n, size, size), -1, np.int8)  # slot drawn last over each pixel
  colors = np.zeros((n, MAX_SHAPES, 3), np.float32)
  count = rng.integers(1, MAX_SHAPES + 1, n)
  placed = np.zeros((n, MAX_SHAPES), bool)
  centres = np.zeros((n, MAX_SHAPES, 2), np.float32)
  reaches = np.zeros((n, MAX_SHAPES), np.float32)
  for slot in range(MAX_SHAPES):
    kind = rng.integers(1, NUM_CLASSES, n)
    radius = rng.uniform(MIN_RADIUS, MAX_RADIUS, n).astype(np.float32) * size
    # Whole shapes only, none overlapping: CANDIDATES centres per slot, the first whose
    # circumcircle keeps GAP pixels from every earlier shape's; none fits -> no shape.
    reach = CIRCUMRADIUS * radius
    cand_y = rng.uniform(reach[:, None], size - reach[:, None], (n, CANDIDATES))
    cand_x = rng.uniform(reach[:, None], size - reach[:, None], (n, CANDIDATES))
    free = np.ones((n, CANDIDATES), bool)
    for prev in range(slot):
      distance = np.hypot(cand_y - centres[:, prev, :1], cand_x - centres[:, prev, 1:])
      free &= ~placed[:, prev, None] | (distance >= reach[:, None] + reaches[:, prev, None] + GAP)
    first = np.argmax(free, axis=1)
    placed[:, slot] = free[np.arange(n), first] & (slot < count)
    cy = cand_y[np.arange(n), first].astype(np.float32)
    cx = cand_x[np.arange(n), first].astype(np.float32)
    centres[:, slot] = np.stack([cy, cx], axis=1)
    reaches[:, slot] = reach
    theta = rng.uniform(-MAX_ROTATION, MAX_ROTATION, n).astype(np.float32)
    hue = (KIND_HUES[kind] + rng.uniform(-HUE_JITTER, HUE_JITTER, n)) % 1.0
    saturation = rng.uniform(0.45, 1.0, n)
    value = rng.uniform(0.35, 1.0, n)
    color = _hsv_to_rgb(hue, saturation, value)
    too_close = np.linalg.norm(color - background_mean, axis=1) < MIN_CONTRAST
    value = np.where(too_close, np.where(value > 0.67, value - 0.45, value + 0.45), value)
    colors[:, slot] = _hsv_to_rgb(hue, saturation, np.clip(value, 0.1, 1.0))
    for k in range(1, NUM_CLASSES):
      sel = np.nonzero((kind == k) & placed[:, slot])[0]
      if not len(sel):
        continue
      col = lambda a: a[sel, None, None]  # noqa: E731
      mask = _shape_masks(k, yy - col(cy), xx - col(cx), col(radius), col(theta))
      label[sel] = np.where(mask, np.uint8(k), label[sel])
      owner[sel] = np.where(mask, np.int8(slot), owner[sel])
  slot_of_pixel = np.arange(n, dtype=np.int32)[:, None, None] * MAX_SHAPES + np.maximum(owner, 0)
  shape_color = colors.reshape(-1, 3)[slot_of_pixel]
  image = np.where((owner >= 0)[..., None], shape_color, background)
  shade = rng.uniform(6, 16, (n, 1, 1, 1)).astype(np.float32)  # uniform noise, +-shade / 2
  image += shade * (rng.random(image.shape, np.float32) - 0.5)
  return np.clip(np.round(image), 0, 255).astype(np.uint8), label


@functools.lru_cache(maxsize=4)
def generate(num_images: int, image_size: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, S, S, 3), labels uint8 (N, S, S)), a pure function of its arguments.

  Cached (read-only arrays) because the pipeline asks for the same set more than once.
  """
  if num_images < 0 or image_size < 8:
    raise ValueError(f'shapes data set needs num_images >= 0 and image_size >= 8; got '
                     f'{num_images} and {image_size}')
  rng = np.random.default_rng(seed)
  images = np.zeros((num_images, image_size, image_size, 3), np.uint8)
  labels = np.zeros((num_images, image_size, image_size), np.uint8)
  for start in range(0, num_images, _CHUNK):
    n = min(_CHUNK, num_images - start)
    images[start:start + n], labels[start:start + n] = _generate_chunk(rng, n, image_size)
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


def split_seed(split: str) -> int:
  if split == 'train':
    return TRAIN_SEED
  if split in ('val', 'validation', 'eval'):
    return EVAL_SEED
  raise ValueError(f"shapes data set has splits 'train' and 'val'; got {split!r}")


def load_split(split: str, num_images: int, image_size: int) -> Tuple[np.ndarray, np.ndarray]:
  """The 'train' or 'val' split of the given size."""
  return generate(num_images, image_size, split_seed(split))
