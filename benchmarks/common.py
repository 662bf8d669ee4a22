"""Shared harness of the side-by-side benchmarks (deeplax vs the PyTorch reference).

How a number is taken, for both frameworks alike:

- Every (configuration, framework) pair runs in a fresh worker process started by the
  driver. A worker imports only its own framework, so neither one's thread pool, allocator
  cache or spinning OpenMP threads can slow the other, and the memory figures belong to
  one framework.
- Lockstep: the two workers of a configuration are set up one after the other (so that
  compiling does not share the CPUs), then step in turn, deeplax, torch, torch, deeplax,
  ... each step started by the driver only when the other worker's step has finished.
  On a shared machine whose speed drifts from minute to minute (seen here: the same
  PyTorch step 1.8 s in one run and 2.5 s in another), both frameworks then see the same
  machine, and their ratio is steady even when the absolute times are not.
- Threads: the worker is pinned (sched_setaffinity) to the first `threads` CPUs; XLA
  sizes its pool from that mask and torch gets `torch.set_num_threads(threads)`.
- Time: `warmup` untimed steps after compilation (jax) or the first step (torch), then
  `steps` timed steps, each waited on to completion (jax: block_until_ready; torch on CPU
  is synchronous, on CUDA synchronised). We report the median wall time and the median
  process CPU time of a step; on a shared machine CPU time is the steadier of the two.
- Compile: jax's lower + compile of the step, timed apart (the persistent compilation
  cache is off unless asked for); for torch, which compiles nothing, the first step.
- Memory (CPU): the process's peak resident set (VmHWM). After setup (model, optimizer
  state, inputs, compilation) the worker returns freed heap to the OS (malloc_trim; a
  deeplax train-step worker, which keeps freed memory mapped, does so once right after
  compiling, as deeplax's train loop does: see PeakMemory), notes VmRSS and resets the
  high-water mark (/proc/self/clear_refs = 5); `step_mem_mb`
  is then the peak during warm-up and timed steps above that baseline (activations,
  gradients, workspaces) and `peak_rss_mb` the process's peak over the same steps. The
  table shows `peak_rss_mb`: deeplax keeps freed memory mapped (deeplax.host_memory), so
  its `step_mem_mb` is only what the heap grew by, not comparable; XLA's own buffer plan
  of a step is `xla_temp_mb`. On CUDA: torch.cuda.max_memory_allocated / jax
  memory_stats peak_bytes_in_use.
"""
import datetime
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
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


def setup_worker(spec: Dict) -> None:
  """First thing in a worker: pin its threads, and set the process's malloc as it runs in
  use: deeplax as main.py runs it (`deeplax.host_memory.keep_freed_memory`, unless
  spec['deeplax_malloc'] is 'default'); PyTorch with glibc's defaults unless
  spec['reference_malloc'] is 'tuned' (then the same setting: what a PyTorch user gets
  from preloading jemalloc/tcmalloc)."""
  pin_threads(spec['threads'])
  key = 'deeplax_malloc' if spec['framework'] == 'deeplax' else 'reference_malloc'
  default = 'tuned' if spec['framework'] == 'deeplax' else 'default'
  if spec.get(key, default) == 'tuned':
    from deeplax import host_memory  # pylint: disable=import-outside-toplevel
    global _KEEPS_FREED_MEMORY  # pylint: disable=global-statement
    _KEEPS_FREED_MEMORY = host_memory.keep_freed_memory()


def add_malloc_args(parser) -> None:
  parser.add_argument('--reference-malloc', default='default', choices=('default', 'tuned'),
                      help="PyTorch worker's glibc malloc: as it ships, or tuned as deeplax's")
  parser.add_argument('--deeplax-malloc', default='tuned', choices=('default', 'tuned'),
                      help="deeplax worker's glibc malloc: tuned as main.py does, or default")


