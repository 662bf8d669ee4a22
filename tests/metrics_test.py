"""Metric math against confusion matrices and IoUs computed by hand."""
import jax.numpy as jnp
import numpy as np
import pytest

from deeplax import metrics


def test_confusion_matrix_hand_computed_with_ignore_and_mask():
  labels = np.array([[[0, 0, 1, 2],
                      [2, 255, 1, 1]]])
  preds = np.array([[[0, 1, 1, 2],
                     [0, 2, 2, 1]]])
  mask = np.array([[[True, True, True, True],
                    [True, True, True, False]]])  # last pixel masked out
  cm = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), 3, jnp.asarray(mask))
  expected = np.array([[1, 1, 0],   # label 0: predicted 0 once, 1 once
                       [0, 1, 1],   # label 1: (1->1), (1->2); (1->1) masked
                       [1, 0, 1]])  # label 2: (2->2), (2->0); the 255 pixel never counts
  np.testing.assert_array_equal(np.asarray(cm), expected)
  assert cm.dtype == jnp.uint32


def test_summarize_hand_computed():
  cm = np.array([[50, 2, 3],
                 [4, 30, 6],
                 [1, 0, 0]])  # class 2: 1 gt pixel, never predicted right
  s = metrics.summarize(cm, ['bg', 'a', 'b'])
  iou = [50 / (55 + 55 - 50), 30 / (40 + 32 - 30), 0 / (1 + 9 - 0)]
  assert s['per_class_iou'] == pytest.approx({'bg': iou[0], 'a': iou[1], 'b': iou[2]})
  assert s['mIoU'] == pytest.approx(np.mean(iou))
  assert s['pixel_accuracy'] == pytest.approx(80 / 96)
  assert s['mean_class_accuracy'] == pytest.approx(np.mean([50 / 55, 30 / 40, 0 / 1]))
  assert s['num_pixels'] == 96


def test_class_absent_from_labels_and_predictions_is_left_out_of_the_mean():
  cm = np.array([[10, 0, 0],
                 [0, 0, 0],
                 [2, 0, 8]])
  s = metrics.summarize(cm)
  assert s['per_class_iou']['class_1'] is None
  assert s['mIoU'] == pytest.approx(np.mean([10 / 12, 8 / 10]))
  assert s['mean_class_accuracy'] == pytest.approx(np.mean([1.0, 0.8]))
  assert 'n/a' in metrics.format_table(s)


def test_class_predicted_but_never_labelled_counts_as_zero():
  cm = np.array([[8, 2],
                 [0, 0]])
  s = metrics.summarize(cm)
  assert s['per_class_iou']['class_1'] == 0.0
  assert s['mIoU'] == pytest.approx((0.8 + 0.0) / 2)


def test_metric_merges_batches_and_masks_invalid_images():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=(4, 5, 6))
  labels[0, :2] = 255
  logits = rng.normal(size=(4, 5, 6, 3)).astype(np.float32)
  valid = np.array([True, True, True, False])  # image 3 pads a remainder batch
  total = metrics.ConfusionMatrix.empty(3)
  for lo, hi in ((0, 1), (1, 4)):
    mask = metrics.pixel_mask(jnp.asarray(labels[lo:hi]), jnp.asarray(valid[lo:hi]), 255)
    total = total.merge(metrics.ConfusionMatrix.from_model_output(
        logits=jnp.asarray(logits[lo:hi]), labels=jnp.asarray(labels[lo:hi]), mask=mask))
  preds = logits.argmax(-1)
  expected = np.zeros((3, 3), np.int64)
  for label, pred in zip(labels[:3].ravel(), preds[:3].ravel()):
    if label != 255:
      expected[label, pred] += 1
  np.testing.assert_array_equal(np.asarray(total.compute()), expected)
  assert expected.sum() == 3 * 30 - 12


def test_summarize_rejects_wrong_number_of_names():
  with pytest.raises(ValueError, match='class names'):
    metrics.summarize(np.eye(3), ['a', 'b'])
