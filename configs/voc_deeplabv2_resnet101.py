"""DeepLab-v2 (ASPP-L), caffe ResNet-101, PASCAL VOC 2012 trainaug: seed 002's recipe
(pytorch-deeplab-resnet, replicating the caffe release).

Output stride 8, frozen BN (caffe use_global_stats), lr 2.5e-4 with 10x on the final
classifier, wd 5e-4, 20k steps, caffe batch 1 x iter_size 10 = 10, crop 321, random
scale 0.5..1.5, and the multi-scale loss (inputs at 1, 0.75, 0.5 plus their max-fusion).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'deeplabv2_resnet101'
  config.model.num_classes = 21
  config.model.output_stride = 8
  config.model.backbone_variant = 'caffe'
  config.model.freeze_bn = True
  config.dataset.name = 'voc'
  config.dataset.train_split = 'train_aug'
  config.dataset.eval_split = 'val'
  config.augment.crop_size = (321, 321)
  config.augment.min_scale = 0.5
  config.augment.max_scale = 1.5
  config.eval.pad_size = (513, 513)
  config.batch_size = 10
  config.num_train_steps = 20000
  config.optim.learning_rate = 2.5e-4
  config.optim.classifier_lr_mult = 10.0
  config.optim.weight_decay = 5e-4
  config.optim.wd_exclude_norm = False  # caffe decays every learnable blob
  config.loss.multiscale = True
  return config
