"""DeepLabv3, ResNet-101, PASCAL VOC 2012 trainaug (Chen et al. 2017, the v3 paper's recipe).

Train at output stride 16, crop 513, batch 16, 30k steps, lr 0.007 poly 0.9, wd 1e-4.
The paper's best val number evaluates at OS 8 with scales 0.5..1.75 and flips:
  --config.eval.output_stride=8 --config.eval.scales='(0.5,0.75,1.0,1.25,1.5,1.75)' --config.eval.flip=True
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'deeplabv3_resnet101'
  config.model.num_classes = 21
  config.model.output_stride = 16
  config.dataset.name = 'voc'
  config.dataset.train_split = 'train_aug'
  config.dataset.eval_split = 'val'
  config.augment.crop_size = (513, 513)
  config.eval.pad_size = (513, 513)  # VOC images are at most 500x500
  config.batch_size = 16
  config.num_train_steps = 30000
  config.optim.learning_rate = 0.007
  config.optim.power = 0.9
  config.optim.weight_decay = 1e-4
  return config
