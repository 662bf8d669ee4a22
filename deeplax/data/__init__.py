"""Data: sources (voc, cityscapes, folder, shapes), the tf.data pipeline and palettes.

  pipeline.get_info / create_train_iterator / create_eval_iterator  the trainer's interface
  palettes   class colours and colourisation (numpy only: importing it loads no TF)
  prepare    `python -m deeplax.data.prepare --config ...`: prepare a data set once
"""
