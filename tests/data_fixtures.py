"""Tiny data set trees in the real on-disk layouts, written by the data tests.

Labels are blocky class maps (with a 255 border for VOC, as VOC's boundaries) and each
image is painted from its label, so a test can tell which label belongs to which image.
"""
import os
import tarfile

import numpy as np
import scipy.io
from PIL import Image

from deeplax.data import palettes

COLORS = np.array([[20, 20, 20], [230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40]]
                  + [[(17 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(5, 256)],
                  np.uint8)


def label_map(seed: int, height: int, width: int, num_classes: int, border: bool = False):
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, num_classes, (height // 4 + 1, width // 4 + 1))
  label = np.kron(coarse, np.ones((4, 4), np.int64))[:height, :width].astype(np.uint8)
  if border:
    label[0, :] = 255
  return label


def paint(label: np.ndarray) -> np.ndarray:
  return COLORS[np.where(label == 255, 0, label)]


def save_image(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if path.endswith('.jpg'):  # 4:4:4 so small colour blocks survive the round trip
    Image.fromarray(image).save(path, quality=98, subsampling=0)
  else:
    Image.fromarray(image).save(path)


def save_palette_png(path: str, label: np.ndarray, palette: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(label, mode='P')
  flat = np.zeros((256, 3), np.uint8)
  flat[:len(palette)] = palette
  flat[255] = (224, 224, 192)
  image.putpalette(flat.ravel().tolist())
  image.save(path)


def save_grey_png(path: str, label: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(label, mode='L').save(path)


def write_lines(path: str, lines) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(''.join(f'{line}\n' for line in lines))


# VOC fixture: ids as VOC names them; SBD overlaps VOC train and VOC val on purpose.
VOC_TRAIN = ['2007_000032', '2007_000039', '2008_000008', '2009_000012']
VOC_VAL = ['2007_000033', '2008_000009', '2010_000002']
SBD_TRAIN = ['2007_000032', '2007_000033', '2008_000100', '2008_000101']  # + a VOC train & val
SBD_VAL = ['2008_000009', '2009_000200', '2010_000300']  # + a VOC val
SBD_ONLY = sorted(set(SBD_TRAIN + SBD_VAL) - set(VOC_TRAIN) - set(VOC_VAL))
TRAIN_AUG = sorted(set(VOC_TRAIN) | set(SBD_ONLY))
SBD_CLASS = 7  # every SBD label is filled with this class in its top-left block


def voc_label(image_id: str) -> np.ndarray:
  seed = int(image_id.replace('_', ''))
  return label_map(seed, 12 + seed % 3 * 4, 16 + seed % 2 * 4, 21, border=True)


def sbd_label(image_id: str) -> np.ndarray:
  label = voc_label(image_id).copy()
  label[label == 255] = 0  # SBD has no boundary label
  label[:4, :4] = SBD_CLASS
  return label


def write_voc(root: str, as_tar: bool = True) -> str:
  """VOCdevkit/VOC2012 tree (or the VOCtrainval tar of it) under root."""
  devkit = os.path.join(root, 'tree' if as_tar else '', 'VOCdevkit', 'VOC2012')
  for image_id in sorted(set(VOC_TRAIN + VOC_VAL + SBD_ONLY)):
    label = voc_label(image_id)
    save_image(os.path.join(devkit, 'JPEGImages', image_id + '.jpg'), paint(label))
    if image_id in VOC_TRAIN + VOC_VAL:
      save_palette_png(os.path.join(devkit, 'SegmentationClass', image_id + '.png'), label,
                       palettes.voc_palette())
  sets = os.path.join(devkit, 'ImageSets', 'Segmentation')
  write_lines(os.path.join(sets, 'train.txt'), VOC_TRAIN)
  write_lines(os.path.join(sets, 'val.txt'), VOC_VAL)
  write_lines(os.path.join(sets, 'trainval.txt'), sorted(VOC_TRAIN + VOC_VAL))
  if as_tar:
    with tarfile.open(os.path.join(root, 'VOCtrainval_11-May-2012.tar'), 'w') as tar:
      tar.add(os.path.join(root, 'tree', 'VOCdevkit'), arcname='VOCdevkit')
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(os.path.join(root, 'tree'))
  return root


def write_sbd_mat(root: str) -> None:
  """benchmark_RELEASE/dataset/{cls/*.mat, img/*.jpg, train.txt, val.txt}."""
  dataset = os.path.join(root, 'benchmark_RELEASE', 'dataset')
  os.makedirs(os.path.join(dataset, 'cls'), exist_ok=True)
  for image_id in SBD_TRAIN + SBD_VAL:
    label = sbd_label(image_id)
    gt = {'Segmentation': label, 'Boundaries': np.zeros((20, 1), object),
          'CategoriesPresent': np.unique(label[label > 0]).astype(np.uint8)}
    scipy.io.savemat(os.path.join(dataset, 'cls', image_id + '.mat'), {'GTcls': gt})
    save_image(os.path.join(dataset, 'img', image_id + '.jpg'), paint(voc_label(image_id)))
  write_lines(os.path.join(dataset, 'train.txt'), SBD_TRAIN)
  write_lines(os.path.join(dataset, 'val.txt'), SBD_VAL)


def write_sbd_aug_png(root: str) -> None:
  """SegmentationClassAug/*.png (greyscale class indices), as DeepLab-v2 distributes it."""
  for image_id in sorted(set(SBD_TRAIN + SBD_VAL + VOC_TRAIN + VOC_VAL)):
    save_grey_png(os.path.join(root, 'SegmentationClassAug', image_id + '.png'),
                  sbd_label(image_id))


# Cityscapes fixture: label ids (not train ids) as gtFine ships them.
CITY_SPLITS = {'train': [('aachen', '000000_000019'), ('aachen', '000001_000019'),
                         ('bochum', '000000_000313')],
               'val': [('frankfurt', '000000_000294'), ('lindau', '000000_000019')]}


def city_label_ids(seed: int, height: int = 16, width: int = 32) -> np.ndarray:
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 34, (height // 4, width // 4))
  return np.kron(coarse, np.ones((4, 4), np.int64)).astype(np.uint8)


def write_cityscapes(root: str) -> None:
  for split, frames in CITY_SPLITS.items():
    for index, (city, frame) in enumerate(frames):
      stem = f'{city}_{frame}'
      ids = city_label_ids(index + 10 * len(split))
      save_grey_png(os.path.join(root, 'gtFine', split, city, stem + '_gtFine_labelIds.png'),
                    ids)
      save_grey_png(os.path.join(root, 'gtFine', split, city, stem + '_gtFine_instanceIds.png'),
                    ids)
      save_image(os.path.join(root, 'leftImg8bit', split, city, stem + '_leftImg8bit.png'),
                 paint(ids))
