"""`--mode predict` end to end on a folder of tiny images with a tiny random DeepLab:
the outputs, their sizes and contents, skipped files, one compile per size bucket,
sliding-window mode, and no half-written outputs after a failure."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import default
from deeplax import convert
from deeplax import models
from deeplax import predict
from deeplax import reporting
from deeplax.data import palettes

MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet, as the pipeline
STD = np.array([0.229, 0.224, 0.225], np.float32)
# (height, width) of the test images; all fall in the 64x64 bucket (pad_multiple 64).
SIZES = {'a.png': (40, 56), 'b.jpg': (48, 64), 'sub/c.png': (64, 50)}


def tiny_config():
  config = default.get_config()
  m = config.model
  m.name, m.num_classes, m.base_width = 'deeplabv3_resnet50', 21, 8
  m.aspp_channels, m.decoder_channels = 16, 16
  config.dataset.name = 'voc'
  config.predict.batch_size = 4
  config.predict.pad_multiple = 64
  return config


def random_variables(module, seed=0):
  """A 'tiny random model' without jitting its init (fast on CPU): He-normal kernels,
  zero biases, random BN statistics, from numpy."""
  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False),
                          jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      # Small classifier weights keep the logits O(1): probabilities do not underflow.
      gain = 1e-3 if 'classifier' in str(path) else 1.0
      return (gain * rng.standard_normal(leaf.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    if name == 'var':
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if name == 'scale':
      return rng.uniform(0.8, 1.2, leaf.shape).astype(np.float32)
    if name == 'mean':
      return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    return np.zeros(leaf.shape, np.float32)  # biases: a constant offset would swamp the image

  variables = jax.tree_util.tree_map_with_path(fill, shapes)
  return {'params': variables['params'], 'batch_stats': variables['batch_stats']}


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  """(config, module, variables) with the weights saved as a converted checkpoint."""
  config = tiny_config()
  module = models.create_model(config.model)
  variables = random_variables(module)
  ckpt = str(tmp_path_factory.mktemp('ckpt') / 'tiny')
  convert.save_converted(ckpt, variables, {'model': config.model.name, 'test': True})
  config.init_from = ckpt
  return config, module, variables


def make_images(root, rng):
  images = {}
  for name, (h, w) in SIZES.items():
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([yy * 255 // h, xx * 255 // w, (yy + xx) % 256], -1).astype(np.uint8)
    image = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, quality=95)
    images[name] = np.asarray(Image.open(path).convert('RGB'))  # as decoded (JPEG loss)
  with open(os.path.join(root, 'bad.jpg'), 'wb') as f:
    f.write(b'this is not an image')
  with open(os.path.join(root, 'a.png'), 'rb') as f:
    png = f.read()
  with open(os.path.join(root, 'truncated.png'), 'wb') as f:
    f.write(png[:len(png) // 2])
  return images


@functools.lru_cache(maxsize=None)
def jitted_apply(module):
  return jax.jit(lambda variables, x: module.apply(variables, x, train=False))


def reference_prediction(module, variables, image, pad_to):
  """Argmax of the model on the image normalised and padded with zeros (the mean), by
  hand, cropped back: what the label PNG must hold."""
  x = (image.astype(np.float32) / 255 - MEAN) / STD
  padded = np.zeros(pad_to + (3,), np.float32)
  padded[:image.shape[0], :image.shape[1]] = x
  logits = jitted_apply(module)(variables, padded[None])
  return np.asarray(jnp.argmax(logits, -1))[0, :image.shape[0], :image.shape[1]]


def test_predict_folder(model, tmp_path, monkeypatch, capsys):
  config, module, variables = model
  rng = np.random.default_rng(0)
  images = make_images(str(tmp_path / 'in'), rng)
  label = rng.integers(0, 21, SIZES['a.png']).astype(np.uint8)
  label[:5] = 255
  os.makedirs(tmp_path / 'labels')
  label_image = Image.fromarray(label, mode='P')
  label_image.putpalette(palettes.voc_palette().reshape(-1).tolist())
  label_image.save(tmp_path / 'labels' / 'a.png')

  compiled = []
  real_make = predict.make_predict_fn
  monkeypatch.setattr(predict, 'make_predict_fn',
                      lambda *a: compiled.append(real_make(*a)) or compiled[-1])
  out = str(tmp_path / 'out')
  summary = predict.run(config, str(tmp_path / 'no_workdir'), str(tmp_path / 'in'), out,
                        labels=str(tmp_path / 'labels'))

  # Unreadable files: skipped, named and counted.
  skipped = sorted(os.path.basename(p) for p, _ in summary['skipped'])
  assert skipped == ['bad.jpg', 'truncated.png']
  err = capsys.readouterr().err
  assert 'Skipped 2 unreadable file(s)' in err and 'bad.jpg' in err and 'truncated.png' in err
  # Three sizes, one bucket, one batch: one compile.
  assert summary['buckets'] == {(64, 64): False}
  assert compiled[0]._cache_size() == 1
  assert sorted(os.listdir(out)) == ['a.png', 'a_overlay.png', 'a_panel.png', 'b.png',
                                     'b_overlay.png', 'c.png', 'c_overlay.png']

  voc = palettes.voc_palette()
  for name, image in images.items():
    stem = os.path.splitext(os.path.basename(name))[0]
    h, w = SIZES[name]
    with Image.open(os.path.join(out, f'{stem}.png')) as png:
      assert png.mode == 'P' and png.size == (w, h)
      np.testing.assert_array_equal(np.reshape(png.getpalette()[:63], (21, 3)), voc)
      got = np.asarray(png)
    want = reference_prediction(module, variables, image, (64, 64))
    assert len(np.unique(want)) > 1  # a random model that predicts something non-trivial
    assert np.mean(got != want) < 0.005, name  # float-rounding ties only
    with Image.open(os.path.join(out, f'{stem}_overlay.png')) as overlay:
      assert overlay.mode == 'RGB' and overlay.size == (w, h)
      overlay = np.asarray(overlay).astype(int)
    expected = np.round(0.5 * image + 0.5 * voc[got].astype(float))  # alpha 0.5
    np.testing.assert_allclose(overlay, expected, atol=1)

  with Image.open(os.path.join(out, 'a_panel.png')) as panel:
    panel = np.asarray(panel)
  h, w = SIZES['a.png']
  assert panel.shape == (h, 3 * w + 2 * predict.PANEL_GAP, 3)
  np.testing.assert_array_equal(panel[:, :w], images['a.png'])
  middle = panel[:, w + predict.PANEL_GAP:2 * w + predict.PANEL_GAP]
  np.testing.assert_array_equal(middle[5:], voc[label[5:]])
  assert (middle[:5] == 255).all()  # ignore drawn white
  right = panel[:, 2 * w + 2 * predict.PANEL_GAP:]
  with Image.open(os.path.join(out, 'a.png')) as png:
    np.testing.assert_array_equal(right, voc[np.asarray(png)])


def test_predict_slide_non_square(model, tmp_path):
  """A 96x160 image through slide mode (64x64 windows, overlap) with the real model:
  every window is computed and the outputs have the image's size."""
  config, module, variables = model
  config = config.copy_and_resolve_references()
  config.predict.mode = 'auto'
  config.predict.max_whole_pixels = 64 * 64
  config.predict.window, config.predict.stride = (64, 64), (32, 48)
  config.predict.batch_size = 1
  os.makedirs(tmp_path / 'in')
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (90, 150, 3)).astype(np.uint8)
  Image.fromarray(image).save(tmp_path / 'in' / 'wide.png')
  summary = predict.run(config, '', str(tmp_path / 'in' / 'wide.png'), str(tmp_path / 'out'))
  assert summary['buckets'] == {(128, 192): True}
  with Image.open(tmp_path / 'out' / 'wide.png') as png:
    assert png.size == (150, 90)
    got = np.asarray(png)
  # Reference: mmseg windows over the 128x192 padded image, log-softmax averaged, by hand.
  x = np.zeros((128, 192, 3), np.float32)
  x[:90, :150] = (image / 255 - MEAN) / STD
  total = np.zeros((128, 192, 21))
  count = np.zeros((128, 192, 1))
  for top in (0, 32, 64):
    for left in (0, 48, 96, 128):
      logits = jitted_apply(module)(variables, x[None, top:top + 64, left:left + 64])
      total[top:top + 64, left:left + 64] += np.asarray(jax.nn.log_softmax(logits[0]))
      count[top:top + 64, left:left + 64] += 1
  want = np.argmax(total / count, -1)[:90, :150]
  assert np.mean(got != want) < 0.005


