"""config.dataset.name -> the Source that reads it (imports each source lazily)."""
import numpy as np

from deeplax.data import base
from deeplax.data import palettes
from deeplax.data import shapes
from deeplax.data.tf_cpu import tf


class ShapesSource(base.Source):
  """The synthetic shapes data set (deeplax.data.shapes), held in memory, decoded."""
  name = 'shapes'
  class_names = shapes.CLASS_NAMES
  num_classes = shapes.NUM_CLASSES
  palette = palettes.generic_palette(shapes.NUM_CLASSES)

  def __init__(self, dataset_config):
    self._sizes = {'train': dataset_config.num_train_images,
                   'val': dataset_config.num_eval_images}
    self._image_size = dataset_config.image_size

  def num_examples(self, split):
    base.check_split(self.name, split, self._sizes)
    return self._sizes[split]

  def read(self, split, start, end):
    images, labels = shapes.load_split(split, self.num_examples(split), self._image_size)
    names = np.array([f'shapes/{split}/{i:06d}' for i in range(start, end)], dtype=object)
    return tf.data.Dataset.from_tensor_slices(
        {'image': images[start:end], 'label': labels[start:end],
         'file_name': names.astype(bytes)})

  def decode(self, record):
    return record


def get_source(config) -> base.Source:
  """The source named by config.dataset.name (tfds builders prepared on first use)."""
  name = config.dataset.name
  if name == 'shapes':
    return ShapesSource(config.dataset)
  if name == 'voc':
    from deeplax.data import voc  # pylint: disable=import-outside-toplevel
    return voc.source(config)
  if name == 'cityscapes':
    from deeplax.data import cityscapes  # pylint: disable=import-outside-toplevel
    return cityscapes.source(config)
  if name == 'folder':
    from deeplax.data import folder  # pylint: disable=import-outside-toplevel
    return folder.source(config)
  raise base.DataError(f"dataset.name={name!r} is unknown; known: 'voc', 'cityscapes', "
                       "'folder', 'shapes'")
