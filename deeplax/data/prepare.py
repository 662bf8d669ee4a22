"""Prepares the configured data set once and prints its splits (run before training).

  python -m deeplax.data.prepare --config configs/voc_resnet101.py \
      --config.dataset.manual_dir=/data/voc

Training prepares on first use too; running this first finds every bad file before a job
is queued, and on a multi-host job it must be run once (on a shared data_dir) before the
hosts start, so that they do not all prepare the same files at once.
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from deeplax.data import base
from deeplax.data import pipeline
from deeplax.data import sources

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
flags.mark_flags_as_required(['config'])

# Split sizes of the real data sets: a difference usually means missing files.
EXPECTED = {'voc': {'train': 1464, 'val': 1449, 'train_aug': 10582},
            'cityscapes': {'train': 2975, 'val': 500}}


def main(argv):
  del argv
  config = _CONFIG.value
  try:
    info = pipeline.get_info(config)
    source = sources.get_source(config)
  except base.DataError as e:
    sys.exit(f'error: {e}')
  print(f'{info.name}: {info.num_classes} classes: {", ".join(info.class_names)}')
  for split in sorted({config.dataset.train_split, config.dataset.eval_split}):
    count = source.num_examples(split)
    expected = EXPECTED.get(info.name, {}).get(split)
    note = '' if expected in (None, count) else f'  (the published split has {expected})'
    print(f'  {split}: {count} examples{note}')
  skipped = getattr(source, 'skipped', [])
  if skipped:
    print(f'  {len(skipped)} corrupt files skipped (dataset.corrupt_policy=skip):')
    for line in skipped:
      print(f'    {line}')


if __name__ == '__main__':
  app.run(main)