def test_no_half_written_outputs(model, tmp_path, monkeypatch):
  """A failure while writing an image's outputs leaves none of them and no temp file."""
  config, _, _ = model
  os.makedirs(tmp_path / 'in')
  for name in ('x.png', 'y.png'):
    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(tmp_path / 'in' / name)
  cheap = jax.jit(lambda variables, images, slide: jnp.zeros(images.shape[:3], jnp.uint8))
  monkeypatch.setattr(predict, 'make_predict_fn', lambda *a: cheap)
  out = tmp_path / 'out'

  real_replace = os.replace

  def failing_replace(src, dst):
    if os.path.basename(dst) == 'y_overlay.png':
      raise OSError('disk full (simulated)')
    return real_replace(src, dst)

  monkeypatch.setattr(reporting.os, 'replace', failing_replace)
  with pytest.raises(OSError, match='simulated'):
    predict.run(config, '', str(tmp_path / 'in'), str(out))
  left = sorted(os.listdir(out))
  assert not [f for f in left if f.startswith('.') or 'tmp' in f], left
  assert not [f for f in left if f.startswith('y')], left

  monkeypatch.setattr(reporting.os, 'replace', real_replace)

  def failing_overlay(*args, **kwargs):
    raise RuntimeError('encoder crashed (simulated)')

  monkeypatch.setattr(predict.palettes, 'overlay', failing_overlay)
  with pytest.raises(RuntimeError, match='simulated'):
    predict.run(config, '', str(tmp_path / 'in' / 'x.png'), str(tmp_path / 'out2'))
  assert os.listdir(tmp_path / 'out2') == []


