"""Per-class CSV, confusion-matrix image and atomic writes, against hand-computed values."""
import csv
import os

import numpy as np
import pytest

from deeplax import reporting

# rows = label, columns = prediction
CONFUSION = np.array([[3, 1, 0],
                      [0, 0, 0],
                      [2, 0, 2]])


def test_class_rows_hand_computed():
  rows = reporting.class_rows(CONFUSION, ['bg', 'cat'])
  # class 0: TP 3, label 4, predicted 5 -> IoU 3 / (4 + 5 - 3) = 0.5, accuracy 3/4
  assert rows[0] == {'index': 0, 'name': 'bg', 'iou': 0.5, 'accuracy': 0.75,
                     'label_pixels': 4, 'predicted_pixels': 5}
  # class 1: never labelled, predicted once -> IoU 0 / 1 = 0, accuracy undefined
  assert rows[1] == {'index': 1, 'name': 'cat', 'iou': 0.0, 'accuracy': None,
                     'label_pixels': 0, 'predicted_pixels': 1}
  # class 2 (no name given): TP 2, label 4, predicted 2 -> IoU 2 / 4, accuracy 2 / 4
  assert rows[2] == {'index': 2, 'name': 'class_2', 'iou': 0.5, 'accuracy': 0.5,
                     'label_pixels': 4, 'predicted_pixels': 2}
  absent = reporting.class_rows(np.array([[1, 0], [0, 0]]))[1]
  assert absent['iou'] is None and absent['accuracy'] is None


def test_csv_contents(tmp_path):
  path = reporting.write_csv(str(tmp_path / 'eval_results.csv'),
                             reporting.class_rows(CONFUSION, ['bg', 'cat', 'dog']))
  with open(path) as f:
    lines = f.read().splitlines()
  assert lines == ['index,name,iou,accuracy,label_pixels,predicted_pixels',
                   '0,bg,0.5,0.75,4,5',
                   '1,cat,0.0,,0,1',
                   '2,dog,0.5,0.5,4,2']
  with open(path) as f:
    assert [r['name'] for r in csv.DictReader(f)] == ['bg', 'cat', 'dog']
  assert os.listdir(tmp_path) == ['eval_results.csv']  # no temp file left


def test_confusion_matrix_image_hand_computed():
  image = reporting.confusion_matrix_image(CONFUSION, cell=2)
  assert image.dtype == np.uint8 and image.shape == (6, 6, 3)
  # Row-normalised: [[.75, .25, 0], [0, 0, 0], [.5, 0, .5]]; R = G = round(255 (1 - v)).
  fade = np.array([[64, 191, 255],
                   [255, 255, 255],
                   [128, 255, 128]])
  np.testing.assert_array_equal(image[::2, ::2, 0], fade)
  np.testing.assert_array_equal(image[::2, ::2, 1], fade)
  assert (image[..., 2] == 255).all()
  np.testing.assert_array_equal(image[1::2, 1::2], image[::2, ::2])  # 2x2 cells
  assert reporting.confusion_matrix_image(np.eye(19, dtype=int)).shape == (266, 266, 3)


def test_confusion_matrix_must_be_square():
  with pytest.raises(ValueError, match=r'square.*\(2, 3\)'):
    reporting.confusion_matrix_image(np.zeros((2, 3)))


def test_write_files_atomic_all_or_nothing(tmp_path, monkeypatch):
  old = tmp_path / 'a.png'
  old.write_bytes(b'old')
  real_replace = os.replace
  calls = []

  def failing_replace(src, dst):
    calls.append(dst)
    if len(calls) == 2:
      raise OSError('disk full (simulated)')
    real_replace(src, dst)

  monkeypatch.setattr(reporting.os, 'replace', failing_replace)
  with pytest.raises(OSError, match='simulated'):
    reporting.write_files_atomic({str(tmp_path / 'b.png'): b'b' * 1000,
                                  str(tmp_path / 'c.png'): b'c' * 1000})
  assert sorted(os.listdir(tmp_path)) == ['a.png']  # neither b nor c, no temp files
  monkeypatch.setattr(reporting.os, 'replace', real_replace)
  reporting.write_file_atomic(str(old), b'new')
  assert old.read_bytes() == b'new' and sorted(os.listdir(tmp_path)) == ['a.png']


def test_write_eval_report(tmp_path):
  """The eval hook: CSV beside eval_results.json, image to TensorBoard through a clu
  writer's write_images (which takes (N, H, W, 3) uint8, as the eval panels)."""
  written = {}

  class Recorder:  # the one clu MetricWriter method used
    def write_images(self, step, images):
      written[step] = images

  path = reporting.write_eval_report(str(tmp_path), CONFUSION, ['bg', 'cat', 'dog'],
                                     Recorder(), step=7)
  assert path == str(tmp_path / 'eval_results.csv')
  assert (tmp_path / 'eval_results.csv').read_text().splitlines()[1] == '0,bg,0.5,0.75,4,5'
  image = written[7]['eval/confusion_matrix']
  assert image.shape == (1, 258, 258, 3) and image.dtype == np.uint8  # cell ceil(256/3)=86
