"""`--mode predict`: segment a file, a folder or a glob of images and write what people
look at.

For every readable image IMG in --input, --output gets
  IMG_STEM.png          the predicted labels as a palette-mode PNG (values = class ids,
                        colours = the data set's palette)
  IMG_STEM_overlay.png  the colourised prediction blended over the image
  IMG_STEM_panel.png    image | ground truth | prediction, when a label is found (a
                        --labels folder, or the configured data set's label folder)
Each image's files are complete or absent: they are written under temporary names and
renamed together. Unreadable files are reported by name, skipped, and counted at the end.

Images are grouped by size bucket (sides rounded up to `predict.pad_multiple`), padded
with the mean and batched (`predict.batch_size`, rounded up to the device count), so a
folder of different sizes compiles once per bucket; each batch runs one jitted function
(multi-scale + flip from `eval.scales` / `eval.flip`, whole image or sliding window per
`predict.mode`), sharded over the local devices (with several hosts, each takes every
k-th file). Decoding, device compute and PNG encoding overlap (reader threads,
asynchronous dispatch, writer threads).
"""
import collections
import concurrent.futures
import glob
import io
import os
import sys
import time
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image, ImageOps

from deeplax import checkpoint
from deeplax import inference
from deeplax import models
from deeplax import reporting
from deeplax import sliding_window
from deeplax.data import palettes

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp',
                    '.ppm', '.pgm')
PANEL_GAP = 4  # White pixels between the three pictures of a panel.
# Cityscapes names its images CITY_SEQ_FRAME_leftImg8bit.png and the labels of the same
# frame CITY_SEQ_FRAME_gtFine_labelTrainIds.png (train ids, from cityscapesScripts) or
# CITY_SEQ_FRAME_gtFine_labelIds.png (as shipped; mapped to train ids when read).
_LABEL_STEM_REWRITES = (('_leftImg8bit', '_gtFine_labelTrainIds'),
                        ('_leftImg8bit', '_gtFine_labelIds'))
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


# ---- which files -------------------------------------------------------------------------


def _is_image_name(name: str) -> bool:
  return not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(directory: str) -> List[str]:
  found = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    found += [os.path.join(root, f) for f in sorted(files) if _is_image_name(f)]
  return found


def expand_inputs(spec: str, exclude_dir: Optional[str] = None) -> List[str]:
  """The files named by --input: a file, a folder (searched recursively for image
  extensions) or a glob pattern (`**` recursive). Files under `exclude_dir` (the
  output folder, when inside the input folder) are left out, so predicting twice does
  not predict the predictions."""
  path = os.path.expanduser(spec)
  if os.path.isfile(path):
    return [path]
  if os.path.isdir(path):
    files = _walk_images(path)
  elif glob.has_magic(path):
    files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
  else:
    raise FileNotFoundError(f'--input={spec!r}: no such file or folder, and not a glob pattern')
  if exclude_dir and os.path.abspath(exclude_dir) != os.path.abspath(path):
    exclude = os.path.join(os.path.abspath(exclude_dir), '')
    files = [f for f in files if not os.path.abspath(f).startswith(exclude)]
  if not files:
    raise FileNotFoundError(f'--input={spec!r}: no image files found (looked for '
                            f'{", ".join(IMAGE_EXTENSIONS)})')
  return files


def output_stems(files: Sequence[str], output: str) -> Dict[str, str]:
  """{file: stem} for the output names; refuses two inputs with the same stem (their
  outputs would overwrite each other) and an output that would overwrite an input."""
  stems, by_stem = {}, collections.defaultdict(list)
  for f in files:
    stem = os.path.splitext(os.path.basename(f))[0]
    stems[f] = stem
    by_stem[stem].append(f)
  clashes = {s: fs for s, fs in by_stem.items() if len(fs) > 1}
  if clashes:
    listed = '; '.join(f'{s}: {", ".join(fs)}' for s, fs in sorted(clashes.items())[:10])
    raise ValueError(f'--input has {len(clashes)} file name(s) shared by several files, whose '
                     f'outputs in {output} would overwrite each other: {listed}. Predict '
                     'them into separate --output folders.')
  inputs = {os.path.abspath(f) for f in files}
  for stem in stems.values():
    for name in output_names(stem).values():
      if os.path.abspath(os.path.join(output, name)) in inputs:
        raise ValueError(f'--output={output!r} would overwrite the input '
                         f'{os.path.join(output, name)}; choose another output folder')
  return stems


