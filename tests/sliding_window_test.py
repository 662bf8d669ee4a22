"""Sliding-window inference against a numpy transcription of mmsegmentation's
`slide_inference`, and against whole-image inference for a pointwise model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplax import sliding_window

NUM_CLASSES = 5


def mmseg_slide_reference(fn, img, crop, stride):
  """mmseg (0.x / 1.x) `EncoderDecoder.slide_inference`, line by line, in numpy NHWC."""
  h_stride, w_stride = stride
  h_crop, w_crop = crop
  batch_size, h_img, w_img, _ = img.shape
  h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
  w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
  preds = np.zeros((batch_size, h_img, w_img, NUM_CLASSES), np.float64)
  count_mat = np.zeros((batch_size, h_img, w_img, 1), np.float64)
  for h_idx in range(h_grids):
    for w_idx in range(w_grids):
      y1 = h_idx * h_stride
      x1 = w_idx * w_stride
      y2 = min(y1 + h_crop, h_img)
      x2 = min(x1 + w_crop, w_img)
      y1 = max(y2 - h_crop, 0)
      x1 = max(x2 - w_crop, 0)
      crop_img = img[:, y1:y2, x1:x2, :]
      preds[:, y1:y2, x1:x2] += fn(crop_img)
      count_mat[:, y1:y2, x1:x2] += 1
  assert (count_mat == 0).sum() == 0
  return preds / count_mat


def position_dependent(x):
  """A mock 'model' whose output depends on where a pixel sits in its window, so the
  windows' placement and the averaging of overlaps both show in the result."""
  xp = jnp if isinstance(x, jax.Array) else np
  _, h, w, _ = x.shape
  yy = xp.arange(h, dtype=xp.float32)[None, :, None, None] / 10
  xx = xp.arange(w, dtype=xp.float32)[None, None, :, None] / 100
  scale = xp.arange(1, NUM_CLASSES + 1, dtype=xp.float32)
  return x[..., :1] * scale + x[..., 1:2] - x[..., 2:3] * scale + yy * scale + xx


def test_window_starts_hand_computed():
  # 256 with window 128, stride 85: ceil(128 / 85) + 1 = 3 windows, the last moved back.
  assert sliding_window.window_starts(256, 128, 85) == [0, 85, 128]
  assert sliding_window.window_starts(512, 128, 85) == [0, 85, 170, 255, 340, 384]
  assert sliding_window.window_starts(256, 128, 128) == [0, 128]
  assert sliding_window.window_starts(100, 128, 85) == [0]  # one clipped window
  assert sliding_window.window_grid(100, 300, 128, 200) == [(0, 0, 100, 128),
                                                           (0, 172, 100, 128)]


@pytest.mark.parametrize('shape,window,stride,per_call', [
    ((2, 256, 512, 3), (128, 128), (85, 85), 0),
    ((1, 256, 512, 3), (128, 128), (85, 85), 4),  # windows in chunks of 4
    ((1, 96, 200, 3), (128, 64), (50, 40), 0),  # window taller than the image
])
def test_slide_matches_mmseg_reference(shape, window, stride, per_call):
  rng = np.random.default_rng(0)
  images = rng.standard_normal(shape).astype(np.float32)
  fn = jax.jit(lambda x: sliding_window.slide_logits(position_dependent, x, window, stride,
                                                     per_call))
  got = np.asarray(fn(jnp.asarray(images)))
  want = mmseg_slide_reference(position_dependent, images.astype(np.float64), window, stride)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # Overlaps really are averaged: the whole-image output of this mock differs.
  assert np.abs(want - position_dependent(images.astype(np.float64))).max() > 1.0


def test_slide_equals_whole_for_pointwise_model():
  """A model whose receptive field (1x1) fits in every window gives the same logits
  whether it sees the whole 256x512 image or overlapping 128x128 windows."""
  rng = np.random.default_rng(1)
  weights = jnp.asarray(rng.standard_normal((3, NUM_CLASSES)), jnp.float32)
  model = lambda x: jnp.tanh(x @ weights)  # noqa: E731
  images = jnp.asarray(rng.standard_normal((2, 256, 512, 3)), jnp.float32)
  infer = jax.jit(lambda x, slide: sliding_window.image_logits(model, x, slide, 128, 85),
                  static_argnums=1)
  whole = infer(images, False)
  slide = infer(images, True)
  assert whole.shape == slide.shape == (2, 256, 512, NUM_CLASSES)
  np.testing.assert_allclose(np.asarray(slide), np.asarray(whole), rtol=1e-5, atol=1e-6)


def test_mode_choice_and_errors():
  assert not sliding_window.use_slide('whole', 4096, 4096, 100)
  assert sliding_window.use_slide('slide', 8, 8, 100)
  assert sliding_window.use_slide('auto', 1024, 2048, 1024 * 2048 - 1)
  assert not sliding_window.use_slide('auto', 1024, 2048, 1024 * 2048)
  with pytest.raises(ValueError, match='predict.mode'):
    sliding_window.use_slide('tiles', 8, 8, 100)
  with pytest.raises(ValueError, match='stride'):
    sliding_window.window_starts(10, 4, 0)


def test_buckets():
  assert sliding_window.bucket_shape(500, 375, 128) == (512, 384)
  assert sliding_window.bucket_shape(1024, 2048, 128) == (1024, 2048)
  assert sliding_window.bucket_shape(1, 129, 64) == (64, 192)
