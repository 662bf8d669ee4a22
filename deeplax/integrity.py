"""Checkpoint integrity: a digest saved with each checkpoint and checked on resume,
no non-finite state ever saved, and write failures (disk full) reported by name.

Orbax writes a step under a temporary name and renames it when complete, so a kill
mid-write leaves nothing that looks like a checkpoint. It does not checksum the array
data, though: a flipped byte in a stored chunk restores silently as a different weight,
and a lost chunk file can restore as zeros. So every save records, per leaf of the state,
a position-weighted wrapping uint32 sum of the raw bits (on the host, a few bytes per
leaf); a restore recomputes it and refuses a checkpoint that
differs. Any single changed element changes the digest (its odd weight times a power of
two is never 0 mod 2**32), and integer sums do not depend on summation order.

An unusable checkpoint is moved out of the manager's directory (to
WORKDIR/checkpoints_unusable/<step>, kept for inspection) and the previous one is used.
"""
import errno
import os
import shutil
import time
from typing import Dict, Optional, Tuple

import jax
import numpy as np
from flax import serialization

DIGEST_KEY = 'deeplax_digest'
UNUSABLE_DIR = 'checkpoints_unusable'


class NonFiniteStateError(RuntimeError):
  """The training state holds NaN/Inf: it is never saved."""


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (e.g. disk full); the previous ones are intact."""


class CheckpointCorruptError(RuntimeError):
  """Every checkpoint of a workdir failed verification."""


def _as_uint32(x: np.ndarray) -> np.ndarray:
  """The raw bits of `x` as uint32 words (8/16-bit values zero-extended, 64-bit split)."""
  x = np.ascontiguousarray(x).reshape(-1)
  if x.dtype == np.bool_:
    return x.astype(np.uint32)
  if x.dtype.itemsize in (1, 2):
    return x.view({1: np.uint8, 2: np.uint16}[x.dtype.itemsize]).astype(np.uint32)
  return x.view(np.uint32)


def _leaf_digest(x: np.ndarray) -> int:
  flat = _as_uint32(x)
  weights = np.arange(flat.size, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
  with np.errstate(over='ignore'):
    return int(np.sum(flat * weights, dtype=np.uint32))


def _leaf_finite(x: np.ndarray) -> bool:
  return not np.issubdtype(x.dtype, np.inexact) or bool(np.isfinite(x).all())


def _named_leaves(state):
  """('[path]' names, host numpy leaves) of the state dict Orbax saves."""
  tree = serialization.to_state_dict(state)
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  leaves = jax.device_get([leaf for _, leaf in flat])
  return ([jax.tree_util.keystr(path) for path, _ in flat],
          [np.asarray(leaf) for leaf in leaves])


def check_state(state) -> Tuple[bool, Dict[str, int]]:
  """(every float leaf finite, {leaf path: digest}) of `state` (a TrainState or pytree).

  On the host, in numpy: no compile (a jitted version spends ~40 s compiling for the
  ~900 leaves of a ResNet-101 state), ~1 s per 100M values, once per checkpoint.
  """
  names, leaves = _named_leaves(state)
  finite = all(_leaf_finite(x) for x in leaves)
  return finite, {name: _leaf_digest(x) for name, x in zip(names, leaves)}


def nonfinite_leaves(state, limit: int = 5):
  """Paths of (up to `limit`) leaves holding NaN/Inf, for error messages."""
  names, leaves = _named_leaves(state)
  return [n for n, x in zip(names, leaves) if not _leaf_finite(x)][:limit]


def verify(state, saved: Optional[Dict[str, int]]) -> Optional[str]:
  """None if `state` (just restored) matches the digest saved with it, else the problem.

  A checkpoint saved without a digest (by other code) can only be checked for finiteness.
  """
  finite, digest = check_state(state)
  if not finite:
    return f'it holds NaN/Inf (in {", ".join(nonfinite_leaves(state))})'
  if saved is None:
    return None
  differing = [name for name, value in digest.items() if saved.get(name) != value]
  missing = sorted(set(saved) - set(digest))
  if differing or missing:
    return (f'its data does not match the digest saved with it ({len(differing)} arrays '
            f'differ, e.g. {", ".join((differing + missing)[:3])}): the files were damaged '
            'after writing')
  return None


def saved_digest(manager, step: int) -> Optional[Dict[str, int]]:
  """The digest stored in checkpoint `step`'s metadata, or None if it has none."""
  try:
    custom = manager.metadata(step).custom_metadata or {}
  except Exception:  # unreadable step metadata: the arrays are still verified by restore  # pylint: disable=broad-except
    return None
  digest = custom.get(DIGEST_KEY)
  return {str(k): int(v) for k, v in digest.items()} if isinstance(digest, dict) else None


def quarantine(directory: str, step: int) -> str:
  """Moves checkpoint `step` out of `directory` (to a sibling UNUSABLE_DIR); returns where.

  Only process 0 moves files (the others see the same shared directory)."""
  source = os.path.join(directory, str(step))
  target_dir = os.path.join(os.path.dirname(os.path.abspath(directory)), UNUSABLE_DIR)
  target = os.path.join(target_dir, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
  if jax.process_index() == 0 and os.path.exists(source):
    os.makedirs(target_dir, exist_ok=True)
    shutil.move(source, target)
  return target


def is_disk_full(error: BaseException) -> bool:
  """True if `error` or anything in its chain is ENOSPC / EDQUOT (quota) / says so."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if getattr(error, 'errno', None) in (errno.ENOSPC, errno.EDQUOT):
      return True
    if 'No space left on device' in str(error) or 'Disk quota exceeded' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def write_error(directory: str, step: Optional[int], error: BaseException
                ) -> CheckpointWriteError:
  """A CheckpointWriteError naming the failed step, the cause and what is intact."""
  from orbax.checkpoint import utils as ocp_utils  # pylint: disable=import-outside-toplevel
  try:
    complete = sorted(s for s in ocp_utils.checkpoint_steps(directory) if s != step)
  except Exception:  # pylint: disable=broad-except
    complete = []
  cause = ('the disk is full (No space left on device)' if is_disk_full(error)
           else f'{type(error).__name__}: {error}')
  intact = (f'the previous checkpoint (step {complete[-1]}) is intact: free space and run '
            'the same command to resume from it' if complete else
            'there is no earlier checkpoint: the run restarts from the beginning')
  which = f'checkpoint {step}' if step is not None else 'a checkpoint'
  return CheckpointWriteError(f'Could not write {which} to {directory}: {cause}. Training '
                              f'stopped; {intact}.')