def output_names(stem: str) -> Dict[str, str]:
  return {'label': f'{stem}.png', 'overlay': f'{stem}_overlay.png',
          'panel': f'{stem}_panel.png'}


class LabelFinder:
  """Ground-truth label files by image stem, from folders searched recursively."""

  def __init__(self, directories: Iterable[str]):
    self.index = {}
    for directory in directories:
      for path in _walk_images(directory):
        self.index.setdefault(os.path.splitext(os.path.basename(path))[0], path)

  def find(self, stem: str) -> Optional[str]:
    candidates = [stem] + [stem.replace(a, b) for a, b in _LABEL_STEM_REWRITES if a in stem]
    return next((self.index[c] for c in candidates if c in self.index), None)


def label_dirs(config: ml_collections.ConfigDict, labels: Optional[str]) -> List[str]:
  """Where labels are looked for: --labels, else the configured data set's label folder
  (folder: dataset.label_dir; VOC: SegmentationClass; Cityscapes: gtFine train ids)."""
  if labels:
    if not os.path.isdir(os.path.expanduser(labels)):
      raise FileNotFoundError(f'--labels={labels!r} is not a folder')
    return [os.path.expanduser(labels)]
  d = config.dataset
  root = os.path.expanduser(d.manual_dir) if d.manual_dir else ''
  if d.name == 'folder' and d.label_dir:
    candidates = [os.path.join(root, os.path.expanduser(d.label_dir))]
  elif d.name == 'voc' and root:
    candidates = [os.path.join(root, 'VOCdevkit', 'VOC2012', 'SegmentationClass'),
                  os.path.join(root, 'VOC2012', 'SegmentationClass'),
                  os.path.join(root, 'SegmentationClass')]
  elif d.name == 'cityscapes' and root:
    candidates = [os.path.join(root, 'gtFine')]
  else:
    candidates = []
  return [c for c in candidates if os.path.isdir(c)][:1]


# ---- reading -----------------------------------------------------------------------------


def read_image(path: str) -> np.ndarray:
  """uint8 (H, W, 3) RGB, EXIF orientation applied (as photo viewers show it)."""
  with Image.open(path) as image:
    image = ImageOps.exif_transpose(image)
    return np.asarray(image.convert('RGB'))


def read_label(path: str, palette: np.ndarray, ignore_label: int) -> np.ndarray:
  """(H, W) class ids, read as the data sets read them: palette-mode or grey PNG
  indices, RGB masks through `palette` (white = ignore), Cityscapes *_gtFine_labelIds
  through the official id -> trainId table. Values that are no class become ignore."""
  # The data readers live beside the tfds builders; imported here, when labels exist.
  from deeplax.data import cityscapes, folder  # pylint: disable=import-outside-toplevel
  if path.endswith(cityscapes.LABEL_SUFFIX):
    label = cityscapes.read_label_ids(path)
  else:
    label = folder.label_reader(palette)(path)
  outside = (label != ignore_label) & (label >= len(palette))
  if outside.any():
    logging.warning('%s: label values %s are not classes 0..%d; drawn as ignore', path,
                    np.unique(label[outside])[:10].tolist(), len(palette) - 1)
    label = np.where(outside, ignore_label, label)
  return label


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 RGB -> float32 normalised as the input pipeline does ((x/255 - mean) / std)."""
  return ((image.astype(np.float32) / 255.0 - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32))


# ---- model -------------------------------------------------------------------------------


def model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The model at inference: the training one at `eval.output_stride` (when set)."""
  m = ml_collections.ConfigDict(config.model.to_dict())
  if config.eval.output_stride:
    m.output_stride = config.eval.output_stride
  return m


