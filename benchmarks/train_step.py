"""Train-step speed and memory: deeplax's jitted train step vs the PyTorch reference.

deeplax: `deeplax.train.create_train_state` + `make_train_step` (cross entropy with
ignore label 255, gradients, SGD momentum + weight decay update, BN statistics) compiled
with `deeplax.xla_options.compiler_options()`. PyTorch: the reference network of
benchmarks/torch_models.py, `F.cross_entropy(ignore_index=255)`, backward, SGD momentum
0.9 + weight decay 1e-4. Same batch, crop, dtype and threads; random inputs (10% of the
labels 255). How timing and memory are taken: benchmarks/common.py.

  python benchmarks/train_step.py                       # the default table (slow: ~30 min)
  python benchmarks/train_step.py --models deeplabv3_resnet50_os8 --steps 5 --threads 2
  python benchmarks/train_step.py --tiny                # smoke run: tiny widths, 33x33
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (after the path fix-up)

# name -> (deeplax model name, output stride)
CONFIGS = {
    'deeplabv3_resnet50_os8': ('deeplabv3_resnet50', 8),
    'deeplabv3_resnet50_os16': ('deeplabv3_resnet50', 16),
    'deeplabv3_resnet101_os8': ('deeplabv3_resnet101', 8),
    'deeplabv3_resnet101_os16': ('deeplabv3_resnet101', 16),
    'deeplabv3_mobilenetv2_os16': ('deeplabv3_mobilenetv2', 16),
    'deeplabv3plus_resnet101_os16': ('deeplabv3plus_resnet101', 16),
}
DEFAULT_OUT = os.path.join(common.ROOT, 'benchmarks', 'results', 'train_step_cpu.json')
NUM_CLASSES = 21
IGNORE = 255


def random_batch(batch: int, crop: int, seed: int = 0):
  """Images ~ N(0, 1) (already 'normalised'), labels in [0, 21) with 10% ignored."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, crop, crop, 3), dtype=np.float32)
  labels = rng.integers(0, NUM_CLASSES, (batch, crop, crop), dtype=np.int32)
  labels[rng.random((batch, crop, crop)) < 0.1] = IGNORE
  return images, labels


# ---- workers ----------------------------------------------------------------------------


def deeplax_config(spec):
  from configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  model_name, output_stride = CONFIGS[spec['config']]
  config.model.name = model_name
  config.model.output_stride = output_stride
  config.model.num_classes = NUM_CLASSES
  config.model.dtype = spec['dtype']
  config.model.remat = tuple(spec.get('remat', ()))
  if spec['tiny']:
    config.model.base_width = 8
    config.model.width_multiplier = 0.25
  config.batch_size = spec['batch']
  config.augment.crop_size = (spec['crop'], spec['crop'])
  config.dataset.ignore_label = IGNORE
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  return config


def deeplax_worker(spec):
  common.setup_worker(spec)
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  cache_counts = _use_compilation_cache(spec.get("compile_cache"))
  from deeplax import models, optim, train, xla_options  # pylint: disable=import-outside-toplevel

  config = deeplax_config(spec)
  devices = jax.devices()[:1]
  mesh = train.create_mesh(devices)
  module = models.create_model(config.model)
  learning_rate_fn = optim.create_learning_rate_fn(config)
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(0))
  batch_size, crop = spec['batch'], spec['crop']
  state = train.create_train_state(config, module, init_rng, mesh, (batch_size, crop, crop, 3),
                                   learning_rate_fn, use_init_from=False)
  images, labels = random_batch(batch_size, crop)
  batch = train.global_batch({'image': images, 'label': labels}, mesh)
  step_fn = train.make_train_step(config, module, learning_rate_fn, dropout_rng, mesh)

  options = tiny_options(spec, xla_options.compiler_options(devices[0].platform))
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile(options)
  compile_s = time.perf_counter() - t0
  common.release_compile_memory()
  holder = {'state': state}

  def step():
    holder['state'], metrics = compiled(holder['state'], batch)
    jax.block_until_ready((holder['state'], metrics))
    holder['loss'] = metrics['loss']

  t0 = time.perf_counter()
  step()
  first_step_s = time.perf_counter() - t0
  with common.PeakMemory() as memory:
    timing = common.time_steps(step, spec['warmup'], spec['steps'])
  result = {**spec, 'framework': 'deeplax', 'compile_s': round(compile_s, 2),
            'first_step_s': round(first_step_s, 3), **timing,
            'images_per_s': batch_size / timing['step_s'],
            'loss': float(np.asarray(holder['loss'])), 'xla_options': options,
            'device': devices[0].device_kind,
            **{f'cache_{k}': v for k, v in cache_counts().items()}}
  result.update(_memory(memory, devices[0], compiled))
  return result


def tiny_options(spec, options):
  """--tiny compiles unoptimised (`xla_backend_optimization_level` 0): a smoke run checks
  that everything runs and reports, and this halves its compile time."""
  return {**options, 'xla_backend_optimization_level': 0} if spec['tiny'] else options


def _use_compilation_cache(cache_dir):
  """Turns jax's persistent compilation cache on (in `cache_dir`) or off; with it on,
  the result gets the cache hits and misses of the worker's compiles."""
  from deeplax import compile_cache  # pylint: disable=import-outside-toplevel
  compile_cache.configure(cache_dir, min_compile_time_secs=0)
  return compile_cache.counts if cache_dir else dict


