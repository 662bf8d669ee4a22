"""Shared harness of the side-by-side benchmarks (deeplax vs the PyTorch reference).

How a number is taken, for both frameworks alike:

- Every (configuration, framework) pair runs in a fresh worker process started by the
  driver, one at a time, alternating frameworks. A worker imports only its own framework,
  so neither one's thread pool, allocator cache or spinning OpenMP threads can slow the
  other, and the memory figures belong to one framework.
- Threads: the worker is pinned (sched_setaffinity) to the first `threads` CPUs; XLA
  sizes its pool from that mask and torch gets `torch.set_num_threads(threads)`.
- Time: `warmup` untimed steps after compilation (jax) or the first step (torch), then
  `steps` timed steps, each waited on to completion (jax: block_until_ready; torch on CPU
  is synchronous, on CUDA synchronised). We report the median wall time and the median
  process CPU time of a step; on a shared machine CPU time is the steadier of the two.
- Compile: jax's lower + compile of the step, timed apart (the persistent compilation
  cache is off unless asked for); for torch, which compiles nothing, the first step.
- Memory (CPU): the process's peak resident set (VmHWM). After setup (model, optimizer
  state, inputs, compilation) the worker returns freed heap to the OS (malloc_trim),
  notes VmRSS and resets the high-water mark (/proc/self/clear_refs = 5); `step_mem_mb`
  is then the peak during warm-up and timed steps above that baseline (activations,
  gradients, workspaces) and `peak_rss_mb` the process's peak over the same steps. On
  CUDA: torch.cuda.max_memory_allocated / jax memory_stats peak_bytes_in_use.
"""
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_MARKER = '@@BENCHMARK_RESULT@@ '


# ---- worker-side setup ------------------------------------------------------------------


def pin_threads(threads: int) -> List[int]:
  """Restricts this process to its first `threads` CPUs (call before importing jax)."""
  available = sorted(os.sched_getaffinity(0))
  if threads > len(available):
    raise ValueError(f'--threads {threads}: only {len(available)} CPUs are available '
                     f'({available})')
  cpus = available[:threads]
  os.sched_setaffinity(0, cpus)
  return cpus


def worker_env(threads: int) -> Dict[str, str]:
  """Environment of a worker: one jax CPU device (the tests force four), the thread
  count for OpenMP/MKL, and no inherited profiling/dump flags."""
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith(('--xla_force_host_platform_device_count', '--xla_dump'))]
  env['XLA_FLAGS'] = ' '.join(flags)
  env['OMP_NUM_THREADS'] = str(threads)
  env['MKL_NUM_THREADS'] = str(threads)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  return env


# ---- memory ---------------------------------------------------------------------------


def _status_kb(field: str) -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  raise RuntimeError(f'/proc/self/status has no {field}')


def trim_heap() -> None:
  """Returns free heap pages to the OS so that RSS reflects live memory (glibc only)."""
  try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):
    pass


class PeakMemory:
  """Peak resident memory of a code block, relative to the RSS when it starts."""

  def __enter__(self):
    trim_heap()
    self.baseline_kb = _status_kb('VmRSS')
    try:
      with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM to the current RSS (Linux >= 4.0)
      self.reset = True
    except OSError:
      self.reset = False  # peak then covers the whole process lifetime
    return self

  def __exit__(self, *exc):
    self.peak_kb = _status_kb('VmHWM')
    return False

  @property
  def step_mb(self) -> float:
    return round((self.peak_kb - self.baseline_kb) / 1024, 1)

  @property
  def peak_mb(self) -> float:
    return round(self.peak_kb / 1024, 1)


# ---- timing ---------------------------------------------------------------------------