def malloc_spec(args) -> Dict[str, str]:
  """The workers' malloc settings from `add_malloc_args`'s flags, for their spec."""
  return {'reference_malloc': args.reference_malloc, 'deeplax_malloc': args.deeplax_malloc}


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
  from deeplax import host_memory  # pylint: disable=import-outside-toplevel
  host_memory.release_free_memory()


# Set by setup_worker when the process runs with deeplax.host_memory's malloc setting.
_KEEPS_FREED_MEMORY = False


def release_compile_memory() -> None:
  """After compiling, in a worker that keeps freed memory mapped: hand the compiler's
  freed heap back once, as deeplax's train loop does (deeplax.host_memory)."""
  if _KEEPS_FREED_MEMORY:
    trim_heap()


class PeakMemory:
  """Peak resident memory of a code block, relative to the RSS when it starts.

  The heap is trimmed first so that the baseline is live memory, except in a process that
  keeps freed memory mapped on purpose (deeplax as main.py runs it, which trims once, right
  after compiling: `release_compile_memory`): trimming after its first step hands back
  pages that the timed steps then fault in again, which is not how it runs.
  """

  def __enter__(self):
    if not _KEEPS_FREED_MEMORY:
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


GATE_MARKER = '@@BENCHMARK_READY@@'


def _gate() -> None:
  """Lockstep (worker side): tell the driver this worker is ready for its next step and
  wait for its go (a line on stdin). Without a driver (stdin not a pipe from one), no-op."""
  if os.environ.get('BENCHMARK_LOCKSTEP') != '1':
    return
  print(GATE_MARKER, flush=True)
  if not sys.stdin.readline():
    raise SystemExit('benchmark driver went away')


def time_steps(step: Callable[[], None], warmup: int, steps: int) -> Dict[str, object]:
  """Runs `warmup` untimed then `steps` timed calls of `step` (which must return only
  when its work is done), each when the driver says go; returns per-step wall and CPU
  seconds and their medians."""
  for _ in range(warmup):
    _gate()
    step()
  wall, cpu = [], []
  for _ in range(steps):
    _gate()
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


