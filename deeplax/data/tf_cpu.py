"""TensorFlow for the input pipeline only: imported here with every accelerator hidden.

tf.data runs on the host CPU; if TF saw the GPUs/TPUs it would reserve their memory
and fight JAX for it. Every data module imports `tf` from here.
"""
import tensorflow as tf

for _kind in ('GPU', 'TPU'):
  try:
    tf.config.set_visible_devices([], _kind)
  except (RuntimeError, ValueError):  # already initialised, or no such device type
    pass

__all__ = ['tf']
