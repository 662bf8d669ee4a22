"""Inference (eval forward) speed and memory: deeplax vs the PyTorch reference.

deeplax: `module.apply(variables, images, train=False)` (the public interface: logits at
input size) under `jax.jit` with `deeplax.xla_options.compiler_options()`. PyTorch:
the reference network (benchmarks/torch_models.py) in eval mode under
`torch.inference_mode()`. Image sizes:

  voc         1 x 513 x 513   a VOC image (500x375 at most) padded to 513, as evaluated
  cityscapes  1 x 1024 x 2048 a full Cityscapes frame

  python benchmarks/inference.py
  python benchmarks/inference.py --models deeplabv3_resnet101_os8 --sizes voc --steps 5
  python benchmarks/inference.py --tiny
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks import train_step  # noqa: E402  (model table, config, batches)

SIZES = {'voc': (513, 513), 'cityscapes': (1024, 2048)}
MODELS = ('deeplabv3_resnet50_os8', 'deeplabv3_resnet50_os16', 'deeplabv3_resnet101_os8',
          'deeplabv3_resnet101_os16', 'deeplabv3_mobilenetv2_os16',
          'deeplabv3plus_resnet101_os16')
DEFAULT_OUT = os.path.join(common.ROOT, 'benchmarks', 'results', 'inference_cpu.json')


def config_name(model: str, size: str) -> str:
  return f'{model}@{size}'


def split_config(name: str):
  model, size = name.split('@')
  return model, size


def _images(spec):
  import numpy as np  # pylint: disable=import-outside-toplevel
  h, w = spec['size']
  return np.random.default_rng(0).standard_normal((spec['batch'], h, w, 3), dtype=np.float32)


def deeplax_worker(spec):
  common.setup_worker(spec)
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from deeplax import compile_cache, models, train, xla_options
  compile_cache.configure('')  # compile time is measured, never loaded
  model, _ = split_config(spec['config'])
  config = train_step.deeplax_config({**spec, 'config': model, 'crop': spec['size'][0]})
  device = jax.devices()[0]
  mesh = train.create_mesh([device])
  module = models.create_model(config.model)
  variables = train.initial_variables(module, jax.random.PRNGKey(0),
                                      (1, 65, 65, 3), mesh)  # parameters do not depend on size
  images = jax.device_put(_images(spec), device)
  forward = jax.jit(lambda v, x: module.apply(v, x, train=False))
  options = train_step.tiny_options(spec, xla_options.compiler_options(device.platform))
  t0 = time.perf_counter()
  compiled = forward.lower(variables, images).compile(options)
  compile_s = time.perf_counter() - t0
  holder = {}

  def step():
    holder['logits'] = jax.block_until_ready(compiled(variables, images))

  t0 = time.perf_counter()
  step()
  first_step_s = time.perf_counter() - t0
  with common.PeakMemory() as memory:
    timing = common.time_steps(step, spec['warmup'], spec['steps'])
  result = {**spec, 'framework': 'deeplax', 'compile_s': round(compile_s, 2),
            'first_step_s': round(first_step_s, 3), **timing,
            'images_per_s': spec['batch'] / timing['step_s'],
            'logits_mean': float(np.mean(holder['logits'])), 'xla_options': options,
            'device': device.device_kind}
  result.update(train_step._memory(memory, device, compiled))  # pylint: disable=protected-access
  return result


def torch_worker(spec):
  common.setup_worker(spec)
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks import torch_models  # pylint: disable=import-outside-toplevel
  from tests.conftest import import_torchvision  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(spec['threads'])
  torch.manual_seed(0)
  tv = import_torchvision()
  model_name, output_stride = train_step.CONFIGS[split_config(spec['config'])[0]]
  model = torch_models.build_reference(tv, model_name, output_stride, train_step.NUM_CLASSES,
                                       width_multiplier=0.25 if spec['tiny'] else 1.0)
  cuda = torch.cuda.is_available()
  device = torch.device('cuda' if cuda else 'cpu')
  memory_format = torch.channels_last if cuda else torch.contiguous_format
  model = model.to(device, memory_format=memory_format).eval()
  x = torch.from_numpy(_images(spec)).permute(0, 3, 1, 2).contiguous().to(
      device, memory_format=memory_format)
  autocast = spec['dtype'] == 'bfloat16'
  holder = {}

  def step():
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                enabled=autocast):
      holder['logits'] = model(x)
    if cuda:
      torch.cuda.synchronize()

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
            'logits_mean': float(holder['logits'].float().mean()), 'device': str(device),
            'step_mem_mb': memory.step_mb, 'peak_rss_mb': memory.peak_mb}
  if cuda:
    result['device_peak_mb'] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
  return result


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', nargs='+', choices=MODELS,
                      help='models (default: all; with --tiny: mobilenetv2 only)')
  parser.add_argument('--sizes', nargs='+', choices=sorted(SIZES), default=sorted(SIZES))
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--steps', type=int, default=3, help='timed forwards (median reported)')
  parser.add_argument('--warmup', type=int, default=1, help='untimed forwards after the first')
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--threads', type=int, default=min(2, len(os.sched_getaffinity(0))))
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--frameworks', nargs='+', default=['deeplax', 'torch'],
                      choices=('deeplax', 'torch'))
  parser.add_argument('--tiny', action='store_true',
                      help='smoke run: tiny widths, 33x33 and 33x65 images, 1 forward')
  parser.add_argument('--timeout', type=float, default=3600, help='seconds per worker')
  parser.add_argument('--out', default=None,
                      help=f'JSON output (default: {os.path.relpath(DEFAULT_OUT)}; '
                      'with --tiny: none unless given)')
  common.add_malloc_args(parser)
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.tiny:
    args.steps, args.warmup = 1, 0
    args.models = args.models or ['deeplabv3_mobilenetv2_os16']
  args.models = args.models or list(MODELS)
  if args.out is None and not args.tiny:
    args.out = DEFAULT_OUT
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    import json  # pylint: disable=import-outside-toplevel
    spec = json.loads(args.worker)
    worker = deeplax_worker if spec['framework'] == 'deeplax' else torch_worker
    common.emit_result(worker(spec))
    return
  sizes = {'voc': (33, 33), 'cityscapes': (33, 65)} if args.tiny else SIZES
  configs = [config_name(m, s) for m in args.models for s in args.sizes]
  start_load = common.load_average()

  def make_spec(name, framework, repeat):
    return {'config': name, 'framework': framework, 'batch': args.batch,
            'size': sizes[split_config(name)[1]], 'steps': args.steps, 'warmup': args.warmup,
            'threads': args.threads, 'dtype': args.dtype, 'tiny': args.tiny, 'repeat': repeat,
            **common.malloc_spec(args)}

  results = common.run_all(__file__, configs, args.frameworks, args.repeats, make_spec,
                           args.threads, args.timeout)
  return common.report('inference', args, configs, results, start_load, 's/batch')


if __name__ == '__main__':
  main()
