"""DeepLabv3+, MobileNetV2, Cityscapes fine: the ResNet-101 Cityscapes recipe with the
MobileNet weight decay 4e-5."""
from configs import cityscapes_deeplabv3plus_resnet101


def get_config():
  config = cityscapes_deeplabv3plus_resnet101.get_config()
  config.model.name = 'deeplabv3plus_mobilenetv2'
  config.optim.weight_decay = 4e-5
  return config
