"""Segmentation losses: softmax cross entropy that ignores a label value, and the
helpers of DeepLab-v2's multi-scale loss (nearest-neighbour label resizing, max fusion).

Losses are computed in float32 whatever the model's compute dtype. Under `jit` with a
globally sharded batch the sums below run over the *global* batch, so the mean is over
every valid pixel on every device (not a mean of per-device means).
"""
import math
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  ignore_label: int = 255) -> Tuple[jax.Array, jax.Array]:
  """Mean softmax cross entropy over pixels whose label is not `ignore_label`.

  Args:
    logits: (N, H, W, K) any float dtype.
    labels: (N, H, W) integer class ids, `ignore_label` where unlabelled.
  Returns:
    (loss, num_valid): the mean over valid pixels (0 when there are none, so an all-ignore
    batch gives zero gradients instead of NaN) and their count.
  """
  if logits.shape[:-1] != labels.shape:
    raise ValueError(f'logits {logits.shape} and labels {labels.shape} disagree: '
                     'expected (N, H, W, K) and (N, H, W)')
  valid = labels != ignore_label
  safe_labels = jnp.where(valid, labels, 0)
  per_pixel = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), safe_labels)
  per_pixel = jnp.where(valid, per_pixel, 0.0)
  num_valid = jnp.sum(valid)
  loss = jnp.sum(per_pixel) / jnp.maximum(num_valid, 1).astype(jnp.float32)
  return loss, num_valid


def scaled_size(size: int, scale: float) -> int:
  """Side length of an image of side `size` rescaled by `scale` (rounded up, so that
  DeepLab-v2's 321 crop gives 241 and 161 at 0.75 and 0.5, as its reference does)."""
  return max(1, int(math.ceil(size * scale - 1e-6)))


def resize_labels_nearest(labels: jax.Array, size: Sequence[int]) -> jax.Array:
  """Nearest-neighbour resize of (N, H, W) integer labels to `size` = (h, w).

  Samples at pixel centres (PIL / torch 'nearest-exact'); labels are never interpolated.
  """
  labels = jnp.asarray(labels)
  _, h, w = labels.shape
  out_h, out_w = size
  rows = jnp.minimum(((jnp.arange(out_h) + 0.5) * h / out_h).astype(jnp.int32), h - 1)
  cols = jnp.minimum(((jnp.arange(out_w) + 0.5) * w / out_w).astype(jnp.int32), w - 1)
  return labels[:, rows][:, :, cols]


def max_fuse(logits_list: Sequence[jax.Array]) -> jax.Array:
  """Element-wise max of logits already at a common size (DeepLab-v2's MS fusion)."""
  fused = logits_list[0]
  for logits in logits_list[1:]:
    fused = jnp.maximum(fused, logits)
  return fused
