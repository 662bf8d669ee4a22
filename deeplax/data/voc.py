"""PASCAL VOC 2012 segmentation, with the SBD "train_aug" split, as a tfds builder.

tfds's own `voc` has boxes, not masks, hence this builder. Splits:
  train      1,464  VOC2012 ImageSets/Segmentation/train.txt
  val        1,449  VOC2012 ImageSets/Segmentation/val.txt
  train_aug 10,582  (VOC train + SBD train + SBD val) minus every VOC val image
                    (config 'voc2012_aug' only: it needs SBD)
Labels keep 255 (VOC's object boundaries); images and labels keep their sizes. For a
train_aug image VOC's own annotation is used when it has one, SBD's otherwise.

Where the files come from (dataset.manual_dir; '' = download automatically):
  VOC:  <dir>/VOCdevkit/VOC2012/ (extracted) or <dir>/VOCtrainval_11-May-2012.tar
  SBD:  <dir>/benchmark_RELEASE/dataset/{cls/*.mat, train.txt, val.txt} (or benchmark.tgz),
        or <dir>/SegmentationClassAug/*.png (or SegmentationClassAug.zip), the
        DeepLab-v2 release of the same labels as PNGs.
"""
import os
from typing import Dict, List, Set

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from deeplax.data import files
from deeplax.data import palettes
from deeplax.data import tfds_source
from deeplax.data.base import DataError

VOC_URL = 'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar'
SBD_URL = ('http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/'
           'semantic_contours/benchmark.tgz')
VOC_TAR = 'VOCtrainval_11-May-2012.tar'
SBD_TGZ = 'benchmark.tgz'
AUG_ZIP = 'SegmentationClassAug.zip'
SPLIT_SIZES = {'train': 1464, 'val': 1449, 'train_aug': 10582}  # of the real data set


def read_sbd_mat(path: str) -> np.ndarray:
  """uint8 (H, W) class map of an SBD cls/*.mat file (struct GTcls, field Segmentation)."""
  try:
    mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
  except FileNotFoundError:
    raise DataError(f'{path} does not exist') from None
  except Exception as e:  # scipy raises many types for bad files  # pylint: disable=broad-except
    raise files.CorruptFile(f'{path} is corrupt or not a .mat file ({type(e).__name__}: '
                            f'{e})') from None
  gt = mat.get('GTcls')
  segmentation = getattr(gt, 'Segmentation', None)
  if segmentation is None or np.ndim(segmentation) != 2:
    raise DataError(f'{path} has no 2-D GTcls.Segmentation; expected an SBD cls/*.mat file')
  values = np.asarray(segmentation)
  if values.dtype.kind not in 'uifb':
    raise DataError(f'{path}: GTcls.Segmentation has dtype {values.dtype}; expected integer '
                    'class indices')
  # Checked before the cast: uint8 would wrap 256 to 0 and -1 to 255, a silently wrong label.
  if values.size and (values.min() < 0 or values.max() > 255 or
                      (values.dtype.kind == 'f' and not np.all(values == np.round(values)))):
    raise DataError(f'{path}: GTcls.Segmentation has values in [{values.min()}, '
                    f'{values.max()}] (or fractions); expected class indices in [0, 255]')
  return values.astype(np.uint8)


def _read_ids(path: str) -> List[str]:
  files.require_file(path, 'image list')
  with open(path) as f:
    return [line.split()[0] for line in f if line.strip()]


def _find_voc(source_dir: str, dl_manager, allow_download: bool) -> str:
  """The VOC2012 directory (holding JPEGImages/, SegmentationClass/, ImageSets/)."""
  if source_dir:
    for candidate in (os.path.join(source_dir, 'VOCdevkit', 'VOC2012'),
                      os.path.join(source_dir, 'VOC2012'), source_dir):
      if os.path.isdir(os.path.join(candidate, 'SegmentationClass')):
        return candidate
    tar = os.path.join(source_dir, VOC_TAR)
    if os.path.isfile(tar):
      return os.path.join(os.fspath(dl_manager.extract(tar)), 'VOCdevkit', 'VOC2012')
  if allow_download:
    return os.path.join(os.fspath(dl_manager.download_and_extract(VOC_URL)), 'VOCdevkit',
                        'VOC2012')
  raise DataError(f'PASCAL VOC 2012 not found in dataset.manual_dir={source_dir!r}: expected '
                  f'{source_dir}/VOCdevkit/VOC2012/ or {source_dir}/{VOC_TAR} '
                  f'(download {VOC_URL}), or leave manual_dir empty to download it')