class Worker:
  """One worker process (`script --worker SPEC`) driven in lockstep: `start()` returns once
  it has set up and waits for its first step (or has ended), `step()` lets it run one step
  and returns when it is done, `finish()` collects its result dict (or an 'error' entry
  holding the tail of its output, so one failing pair does not lose the rest)."""

  def __init__(self, script: str, spec: Dict, threads: int, timeout: Optional[float]):
    self.spec, self.timeout = spec, timeout
    self.deadline = None if timeout is None else time.time() + timeout
    self.lines: 'queue.Queue[Optional[str]]' = queue.Queue()
    self.tail: List[str] = []
    self.result: Optional[Dict] = None
    self.error: Optional[str] = None
    self.load_before = load_average()
    env = dict(worker_env(threads), BENCHMARK_LOCKSTEP='1')
    self.stderr = tempfile.TemporaryFile(mode='w+')
    self.proc = subprocess.Popen([sys.executable, script, '--worker', json.dumps(spec)],
                                 env=env, cwd=ROOT, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=self.stderr, text=True)
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self) -> None:
    for line in self.proc.stdout:
      self.lines.put(line.rstrip('\n'))
    self.lines.put(None)

  def _wait(self) -> None:
    """Reads output until the worker is ready for a step, has sent its result or ended."""
    while self.error is None and self.result is None:
      left = None if self.deadline is None else self.deadline - time.time()
      try:
        line = self.lines.get(timeout=left if left is None else max(left, 0.01))
      except queue.Empty:
        self.proc.kill()
        self.error = f'timed out after {self.timeout} s'
        return
      if line is None:
        self._ended()
        return
      if line == GATE_MARKER:
        return
      if line.startswith(RESULT_MARKER):
        self.result = json.loads(line[len(RESULT_MARKER):])
        return
      self.tail = (self.tail + [line])[-40:]

  def _ended(self) -> None:
    code = self.proc.wait()
    self.stderr.seek(0)
    output = '\n'.join(self.tail) + '\n' + self.stderr.read()
    self.error = f'worker exited with {code}: {output[-3000:]}'

  @property
  def alive(self) -> bool:
    return self.error is None and self.result is None

  def start(self) -> 'Worker':
    self._wait()
    return self

  def step(self) -> None:
    if not self.alive:
      return
    try:
      self.proc.stdin.write('go\n')
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass
    self._wait()

  def finish(self) -> Dict:
    while self.alive:  # a worker asking for more steps than the driver gives
      self.step()
    if self.result is not None:
      self.proc.wait()
      self.result['load_before'] = self.load_before
      self.result['load_after'] = load_average()
      return self.result
    return {**self.spec, 'error': self.error}


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
  """config | deeplax | reference | ratio | images/s | compile | peak memory (the process's
  peak resident set: with deeplax's malloc setting freed memory stays mapped, so a
  step's own share is not separable from the heap; XLA's plan is in the JSON)."""
  header = (f'{"config":34s} {"deeplax " + unit:>15s} {"torch " + unit:>13s} {"ratio":>6s} '
            f'{"cpu ratio":>9s} {"img/s dlx":>9s} {"img/s ref":>9s} {"compile s":>9s} '
            f'{"peak MB dlx":>11s} {"peak MB ref":>11s}')
  print(header)
  print('-' * len(header))
  for row in rows:
    d, t = row.get('deeplax', {}), row.get('torch', {})
    print(f'{row["config"]:34s} {_fmt(d.get("step_s")):>15s} {_fmt(t.get("step_s")):>13s} '
          f'{_fmt(row.get("ratio"), ".2f"):>6s} {_fmt(row.get("cpu_ratio"), ".2f"):>9s} '
          f'{_fmt(d.get("images_per_s"), ".2f"):>9s} {_fmt(t.get("images_per_s"), ".2f"):>9s} '
          f'{_fmt(d.get("compile_s"), ".1f"):>9s} {_fmt(d.get("peak_rss_mb"), ".0f"):>11s} '
          f'{_fmt(t.get("peak_rss_mb"), ".0f"):>11s}')
    for fw in ('deeplax', 'torch'):
      for err in row.get(fw, {}).get('errors', []):
        print(f'  {fw} error: {err.strip().splitlines()[-1] if err.strip() else err}')


def run_all(script: str, configs: Sequence[str], frameworks: Sequence[str], repeats: int,
            make_spec: Callable[[str, str, int], Dict], threads: int,
            timeout: Optional[float]) -> List[Dict]:
  """For each repeat and configuration: one worker per framework, set up one after the
  other, then stepped in lockstep (the order of each round alternating, ABBA...); prints
  a line per run."""
  results = []
  for repeat in range(repeats):
    for i, name in enumerate(configs):
      order = list(frameworks)[::-1] if (i + repeat) % 2 else list(frameworks)
      workers = []
      for framework in order:
        print(f'[{time.strftime("%H:%M:%S")}] {name} / {framework} (repeat {repeat}, '
              f'load {load_average()[0]}): setting up', flush=True)
        workers.append(Worker(script, make_spec(name, framework, repeat), threads,
                              timeout).start())
      spec = workers[0].spec
      for round_ in range(spec.get('warmup', 0) + spec['steps']):
        for worker in (workers if round_ % 2 == 0 else workers[::-1]):
          worker.step()
      for worker in workers:
        result = worker.finish()
        framework = worker.spec['framework']
        if 'error' in result:
          print(f'  {framework} error: {result["error"][-800:]}', flush=True)
        else:
          print(f'  {framework}: {result["step_s"]:.3f} s/step (cpu {result["step_cpu_s"]:.3f} '
                f's), compile {result.get("compile_s")} s, first step '
                f'{result["first_step_s"]} s, step memory {result["step_mem_mb"]} MB',
                flush=True)
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
