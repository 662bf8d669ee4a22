"""A user's own data: an images directory and a labels directory, as a tfds builder.

Layout (dataset.manual_dir = <root>; image_dir / label_dir relative to it or absolute,
default 'images' and 'labels'):
  <root>/images/**/<name>.jpg|.png|...   RGB images (any PIL-readable format)
  <root>/labels/**/<name>.png            class indices: greyscale or palette-mode PNG
                                         (palette PNGs are read as indices), 255 = ignore;
                                         RGB colour masks only with dataset.palette set
  <root>/train.txt, <root>/val.txt       optional: one example per line, either
                                         '<image path> <label path>' (relative to <root>)
                                         or a name (path under image_dir without extension)
An image and its label match by their path under image_dir / label_dir without the
extension. When train.txt and val.txt are absent they are generated (as seed 000 does):
every matched pair, a stable dataset.val_fraction of them (by a hash of the name) in val.

The prepared copy is keyed by a hash of the file list, sizes and modification times:
adding, removing or editing a file prepares a new copy on the next run.
"""
import hashlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from deeplax.data import files
from deeplax.data import palettes
from deeplax.data import tfds_source
from deeplax.data.base import DataError

SPLITS = ('train', 'val')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
LABEL_EXTENSIONS = ('.png', '.bmp', '.tif', '.tiff')


def _resolve(root: str, path: str, default: str) -> str:
  path = os.path.expanduser(path or default)
  return path if os.path.isabs(path) else os.path.join(root, path)


def _index(directory: str, extensions: Sequence[str], what: str) -> Dict[str, str]:
  """name (relative path without extension) -> path, for every file with an extension."""
  found: Dict[str, str] = {}
  for folder, _, names in os.walk(files.require_dir(directory, what)):
    for name in sorted(names):
      stem, ext = os.path.splitext(name)
      if ext.lower() not in extensions:
        continue
      key = os.path.relpath(os.path.join(folder, stem), directory).replace(os.sep, '/')
      path = os.path.join(folder, name)
      if key in found:
        raise DataError(f'{what} files {found[key]} and {path} have the same name; an image '
                        'and its label are matched by name, so names must be unique')
      found[key] = path
  return found


def _stable_fraction(name: str) -> float:
  return int(hashlib.md5(name.encode()).hexdigest()[:8], 16) / 16**8


class FolderLayout:
  """The matched (image, label) pairs of each split of a folder data set."""

  def __init__(self, root: str, image_dir: str = '', label_dir: str = '',
               val_fraction: float = 0.1):
    self.root = files.require_dir(os.path.abspath(os.path.expanduser(root)),
                                  'folder data set (dataset.manual_dir)')
    self.image_dir = _resolve(self.root, image_dir, 'images')
    self.label_dir = _resolve(self.root, label_dir, 'labels')
    self.val_fraction = val_fraction
    self.splits = self._read_or_write_lists()

  def _list_path(self, split: str) -> str:
    return os.path.join(self.root, f'{split}.txt')

  def _read_or_write_lists(self) -> Dict[str, List[Tuple[str, str, str]]]:
    present = [os.path.isfile(self._list_path(s)) for s in SPLITS]
    if any(present) and not all(present):
      missing = [self._list_path(s) for s, p in zip(SPLITS, present) if not p]
      raise DataError(f'{missing[0]} does not exist but its sibling list does; write both '
                      'train.txt and val.txt, or neither (then both are generated)')
    if all(present):
      return {s: self._read_list(self._list_path(s)) for s in SPLITS}
    return self._write_lists()

  def _read_list(self, path: str) -> List[Tuple[str, str, str]]:
    images = labels = None
    pairs = []
    with open(path) as f:
      for number, line in enumerate(f, 1):
        fields = line.split()
        if not fields:
          continue
        if len(fields) == 2:
          image, label = (os.path.join(self.root, p) for p in fields)
          files.require_file(image, f'image listed at {path}:{number}:')
          files.require_file(label, f'label of image {image} (listed at {path}:{number}):')
          pairs.append((fields[0], image, label))
        elif len(fields) == 1:
          if images is None:
            images = _index(self.image_dir, IMAGE_EXTENSIONS, 'image')
            labels = _index(self.label_dir, LABEL_EXTENSIONS, 'label')
          name = fields[0]
          if name not in images:
            raise DataError(f'{path}:{number} lists {name!r} but no image {self.image_dir}/'
                            f'{name}.<{"|".join(e[1:] for e in IMAGE_EXTENSIONS)}> exists')
          if name not in labels:
            raise DataError(f'image {images[name]} (listed at {path}:{number}) has no label: '
                            f'expected {self.label_dir}/{name}.png')
          pairs.append((name, images[name], labels[name]))
        else:
          raise DataError(f'{path}:{number}: expected "<image> <label>" or "<name>", got '
                          f'{line.strip()!r}')
    return pairs

  def _write_lists(self) -> Dict[str, List[Tuple[str, str, str]]]:
    images = _index(self.image_dir, IMAGE_EXTENSIONS, 'image')
    labels = _index(self.label_dir, LABEL_EXTENSIONS, 'label')
    for name, path in images.items():
      if name not in labels:
        raise DataError(f'image {path} has no label: expected {self.label_dir}/{name}.png')
    for name, path in labels.items():
      if name not in images:
        raise DataError(f'label {path} has no image: expected {self.image_dir}/{name}.jpg '
                        'or .png')
    if not images:
      raise DataError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {self.image_dir}')
    names = sorted(images)
    val = [n for n in names if _stable_fraction(n) < self.val_fraction]
    if not val and len(names) > 1 and self.val_fraction > 0:
      val = [min(names, key=_stable_fraction)]
    splits = {'val': val, 'train': [n for n in names if n not in set(val)]}
    out = {}
    for split in SPLITS:
      pairs = [(n, images[n], labels[n]) for n in splits[split]]
      lines = [f'{os.path.relpath(i, self.root)} {os.path.relpath(l, self.root)}'
               for _, i, l in pairs]
      path = self._list_path(split)
      try:
        tmp = f'{path}.tmp-{os.getpid()}'
        with open(tmp, 'w') as f:
          f.write(''.join(line + '\n' for line in lines))
        os.replace(tmp, path)
      except OSError as e:
        raise DataError(f'cannot write {path} ({e}); write train.txt and val.txt there '
                        'yourself') from None
      out[split] = pairs
    return out

  def signature(self, num_classes: int, palette: Optional[np.ndarray]) -> str:
    """Hash of everything the prepared copy depends on."""
    digest = hashlib.sha256(f'{self.root}|{num_classes}|'.encode())
    if palette is not None:
      digest.update(np.asarray(palette, np.uint8).tobytes())
    for split in SPLITS:
      digest.update(split.encode())
      for _, image, label in self.splits[split]:
        for path in (image, label):
          stat = os.stat(path)
          digest.update(f'{path}|{stat.st_size}|{stat.st_mtime_ns};'.encode())
    return digest.hexdigest()[:16]


