"""The no-download main job: a small DeepLabv3+ (ResNet-50 at width 8) on the built-in
synthetic shapes data set (background / circle / square / triangle, 64x64).

  python main.py --config configs/shapes.py --workdir runs/shapes

Sized so that it finishes in a few minutes on a 2-core CPU (compile included) and reaches
validation mIoU >= 0.85. Everything else is the real recipe: poly schedule, SGD
momentum, random scale/crop/flip, sync BN, checkpoints, eval, TensorBoard.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'deeplabv3plus_resnet50'
  config.model.num_classes = 4
  config.model.output_stride = 16
  config.model.base_width = 8
  config.model.aspp_channels = 64
  config.model.low_level_channels = 24
  config.model.decoder_channels = 64
  config.model.aspp_dropout = 0.1

  config.dataset.name = 'shapes'
  config.dataset.train_split = 'train'
  config.dataset.eval_split = 'val'
  config.dataset.image_size = 64
  config.dataset.num_train_images = 2000
  config.dataset.num_eval_images = 200

  config.augment.crop_size = (64, 64)
  config.augment.min_scale = 0.75
  config.augment.max_scale = 1.25
  config.augment.scale_step = 0.25

  config.eval.batch_size = 40
  config.eval.pad_size = (64, 64)
  config.eval.every_steps = 1500
  config.eval.log_images = 3
  config.eval.flip = True  # +0.01 mIoU for 200 more forwards

  config.batch_size = 16
  config.num_train_steps = 3000
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 4e-5
  config.optim.warmup_steps = 50
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1500
  config.keep_checkpoints = 2
  config.profile_steps = 5
  return config
