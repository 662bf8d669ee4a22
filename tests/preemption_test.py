"""A real training process (main.py) killed at random moments, during a checkpoint write
and by SIGTERM, restarted each time, ends with the same state as an uninterrupted run.

The processes run main.py (through `_worker` below, which swaps in the tiny test model
and can hold one checkpoint's commit) on the shapes config of tests/train_utils.py with
gradient accumulation (iter_size 2) and a checkpoint every 3 steps, so resumes land in
the middle of an accumulation. What is checked:
  - SIGKILL at a random moment: the restart restores the newest complete checkpoint;
  - SIGKILL while a checkpoint is being written (its temporary directory exists, the
    commit rename is held back): the restart ignores it and restores the previous one;
  - SIGTERM: the process finishes its step, saves it, exits with EXIT_PREEMPTED (75);
  - the final parameters, BN statistics, optimizer state (momentum and the accumulated
    gradient) and step equal the uninterrupted run's bit for bit (CPU, same device count:
    XLA:CPU is deterministic and the data stream is a function of the step).
Each process start costs ~10 s of imports; the jit compile is shared through the
persistent compilation cache in a temp dir.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30
EVERY = 3
EXIT_PREEMPTED = 75  # deeplax.preemption.EXIT_PREEMPTED (not imported: no jax here)


def _worker():
  """`python -m tests.preemption_test FLAGS`: main.py with the tiny test model.

  The worker imports everything first, then waits for the file $GO_FILE (so a restart's
  ~10 s of imports overlap the run before it) and reads environment settings from it:
  HOLD_COMMIT_STEP=N makes checkpoint N's commit (the final rename) wait 60 s.
  """
  import json  # pylint: disable=import-outside-toplevel
  from absl import app  # pylint: disable=import-outside-toplevel
  from etils import epath  # pylint: disable=import-outside-toplevel
  import main  # pylint: disable=import-outside-toplevel
  from deeplax import train  # pylint: disable=import-outside-toplevel
  from deeplax.data import pipeline  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from tests.train_utils import TinySeg  # pylint: disable=import-outside-toplevel
  go = os.environ['GO_FILE']
  while not os.path.exists(go):
    time.sleep(0.02)
  with open(go) as f:
    os.environ.update(json.load(f))
  train.models.create_model = lambda model_config: TinySeg(model_config.num_classes,
                                                           dropout=0.3)
  hold = os.environ.get('HOLD_COMMIT_STEP')
  if hold:
    owner = next(c for c in type(epath.Path('/')).__mro__ if 'rename' in c.__dict__)
    rename = owner.rename

    def held_rename(self, target):
      if os.path.basename(str(self)) == f'{hold}.orbax-checkpoint-tmp':
        time.sleep(60)
      return rename(self, target)
    owner.rename = held_rename
  app.run(main.main)


class Run:
  """One training process on `workdir`, started now, training once `go()` is called; its
  output goes to a file (no pipe to fill)."""

  def __init__(self, tmp_path, workdir, name):
    self.log = tmp_path / f'{name}.log'
    self.go_file = tmp_path / f'{name}.go'
    command = [sys.executable, '-m', 'tests.preemption_test', '--config',
               'tests/train_utils.py', '--workdir', str(workdir),
               f'--config.num_train_steps={STEPS}', f'--config.checkpoint_every_steps={EVERY}',
               '--config.optim.iter_size=2', '--config.log_every_steps=100',
               '--config.keep_checkpoints=100',
               f'--config.compilation_cache_dir={tmp_path / "jax_cache"}']
    env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu', GO_FILE=str(self.go_file))
    with open(self.log, 'w') as log:
      self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT)

  def go(self, **env) -> 'Run':
    tmp = f'{self.go_file}.tmp'
    with open(tmp, 'w') as f:
      json.dump(env, f)
    os.replace(tmp, self.go_file)
    return self

  def text(self) -> str:
    return self.log.read_text()

  def wait(self, timeout=180) -> int:
    return self.process.wait(timeout=timeout)

  def kill(self, signum) -> None:
    self.process.send_signal(signum)

  def restored_step(self) -> int:
    lines = [l for l in self.text().splitlines() if 'Restoring checkpoint' in l]
    assert lines, self.text()[-3000:]
    return int(lines[0].split('Restoring checkpoint')[1].split()[0])


def _complete(workdir):
  directory = workdir / 'checkpoints'
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if directory.exists() \
      else []


def _wait_until(condition, run, timeout=120.0):
  deadline = time.time() + timeout
  while not condition():
    assert run.process.poll() is None, f'exited early:\n{run.text()[-3000:]}'
    assert time.time() < deadline, f'timed out:\n{run.text()[-3000:]}'
    time.sleep(0.01)


def _state(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  tree = ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(step) / 'default')
  return jax.tree_util.tree_flatten_with_path(jax.tree.map(np.asarray, tree))[0]


def test_killed_and_restarted_training_equals_the_uninterrupted_run(tmp_path):
  rng = np.random.default_rng(8)
  run_dir, ref_dir = tmp_path / 'run', tmp_path / 'reference'
  reference = Run(tmp_path, ref_dir, 'reference').go()
  first, second, third, last = (Run(tmp_path, run_dir, n)
                                for n in ('first', 'second', 'third', 'last'))
  try:
    _kill_restart_and_compare(rng, run_dir, ref_dir, reference, first, second, third, last)
  finally:
    for run in (reference, first, second, third, last):
      if run.process.poll() is None:
        run.kill(signal.SIGKILL)
        run.wait()


def _kill_restart_and_compare(rng, run_dir, ref_dir, reference, first, second, third, last):
  # 1. SIGKILL at a random moment after the first checkpoint. (The reference compiles
  # first, filling the compilation cache the other runs read.)
  _wait_until(lambda: _complete(ref_dir), reference)
  first.go()
  _wait_until(lambda: _complete(run_dir), first)
  time.sleep(rng.uniform(0.0, 0.4))
  first.kill(signal.SIGKILL)
  first.wait()
  complete = _complete(run_dir)
  assert complete and complete[-1] < STEPS, complete

  # 2. Restart; SIGKILL while the second checkpoint after the resume is being written.
  held = (complete[-1] // EVERY + 2) * EVERY
  second.go(HOLD_COMMIT_STEP=str(held))
  temporary = run_dir / 'checkpoints' / f'{held}.orbax-checkpoint-tmp'
  _wait_until(temporary.exists, second)
  time.sleep(rng.uniform(0.0, 0.2))  # somewhere in the write (the commit is held)
  second.kill(signal.SIGKILL)
  second.wait()
  assert second.restored_step() == complete[-1]  # resumed from the newest complete one
  complete = _complete(run_dir)
  assert held not in complete and complete[-1] == held - EVERY, complete

  # 3. Restart; SIGTERM once it has written a new checkpoint: finish the step, save, exit 75.
  third.go()
  _wait_until(lambda: _complete(run_dir)[-1] > held, third)
  third.kill(signal.SIGTERM)
  assert third.wait() == EXIT_PREEMPTED, third.text()[-3000:]
  assert third.restored_step() == held - EVERY  # the half-written one was ignored
  text = third.text()
  assert 'SIGTERM received' in text
  stopped = int(text.split('stopped after step ')[1].split()[0])
  assert stopped < STEPS and stopped in _complete(run_dir), (stopped, _complete(run_dir))

  # 4. Restart to the end.
  last.go()
  assert last.wait() == 0, last.text()[-3000:]
  assert last.restored_step() == stopped
  # A restart compiles nothing: the reference's compile is in the persistent cache.
  assert 'persistent compilation cache: hit' in last.text(), last.text()[-3000:]
  assert reference.wait() == 0, reference.text()[-3000:]

  resumed, straight = _state(run_dir, STEPS), _state(ref_dir, STEPS)
  assert [p for p, _ in resumed] == [p for p, _ in straight]
  for (path, a), (_, b) in zip(resumed, straight):
    np.testing.assert_array_equal(a, b, err_msg=str(path))  # bit-identical
  assert any('acc_grads' in str(p) for p, _ in resumed)  # mid-accumulation state included


def _wait_for(condition, seconds=5.0):
  """Sleeps in short slices (each a chance for Python to run a pending signal handler)
  until `condition()` or the time is up."""
  deadline = time.monotonic() + seconds
  while not condition() and time.monotonic() < deadline:
    time.sleep(0.01)


def test_first_signal_requests_a_stop_the_second_acts_at_once():
  from deeplax import preemption  # pylint: disable=import-outside-toplevel
  assert preemption.EXIT_PREEMPTED == EXIT_PREEMPTED
  # The contract is "the previous handler is put back after the first signal": start from
  # Python's own Ctrl-C handler whatever an earlier test or library left installed.
  original = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    _two_ctrl_c(preemption)
  finally:
    signal.signal(signal.SIGINT, original)
  term = signal.getsignal(signal.SIGTERM)
  with preemption.StopRequest(enabled=False):  # multi-host: Orbax's preemption sync decides
    assert signal.getsignal(signal.SIGTERM) is term


def _two_ctrl_c(preemption):
  before = signal.getsignal(signal.SIGINT)
  # signal.raise_signal delivers to this (the main) thread; a process-directed kill may
  # land on one of XLA's threads, and Python then runs the handler only at a later check.
  with preemption.StopRequest() as stop:
    assert not stop.requested
    signal.raise_signal(signal.SIGINT)  # Ctrl-C: recorded, nothing raised
    _wait_for(lambda: stop.requested)
    assert stop.requested and stop.signal_name == 'SIGINT'
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C again: Python's own handler
      signal.raise_signal(signal.SIGINT)
      _wait_for(lambda: False)
  assert signal.getsignal(signal.SIGINT) is before


if __name__ == '__main__':
  _worker()