def label_reader(palette: Optional[np.ndarray]):
  """Reads class indices; RGB colour masks are mapped through `palette` when given."""
  def read(path: str) -> np.ndarray:
    try:
      return files.read_label(path)
    except files.CorruptFile:
      raise
    except DataError:
      if palette is None:
        raise
    rgb = np.asarray(Image.open(path).convert('RGB'), np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table = {(int(r) << 16) | (int(g) << 8) | int(b): i for i, (r, g, b) in enumerate(palette)}
    table.setdefault(0xFFFFFF, 255)  # white = ignore, as colorize draws it
    unique, inverse = np.unique(codes, return_inverse=True)
    unknown = [u for u in unique if int(u) not in table]
    if unknown:
      colours = [((u >> 16) & 255, (u >> 8) & 255, u & 255) for u in map(int, unknown[:5])]
      raise DataError(f'label {path} is an RGB mask with colours {colours} that are not in '
                      'dataset.palette (and not white = ignore)')
    return np.array([table[int(u)] for u in unique], np.uint8)[inverse].reshape(codes.shape)
  return read


class FolderSegmentation(tfds_source.SegmentationBuilder):
  """A folder of images and a folder of index labels (a user's own data set)."""

  def __init__(self, *, layout: FolderLayout, num_classes: int,
               palette: Optional[np.ndarray], **kwargs):
    self.layout = layout
    self.NUM_CLASSES = num_classes  # pylint: disable=invalid-name
    self._palette = palette
    name = 'd' + layout.signature(num_classes, palette)
    super().__init__(config=tfds.core.BuilderConfig(name=name, description=layout.root),
                     **kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager
    read = label_reader(self._palette)
    return {split: self._generate_examples(
        [(name, name, image, label, read) for name, image, label in self.layout.splits[split]],
        split) for split in SPLITS}


def class_setup(config):
  """(num_classes, class_names, palette or None) from the config's dataset/model keys."""
  d = config.dataset
  names = tuple(d.class_names)
  num_classes = len(names) or config.model.num_classes
  if names and config.model.num_classes != len(names):
    raise DataError(f'dataset.class_names has {len(names)} names but model.num_classes='
                    f'{config.model.num_classes}')
  names = names or tuple(f'class_{i}' for i in range(num_classes))
  palette = palettes.as_palette(d.palette, num_classes, 'dataset.palette') if d.palette \
      else None
  return num_classes, names, palette


def source(config) -> tfds_source.TfdsSource:
  d = config.dataset
  if not d.manual_dir:
    raise DataError("dataset.name='folder' needs dataset.manual_dir: the data set's root "
                    '(holding images/, labels/ and optionally train.txt, val.txt)')
  num_classes, names, palette = class_setup(config)
  layout = FolderLayout(d.manual_dir, d.image_dir, d.label_dir,
                        d.get('val_fraction', 0.1))
  builder = FolderSegmentation(layout=layout, num_classes=num_classes, palette=palette,
                               **tfds_source.builder_kwargs(d, allow_download=False))
  return tfds_source.TfdsSource(tfds_source.prepare(builder), 'folder', names,
                                palette if palette is not None else
                                palettes.generic_palette(num_classes))
