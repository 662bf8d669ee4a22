"""deeplax entry point: train, evaluate or predict with a config file.

  python main.py --config configs/shapes.py --workdir runs/shapes
  python main.py --config configs/shapes.py --workdir runs/shapes --mode eval
  python main.py --config configs/shapes.py --workdir runs/shapes --mode predict \
      --input 'photos/*.jpg' --output runs/shapes/predictions [--labels DIR]
  python main.py --config configs/voc_resnet101.py --workdir runs/voc \
      --config.batch_size=8 --config.init_from=weights/resnet101

Any config key can be overridden with --config.<key>=<value>.

Exit status: 0 done; 75 (EX_TEMPFAIL) stopped by SIGTERM/SIGINT after saving a
checkpoint: run the same command to resume; 1 an error (the message says which).
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and eval results.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict'],
                  'train (resumes from WORKDIR), eval (a checkpoint of WORKDIR), predict.')
flags.DEFINE_string('input', None, '--mode predict: an image, a folder (searched '
                    'recursively) or a glob of images.')
flags.DEFINE_string('output', None, '--mode predict: folder for <stem>.png, '
                    '<stem>_overlay.png and <stem>_panel.png.')
flags.DEFINE_string('labels', None, '--mode predict: folder of ground-truth labels matched '
                    'by file name (adds the image | label | prediction panel).')
flags.mark_flags_as_required(['config', 'workdir'])


def _setup_jax(config):
  """Multi-host init and the persistent compilation cache, before any computation."""
  import jax  # pylint: disable=import-outside-toplevel
  if config.distributed:
    jax.distributed.initialize()
  from deeplax import compile_cache  # pylint: disable=import-outside-toplevel
  cache_dir = compile_cache.configure(config.compilation_cache_dir)
  logging.info('Persistent compilation cache: %s', cache_dir or 'off')
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())


def _quiet_library_logs():
  """Orbax logs a dozen INFO lines per save through absl; keep its warnings only."""
  import logging as std_logging  # pylint: disable=import-outside-toplevel
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= std_logging.WARNING or 'orbax' not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  _quiet_library_logs()
  if FLAGS.config.keep_host_memory:  # before jax or TensorFlow allocate anything
    from deeplax import host_memory  # pylint: disable=import-outside-toplevel
    host_memory.keep_freed_memory()
  # tf.data runs on the host: keep TensorFlow off the accelerators JAX needs.
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], 'GPU')
  config = FLAGS.config
  _setup_jax(config)
  from deeplax import preemption  # pylint: disable=import-outside-toplevel
  from deeplax import train  # pylint: disable=import-outside-toplevel
  if FLAGS.mode == 'train':
    try:
      train.train_and_evaluate(config, FLAGS.workdir)
    except preemption.Preempted as stopped:  # checkpoint saved: rerun to resume
      logging.warning('%s', stopped)
      sys.exit(preemption.EXIT_PREEMPTED)
  elif FLAGS.mode == 'eval':
    train.evaluate_checkpoint(config, FLAGS.workdir)
  else:
    if not FLAGS.input or not FLAGS.output:
      raise app.UsageError('--mode predict needs --input and --output')
    from deeplax import predict  # pylint: disable=import-outside-toplevel
    predict.run(config, FLAGS.workdir, FLAGS.input, FLAGS.output, FLAGS.labels)


if __name__ == '__main__':
  app.run(main)