def _memory(memory, device, compiled=None):
  out = {'step_mem_mb': memory.step_mb, 'peak_rss_mb': memory.peak_mb}
  if compiled is not None:
    analysis = compiled.memory_analysis()
    if analysis is not None:  # XLA's own buffer plan: temporaries of one step
      out['xla_temp_mb'] = round(analysis.temp_size_in_bytes / 2**20, 1)
  if device.platform != 'cpu':
    stats = device.memory_stats() or {}
    out['device_peak_mb'] = round(stats.get('peak_bytes_in_use', 0) / 2**20, 1)
  return out


def torch_worker(spec):
  common.setup_worker(spec)
  import torch  # pylint: disable=import-outside-toplevel
  from torch.nn import functional as F  # pylint: disable=import-outside-toplevel
  from benchmarks import torch_models  # pylint: disable=import-outside-toplevel
  from tests.conftest import import_torchvision  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(spec['threads'])
  torch.manual_seed(0)
  tv = import_torchvision()
  model_name, output_stride = CONFIGS[spec['config']]
  model = torch_models.build_reference(tv, model_name, output_stride, NUM_CLASSES,
                                       width_multiplier=0.25 if spec['tiny'] else 1.0)
  cuda = torch.cuda.is_available()
  device = torch.device('cuda' if cuda else 'cpu')
  # A careful PyTorch user on GPU: channels_last + autocast. On CPU: float32 (or bf16
  # autocast when asked, as deeplax's dtype).
  memory_format = torch.channels_last if cuda else torch.contiguous_format
  model = model.to(device, memory_format=memory_format).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.007, momentum=0.9, weight_decay=1e-4)
  images, labels = random_batch(spec['batch'], spec['crop'])
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device,
                                                                   memory_format=memory_format)
  y = torch.from_numpy(labels).long().to(device)
  autocast = spec['dtype'] == 'bfloat16'
  holder = {}

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
      logits = model(x)
    loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE)
    loss.backward()
    optimizer.step()
    if cuda:
      torch.cuda.synchronize()
    holder['loss'] = loss.detach()

  t0 = time.perf_counter()
  step()
  first_step_s = time.perf_counter() - t0
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  with common.PeakMemory() as memory:
    timing = common.time_steps(step, spec['warmup'], spec['steps'])
  result = {**spec, 'framework': 'torch', 'compile_s': None,
            'first_step_s': round(first_step_s, 3), **timing,
            'images_per_s': spec['batch'] / timing['step_s'],
            'loss': float(holder['loss']), 'device': str(device),
            'step_mem_mb': memory.step_mb, 'peak_rss_mb': memory.peak_mb}
  if cuda:
    result['device_peak_mb'] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
  return result


# ---- driver -----------------------------------------------------------------------------


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', nargs='+', choices=sorted(CONFIGS),
                      help='configurations (default: all; with --tiny: mobilenetv2 only)')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--crop', type=int, default=321)
  parser.add_argument('--steps', type=int, default=5, help='timed steps (median reported)')
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps after the first')
  parser.add_argument('--repeats', type=int, default=1,
                      help='fresh worker pairs per configuration (medians over them)')
  parser.add_argument('--threads', type=int, default=min(2, len(os.sched_getaffinity(0))))
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--frameworks', nargs='+', default=['deeplax', 'torch'],
                      choices=('deeplax', 'torch'))
  parser.add_argument('--remat', nargs='*', default=[],
                      help="deeplax model.remat stages, e.g. layer3 layer4")
  parser.add_argument('--compile-cache', default='',
                      help='jax persistent compilation cache dir (default: off)')
  parser.add_argument('--tiny', action='store_true',
                      help='smoke run: tiny widths, 33x33 crop, 1 step, no warm-up')
  parser.add_argument('--timeout', type=float, default=3600, help='seconds per worker')
  parser.add_argument('--out', default=None,
                      help=f'JSON output (default: {os.path.relpath(DEFAULT_OUT)}; '
                      'with --tiny: none unless given)')
  common.add_malloc_args(parser)
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.tiny:
    args.crop, args.steps, args.warmup = 33, 1, 0
    args.models = args.models or ['deeplabv3_mobilenetv2_os16']
  args.models = args.models or list(CONFIGS)
  if args.out is None and not args.tiny:
    args.out = DEFAULT_OUT
  return args


def run(args):
  """Runs every (config, framework) worker, prints the table, writes the JSON."""
  start_load = common.load_average()

  def make_spec(name, framework, repeat):
    return {'config': name, 'framework': framework, 'batch': args.batch, 'crop': args.crop,
            'steps': args.steps, 'warmup': args.warmup, 'threads': args.threads,
            'dtype': args.dtype, 'tiny': args.tiny, 'remat': args.remat,
            'compile_cache': args.compile_cache, 'repeat': repeat, **common.malloc_spec(args)}

  results = common.run_all(__file__, args.models, args.frameworks, args.repeats, make_spec,
                           args.threads, args.timeout)
  return common.report('train_step', args, args.models, results, start_load, 's/step')


def worker_main(spec_json):
  import json  # pylint: disable=import-outside-toplevel
  spec = json.loads(spec_json)
  worker = deeplax_worker if spec['framework'] == 'deeplax' else torch_worker
  common.emit_result(worker(spec))


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    worker_main(args.worker)
  else:
    run(args)


if __name__ == '__main__':
  main()
