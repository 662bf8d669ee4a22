"""What every data source provides to the pipeline, and the data set description.

A source hands the pipeline its examples in a fixed order as a tf.data.Dataset of
"records" (possibly still encoded, so a shuffle buffer holds compressed bytes) plus a
`decode` function that turns one record into {'image': uint8 (H, W, 3), 'label': uint8
(H, W), 'file_name': string}. Shuffling, sharding, augmentation and batching are the
pipeline's job, identical for every source.
"""
import dataclasses
from typing import Callable, Tuple

import numpy as np


class DataError(ValueError):
  """Bad input data: the message names the file and what was wrong."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Description of a configured data set (train split = config.dataset.train_split)."""
  name: str
  num_classes: int
  class_names: Tuple[str, ...]
  palette: np.ndarray  # uint8 (num_classes, 3)
  ignore_label: int
  num_train: int  # examples in the training split (all hosts)
  num_eval: int  # examples the eval iterator yields over all hosts (after eval.num_images)


class Source:
  """A data set split into named splits, read in a fixed order."""
  name: str
  num_classes: int
  class_names: Tuple[str, ...]
  palette: np.ndarray

  def num_examples(self, split: str) -> int:
    raise NotImplementedError

  def read(self, split: str, start: int, end: int):
    """tf.data.Dataset of the records of examples [start, end) of `split`, in a fixed order."""
    raise NotImplementedError

  def decode(self, record) -> dict:
    """tf function: record -> {'image': uint8 (H,W,3), 'label': uint8 (H,W), 'file_name': str}."""
    raise NotImplementedError


def check_split(source_name: str, split: str, splits) -> None:
  if split not in splits:
    raise DataError(f'data set {source_name!r} has no split {split!r}; its splits are: '
                    f'{", ".join(sorted(splits))} (set dataset.train_split / dataset.eval_split)')


Decoder = Callable[[dict], dict]
