"""Segmentation metrics: a confusion matrix accumulated on device as a clu metric, and
the numbers derived from it on the host (mIoU, per-class IoU, pixel accuracy, mean class
accuracy), plus the training-loss collection.

Rows of the confusion matrix are ground truth, columns predictions. Pixels labelled
`ignore_label` (which includes the padding around eval images) and whole padding
images of a remainder batch (`valid=False`) are masked out, so every real pixel of every
image is counted exactly once. Counts are uint32 (a cell overflows only after 4.29e9
pixels of one class pair: about 2000 Cityscapes frames of nothing but road).
"""
from typing import Dict, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     mask: Optional[jax.Array] = None) -> jax.Array:
  """(num_classes, num_classes) uint32 counts of (label, prediction) pairs where `mask`.

  Labels outside [0, num_classes) (e.g. 255) are never counted.
  """
  labels = labels.astype(jnp.int32)
  predictions = predictions.astype(jnp.int32)
  keep = (labels >= 0) & (labels < num_classes)
  if mask is not None:
    keep &= mask
  index = jnp.where(keep, labels * num_classes + predictions, 0)
  counts = jnp.bincount(index.reshape(-1), weights=keep.reshape(-1).astype(jnp.uint32),
                        length=num_classes * num_classes)
  return counts.astype(jnp.uint32).reshape(num_classes, num_classes)


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """clu metric holding the summed confusion matrix; `compute()` returns the matrix."""
  matrix: jax.Array

  @classmethod
  def empty(cls, num_classes: int = 1) -> 'ConfusionMatrix':
    return cls(matrix=jnp.zeros((num_classes, num_classes), jnp.uint32))

  @classmethod
  def from_model_output(cls, *, logits: jax.Array, labels: jax.Array,
                        mask: Optional[jax.Array] = None, **_) -> 'ConfusionMatrix':
    """`logits` (N, H, W, K) give K and the argmax prediction; `mask` (N, H, W) or None."""
    predictions = jnp.argmax(logits, axis=-1)
    return cls(matrix=confusion_matrix(labels, predictions, logits.shape[-1], mask))

  def merge(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
    return type(self)(matrix=self.matrix + other.matrix)

  def compute(self) -> jax.Array:
    return self.matrix


def pixel_mask(labels: jax.Array, valid: Optional[jax.Array],
               ignore_label: int) -> jax.Array:
  """(N, H, W) bool: labelled pixels of real (not remainder-padding) images."""
  mask = labels != ignore_label
  if valid is not None:
    mask &= valid.astype(bool)[:, None, None]
  return mask


def summarize(matrix, class_names: Optional[Sequence[str]] = None) -> Dict:
  """Host-side numbers from a confusion matrix, in float64.

  IoU_c = TP / (TP + FP + FN). A class absent from both ground truth and prediction has
  no IoU (NaN here, None in JSON) and is left out of the mean, as the VOC/Cityscapes
  evaluation scripts do. Mean class accuracy averages recall over classes present in
  the ground truth.
  """
  cm = np.asarray(matrix, np.float64)
  k = cm.shape[0]
  names = list(class_names) if class_names else [f'class_{i}' for i in range(k)]
  if len(names) != k:
    raise ValueError(f'{len(names)} class names for a {k}x{k} confusion matrix')
  tp = np.diag(cm)
  gt = cm.sum(axis=1)
  pred = cm.sum(axis=0)
  union = gt + pred - tp
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = np.where(union > 0, tp / union, np.nan)
    recall = np.where(gt > 0, tp / gt, np.nan)
  total = cm.sum()
  present = ~np.isnan(iou)
  return {
      'mIoU': float(np.mean(iou[present])) if present.any() else float('nan'),
      'pixel_accuracy': float(tp.sum() / total) if total else float('nan'),
      'mean_class_accuracy': (float(np.nanmean(recall)) if (~np.isnan(recall)).any()
                              else float('nan')),
      'per_class_iou': {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
      'num_pixels': int(total),
  }


def format_table(summary: Dict) -> str:
  """Per-class IoU table for stdout/logs."""
  names = list(summary['per_class_iou'])
  width = max([len('class')] + [len(n) for n in names])
  lines = [f'{"class":<{width}}  IoU']
  for name, value in summary['per_class_iou'].items():
    lines.append(f'{name:<{width}}  ' + ('  n/a' if value is None else f'{value:.4f}'))
  lines.append(f'{"mIoU":<{width}}  {summary["mIoU"]:.4f}')
  lines.append(f'{"pixel acc":<{width}}  {summary["pixel_accuracy"]:.4f}')
  lines.append(f'{"mean acc":<{width}}  {summary["mean_class_accuracy"]:.4f}')
  return '\n'.join(lines)


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """Averages over the steps between two log lines."""
  loss: clu_metrics.Average.from_output('loss')
  grad_norm: clu_metrics.Average.from_output('grad_norm')
