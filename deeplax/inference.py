"""Inference: multi-scale and flipped predictions fused in one jitted function.

The scales and flip are static (Python values), so `jax.jit(predict_logits,
static_argnums=(0, 3, 4))` traces every scale into one XLA program: no Python loop at
run time and one compile per image size.
"""
from typing import Sequence

import jax
import jax.numpy as jnp

from deeplax import losses
from deeplax.models import layers


def predict_logits(module, variables, images: jax.Array, scales: Sequence[float] = (1.0,),
                   flip: bool = False) -> jax.Array:
  """Fused class scores (N, H, W, K) float32 for images (N, H, W, 3) at their size.

  Each scale s resizes the input (bilinear) to ceil(s * side), runs the model, resizes the
  logits back to (H, W) and takes the softmax; with `flip` the mirrored image's
  probabilities (mirrored back) are added too. The result is the log of the mean
  probability, so softmax of it is the averaged probability and argmax is the
  prediction (TF DeepLab's and mmsegmentation's multi-scale fusion). With one scale and
  no flip this is log_softmax of the model's logits.
  """
  scales = tuple(float(s) for s in scales) or (1.0,)
  _, h, w, _ = images.shape
  probs = 0.0
  count = 0
  for scale in scales:
    size = (losses.scaled_size(h, scale), losses.scaled_size(w, scale))
    x = layers.resize_bilinear(images, size) if size != (h, w) else images
    batch = jnp.concatenate([x, x[:, :, ::-1]], axis=0) if flip else x
    logits = module.apply(variables, batch, train=False).astype(jnp.float32)
    logits = layers.resize_bilinear(logits, (h, w))
    p = jax.nn.softmax(logits, axis=-1)
    if flip:
      n = images.shape[0]
      p = p[:n] + p[n:, :, ::-1]
      count += 2
    else:
      count += 1
    probs = probs + p
  return jnp.log(jnp.maximum(probs / count, jnp.finfo(jnp.float32).tiny))
