"""DeepLabv3+, ResNet-101, PASCAL VOC 2012 trainaug (Chen et al. 2018; VainF's layout:
one 3x3 decoder conv; set model.decoder_convs=2 for the paper's two)."""
from configs import voc_resnet101


def get_config():
  config = voc_resnet101.get_config()
  config.model.name = 'deeplabv3plus_resnet101'
  return config
