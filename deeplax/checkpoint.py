"""Checkpoints: an Orbax CheckpointManager over WORKDIR/checkpoints, restore-or-initialize
on start, keep the newest N plus the best by mIoU, and loading of weights to start
from (`config.init_from`: a converted checkpoint, a workdir or a checkpoint directory).

On disk a training checkpoint is `WORKDIR/checkpoints/<step>/default`, an Orbax
StandardSave of the state dict {'step', 'params', 'batch_stats', 'opt_state'}
(`flax.serialization.to_state_dict` of the TrainState: no Python classes pickled, so it
loads without this code). Orbax writes each step under a temporary name and renames it
once complete (plus a commit marker on object stores), so a save cut short by a kill is
never listed and never restored.
"""
import json
import os
import weakref
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import serialization
from flax import traverse_util

from deeplax import integrity

CHECKPOINT_DIR = 'checkpoints'
ITEM = 'default'
BEST_METRIC = 'mIoU'

PyTree = Any


def create_manager(workdir: str, keep: int = 3, read_only: bool = False
                   ) -> ocp.CheckpointManager:
  """Manager keeping the newest `keep` checkpoints plus the one with the best mIoU.

  Only checkpoints saved with metrics (at evaluation) compete for "best"; the newest
  `keep` are kept whatever their metrics.
  """
  directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), CHECKPOINT_DIR)
  best = lambda metrics: metrics[BEST_METRIC]  # noqa: E731
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=max(1, int(keep))),
      ocp.checkpoint_managers.BestN(get_metric_fn=best, reverse=False, n=1,
                                    keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, best_fn=best, best_mode='max', create=not read_only,
      read_only=read_only, enable_async_checkpointing=True)
  return ocp.CheckpointManager(directory, options=options)


def _abstract(tree: PyTree) -> PyTree:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def save(manager: ocp.CheckpointManager, step: int, state, metrics: Optional[Dict] = None,
         force: bool = False) -> bool:
  """Saves `state` (a TrainState) at `step` asynchronously; returns whether it saved.

  `metrics` (e.g. {'mIoU': 0.7}) rank the checkpoint for keep-best. The previous save
  is waited for first, so at most one write is in flight.
  """
  metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
  if manager.latest_step() == step:  # e.g. the final step was also a periodic save
    return False
  finite, digest = integrity.check_state(state)  # waits for the step's state: a save does
  if not finite:
    raise integrity.NonFiniteStateError(
        f'Refusing to save checkpoint {step}: the training state holds NaN/Inf (in '
        f'{", ".join(integrity.nonfinite_leaves(state))}); the last good checkpoint is '
        f'{manager.latest_step()} in {manager.directory}')
  previous = _PENDING.get(manager)
  _PENDING[manager] = step
  try:  # Orbax first waits for the previous (async) save: its failure surfaces here
    return manager.save(step, args=ocp.args.StandardSave(serialization.to_state_dict(state)),
                        metrics=metrics, force=force,
                        custom_metadata={integrity.DIGEST_KEY: digest})
  except Exception as e:  # pylint: disable=broad-except
    failed = previous if previous is not None and not _committed(manager, previous) else step
    raise integrity.write_error(str(manager.directory), failed, e) from e


_PENDING = weakref.WeakKeyDictionary()  # manager -> step of its last save call


def _committed(manager: ocp.CheckpointManager, step: int) -> bool:
  return step in ocp.utils.checkpoint_steps(str(manager.directory))


