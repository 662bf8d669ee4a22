"""Regenerates docs/shapes_panel.png (the README's picture) with the project's own command.

  python main.py --config configs/shapes.py --workdir runs/shapes    # the main job, first
  python docs/make_shapes_panel.py --workdir runs/shapes

Writes the first --count validation images of the synthetic data set that hold two or more
shapes (chosen by their labels alone, before any prediction) and their labels as PNG files, runs `main.py --mode predict --input IMAGES --labels LABELS` on them with the
workdir's newest checkpoint, and stacks the image | label | prediction panels it wrote
(enlarged --zoom times, nearest neighbour) into one picture.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import shapes as shapes_config  # noqa: E402  (after the path fix-up)
from deeplax.data import shapes  # noqa: E402


def write_split(directory: str, count: int) -> tuple:
  """The first `count` 'val' images with 2+ shapes, and their labels, as PNGs; returns
  (images dir, labels dir)."""
  config = shapes_config.get_config()
  images, labels = shapes.load_split('val', config.dataset.num_eval_images,
                                     config.dataset.image_size)
  image_dir, label_dir = os.path.join(directory, 'images'), os.path.join(directory, 'labels')
  os.makedirs(image_dir)
  os.makedirs(label_dir)
  several = [i for i, label in enumerate(labels)
             if ndimage.label(label > 0, structure=np.ones((3, 3)))[1] >= 2][:count]
  for n, i in enumerate(several):
    Image.fromarray(images[i]).save(os.path.join(image_dir, f'val_{n:03d}.png'))
    Image.fromarray(labels[i]).save(os.path.join(label_dir, f'val_{n:03d}.png'))
  return image_dir, label_dir


def stack_panels(predict_dir: str, count: int, zoom: int, gap: int) -> np.ndarray:
  rows = []
  for i in range(count):
    with Image.open(os.path.join(predict_dir, f'val_{i:03d}_panel.png')) as panel:
      panel = panel.convert('RGB')
      rows.append(np.asarray(panel.resize((panel.width * zoom, panel.height * zoom),
                                          Image.NEAREST)))
      rows.append(np.full((gap, rows[-1].shape[1], 3), 255, np.uint8))
  return np.concatenate(rows[:-1], axis=0)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', default='runs/shapes', help='the shapes run to predict with')
  parser.add_argument('--count', type=int, default=4, help='validation images shown')
  parser.add_argument('--zoom', type=int, default=3)
  parser.add_argument('--out', default=os.path.join(ROOT, 'docs', 'shapes_panel.png'))
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    image_dir, label_dir = write_split(tmp, args.count)
    predict_dir = os.path.join(tmp, 'predictions')
    subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), '--mode', 'predict',
                    '--config', os.path.join(ROOT, 'configs', 'shapes.py'),
                    '--workdir', args.workdir, '--input', image_dir, '--labels', label_dir,
                    '--output', predict_dir], check=True)
    picture = stack_panels(predict_dir, args.count, args.zoom, gap=4 * args.zoom)
  tmp_out = f'{args.out}.tmp-{os.getpid()}.png'
  Image.fromarray(picture).save(tmp_out)
  os.replace(tmp_out, args.out)
  print(f'wrote {args.out} ({picture.shape[1]}x{picture.shape[0]})')


if __name__ == '__main__':
  main()
