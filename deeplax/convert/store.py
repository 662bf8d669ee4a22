"""The converted checkpoint on disk: DIR/variables (Orbax) + DIR/meta.json.

`variables` is an `ocp.StandardCheckpointer` save of {'params', 'batch_stats'} with
numpy float32 leaves, the tree of `create_model(config).init(...)` (only its `backbone`
subtrees for backbone-only sources); `meta.json` says which model config the weights
need. The directory is written under a temporary name and renamed into place, so a
crash never leaves a half-written DIR that looks complete.
"""
import json
import os
import shutil
from typing import Dict, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

META_FILE = 'meta.json'
VARIABLES_DIR = 'variables'


def save_converted(out: str, variables: Dict, meta: Dict, overwrite: bool = False) -> str:
  """Writes DIR atomically (temp dir + rename). Returns the absolute DIR."""
  out = os.path.abspath(out.rstrip('/'))
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f'{out} exists; pass --overwrite to replace it')
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = f'{out}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, VARIABLES_DIR), variables)
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, META_FILE), 'w') as f:
      json.dump(meta, f, indent=1)
    if os.path.exists(out):
      old = f'{out}.old-{os.getpid()}'
      os.rename(out, old)
      os.rename(tmp, out)
      shutil.rmtree(old)
    else:
      os.rename(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def load_converted(path: str) -> Tuple[Dict, Dict]:
  """(variables, meta) of a directory written by `python -m deeplax.convert`.

  variables = {'params': ..., 'batch_stats': ...} with numpy float32 leaves (for a
  backbone-only source only `params/backbone` and `batch_stats/backbone`).
  """
  path = os.path.abspath(path)
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f'{path}: not a converted checkpoint (no {META_FILE}); create one '
                            'with python -m deeplax.convert')
  with open(meta_path) as f:
    meta = json.load(f)
  variables = ocp.StandardCheckpointer().restore(os.path.join(path, VARIABLES_DIR))
  variables = jax.tree.map(lambda x: np.asarray(x, np.float32), variables)
  variables.setdefault('batch_stats', {})
  return variables, meta
