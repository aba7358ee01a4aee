"""TensorFlow only runs input pipelines and summaries here. Import this module
before anything that imports TensorFlow: it quiets TensorFlow's C++ start-up
logs, and `hide_accelerators_from_tensorflow` keeps TensorFlow off the
accelerators, whose memory belongs to JAX (DESIGN.md, "The stack")."""
import functools
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


@functools.cache
def hide_accelerators_from_tensorflow() -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
