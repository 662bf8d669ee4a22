"""Every configuration key deeplax reads, with its default and a one-line meaning.

Variant files (`configs/voc_resnet101.py`, ...) start from `get_config()` here and
override only what their recipe changes, so a diff between two configs is exactly
the difference between two experiments.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  config.seed = 0  # Seeds parameter init, dropout and the data order.

  # ---- model ---------------------------------------------------------------
  config.model = m = ml_collections.ConfigDict()
  m.name = 'deeplabv3_resnet101'  # Registry name: deeplab{v2,v3,v3plus}_{resnet50,resnet101,mobilenetv2}.
  m.num_classes = 21  # Output classes (VOC 21, Cityscapes 19); must match the data set.
  m.output_stride = 16  # Backbone stride: 8, 16 or 32 (strides above it become dilations).
  m.multi_grid = ()  # Unit rates of the last stage, e.g. (1, 2, 4); () = reference behaviour.
  m.width_multiplier = 1.0  # MobileNetV2 channel multiplier.
  m.base_width = 64  # ResNet width of the stem and first stage (64 = the published nets; tests shrink it).
  m.backbone_variant = 'torchvision'  # 'torchvision'; 'vainf' (MobileNetV2 with TF fixed padding); 'caffe' (ResNet v1 of DeepLab-v2).
  m.aspp_channels = 256  # Channels of every ASPP branch and of its projection.
  m.aspp_rates = ()  # ASPP atrous rates; () = (6, 12, 18) scaled by 16 / output_stride (v2: 6/12/18/24).
  m.aspp_dropout = 0.1  # Dropout after the ASPP projection (torchvision 0.5, VainF 0.1).
  m.low_level_channels = 48  # DeepLabv3+ decoder: 1x1 projection width of the stride-4 features.
  m.decoder_channels = 256  # DeepLabv3+ decoder / v3 head: width of the 3x3 conv(s) before the classifier.
  m.decoder_convs = 1  # DeepLabv3+ decoder: number of 3x3 convs (VainF 1, the paper 2).
  m.aux_head = False  # torchvision's auxiliary FCN head on layer3 (ResNet only).
  m.aux_channels = 256  # Width of the auxiliary head's 3x3 conv (torchvision: in_channels // 4).
  m.freeze_bn = False  # Use running statistics in training and never update them (DeepLab-v2 / caffe).
  m.bn_momentum = 0.9  # Flax BN momentum (= 1 - PyTorch momentum 0.1).
  m.bn_epsilon = 1e-5  # BN epsilon, as PyTorch.
  m.dtype = 'float32'  # Compute dtype: 'float32' or 'bfloat16' (params stay in param_dtype).
  m.param_dtype = 'float32'  # Parameter storage dtype.
  m.remat = ()  # Backbone stages to rematerialise in the backward pass, e.g. ('layer3', 'layer4').

  # ---- data ----------------------------------------------------------------
  config.dataset = d = ml_collections.ConfigDict()
  d.name = 'voc'  # 'voc', 'cityscapes', 'folder' or 'shapes' (built-in synthetic data).
  d.data_dir = ''  # tfds data_dir ('' = tfds default, ~/tensorflow_datasets).
  d.manual_dir = ''  # Where the downloaded archives/extracted trees live (VOC, SBD, Cityscapes, folder root).
  d.train_split = 'train_aug'  # Split used for training.
  d.eval_split = 'val'  # Split used for evaluation.
  d.ignore_label = 255  # Label value that counts in neither loss nor metrics.
  d.image_dir = ''  # Folder data set: images directory (relative to manual_dir or absolute; '' = images).
  d.label_dir = ''  # Folder data set: labels directory, matched to images by file stem ('' = labels).
  d.val_fraction = 0.1  # Folder data set: share held out as val when train.txt/val.txt are generated.
  d.class_names = ()  # Folder data set: names of the classes (default: class_0, class_1, ...).
  d.palette = ()  # Folder data set: RGB colour per class, e.g. ((0, 0, 0), (128, 0, 0)).
  d.shuffle_buffer = 1000  # tf.data shuffle buffer (examples).
  d.corrupt_policy = 'error'  # Unreadable files: 'error' stops naming the file; 'skip' skips and counts them.
  d.num_train_images = 2000  # Shapes data set: size of the generated training set.
  d.num_eval_images = 200  # Shapes data set: size of the generated validation set.
  d.image_size = 64  # Shapes data set: side of the generated images.

  # ---- augmentation (training) ------------------------------------------------
  config.augment = a = ml_collections.ConfigDict()
  a.crop_size = (513, 513)  # Training crop (height, width); images are padded with the mean first.
  a.min_scale = 0.5  # Random scale range lower end.
  a.max_scale = 2.0  # Random scale range upper end.
  a.scale_step = 0.25  # Scale drawn on this grid (0 = continuous).
  a.short_side = 0  # >0: resize the shorter side to this before cropping (seed 000: 600 with crop 512).
  a.flip = True  # Random horizontal flip.
  a.photometric = False  # Random brightness/contrast/saturation/hue jitter.
  a.mean = (0.485, 0.456, 0.406)  # ImageNet mean (in [0, 1]), subtracted after scaling to [0, 1].
  a.std = (0.229, 0.224, 0.225)  # ImageNet std.

  # ---- evaluation ------------------------------------------------------------
  config.eval = e = ml_collections.ConfigDict()
  e.batch_size = 8  # Global eval batch; the last batch is padded with ignored images, never dropped.
  e.pad_size = (513, 513)  # Full images are padded to this (label 255); must cover the largest image.
  e.crop_val = False  # Resize the short side to pad_size and centre-crop instead (seed 001's --crop_val).
  e.output_stride = 0  # Output stride at eval (0 = same as training; DeepLab evaluates OS16 models at OS8).
  e.scales = (1.0,)  # Multi-scale inference scales, e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
  e.flip = False  # Average with the horizontally flipped prediction.
  e.every_steps = 2000  # Evaluate every this many training steps (and at the end).
  e.num_images = 0  # Evaluate only the first N images (0 = all).
  e.log_images = 3  # Images (input | label | prediction) written to TensorBoard per eval.
  e.checkpoint = 'latest'  # --mode eval: 'latest', 'best' (by mIoU) or a saved step number.

  # ---- prediction (--mode predict; scales, flip and output stride come from eval) -----
  config.predict = pr = ml_collections.ConfigDict()
  pr.mode = 'whole'  # 'whole' image, 'slide' (overlapping windows, mmseg) or 'auto' (slide above max_whole_pixels).
  pr.window = (512, 512)  # Slide mode: window (height, width), usually the training crop.
  pr.stride = (341, 341)  # Slide mode: step between windows (height, width); < window = overlap, averaged.
  pr.windows_per_call = 0  # Slide mode: windows run through the model at once (0 = all; lower saves memory).
  pr.max_whole_pixels = 2048 * 1024  # 'auto' mode: padded images with more pixels go through slide mode.
  pr.batch_size = 4  # Images per jitted call (rounded up to a multiple of the local device count).
  pr.pad_multiple = 128  # Image sides are padded up to a multiple of this: one compile per size bucket.
  pr.overlay_alpha = 0.5  # Weight of the class colours in <stem>_overlay.png (0 = image only).

  # ---- optimisation -------------------------------------------------------------
  config.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 0.007  # Base learning rate (DeepLabv3: 0.007 at batch 16).
  o.end_learning_rate = 0.0  # Learning rate at the last step.
  o.power = 0.9  # Poly schedule power.
  o.warmup_steps = 0  # Linear warmup from 0 over this many steps.
  o.momentum = 0.9  # SGD momentum.
  o.nesterov = False  # Nesterov momentum.
  o.weight_decay = 1e-4  # L2 weight decay (ResNet 1e-4, MobileNetV2 4e-5).
  o.wd_exclude_norm = True  # No weight decay on BN scale/bias and conv biases.
  o.backbone_lr_mult = 1.0  # LR multiplier of the backbone (VainF: 0.1).
  o.head_lr_mult = 1.0  # LR multiplier of the head except its final classifier.
  o.classifier_lr_mult = 1.0  # LR multiplier of the final classifier (DeepLab-v2 / seed 002: 10).
  o.iter_size = 1  # Gradient accumulation: apply the update every this many steps (caffe iter_size).
  o.grad_clip_norm = 0.0  # >0: clip the global gradient norm.

  # ---- loss ----------------------------------------------------------------
  config.loss = l = ml_collections.ConfigDict()
  l.aux_weight = 0.4  # Weight of the auxiliary head's loss (used when model.aux_head).
  l.multiscale = False  # DeepLab-v2 loss: inputs at loss.scales plus their max-fusion, losses summed.
  l.scales = (1.0, 0.75, 0.5)  # Input scales of the multi-scale loss.

  # ---- loop ----------------------------------------------------------------
  config.batch_size = 16  # Global training batch over all devices and hosts.
  config.num_train_steps = 30000  # Training steps (optimizer updates x iter_size).
  config.log_every_steps = 50  # Scalars to TensorBoard / stdout every this many steps.
  config.checkpoint_every_steps = 1000  # Save a checkpoint every this many steps.
  config.keep_checkpoints = 3  # Keep the newest N checkpoints (plus the best by mIoU).
  config.profile_steps = 5  # Steps traced by clu's Profile action (0 = off).
  config.init_from = ''  # Converted or earlier checkpoint to start from ('' = random init).
  config.init_scope = 'backbone'  # What init_from loads: 'backbone' or 'all'.
  config.distributed = False  # Call jax.distributed.initialize() (multi-host).
  config.nonfinite_policy = 'stop'  # Non-finite loss/grads: 'stop' or 'skip' the update and count it.
  config.overwrite = False  # Allow a workdir holding a run with a different config.
  config.compilation_cache_dir = '~/.cache/deeplax/jax'  # Persistent XLA cache ('' = off).
  config.keep_host_memory = True  # glibc keeps freed memory mapped (no page faults per step).
  return config