def checkpoint_source(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The workdir's checkpoint `eval.checkpoint` ('latest', 'best' or a step) when it
  holds training checkpoints, else `init_from` (a converted whole-model checkpoint or
  another workdir, its newest checkpoint)."""
  directory = os.path.join(os.path.expanduser(workdir or ''), checkpoint.CHECKPOINT_DIR)
  if workdir and os.path.isdir(directory):
    which = str(config.eval.get('checkpoint', 'latest'))
    if which == 'latest':
      return workdir
    manager = checkpoint.create_manager(workdir, config.keep_checkpoints, read_only=True)
    step = manager.best_step() if which == 'best' else int(which) if which.isdigit() else None
    if step is None or step not in manager.all_steps():
      raise ValueError(f'eval.checkpoint={which!r}: use latest, best or one of the saved steps '
                       f'{sorted(manager.all_steps())} of {directory}')
    return os.path.join(directory, str(step))
  if config.init_from:
    return config.init_from
  raise FileNotFoundError(f'predict needs trained weights: {workdir!r} has no '
                          f'{checkpoint.CHECKPOINT_DIR}/ folder and config.init_from is empty '
                          '(pass --config.init_from=DIR, a converted checkpoint or a workdir)')


def check_variables(module, variables: Dict, source: str, module_name: str = '') -> None:
  """Every parameter and statistic the model needs is present with its shape; else one
  error listing what is missing or different (e.g. a backbone-only checkpoint)."""
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  abstract = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), images)
  problems, unused = [], []
  for collection in ('params', 'batch_stats'):
    want = traverse_util.flatten_dict(abstract.get(collection, {}), sep='/')
    have = traverse_util.flatten_dict(variables.get(collection, {}), sep='/')
    for key, leaf in want.items():
      if key not in have:
        problems.append(f'{collection}/{key}: missing')
      elif tuple(np.shape(have[key])) != tuple(leaf.shape):
        problems.append(f'{collection}/{key}: checkpoint {tuple(np.shape(have[key]))}, model '
                        f'{tuple(leaf.shape)}')
    unused += [f'{collection}/{key}' for key in have if key not in want]
  if problems:
    head = problems[:8] + ([f'... and {len(problems) - 8} more'] if len(problems) > 8 else [])
    if unused:
      head.append(f'and the checkpoint holds {len(unused)} arrays this model lacks, e.g. '
                  f'{", ".join(unused[:3])}: was it trained with another model.name?')
    raise ValueError(f'{source} does not fit model.name={module_name!r} ({len(problems)} '
                     'problems; check model.* and num_classes against the training config; '
                     'a backbone-only checkpoint needs training first):\n  ' + '\n  '.join(head))


def load_variables(config: ml_collections.ConfigDict, module, workdir: str) -> Dict:
  source = checkpoint_source(config, workdir)
  variables, description = checkpoint.load_variables(source)
  check_variables(module, variables, description, config.model.name)
  logging.info('predict: weights from %s', description)
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def make_predict_fn(module, config: ml_collections.ConfigDict):
  """jitted (variables, images (N, H, W, 3), slide) -> class ids (N, H, W)."""
  p = config.predict
  scales = tuple(float(s) for s in config.eval.scales)
  flip = bool(config.eval.flip)
  out_dtype = jnp.uint8 if config.model.num_classes <= 256 else jnp.int32

  def predict(variables, images, slide):
    logits_fn = lambda x: inference.predict_logits(module, variables, x, scales, flip)  # noqa
    logits = sliding_window.image_logits(logits_fn, images, slide, tuple(p.window),
                                         tuple(p.stride), p.windows_per_call)
    return jnp.argmax(logits, axis=-1).astype(out_dtype)

  return jax.jit(predict, static_argnames='slide')


def palette_of(config: ml_collections.ConfigDict) -> np.ndarray:
  """The configured data set's palette (dataset.palette when given), one colour per class."""
  num_classes = config.model.num_classes
  if config.dataset.palette:
    return palettes.as_palette(config.dataset.palette, num_classes, 'dataset.palette')
  palette = palettes.palette_for(config.dataset.name, num_classes)
  if len(palette) < num_classes:
    raise ValueError(f'model.num_classes={num_classes} but the {config.dataset.name!r} palette '
                     f'has {len(palette)} colours; set dataset.palette')
  return palette[:num_classes]


# ---- writing -----------------------------------------------------------------------------


def _png(array: np.ndarray, palette: Optional[np.ndarray] = None) -> bytes:
  buffer = io.BytesIO()
  if palette is None:
    Image.fromarray(array).save(buffer, format='PNG')
  else:
    image = Image.fromarray(array.astype(np.uint8), mode='P')
    flat = np.zeros((256, 3), np.uint8)
    flat[:len(palette)] = palette
    image.putpalette(flat.reshape(-1).tolist())
    image.save(buffer, format='PNG')
  return buffer.getvalue()


def panel(image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
          palette: np.ndarray, ignore_label: int) -> np.ndarray:
  """image | colourised label | colourised prediction, PANEL_GAP white pixels apart."""
  gap = np.full((image.shape[0], PANEL_GAP, 3), 255, np.uint8)
  return np.concatenate([image, gap, palettes.colorize(label, palette, ignore_label), gap,
                         palettes.colorize(prediction, palette, ignore_label)], axis=1)


def write_outputs(output: str, stem: str, image: np.ndarray, prediction: np.ndarray,
                  label_path: Optional[str], palette: np.ndarray, alpha: float,
                  ignore_label: int) -> bool:
  """Encodes every output of one image, then writes them all-or-nothing. Returns
  whether a panel was written (a label was found, readable and of the image's size)."""
  names = output_names(stem)
  files = {names['label']: _png(prediction, palette),
           names['overlay']: _png(palettes.overlay(image, prediction, palette, alpha,
                                                   ignore_label))}
  label = None
  if label_path:
    try:
      label = read_label(label_path, palette, ignore_label)
    except _READ_ERRORS as e:  # DataError is a ValueError
      logging.warning('%s: cannot read its label %s (%s); no panel', stem, label_path, e)
  if label is not None:
    if label.shape != prediction.shape:
      logging.warning('%s: label %s is %s, the image %s; no panel', stem, label_path,
                      label.shape, prediction.shape)
    else:
      files[names['panel']] = _png(panel(image, label, prediction, palette, ignore_label))
  reporting.write_files_atomic({os.path.join(output, n): data for n, data in files.items()})
  return names['panel'] in files


class TextProgress:
  """A progress line over the files (absl log, at most every `every_secs`, and at the end)."""

  def __init__(self, total: int, every_secs: float = 5.0, width: int = 30):
    self.total, self.every_secs, self.width = total, every_secs, width
    self.done, self.start, self.last = 0, time.time(), 0.0

  def update(self, count: int = 1) -> None:
    self.done += count
    now = time.time()
    if now - self.last >= self.every_secs or self.done >= self.total:
      self.last = now
      logging.info('%s', self.line(now))

  def line(self, now: Optional[float] = None) -> str:
    elapsed = (now or time.time()) - self.start
    fraction = self.done / max(self.total, 1)
    filled = int(round(self.width * fraction))
    rate = self.done / max(elapsed, 1e-9)
    eta = (self.total - self.done) / rate if rate > 0 else float('inf')
    eta_text = f'{eta:.0f}s' if np.isfinite(eta) else '?'
    return (f'predict [{"#" * filled}{"." * (self.width - filled)}] {self.done}/{self.total} '
            f'files, {rate:.1f}/s, ETA {eta_text}')


# ---- the loop ----------------------------------------------------------------------------


def _prefetch(fn, items: Sequence, workers: int, depth: int) -> Iterator:
  """fn(item) for each item, in order, computed ahead by `workers` threads."""
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    queue = collections.deque()
    items = iter(items)
    for item in items:
      queue.append(pool.submit(fn, item))
      if len(queue) >= depth:
        yield queue.popleft().result()
    while queue:
      yield queue.popleft().result()


def _load(path: str, mean, std):
  """(path, uint8 image, normalised image, None) or (path, None, None, error text)."""
  try:
    image = read_image(path)
  except _READ_ERRORS as e:
    return path, None, None, f'{type(e).__name__}: {e}'
  return path, image, normalise(image, mean, std), None


def run(config: ml_collections.ConfigDict, workdir: str, input: str, output: str,  # noqa: A002
        labels: Optional[str] = None) -> Dict:
  """Predicts every image of `input` into `output`. Returns {'written': [files],
  'skipped': [(file, reason)], 'with_panel': n, 'buckets': {(h, w): slide}}."""
  if not output:
    raise ValueError('--output is required with --mode predict (a folder for the results)')
  p = config.predict
  files = expand_inputs(input, exclude_dir=output)
  stems = output_stems(files, output)
  # Several hosts (config.distributed) share the files, each on its local devices.
  files = files[jax.process_index()::jax.process_count()]
  finder = LabelFinder(label_dirs(config, labels))
  palette = palette_of(config)
  ignore_label = config.dataset.ignore_label

  module = models.create_model(model_config(config))
  devices = jax.local_devices()
  mesh = Mesh(np.asarray(devices), ('data',))
  variables = jax.device_put(load_variables(config, module, workdir), NamedSharding(mesh, P()))
  os.makedirs(output, exist_ok=True)
  predict_fn = make_predict_fn(module, config)
  batch_size = -(-max(1, p.batch_size) // len(devices)) * len(devices)
  data_sharding = NamedSharding(mesh, P('data'))

  logging.info('predict: %d files from %r into %r (batch %d, mode %s, scales %s, flip %s)',
               len(files), input, output, batch_size, p.mode, tuple(config.eval.scales),
               config.eval.flip)
  progress = TextProgress(len(files))
  summary = {'written': [], 'skipped': [], 'with_panel': 0, 'buckets': {}}
  pending = collections.defaultdict(list)  # bucket -> [(path, image, normalised)]
  writers = concurrent.futures.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)))
  writes = collections.deque()
  in_flight = collections.deque()  # dispatched batches whose results are not yet written

  def drain_writes(limit: int) -> None:
    while len(writes) > limit:
      path = writes[0][0]
      summary['with_panel'] += writes.popleft()[1].result()  # re-raises a failed write
      summary['written'].append(path)
      progress.update()

  def finish(batch) -> None:
    items, result = batch
    predictions = np.asarray(jax.device_get(result))
    for k, (path, image, _) in enumerate(items):
      prediction = predictions[k, :image.shape[0], :image.shape[1]]
      writes.append((path, writers.submit(write_outputs, output, stems[path], image,
                                          prediction, finder.find(stems[path]), palette,
                                          p.overlay_alpha, ignore_label)))
    drain_writes(2 * batch_size)

  def dispatch(bucket) -> None:
    items = pending.pop(bucket)
    batch = np.zeros((batch_size,) + bucket + (3,), np.float32)  # 0 = the mean colour
    for k, (_, _, normalised) in enumerate(items):
      batch[k, :normalised.shape[0], :normalised.shape[1]] = normalised
    slide = sliding_window.use_slide(p.mode, bucket[0], bucket[1], p.max_whole_pixels)
    summary['buckets'][bucket] = slide
    in_flight.append((items, predict_fn(variables, jax.device_put(batch, data_sharding),
                                        slide=slide)))
    while len(in_flight) > 1:  # the device works on this batch while we write the last
      finish(in_flight.popleft())

  loaded = _prefetch(lambda f: _load(f, config.augment.mean, config.augment.std), files,
                     workers=max(1, min(4, os.cpu_count() or 1)), depth=2 * batch_size)
  try:
    for path, image, normalised, error in loaded:
      if error is not None:
        logging.warning('predict: cannot read %s (%s); skipped', path, error)
        summary['skipped'].append((path, error))
        progress.update()
        continue
      bucket = sliding_window.bucket_shape(image.shape[0], image.shape[1], p.pad_multiple)
      pending[bucket].append((path, image, normalised))
      if len(pending[bucket]) == batch_size:
        dispatch(bucket)
    for bucket in list(pending):
      dispatch(bucket)
    while in_flight:
      finish(in_flight.popleft())
    drain_writes(0)
  finally:
    loaded.close()
    writers.shutdown(wait=True, cancel_futures=True)

  print(f'Wrote predictions for {len(summary["written"])} of {len(files)} files to {output} '
        f'({summary["with_panel"]} with a ground-truth panel).', flush=True)
  if summary['skipped']:
    print(f'Skipped {len(summary["skipped"])} unreadable file(s):', file=sys.stderr)
    for path, reason in summary['skipped']:
      print(f'  {path}: {reason}', file=sys.stderr)
    sys.stderr.flush()
  return summary
