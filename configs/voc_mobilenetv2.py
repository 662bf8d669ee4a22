"""DeepLabv3, MobileNetV2, PASCAL VOC 2012 trainaug (MobileNetV2 paper, sec. 6.3).

Same schedule as ResNet; weight decay 4e-5, the MobileNet value.
"""
from configs import voc_resnet101


def get_config():
  config = voc_resnet101.get_config()
  config.model.name = 'deeplabv3_mobilenetv2'
  config.optim.weight_decay = 4e-5
  return config
