"""DeepLabv3+, ResNet-101, Cityscapes fine (19 train ids): crop 769, 90k steps, batch 8,
lr 0.01 poly 0.9, wd 1e-4, OS 16, random scale 0.5..2.0 (DeepLabv3/v3+ papers' Cityscapes
protocol). Evaluated on full 1024x2048 frames."""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'deeplabv3plus_resnet101'
  config.model.num_classes = 19
  config.model.output_stride = 16
  config.dataset.name = 'cityscapes'
  config.dataset.train_split = 'train'
  config.dataset.eval_split = 'val'
  config.augment.crop_size = (769, 769)
  config.eval.pad_size = (1024, 2048)
  config.eval.batch_size = 2
  config.batch_size = 8
  config.num_train_steps = 90000
  config.optim.learning_rate = 0.01
  config.optim.weight_decay = 1e-4
  return config
