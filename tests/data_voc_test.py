"""VOC 2012 + SBD builder from fixture trees in the shipped layouts (tar, .mat, PNG)."""
import os

import numpy as np
import pytest

from configs import default
from deeplax.data import pipeline
from deeplax.data import voc
from tests import data_fixtures as fx


def _config(tmp_path, manual_dir, train_split='train_aug'):
  config = default.get_config()
  config.dataset.name = 'voc'
  config.dataset.manual_dir = str(manual_dir)
  config.dataset.data_dir = str(tmp_path / 'tfds')
  config.dataset.train_split = train_split
  config.augment.crop_size = (16, 16)
  config.eval.pad_size = (24, 24)
  config.eval.batch_size = 2
  config.batch_size = 2
  return config


def _examples(source, split):
  out = {}
  for record in source.read(split, 0, source.num_examples(split)):
    example = source.decode(record)
    out[example['file_name'].numpy().decode()] = (example['image'].numpy(),
                                                 example['label'].numpy())
  return out


@pytest.fixture(scope='module')
def tar_and_mat(tmp_path_factory):
  root = tmp_path_factory.mktemp('voc_tar')
  fx.write_voc(str(root), as_tar=True)
  fx.write_sbd_mat(str(root))
  return root


def test_tar_and_sbd_mat_splits_and_labels(tmp_path, tar_and_mat):
  assert os.path.isfile(tar_and_mat / voc.VOC_TAR)
  source = voc.source(_config(tmp_path, tar_and_mat))
  assert source.num_classes == 21
  assert {s: source.num_examples(s) for s in ('train', 'val', 'train_aug')} == {
      'train': 4, 'val': 3, 'train_aug': 8}
  train_aug = _examples(source, 'train_aug')
  assert sorted(train_aug) == fx.TRAIN_AUG
  assert not set(train_aug) & set(fx.VOC_VAL)  # never a val image
  for image_id, (image, label) in train_aug.items():
    if image_id in fx.VOC_TRAIN:  # VOC's own label (palette PNG read as indices, 255 kept)
      np.testing.assert_array_equal(label, fx.voc_label(image_id))
    else:  # SBD's .mat label
      np.testing.assert_array_equal(label, fx.sbd_label(image_id))
      assert label[0, 0] == fx.SBD_CLASS
    assert image.shape == label.shape + (3,)
    # The image is the one painted from this id's label (JPEG: TF and PIL decoders differ
    # by a few levels, the painted colours by > 100).
    assert np.abs(image.astype(int) - fx.paint(fx.voc_label(image_id)).astype(int)).mean() < 8
  val = _examples(source, 'val')
  assert sorted(val) == sorted(fx.VOC_VAL)
  for image_id, (_, label) in val.items():
    np.testing.assert_array_equal(label, fx.voc_label(image_id))
    assert (label[0] == 255).all()


def test_extracted_devkit_and_segmentation_class_aug(tmp_path):
  root = tmp_path / 'voc_tree'
  fx.write_voc(str(root), as_tar=False)
  fx.write_sbd_aug_png(str(root))
  config = _config(tmp_path, root)
  source = voc.source(config)
  train_aug = _examples(source, 'train_aug')
  assert sorted(train_aug) == fx.TRAIN_AUG
  for image_id in fx.SBD_ONLY:
    np.testing.assert_array_equal(train_aug[image_id][1], fx.sbd_label(image_id))
  # Through the pipeline: info, a train batch and every val image once.
  info = pipeline.get_info(config)
  assert (info.num_train, info.num_eval, info.num_classes) == (8, 3, 21)
  assert tuple(info.palette[15]) == (192, 128, 128)
  batch = next(pipeline.create_train_iterator(config, seed=0))
  assert batch['image'].shape == (2, 16, 16, 3)
  assert set(np.unique(batch['label'])) <= set(range(21)) | {255}
  names = [n for b in pipeline.create_eval_iterator(config) for n, v in
           zip(b['file_name'], b['valid']) if v]
  assert sorted(names) == sorted(fx.VOC_VAL)
  # Two hosts read disjoint slices of the prepared split that cover it.
  per_host = [[n for b in pipeline.create_eval_iterator(config, host, 2)
               for n, v in zip(b['file_name'], b['valid']) if v] for host in (0, 1)]
  assert [len(h) for h in per_host] == [1, 2]
  assert sorted(per_host[0] + per_host[1]) == sorted(fx.VOC_VAL)


def test_missing_sbd_and_missing_label_are_named(tmp_path):
  root = tmp_path / 'voc_only'
  fx.write_voc(str(root), as_tar=False)
  with pytest.raises(voc.DataError, match=r'SBD \(needed for train_aug\) not found'):
    voc.source(_config(tmp_path, root))
  missing = root / 'VOCdevkit' / 'VOC2012' / 'SegmentationClass' / f'{fx.VOC_VAL[0]}.png'
  os.remove(missing)
  with pytest.raises(voc.DataError, match=f'label of image .*{fx.VOC_VAL[0]}.jpg.*'
                                          f'{fx.VOC_VAL[0]}.png does not exist'):
    voc.source(_config(tmp_path, root, train_split='train'))
  with pytest.raises(voc.DataError, match='PASCAL VOC 2012 not found'):
    voc.source(_config(tmp_path, tmp_path / 'nowhere', train_split='train'))


def test_sbd_mat_without_gtcls_is_named(tmp_path):
  path = str(tmp_path / 'x.mat')
  import scipy.io  # pylint: disable=import-outside-toplevel
  scipy.io.savemat(path, {'GTinst': {'Segmentation': np.zeros((2, 2))}})
  with pytest.raises(voc.DataError, match='x.mat has no 2-D GTcls.Segmentation'):
    voc.read_sbd_mat(path)
  with open(path, 'wb') as f:
    f.write(b'garbage')
  with pytest.raises(voc.DataError, match='x.mat is corrupt'):
    voc.read_sbd_mat(path)
