"""Smoke tests of the benchmark scripts: each runs end to end in --tiny mode (tiny
widths, 33x33, one step, one thread) and writes JSON holding every field of the README
table. The harness's memory probe is checked against a known allocation. No test here
asserts a timing: timings are what the scripts print, not what tests judge.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np

from benchmarks import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMEWORK_FIELDS = ('step_s', 'step_cpu_s', 'images_per_s', 'compile_s', 'first_step_s',
                    'step_mem_mb', 'peak_rss_mb', 'runs', 'errors')
RUN_FIELDS = ('config', 'framework', 'step_s', 'step_cpu_s', 'step_times_s', 'step_cpu_times_s',
              'images_per_s', 'first_step_s', 'step_mem_mb', 'peak_rss_mb', 'load_before',
              'load_after', 'threads', 'dtype')


def _run(script, tmp_path, *extra):
  out = tmp_path / 'result.json'
  cmd = [sys.executable, os.path.join(ROOT, 'benchmarks', script), '--tiny', '--threads', '1',
         '--out', str(out), *extra]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert 'ratio' in proc.stdout  # the table was printed
  with open(out) as f:
    return json.load(f)


def _check_payload(payload, benchmark, configs, value_key):
  assert payload['benchmark'] == benchmark
  for key in ('date', 'cpu', 'cpus_available', 'avx512_bf16', 'versions'):
    assert key in payload['machine'], key
  assert len(payload['load_start']) == 3 and len(payload['load_end']) == 3
  assert payload['settings']['threads'] == 1
  assert [row['config'] for row in payload['rows']] == configs
  for row in payload['rows']:
    for framework in ('deeplax', 'torch'):
      entry = row[framework]
      assert set(FRAMEWORK_FIELDS) <= set(entry), (framework, entry)
      assert entry['errors'] == [] and entry['runs'] == 1, entry
      assert entry['step_s'] > 0 and entry['images_per_s'] > 0
    assert row['deeplax']['compile_s'] > 0 and row['torch']['compile_s'] is None
    assert row['ratio'] == round(row['deeplax']['step_s'] / row['torch']['step_s'], 3)
  assert len(payload['runs']) == 2 * len(configs)
  for run in payload['runs']:
    assert set(RUN_FIELDS) <= set(run), run
    assert len(run['step_times_s']) == 1
    assert math.isfinite(run[value_key])
  deeplax_runs = [r for r in payload['runs'] if r['framework'] == 'deeplax']
  for run in deeplax_runs:
    assert 'xla_temp_mb' in run and 'xla_options' in run


def test_train_step_tiny(tmp_path):
  payload = _run('train_step.py', tmp_path)
  _check_payload(payload, 'train_step', ['deeplabv3_mobilenetv2_os16'], 'loss')
  # Both sides start from random weights on the same random batch of 21 classes.
  for run in payload['runs']:
    assert 1.0 < run['loss'] < 10.0, run['loss']


def test_inference_tiny(tmp_path):
  payload = _run('inference.py', tmp_path, '--sizes', 'voc')
  _check_payload(payload, 'inference', ['deeplabv3_mobilenetv2_os16@voc'], 'logits_mean')


def test_peak_memory_sees_an_allocation():
  """A 200 MB array written inside the block shows up in step_mb (RSS counts touched
  pages), and not once it is measured outside."""
  with common.PeakMemory() as memory:
    block = np.ones((200, 2**20 // 8), np.float64)  # 200 MiB, every page touched
    del block
  assert 180 <= memory.step_mb <= 400, memory.step_mb
  with common.PeakMemory() as idle:
    pass
  assert idle.step_mb < 50, idle.step_mb


def test_peak_memory_trims_the_heap_only_where_the_process_does(monkeypatch):
  """A worker running with deeplax's malloc setting (freed memory kept mapped, as main.py
  runs) is measured without a trim, which would make its timed steps fault the pages in
  again; the reference (glibc defaults) is trimmed for a live-memory baseline."""
  trims = []
  monkeypatch.setattr(common, 'trim_heap', lambda: trims.append(1))
  with common.PeakMemory():
    pass
  assert trims == [1]
  monkeypatch.setattr(common, '_KEEPS_FREED_MEMORY', True)
  with common.PeakMemory() as memory:
    block = np.ones((200, 2**20 // 8), np.float64)
    del block
  assert trims == [1] and memory.step_mb >= 180, memory.step_mb


def test_compile_memory_is_released_only_where_freed_memory_is_kept(monkeypatch):
  """A deeplax worker (freed memory kept mapped) hands the compiler's heap back once after
  compiling, as the train loop does; a worker on glibc's defaults trims nothing there."""
  trims = []
  monkeypatch.setattr(common, 'trim_heap', lambda: trims.append(1))
  common.release_compile_memory()
  assert trims == []
  monkeypatch.setattr(common, '_KEEPS_FREED_MEMORY', True)
  common.release_compile_memory()
  assert trims == [1]


def test_combine_takes_medians_and_the_ratio():
  runs = [{'config': 'a', 'framework': 'deeplax', 'step_s': s, 'step_cpu_s': s,
           'images_per_s': 2 / s, 'compile_s': 10.0, 'first_step_s': 1.0, 'step_mem_mb': 5.0,
           'peak_rss_mb': 50.0} for s in (1.0, 3.0, 2.0)]
  runs += [{'config': 'a', 'framework': 'torch', 'step_s': 4.0, 'step_cpu_s': 8.0,
            'images_per_s': 0.5, 'first_step_s': 4.0, 'step_mem_mb': 6.0,
            'peak_rss_mb': 60.0},
           {'config': 'a', 'framework': 'torch', 'error': 'boom'}]
  (row,) = common.combine(runs, ['a'], ['deeplax', 'torch'])
  assert row['deeplax']['step_s'] == 2.0 and row['deeplax']['runs'] == 3
  assert row['torch']['runs'] == 1 and row['torch']['errors'] == ['boom']
  assert row['ratio'] == 0.5 and row['cpu_ratio'] == 0.25