def _find_sbd(source_dir: str, voc_dir: str, dl_manager, allow_download: bool):
  """('mat', <dir with cls/ train.txt val.txt>) or ('png', <SegmentationClassAug dir>)."""
  if source_dir:
    for candidate in (os.path.join(source_dir, 'benchmark_RELEASE', 'dataset'),
                      os.path.join(source_dir, 'dataset')):
      if os.path.isdir(os.path.join(candidate, 'cls')):
        return 'mat', candidate
    for candidate in (os.path.join(source_dir, 'SegmentationClassAug'),
                      os.path.join(voc_dir, 'SegmentationClassAug')):
      if os.path.isdir(candidate):
        return 'png', candidate
    if os.path.isfile(os.path.join(source_dir, SBD_TGZ)):
      root = os.fspath(dl_manager.extract(os.path.join(source_dir, SBD_TGZ)))
      return 'mat', os.path.join(root, 'benchmark_RELEASE', 'dataset')
    if os.path.isfile(os.path.join(source_dir, AUG_ZIP)):
      root = os.fspath(dl_manager.extract(os.path.join(source_dir, AUG_ZIP)))
      return 'png', os.path.join(root, 'SegmentationClassAug')
  if allow_download:
    root = os.fspath(dl_manager.download_and_extract(SBD_URL))
    return 'mat', os.path.join(root, 'benchmark_RELEASE', 'dataset')
  raise DataError(
      f'SBD (needed for train_aug) not found in dataset.manual_dir={source_dir!r}: expected '
      f'{source_dir}/benchmark_RELEASE/dataset/cls/*.mat (or {SBD_TGZ}, from {SBD_URL}) or '
      f'{source_dir}/SegmentationClassAug/*.png (or {AUG_ZIP}); or train on '
      "dataset.train_split='train'")


def _sbd_labels(kind: str, sbd_dir: str) -> Dict[str, str]:
  """SBD image id -> label path."""
  if kind == 'mat':
    ids = _read_ids(os.path.join(sbd_dir, 'train.txt')) + _read_ids(
        os.path.join(sbd_dir, 'val.txt'))
    cls_dir = files.require_dir(os.path.join(sbd_dir, 'cls'), 'SBD label')
    labels = {}
    for image_id in ids:
      labels[image_id] = files.require_file(os.path.join(cls_dir, image_id + '.mat'),
                                            f'SBD label of listed image {image_id}:')
    return labels
  return {os.path.splitext(name)[0]: os.path.join(sbd_dir, name)
          for name in sorted(os.listdir(sbd_dir)) if name.endswith('.png')}


def _label_reader(path: str):
  return read_sbd_mat if path.endswith('.mat') else files.read_label


class Voc2012Segmentation(tfds_source.SegmentationBuilder):
  """PASCAL VOC 2012 semantic segmentation (21 classes, 255 = boundary/ignore) + SBD."""
  NUM_CLASSES = len(palettes.VOC_CLASSES)
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='voc2012', description='train and val (VOC only)'),
      tfds.core.BuilderConfig(name='voc2012_aug',
                              description='train, val and train_aug (VOC + SBD)'),
  ]

  def _split_generators(self, dl_manager):
    voc_dir = _find_voc(self.source_dir, dl_manager, self.allow_download)
    image_dir = files.require_dir(os.path.join(voc_dir, 'JPEGImages'), 'VOC image')
    label_dir = files.require_dir(os.path.join(voc_dir, 'SegmentationClass'), 'VOC label')
    lists = os.path.join(voc_dir, 'ImageSets', 'Segmentation')
    train = _read_ids(os.path.join(lists, 'train.txt'))
    val = _read_ids(os.path.join(lists, 'val.txt'))

    def voc_item(image_id, image_path=None):
      image_path = image_path or os.path.join(image_dir, image_id + '.jpg')
      label_path = os.path.join(label_dir, image_id + '.png')
      files.require_file(image_path, 'VOC image')
      files.require_file(label_path, f'label of image {image_path}: expected')
      return (image_id, image_id, image_path, label_path, files.read_label)

    splits = {'train': [voc_item(i) for i in train], 'val': [voc_item(i) for i in val]}
    if self.builder_config.name == 'voc2012_aug':
      kind, sbd_dir = _find_sbd(self.source_dir, voc_dir, dl_manager, self.allow_download)
      splits['train_aug'] = self._train_aug(train, set(val), kind, sbd_dir, image_dir,
                                            voc_item)
    return {name: self._generate_examples(items, name) for name, items in splits.items()}

  @staticmethod
  def _train_aug(train: List[str], val: Set[str], kind: str, sbd_dir: str, image_dir: str,
                 voc_item):
    sbd = _sbd_labels(kind, sbd_dir)
    voc_train = set(train)
    items = []
    for image_id in sorted((voc_train | set(sbd)) - val):
      if image_id in voc_train:
        items.append(voc_item(image_id))
        continue
      image_path = os.path.join(image_dir, image_id + '.jpg')
      if not os.path.isfile(image_path) and kind == 'mat':
        image_path = os.path.join(sbd_dir, 'img', image_id + '.jpg')
      files.require_file(image_path, f'image of SBD label {sbd[image_id]}:')
      items.append((image_id, image_id, image_path, sbd[image_id],
                    _label_reader(sbd[image_id])))
    return items


def builder(dataset_config, aug: bool) -> Voc2012Segmentation:
  allow_download = not dataset_config.manual_dir
  return Voc2012Segmentation(config='voc2012_aug' if aug else 'voc2012',
                             **tfds_source.builder_kwargs(dataset_config, allow_download))


def source(config) -> tfds_source.TfdsSource:
  """The VOC source; the SBD config is prepared only when a split needs train_aug."""
  d = config.dataset
  aug = 'train_aug' in (d.train_split, d.eval_split)
  return tfds_source.TfdsSource(tfds_source.prepare(builder(d, aug)), 'voc',
                                palettes.VOC_CLASSES, palettes.voc_palette())
