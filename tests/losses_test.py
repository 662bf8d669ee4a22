"""Losses against PyTorch's own implementations (F.cross_entropy with ignore_index,
F.interpolate nearest-exact) and hand-computed values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deeplax import losses


def test_cross_entropy_matches_torch_ignore_index():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7, 4)).astype(np.float32) * 3
  labels = rng.integers(0, 4, size=(2, 5, 7)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.3] = 255
  loss, count = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  expected = F.cross_entropy(torch.from_numpy(logits).permute(0, 3, 1, 2),
                             torch.from_numpy(labels).long(), ignore_index=255)
  np.testing.assert_allclose(float(loss), expected.item(), rtol=1e-5)
  assert int(count) == int((labels != 255).sum())


def test_cross_entropy_hand_computed_and_bf16_logits_give_f32_loss():
  logits = jnp.array([[[[0.0, np.log(3.0)], [5.0, 5.0]]]], jnp.bfloat16)  # (1, 1, 2, 2)
  labels = jnp.array([[[1, 255]]])
  loss, count = losses.cross_entropy(logits, labels)
  assert loss.dtype == jnp.float32 and int(count) == 1
  np.testing.assert_allclose(float(loss), -np.log(0.75), rtol=1e-2)  # bf16 log(3)


def test_all_ignored_gives_zero_loss_and_zero_gradients():
  logits = jnp.ones((1, 2, 2, 3))
  labels = jnp.full((1, 2, 2), 255)
  loss, grads = jax.value_and_grad(lambda x: losses.cross_entropy(x, labels)[0])(logits)
  assert float(loss) == 0.0 and not np.any(np.asarray(grads))


def test_cross_entropy_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='disagree'):
    losses.cross_entropy(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 5), jnp.int32))


@pytest.mark.parametrize('size', [(241, 241), (161, 161), (7, 13), (40, 3)])
def test_resize_labels_nearest_matches_torch_nearest_exact(size):
  labels = np.random.default_rng(1).integers(0, 21, size=(2, 321, 321)).astype(np.int32)
  ours = losses.resize_labels_nearest(jnp.asarray(labels), size)
  theirs = F.interpolate(torch.from_numpy(labels)[:, None].float(), size=size,
                         mode='nearest-exact')[:, 0].long().numpy()
  np.testing.assert_array_equal(np.asarray(ours), theirs)


def test_scaled_size_matches_deeplab_v2_reference():
  # pytorch-deeplab-resnet feeds 321 crops at 0.75 and 0.5 as 241 and 161.
  assert losses.scaled_size(321, 0.75) == 241
  assert losses.scaled_size(321, 0.5) == 161
  assert losses.scaled_size(321, 1.0) == 321
  assert losses.scaled_size(64, 0.5) == 32


def test_max_fuse_is_elementwise_max():
  rng = np.random.default_rng(2)
  arrays = [rng.normal(size=(2, 3, 3, 4)).astype(np.float32) for _ in range(3)]
  fused = losses.max_fuse([jnp.asarray(a) for a in arrays])
  np.testing.assert_array_equal(np.asarray(fused), np.maximum.reduce(arrays))
