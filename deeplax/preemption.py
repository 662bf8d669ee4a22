"""SIGTERM / SIGINT: finish the current step, save a checkpoint, exit with EXIT_PREEMPTED.

Cloud VMs and schedulers announce a preemption with SIGTERM (TPU VMs ~30 s, SLURM
`--signal`, Kubernetes `terminationGracePeriodSeconds`) and Ctrl-C sends SIGINT. Killing
the process there would lose every step since the last periodic checkpoint; instead the
handler only records the request, the training loop checks it after each step, saves
that step and raises `Preempted`, and main.py exits with EXIT_PREEMPTED (75,
sysexits' EX_TEMPFAIL: "try again"), so a wrapper or scheduler can tell an interrupted
run, to be restarted with the same command, from a finished one (0) or a failed one (1).

A second signal of the same kind acts at once (the previous handler is put back after
the first): Ctrl-C twice aborts without saving.

Multi-host: only process 0's own signal would be seen, and hosts that disagree on the
step to stop at would deadlock in the save. There the handlers are not installed and
the loop relies on Orbax's `CheckpointManager.reached_preemption(step)`, which agrees
on a step across hosts through JAX's coordination service.
"""
import signal
import threading
from typing import Optional

from absl import logging

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Training stopped early on request; its checkpoint is complete. Rerun to resume."""

  def __init__(self, step: int, checkpoint_dir: str, signal_name: str):
    self.step = step
    self.checkpoint_dir = checkpoint_dir
    super().__init__(f'{signal_name} received: stopped after step {step} with its '
                     f'checkpoint saved in {checkpoint_dir}; run the same command to '
                     'resume from it')


class StopRequest:
  """Context manager: while active, SIGTERM / SIGINT set `requested` instead of killing.

  Handlers can only be installed from the main thread; elsewhere (or with
  `enabled=False`) this is inert and `requested` stays False.
  """

  def __init__(self, enabled: bool = True, signals=SIGNALS):
    self._enabled = enabled and threading.current_thread() is threading.main_thread()
    self._signals = tuple(signals)
    self._previous = {}
    self.signal_name: Optional[str] = None

  @property
  def requested(self) -> bool:
    return self.signal_name is not None

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    # The next signal of this kind takes the previous action (e.g. KeyboardInterrupt).
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
    logging.warning('%s received: finishing the current step, then saving a checkpoint and '
                    'exiting (send it again to stop at once, without saving)',
                    self.signal_name)

  def __enter__(self) -> 'StopRequest':
    if self._enabled:
      for signum in self._signals:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous.clear()
    return False
