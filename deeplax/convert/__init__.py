"""PyTorch (.pth/.pt/.safetensors) -> deeplax Flax variables, with one mapping table per
source layout (layouts.py) and nothing guessed. CLI: `python -m deeplax.convert`."""
from deeplax.convert.convert import ConversionError, convert_file, convert_state_dict, summary
from deeplax.convert.layouts import LAYOUTS, LayoutError
from deeplax.convert.readers import ReadError, read_state_dict
from deeplax.convert.store import load_converted, save_converted

__all__ = ['ConversionError', 'LAYOUTS', 'LayoutError', 'ReadError', 'convert_file',
           'convert_state_dict', 'load_converted', 'main', 'read_state_dict',
           'save_converted', 'summary']


def main(argv=None):
  from deeplax.convert.__main__ import main as cli_main  # pylint: disable=import-outside-toplevel
  return cli_main(argv)
