"""CLI: python -m deeplax.convert --src FILE --out DIR [--model NAME] [--layout L] ...

Converts a PyTorch checkpoint into a deeplax Orbax checkpoint and prints what was
mapped, how many parameters, and everything dropped on purpose (and why). Any key the
layout cannot place is an error naming it; nothing is guessed.
"""
import argparse
import sys

from deeplax.convert import convert as convert_lib
from deeplax.convert import layouts as layouts_lib
from deeplax.convert import readers
from deeplax.convert import store


def build_parser():
  parser = argparse.ArgumentParser(
      prog='python -m deeplax.convert', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--src', required=True, help='.pth/.pt (torch.save) or .safetensors')
  parser.add_argument('--out', required=True, help='output directory (variables/ + meta.json)')
  parser.add_argument('--model', default=None,
                      help='deeplax model name; read from the weights where they determine it, '
                           'required for backbone-only sources')
  parser.add_argument('--layout', default=None, choices=sorted(layouts_lib.LAYOUTS),
                      help='source layout (default: detected from the keys)')
  parser.add_argument('--num_classes', type=int, default=None,
                      help="default: the checkpoint's class count (21 for backbones)")
  parser.add_argument('--reinit_head', action='store_true',
                      help='start the final classifier afresh (needed when --num_classes '
                           'differs from the checkpoint)')
  parser.add_argument('--output_stride', type=int, default=None, choices=(8, 16, 32),
                      help='model.output_stride (fixed by torchvision/DeepLab-v2 sources; '
                           'VainF: read from an _os8/_os16 file name or required)')
  parser.add_argument('--caffe_input', default='fold', choices=('fold', 'keep'),
                      help='pytorch_deeplab_resnet only: fold the caffe input convention (BGR, '
                           '0..255) into conv1 so deeplax inputs work (fold), or keep conv1')
  parser.add_argument('--seed', type=int, default=0, help='seed of a re-initialised classifier')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')
  return parser


def main(argv=None):
  args = build_parser().parse_args(argv)
  try:
    conversion = convert_lib.convert_file(
        args.src, model_name=args.model, layout_name=args.layout,
        num_classes=args.num_classes, reinit_head=args.reinit_head,
        output_stride=args.output_stride, caffe_input=args.caffe_input, seed=args.seed)
    out = store.save_converted(args.out, conversion.variables, conversion.meta,
                               overwrite=args.overwrite)
  except (convert_lib.ConversionError, layouts_lib.LayoutError, readers.ReadError,
          FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(convert_lib.summary(conversion, out))
  return 0


if __name__ == '__main__':
  sys.exit(main())
