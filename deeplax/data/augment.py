"""Per-example preprocessing in TensorFlow: training augmentation and evaluation padding.

Every random draw is stateless, from a per-example seed the pipeline derives from
(config.seed, host, example position in the host's stream): the augmentation of an
example never depends on which thread ran it or on what ran before it, which is what
makes a resumed run (start_step) identical to an uninterrupted one.

One draw is shared by image and label for every geometric op; the label is resized with
nearest neighbour (TF's half-pixel-centre convention, the one bilinear uses for the
image, so the two stay aligned); images are padded with the mean colour (0 after
normalisation) and labels with the ignore label, at the bottom and right as in
DeepLab's own input pipeline.
"""
from typing import Sequence, Tuple

from deeplax.data.tf_cpu import tf

# Photometric jitter ranges (torchvision ColorJitter(0.5, 0.5, 0.5, 0.05) equivalents,
# as VainF's Cityscapes recipe): multiplicative factors in [1 - x, 1 + x], hue shift +-x.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.5, 0.5, 0.5, 0.05


def _pair(value) -> Tuple[int, int]:
  return (int(value), int(value)) if isinstance(value, (int, float)) else (
      int(value[0]), int(value[1]))


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """uint8-range image -> (image / 255 - mean) / std, float32, as one multiply-add."""
  scale = tf.constant([1.0 / (255.0 * s) for s in std], tf.float32)
  offset = tf.constant([-m / s for m, s in zip(mean, std)], tf.float32)
  return tf.cast(image, tf.float32) * scale + offset


def draw_scale(seed: tf.Tensor, min_scale: float, max_scale: float, step: float) -> tf.Tensor:
  """Random scale in [min_scale, max_scale], on a grid of `step` when step > 0."""
  if max_scale <= min_scale:
    return tf.constant(min_scale, tf.float32)
  if step > 0:
    num_steps = int(round((max_scale - min_scale) / step))
    k = tf.random.stateless_uniform([], seed, 0, num_steps + 1, dtype=tf.int32)
    return min_scale + tf.cast(k, tf.float32) * step
  return tf.random.stateless_uniform([], seed, min_scale, max_scale)