def wait_until_finished(manager: ocp.CheckpointManager) -> None:
  """Waits for the in-flight save; a failed write raises CheckpointWriteError (with what
  is intact) instead of Orbax's error from its background thread."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise integrity.write_error(str(manager.directory), _PENDING.get(manager), e) from e


def restore(manager: ocp.CheckpointManager, state, step: Optional[int] = None):
  """`state` with every array replaced by checkpoint `step` (default: newest), placed with
  the shardings `state` already has."""
  step = manager.latest_step() if step is None else step
  target = _abstract(serialization.to_state_dict(state))
  restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  return serialization.from_state_dict(state, restored)


def restore_or_initialize(manager: ocp.CheckpointManager, state):
  """(state, step): the newest usable checkpoint if there is one, else `state` unchanged.

  Each candidate, newest first, must restore and match the digest saved with it
  (deeplax.integrity); one that does not is moved to WORKDIR/checkpoints_unusable with a
  warning and the previous one is tried. A checkpoint of another model (different
  shapes) is an error, not corruption: nothing is moved.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return state, 0
  unusable = []
  for step in steps:
    _check_layout(manager, step, state)
    logging.info('Restoring checkpoint %d from %s', step, manager.directory)
    try:
      restored = restore(manager, state, step)
      problem = integrity.verify(restored, integrity.saved_digest(manager, step))
    except Exception as e:  # pylint: disable=broad-except
      problem = f'it cannot be read ({type(e).__name__}: {str(e)[:300]})'
    if problem is None:
      if unusable:
        manager.reload()  # forget the moved steps
        logging.warning('Resumed from checkpoint %d instead of the newer unusable %s', step,
                        ', '.join(map(str, unusable)))
      return restored, int(step)
    moved = integrity.quarantine(str(manager.directory), step)
    unusable.append(step)
    logging.warning('Checkpoint %d in %s is unusable: %s. Moved it to %s; trying the '
                    'previous one.', step, manager.directory, problem, moved)
  manager.reload()
  raise integrity.CheckpointCorruptError(
      f'Every checkpoint in {manager.directory} ({", ".join(map(str, unusable))}) is unusable '
      'and was moved to ' + os.path.join(os.path.dirname(str(manager.directory)),
                                         integrity.UNUSABLE_DIR) +
      '; run again to start from scratch, or put back a good copy.')


