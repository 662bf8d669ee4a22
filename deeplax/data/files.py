"""Reading and checking image/label files once, when a data set is prepared.

Every problem is found here, with PIL, before a single training step: a missing file, a
corrupt or truncated file, a label whose size differs from its image, a label value that
is neither a class nor the ignore label. Each raises DataError naming the file and what
was expected; with corrupt_policy='skip', unreadable files are skipped instead, and
counted and listed (never silently dropped).
"""
import io
import logging
import os
import threading
from typing import Callable, List, Optional, Tuple

import numpy as np
from PIL import Image

from deeplax.data.base import DataError
from deeplax.data.tf_cpu import tf

# Images TF decodes as-is (decode_image, channels=3); anything else is re-encoded to PNG.
_KEEP_FORMATS = {'JPEG': 'jpeg', 'PNG': 'png'}
_KEEP_MODES = ('RGB', 'L')


class CorruptFile(DataError):
  """A file that cannot be read or decoded (the policy may skip these)."""


def require_dir(path: str, what: str) -> str:
  if not os.path.isdir(path):
    raise DataError(f'{what} directory {path} does not exist')
  return path


def require_file(path: str, what: str) -> str:
  if not os.path.isfile(path):
    raise DataError(f'{what} {path} does not exist')
  return path


def _open(path: str) -> Image.Image:
  """The fully decoded image; CorruptFile naming `path` for anything PIL cannot read.

  PNG chunk checksums are verified first: PIL's decoder skips the IDAT checksum, so a
  flipped byte in the pixel data would otherwise load as a silently different label
  (or fail later inside TF's libpng, which does check it).
  """
  try:
    with Image.open(path) as probe:
      if probe.format == 'PNG':
        probe.verify()
    image = Image.open(path)
    image.load()  # decode fully: truncated or corrupt data fails here, not in training
    return image
  except FileNotFoundError:
    raise DataError(f'{path} does not exist') from None
  except MemoryError:
    raise
  except Exception as e:  # PIL raises many types for bad data  # pylint: disable=broad-except
    raise CorruptFile(f'{path} is corrupt or not an image ({type(e).__name__}: {e})') from None


def _check_tf_decodes(data: bytes, path: str, size: Tuple[int, int]) -> None:
  """The kept bytes decode in TF (what the pipeline runs) to the size PIL read.

  Decoders differ in what they tolerate; checking here turns a failure deep inside a
  training run's tf.data into an error naming the file while preparing.
  """
  try:
    decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
    shape = tuple(decoded.shape[:2])
  except tf.errors.OpError as e:
    raise CorruptFile(f'{path} is corrupt: TensorFlow cannot decode it ({e.message})') from None
  if shape != tuple(size):
    raise CorruptFile(f'{path} is corrupt: TensorFlow decodes it as {shape[0]}x{shape[1]} '
                      f'(HxW) but PIL as {size[0]}x{size[1]}')


def read_image(path: str) -> Tuple[bytes, Tuple[int, int]]:
  """Encoded bytes TF can decode to RGB, and the (height, width) of the image.

  JPEG/PNG files in RGB or greyscale are kept byte for byte; other formats or modes
  (palette, RGBA, CMYK, 16-bit, BMP, WebP, ...) are converted to RGB and stored as PNG.
  """
  image = _open(path)
  size = (image.height, image.width)
  if image.format in _KEEP_FORMATS and image.mode in _KEEP_MODES:
    with open(path, 'rb') as f:
      data = f.read()
    _check_tf_decodes(data, path, size)
    return data, size
  buffer = io.BytesIO()
  image.convert('RGB').save(buffer, format='PNG', compress_level=1)
  return buffer.getvalue(), size


def read_label(path: str) -> np.ndarray:
  """uint8 (H, W) class indices from a single-channel or palette PNG (indices, not colours)."""
  image = _open(path)
  if image.format == 'JPEG':
    raise DataError(f'label {path} is a JPEG: lossy compression changes class indices near '
                    'every boundary; labels must be PNG (or another lossless format)')
  if image.mode in ('P', 'L'):
    return np.asarray(image, np.uint8)
  if image.mode in ('I', 'I;16', 'I;16B', 'I;16L'):
    values = np.asarray(image)
    if values.min() < 0 or values.max() > 255:
      raise DataError(f'label {path} has values in [{values.min()}, {values.max()}]; '
                      'expected class indices in [0, 255]')
    return values.astype(np.uint8)
  raise DataError(f'label {path} has mode {image.mode!r}; expected a single-channel (L) or '
                  'palette (P) PNG whose pixel values are class indices (255 = ignore)')


def check_label(label: np.ndarray, path: str, image_size: Tuple[int, int],
                num_classes: int, ignore_label: int = 255, image_path: str = '') -> None:
  """Raises DataError naming `path` if the size or any value is wrong."""
  if tuple(label.shape[:2]) != tuple(image_size):
    raise DataError(f'label {path} is {label.shape[0]}x{label.shape[1]} (HxW) but its image '
                    f'{image_path} is {image_size[0]}x{image_size[1]}')
  values = np.unique(label)
  bad = values[(values >= num_classes) & (values != ignore_label)]
  if len(bad):
    raise DataError(f'label {path} has values {bad.tolist()[:10]}: expected class indices '
                    f'0..{num_classes - 1} or {ignore_label} (ignore)')


def encode_label(label: np.ndarray) -> bytes:
  """(H, W) uint8 -> greyscale PNG bytes (what the pipeline decodes back to indices)."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(label, np.uint8), mode='L').save(buffer, format='PNG',
                                                             compress_level=1)
  return buffer.getvalue()


class CorruptPolicy:
  """'error': a corrupt file raises; 'skip': it is skipped, logged, counted and listed."""

  def __init__(self, policy: str):
    if policy not in ('error', 'skip'):
      raise ValueError(f"dataset.corrupt_policy={policy!r}; allowed: 'error', 'skip'")
    self.policy = policy
    self.skipped: List[str] = []
    self._lock = threading.Lock()

  def run(self, fn: Callable, *args) -> Optional[object]:
    """fn(*args), or None when it hit a corrupt file and the policy is 'skip'."""
    try:
      return fn(*args)
    except CorruptFile as e:
      if self.policy == 'error':
        raise
      with self._lock:
        self.skipped.append(str(e))
      logging.warning('corrupt_policy=skip: skipping example: %s', e)
      return None