def resize_pair(image: tf.Tensor, label: tf.Tensor, size: tf.Tensor
                ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Bilinear image (float), nearest-neighbour label (H, W): both to `size` = [h, w]."""
  image = tf.image.resize(image, size, method='bilinear', antialias=False)
  label = tf.image.resize(label[..., None], size, method='nearest')[..., 0]
  return image, label


def pad_pair(image: tf.Tensor, label: tf.Tensor, min_h, min_w, ignore_label: int
             ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Pads a normalised image with 0 (the mean colour) and the label with ignore,
  bottom/right, to at least (min_h, min_w)."""
  shape = tf.shape(label)
  paddings = [[0, tf.maximum(min_h - shape[0], 0)], [0, tf.maximum(min_w - shape[1], 0)]]
  return (tf.pad(image, paddings + [[0, 0]]),
          tf.pad(label, paddings, constant_values=ignore_label))


def photometric(image: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
  """Brightness, contrast, saturation and hue jitter of a float [0, 255] image."""
  def factor(seed, amount):
    return tf.random.stateless_uniform([], seed, 1.0 - amount, 1.0 + amount)
  image = image / 255.0
  image = image * factor(seeds[0], BRIGHTNESS)
  gray = tf.image.rgb_to_grayscale(image)
  image = (image - tf.reduce_mean(gray)) * factor(seeds[1], CONTRAST) + tf.reduce_mean(gray)
  image = tf.clip_by_value(image, 0.0, 1.0)
  gray = tf.image.rgb_to_grayscale(image)
  image = gray + (image - gray) * factor(seeds[2], SATURATION)
  image = tf.clip_by_value(image, 0.0, 1.0)
  image = tf.image.adjust_hue(image, tf.random.stateless_uniform([], seeds[3], -HUE, HUE))
  return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def train_example(example: dict, seed: tf.Tensor, augment_config, ignore_label: int) -> dict:
  """Decoded example + per-example seed -> {'image': float32 crop, 'label': int32 crop}.

  Order: photometric (optional) -> resize by short_side policy x random scale -> pad
  to the crop (mean / ignore) -> random crop -> normalise -> random horizontal flip.
  """
  a = augment_config
  crop_h, crop_w = _pair(a.crop_size)
  seeds = tf.random.experimental.stateless_split(seed, 8)
  image = example['image']  # uint8 until resized (resize returns float32)
  label = example['label']
  if a.photometric:
    image = photometric(tf.cast(image, tf.float32), seeds[4:8])

  shape = tf.shape(label)
  height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  scale = draw_scale(seeds[0], a.min_scale, a.max_scale, a.scale_step)
  if a.short_side:
    scale = scale * float(a.short_side) / tf.minimum(height, width)
  new_size = tf.maximum(tf.cast(tf.round(tf.stack([height, width]) * scale), tf.int32), 1)
  image, label = tf.cond(
      tf.reduce_all(new_size == shape),
      lambda: (tf.cast(image, tf.float32), label),
      lambda: resize_pair(image, label, new_size))

  # Random crop of the image padded (bottom/right) to at least the crop size, computed
  # as: slice the real part of the window, normalise it, then pad it with 0 (= the mean
  # after normalising) and the label with ignore. Same result as pad-then-crop, with the
  # per-pixel work done on the crop only.
  shape = tf.shape(label)
  top = tf.random.stateless_uniform(
      [], seeds[1], 0, tf.maximum(shape[0], crop_h) - crop_h + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform(
      [], seeds[2], 0, tf.maximum(shape[1], crop_w) - crop_w + 1, dtype=tf.int32)
  real_h = tf.minimum(crop_h, shape[0] - top)
  real_w = tf.minimum(crop_w, shape[1] - left)
  image = normalize(tf.slice(image, [top, left, 0], [real_h, real_w, 3]), a.mean, a.std)
  label = tf.slice(label, [top, left], [real_h, real_w])
  image, label = pad_pair(image, label, crop_h, crop_w, ignore_label)
  if a.flip:
    flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
  image.set_shape([crop_h, crop_w, 3])
  label = tf.cast(label, tf.int32)
  label.set_shape([crop_h, crop_w])
  return {'image': image, 'label': label}


def eval_example(example: dict, augment_config, eval_config, ignore_label: int) -> dict:
  """Decoded example -> fixed-size, normalised eval example with its real size.

  Default: pad to eval.pad_size (image with the mean, label with ignore), keeping
  'height'/'width' of the real image; an image larger than pad_size is an error naming
  the file. eval.crop_val: resize so the image covers pad_size, then centre-crop.
  """
  pad_h, pad_w = _pair(eval_config.pad_size)
  mean, std = augment_config.mean, augment_config.std
  image = example['image']
  label = example['label']
  shape = tf.shape(label)
  if eval_config.crop_val:
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.maximum(pad_h / height, pad_w / width)
    new_size = tf.maximum(tf.cast(tf.math.ceil(tf.stack([height, width]) * scale - 1e-3),
                                  tf.int32), [pad_h, pad_w])
    image, label = resize_pair(image, label, new_size)
    top = (new_size[0] - pad_h) // 2
    left = (new_size[1] - pad_w) // 2
    image = normalize(tf.slice(image, [top, left, 0], [pad_h, pad_w, 3]), mean, std)
    label = tf.slice(label, [top, left], [pad_h, pad_w])
    real_h, real_w = tf.constant(pad_h), tf.constant(pad_w)
  else:
    fits = tf.logical_and(shape[0] <= pad_h, shape[1] <= pad_w)
    check = tf.debugging.Assert(fits, [
        f'[deeplax] eval image larger than eval.pad_size=({pad_h}, {pad_w}); raise '
        '--config.eval.pad_size or set --config.eval.crop_val=True. file:',
        example['file_name'], 'height, width:', shape[0], shape[1]])
    with tf.control_dependencies([check]):
      # Normalised, the mean colour is 0: pad the image with 0, the label with ignore.
      image, label = pad_pair(normalize(image, mean, std), label, pad_h, pad_w,
                              ignore_label)
      # A no-op once the Assert has passed; keeps the static shape consistent when the
      # input's static shape is known (and too large, which the Assert then reports).
      image, label = image[:pad_h, :pad_w], label[:pad_h, :pad_w]
    real_h, real_w = shape[0], shape[1]
  image.set_shape([pad_h, pad_w, 3])
  label = tf.cast(label, tf.int32)
  label.set_shape([pad_h, pad_w])
  return {'image': image, 'label': label, 'valid': tf.constant(True),
          'height': tf.cast(real_h, tf.int32), 'width': tf.cast(real_w, tf.int32),
          'file_name': example['file_name']}


def eval_padding_example(augment_config, eval_config, ignore_label: int) -> dict:
  """A batch-filling eval entry: mean image, all-ignore label, valid=False, size 0x0."""
  pad_h, pad_w = _pair(eval_config.pad_size)
  return {'image': tf.zeros([pad_h, pad_w, 3], tf.float32),
          'label': tf.fill([pad_h, pad_w], tf.constant(ignore_label, tf.int32)),
          'valid': tf.constant(False), 'height': tf.constant(0, tf.int32),
          'width': tf.constant(0, tf.int32), 'file_name': tf.constant('')}