def time_steps(step: Callable[[], None], warmup: int, steps: int) -> Dict[str, object]:
  """Runs `warmup` untimed then `steps` timed calls of `step` (which must return only
  when its work is done); returns per-step wall and CPU seconds and their medians."""
  for _ in range(warmup):
    step()
  wall, cpu = [], []
  for _ in range(steps):
    c0, t0 = time.process_time(), time.perf_counter()
    step()
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return {'step_s': statistics.median(wall), 'step_cpu_s': statistics.median(cpu),
          'step_times_s': [round(t, 4) for t in wall],
          'step_cpu_times_s': [round(t, 4) for t in cpu]}


# ---- driver side ----------------------------------------------------------------------


def machine() -> Dict[str, object]:
  """What the numbers were measured on."""
  model = platform.processor()
  flags = set()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name') and not model.strip('x86_64 '):
          model = line.split(':', 1)[1].strip()
        if line.startswith('flags'):
          flags = set(line.split(':', 1)[1].split())
  except OSError:
    pass
  versions = {}
  for name in ('jax', 'jaxlib', 'flax', 'torch', 'numpy'):
    try:
      versions[name] = __import__(name).__version__
    except ImportError:
      versions[name] = None
  return {
      'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
      'host': platform.node(),
      'cpu': model,
      'cpus_available': len(os.sched_getaffinity(0)),
      'avx512f': 'avx512f' in flags,
      'avx512_bf16': 'avx512_bf16' in flags,
      'amx_bf16': 'amx_bf16' in flags,
      'python': platform.python_version(),
      'versions': versions,
  }


def load_average() -> List[float]:
  return [round(x, 2) for x in os.getloadavg()]


