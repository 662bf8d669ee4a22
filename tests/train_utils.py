"""Shared pieces of the training tests: a tiny segmentation module with the real model's
interface and parameter layout (backbone / head / head.classifier, BatchNorm, dropout),
and a tiny config. Compiling it takes about a second, so the training-loop tests check
the trainer's logic, not the (separately tested) DeepLab models."""
import flax.linen as nn
import jax.numpy as jnp

from configs import default


class TinyBackbone(nn.Module):
  features: int = 4
  freeze_bn: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train or self.freeze_bn, momentum=0.9,
                     epsilon=1e-5, name='bn')(x)
    return nn.relu(x)


class TinyHead(nn.Module):
  num_classes: int
  features: int = 4
  dropout: float = 0.0
  freeze_bn: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train or self.freeze_bn, momentum=0.9,
                     epsilon=1e-5, name='bn')(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Conv(self.num_classes, (1, 1), use_bias=True, name='classifier')(x)


class TinySeg(nn.Module):
  """Logits at input size, as `deeplax.models` modules; with `aux_head` a 1x1 auxiliary
  classifier on the backbone features (else `return_aux` gives None)."""
  num_classes: int = 4
  dropout: float = 0.0
  freeze_bn: bool = False
  aux_head: bool = False

  @nn.compact
  def __call__(self, images, train: bool = False, return_aux: bool = False):
    x = TinyBackbone(freeze_bn=self.freeze_bn, name='backbone')(images, train)
    logits = TinyHead(self.num_classes, dropout=self.dropout, freeze_bn=self.freeze_bn,
                      name='head')(x, train).astype(jnp.float32)
    aux = None
    if self.aux_head:
      aux = nn.Conv(self.num_classes, (1, 1), name='aux_head')(x).astype(jnp.float32)
    return (logits, aux) if return_aux else logits


def tiny_config(**overrides):
  """A shapes config small enough for tests (16x16 images, a few dozen of them)."""
  config = default.get_config()
  config.model.name = 'deeplabv3_resnet50'
  config.model.num_classes = 4
  config.model.base_width = 4
  config.model.aspp_channels = 8
  config.model.decoder_channels = 8
  config.model.output_stride = 16
  config.dataset.name = 'shapes'
  config.dataset.train_split = 'train'
  config.dataset.eval_split = 'val'
  config.dataset.image_size = 16
  config.dataset.num_train_images = 32
  config.dataset.num_eval_images = 10
  config.dataset.shuffle_buffer = 32
  config.augment.crop_size = (16, 16)
  config.augment.min_scale = 1.0
  config.augment.max_scale = 1.0
  config.eval.batch_size = 4
  config.eval.pad_size = (16, 16)
  config.eval.every_steps = 0
  config.eval.log_images = 2
  config.batch_size = 4
  config.num_train_steps = 3
  config.optim.learning_rate = 0.01
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.profile_steps = 0
  config.compilation_cache_dir = ''
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def get_config():
  """`python main.py --config tests/train_utils.py`: the tiny config with the real model."""
  return tiny_config()
