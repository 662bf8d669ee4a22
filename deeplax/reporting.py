"""Evaluation reports people read beyond the scalars: a per-class CSV table (IoU,
accuracy, pixel counts) and a confusion-matrix image for TensorBoard.

The eval loop's own summary (mIoU, per-class IoU) and its JSON are the trainer's
(`metrics.summarize`, `train.write_json`); this module adds the per-class file a
spreadsheet opens and the picture of which classes are confused with which. Files are
written to a temporary name and renamed into place, so a crash never leaves a
half-written report where a complete one is expected.
"""
import csv
import io
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

CSV_FIELDS = ('index', 'name', 'iou', 'accuracy', 'label_pixels', 'predicted_pixels')
EVAL_CSV = 'eval_results.csv'  # beside the trainer's eval_results.json


def _temp_name(path: str) -> str:
  return os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.tmp-{os.getpid()}')


def write_files_atomic(files: Dict[str, bytes]) -> None:
  """Writes every {path: data} all-or-nothing: all go to temp files in their own
  directories first, then are renamed (os.replace) into place; on any failure the
  temps and the files already renamed by this call are removed, so readers never see
  a prefix of a file, nor some of the files without the others."""
  files = {os.path.abspath(p): data for p, data in files.items()}
  temps, renamed = {}, []
  try:
    for path, data in files.items():
      os.makedirs(os.path.dirname(path), exist_ok=True)
      temps[path] = _temp_name(path)
      with open(temps[path], 'wb') as f:
        f.write(data)
    for path, tmp in temps.items():
      os.replace(tmp, path)
      renamed.append(path)
  except BaseException:
    for path in renamed:
      if os.path.exists(path):
        os.remove(path)
    raise
  finally:
    for tmp in temps.values():
      if os.path.exists(tmp):
        os.remove(tmp)


def write_file_atomic(path: str, data: bytes) -> None:
  """Writes `data` to `path` via a temp file in the same directory and os.replace:
  readers see the old file or the complete new one, never a prefix."""
  write_files_atomic({path: data})


def _square(confusion) -> np.ndarray:
  confusion = np.asarray(confusion, np.float64)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f'confusion matrix must be square (C, C), got shape {confusion.shape}')
  return confusion


def class_rows(confusion, class_names: Optional[Sequence[str]] = None) -> List[Dict]:
  """One dict per class from a confusion matrix (rows = label, columns = prediction):
  IoU = TP / (TP + FP + FN) and accuracy (recall) = TP / label pixels, None where the
  denominator is 0 (the class is absent), plus both pixel counts."""
  cm = _square(confusion)
  names = list(class_names or ())
  names += [f'class_{i}' for i in range(len(names), cm.shape[0])]
  tp = np.diag(cm)
  label_pixels = cm.sum(axis=1)
  predicted_pixels = cm.sum(axis=0)
  union = label_pixels + predicted_pixels - tp
  rows = []
  for i in range(cm.shape[0]):
    rows.append({
        'index': i, 'name': names[i],
        'iou': float(tp[i] / union[i]) if union[i] else None,
        'accuracy': float(tp[i] / label_pixels[i]) if label_pixels[i] else None,
        'label_pixels': int(label_pixels[i]), 'predicted_pixels': int(predicted_pixels[i])})
  return rows


def write_csv(path: str, rows: Sequence[Dict]) -> str:
  """Writes `class_rows` output as CSV (empty cell for None), atomically. Returns path."""
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow({k: '' if row[k] is None else row[k] for k in CSV_FIELDS})
  write_file_atomic(path, text.getvalue().encode())
  return path


def confusion_matrix_image(confusion, cell: int = 0, min_size: int = 256) -> np.ndarray:
  """Row-normalised confusion matrix (rows = label, columns = prediction) as a uint8
  (H, W, 3) image: white for 0 through blue (0, 0, 255) for 1, each entry a `cell`-pixel
  square (0: the smallest cell making the image at least `min_size` pixels wide).
  A class with no labelled pixels gives a white row."""
  cm = _square(confusion)
  rows = cm.sum(axis=1, keepdims=True)
  normalised = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
  fade = np.round(255 * (1 - normalised)).astype(np.uint8)
  image = np.stack([fade, fade, np.full_like(fade, 255)], axis=-1)
  if cell <= 0:
    cell = max(1, -(-min_size // cm.shape[0]))
  return np.repeat(np.repeat(image, cell, axis=0), cell, axis=1)


def write_eval_report(workdir: str, confusion, class_names: Sequence[str], writer,
                      step: int) -> str:
  """What an evaluation adds beyond the trainer's JSON and table: WORKDIR/eval_results.csv
  and the confusion-matrix image (TensorBoard 'eval/confusion_matrix', through a clu
  metric writer). Returns the CSV path."""
  path = write_csv(os.path.join(workdir, EVAL_CSV), class_rows(confusion, class_names))
  writer.write_images(step, {'eval/confusion_matrix': confusion_matrix_image(confusion)[None]})
  return path