def run_worker(script: str, spec: Dict, threads: int, timeout: Optional[float] = None) -> Dict:
  """Runs `script --worker SPEC` in a fresh process; returns its result dict (or an
  'error' entry holding the tail of its output, so one failing pair does not lose the
  rest of the table)."""
  cmd = [sys.executable, script, '--worker', json.dumps(spec)]
  load_before = load_average()
  try:
    proc = subprocess.run(cmd, env=worker_env(threads), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
  except subprocess.TimeoutExpired:
    return {**spec, 'error': f'timed out after {timeout} s'}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(RESULT_MARKER):
      result = json.loads(line[len(RESULT_MARKER):])
      result['load_before'] = load_before
      result['load_after'] = load_average()
      return result
  tail = (proc.stdout + proc.stderr)[-3000:]
  return {**spec, 'error': f'worker exited with {proc.returncode}: {tail}'}


def emit_result(result: Dict) -> None:
  """Worker side: the one line the driver parses."""
  print(RESULT_MARKER + json.dumps(result), flush=True)


def write_json(path: str, payload: Dict) -> None:
  """Atomic write: a temp file in the same directory, then rename."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix='.tmp')
  try:
    with os.fdopen(fd, 'w') as f:
      json.dump(payload, f, indent=1, sort_keys=False)
      f.write('\n')
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
  values = [v for v in values if v is not None]
  return statistics.median(values) if values else None


def combine(results: List[Dict], configs: Sequence[str],
            frameworks: Sequence[str]) -> List[Dict]:
  """One row per configuration: medians over repeats of each framework, and the
  deeplax / reference ratio of the step times (< 1: deeplax is faster)."""
  rows = []
  for name in configs:
    row = {'config': name}
    for fw in frameworks:
      runs = [r for r in results if r['config'] == name and r['framework'] == fw]
      good = [r for r in runs if 'error' not in r]
      row[fw] = {
          'step_s': _median([r['step_s'] for r in good]),
          'step_cpu_s': _median([r['step_cpu_s'] for r in good]),
          'images_per_s': _median([r['images_per_s'] for r in good]),
          'compile_s': _median([r.get('compile_s') for r in good]),
          'first_step_s': _median([r.get('first_step_s') for r in good]),
          'step_mem_mb': _median([r.get('step_mem_mb') for r in good]),
          'peak_rss_mb': _median([r.get('peak_rss_mb') for r in good]),
          'runs': len(good),
          'errors': [r['error'][-500:] for r in runs if 'error' in r],
      }
    if all(row.get(fw, {}).get('step_s') for fw in ('deeplax', 'torch')):
      row['ratio'] = round(row['deeplax']['step_s'] / row['torch']['step_s'], 3)
      row['cpu_ratio'] = round(row['deeplax']['step_cpu_s'] / row['torch']['step_cpu_s'], 3)
    else:
      row['ratio'] = row['cpu_ratio'] = None
    rows.append(row)
  return rows


def _fmt(value, spec='.3f'):
  return '-' if value is None else format(value, spec)


def print_table(rows: List[Dict], unit: str = 's/step') -> None:
  """config | deeplax | reference | ratio | images/s | compile | memory."""
  header = (f'{"config":34s} {"deeplax " + unit:>15s} {"torch " + unit:>13s} {"ratio":>6s} '
            f'{"cpu ratio":>9s} {"img/s dlx":>9s} {"img/s ref":>9s} {"compile s":>9s} '
            f'{"mem MB dlx":>10s} {"mem MB ref":>10s}')
  print(header)
  print('-' * len(header))
  for row in rows:
    d, t = row.get('deeplax', {}), row.get('torch', {})
    print(f'{row["config"]:34s} {_fmt(d.get("step_s")):>15s} {_fmt(t.get("step_s")):>13s} '
          f'{_fmt(row.get("ratio"), ".2f"):>6s} {_fmt(row.get("cpu_ratio"), ".2f"):>9s} '
          f'{_fmt(d.get("images_per_s"), ".2f"):>9s} {_fmt(t.get("images_per_s"), ".2f"):>9s} '
          f'{_fmt(d.get("compile_s"), ".1f"):>9s} {_fmt(d.get("step_mem_mb"), ".0f"):>10s} '
          f'{_fmt(t.get("step_mem_mb"), ".0f"):>10s}')
    for fw in ('deeplax', 'torch'):
      for err in row.get(fw, {}).get('errors', []):
        print(f'  {fw} error: {err.strip().splitlines()[-1] if err.strip() else err}')


def run_all(script: str, configs: Sequence[str], frameworks: Sequence[str], repeats: int,
            make_spec: Callable[[str, str, int], Dict], threads: int,
            timeout: Optional[float]) -> List[Dict]:
  """Runs one worker per (repeat, config, framework), alternating which framework goes
  first so that drift in machine load evens out; prints a line per run."""
  results = []
  for repeat in range(repeats):
    for i, name in enumerate(configs):
      order = list(frameworks)[::-1] if (i + repeat) % 2 else list(frameworks)
      for framework in order:
        print(f'[{time.strftime("%H:%M:%S")}] {name} / {framework} (repeat {repeat}, '
              f'load {load_average()[0]})', flush=True)
        result = run_worker(script, make_spec(name, framework, repeat), threads, timeout)
        if 'error' in result:
          print(f'  error: {result["error"][-800:]}', flush=True)
        else:
          print(f'  {result["step_s"]:.3f} s/step (cpu {result["step_cpu_s"]:.3f} s), '
                f'compile {result.get("compile_s")} s, first step {result["first_step_s"]} s, '
                f'step memory {result["step_mem_mb"]} MB', flush=True)
        results.append(result)
  return results


def report(benchmark: str, args, configs: Sequence[str], results: List[Dict],
           start_load: List[float], unit: str) -> Dict:
  """Prints the table and writes the JSON (when args.out) of one benchmark run."""
  rows = combine(results, configs, args.frameworks)
  print()
  print_table(rows, unit)
  payload = {'benchmark': benchmark, 'machine': machine(),
             'settings': {k: v for k, v in vars(args).items() if k not in ('worker', 'out')},
             'load_start': start_load, 'load_end': load_average(), 'rows': rows,
             'runs': results}
  if args.out:
    write_json(args.out, payload)
    print(f'\nwrote {args.out}')
  return payload
