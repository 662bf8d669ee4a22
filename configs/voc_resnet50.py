"""DeepLabv3, ResNet-50, PASCAL VOC 2012 trainaug: the ResNet-101 recipe on ResNet-50."""
from configs import voc_resnet101


def get_config():
  config = voc_resnet101.get_config()
  config.model.name = 'deeplabv3_resnet50'
  return config