def test_bad_arguments(model, tmp_path):
  config, _, _ = model
  with pytest.raises(FileNotFoundError, match='nothing_here'):
    predict.run(config, '', str(tmp_path / 'nothing_here'), str(tmp_path / 'out'))
  os.makedirs(tmp_path / 'in' / 'sub')
  for name in ('in/p.png', 'in/sub/p.jpg'):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
  with pytest.raises(ValueError, match='p:'):
    predict.run(config, '', str(tmp_path / 'in'), str(tmp_path / 'out'))
  with pytest.raises(ValueError, match='overwrite the input'):
    predict.run(config, '', str(tmp_path / 'in' / 'p.png'), str(tmp_path / 'in'))
  config = config.copy_and_resolve_references()
  config.init_from = ''
  with pytest.raises(FileNotFoundError, match='init_from'):
    predict.run(config, str(tmp_path), str(tmp_path / 'in' / 'p.png'), str(tmp_path / 'o'))


def test_labels_found_and_read_as_the_data_sets_do(tmp_path):
  """Cityscapes images find their *_gtFine_labelIds.png (mapped to train ids by the
  official table: 7 road -> 0, 26 car -> 13, 0 unlabeled -> ignore); RGB masks are read
  through the palette."""
  city = tmp_path / 'gtFine' / 'val' / 'lindau'
  os.makedirs(city)
  ids = np.array([[7, 26], [0, 7]], np.uint8)
  Image.fromarray(ids).save(city / 'lindau_000000_000019_gtFine_labelIds.png')
  finder = predict.LabelFinder([str(tmp_path / 'gtFine')])
  path = finder.find('lindau_000000_000019_leftImg8bit')
  assert path == str(city / 'lindau_000000_000019_gtFine_labelIds.png')
  label = predict.read_label(path, palettes.cityscapes_palette(), 255)
  np.testing.assert_array_equal(label, [[0, 13], [255, 0]])
  assert finder.find('lindau_000000_000020_leftImg8bit') is None

  voc = palettes.voc_palette()
  Image.fromarray(np.stack([voc[[0, 15]], voc[[1, 20]]])).save(tmp_path / 'rgb.png')
  np.testing.assert_array_equal(predict.read_label(str(tmp_path / 'rgb.png'), voc, 255),
                                [[0, 15], [1, 20]])


def test_progress_line():
  progress = predict.TextProgress(total=4, every_secs=1e9, width=8)
  progress.start -= 2.0  # two seconds ago
  progress.update(3)
  line = progress.line(now=progress.start + 2.0)
  assert line == 'predict [######..] 3/4 files, 1.5/s, ETA 1s'