def _check_layout(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Raises ValueError if checkpoint `step` holds arrays of other shapes than `state`
  (another model or config: a mistake to report, not a damaged file to move away)."""
  try:
    item = os.path.join(str(manager.directory), str(step), ITEM)
    saved = ocp.StandardCheckpointer().metadata(item).item_metadata.tree
    saved_flat = traverse_util.flatten_dict(saved, sep='/')
  except Exception:  # unreadable metadata: restore fails and the step counts as damaged  # pylint: disable=broad-except
    return
  wanted = traverse_util.flatten_dict(serialization.to_state_dict(state), sep='/')
  differ = [f'{k}: checkpoint {tuple(saved_flat[k].shape)} vs model {tuple(np.shape(v))}'
            for k, v in wanted.items()
            if k in saved_flat and hasattr(saved_flat[k], 'shape')
            and tuple(saved_flat[k].shape) != tuple(np.shape(v))]
  differ += [f'{k}: only in the model' for k in sorted(set(wanted) - set(saved_flat))]
  differ += [f'{k}: only in the checkpoint' for k in sorted(set(saved_flat) - set(wanted))]
  if differ:
    raise ValueError(f'Checkpoint {step} in {manager.directory} was written by another model '
                     'configuration: ' + '; '.join(differ[:5]) + '. Use a new workdir.')


# ---- weights to start from (config.init_from) ------------------------------------------


def _step_item_dir(path: str) -> Optional[str]:
  """The Orbax item directory of a training checkpoint at `path`: a workdir, its
  checkpoints directory, or one step directory. None if `path` is none of these."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, ITEM)):
    return os.path.join(path, ITEM)
  for directory in (os.path.join(path, CHECKPOINT_DIR), path):
    if not os.path.isdir(directory):
      continue
    steps = ocp.utils.checkpoint_steps(directory)
    if steps:
      return os.path.join(directory, str(max(steps)), ITEM)
  return None


def load_variables(path: str) -> Tuple[Dict, str]:
  """({'params', 'batch_stats'} as numpy, description) from `path`.

  `path` is a converted checkpoint (DIR/meta.json + DIR/variables, from
  `python -m deeplax.convert`), or a deeplax training workdir / checkpoints directory /
  step directory (its newest checkpoint is used).
  """
  expanded = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(os.path.join(expanded, 'meta.json')):
    from deeplax import convert  # pylint: disable=import-outside-toplevel
    variables, meta = convert.load_converted(expanded)
    return variables, f'converted checkpoint {expanded} ({json.dumps(meta)[:200]})'
  item = _step_item_dir(expanded)
  if item is None:
    raise FileNotFoundError(
        f'init_from={path!r}: neither a converted checkpoint (no meta.json; create one with '
        '`python -m deeplax.convert`) nor a deeplax workdir/checkpoint directory (no '
        f'{CHECKPOINT_DIR}/<step>/{ITEM})')
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(item).item_metadata.tree
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree,
      is_leaf=lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype'))
  restored = checkpointer.restore(item, target)
  variables = {'params': restored['params'], 'batch_stats': restored.get('batch_stats', {})}
  variables = jax.tree.map(np.asarray, variables)
  step_dir = os.path.dirname(item)
  return variables, f'training checkpoint {step_dir} (step {os.path.basename(step_dir)})'


def merge_variables(init: Dict, loaded: Dict, scope: str, source: str = 'init_from'
                    ) -> Tuple[Dict, Dict[str, List[str]]]:
  """Copies leaves of `loaded` into `init` (both {'params', 'batch_stats'}).

  scope 'backbone' copies only the backbone subtrees, 'all' everything. Returns the new
  variables and a report {'loaded': [...], 'kept_init': [...], 'unused': [...]} of
  '/'-joined leaf paths. A shape mismatch, or a scope with nothing to load, is an
  error naming every offending leaf.
  """
  if scope not in ('backbone', 'all'):
    raise ValueError(f"init_scope={scope!r}; allowed: 'backbone', 'all'")
  report = {'loaded': [], 'kept_init': [], 'unused': []}
  mismatches = []
  merged = {}
  for collection in ('params', 'batch_stats'):
    init_flat = traverse_util.flatten_dict(init.get(collection, {}))
    loaded_flat = traverse_util.flatten_dict(loaded.get(collection, {}))
    out = {}
    for key, value in init_flat.items():
      name = '/'.join((collection,) + tuple(key))
      in_scope = scope == 'all' or key[0] == 'backbone'
      if in_scope and key in loaded_flat:
        new = loaded_flat[key]
        if tuple(new.shape) != tuple(value.shape):
          mismatches.append(f'{name}: checkpoint {tuple(new.shape)} vs model '
                            f'{tuple(value.shape)}')
          continue
        out[key] = np.asarray(new, dtype=value.dtype)
        report['loaded'].append(name)
      else:
        out[key] = value
        report['kept_init'].append(name)
    report['unused'] += ['/'.join((collection,) + tuple(k)) for k in loaded_flat
                         if k not in init_flat or not (scope == 'all' or k[0] == 'backbone')]
    merged[collection] = traverse_util.unflatten_dict(out) if out else {}
  if mismatches:
    raise ValueError(f'{source}: shapes differ from the model (check model.* and '
                     'num_classes, or use init_scope=backbone):\n  ' + '\n  '.join(mismatches))
  if not any(n.startswith('params/') for n in report['loaded']):
    raise ValueError(f'{source}: no parameter of scope {scope!r} found in the checkpoint '
                     f'(it holds {sorted({k.split("/")[1] for k in report["unused"]})})')
  return merged, report


def summarize_report(report: Dict[str, List[str]]) -> str:
  """One paragraph: counts plus the top-level modules left at init / unused."""

  def modules(names):
    return sorted({'/'.join(n.split('/')[:3]) for n in names})

  return (f'loaded {len(report["loaded"])} arrays; kept init for {len(report["kept_init"])}'
          f' {modules(report["kept_init"])}; unused in checkpoint {len(report["unused"])}'
          f' {modules(report["unused"])}')
