"""Model batches from a task's examples, with a position that checkpoints.

`ModelBatches` pads and batches a task's examples, turns the images into
tokens (through the image tokenizer, on the fly) unless the examples already
carry 'image_tokens' (a pre-tokenized task), and builds the feature dict the
model trains on. Its state is the number of examples consumed: sources are
read in a fixed order, so restoring it resumes at exactly the next example.
"""
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np

from parti_jax import tf_setup  # pylint: disable=g-bad-import-order (before TensorFlow)

import tensorflow as tf  # pylint: disable=g-bad-import-order

from parti_jax.data import features
from parti_jax.data.errors import PipelineError

# uint8 images [B, S, S, 3] -> int token ids [B, N], e.g. ImageTokenizer.encode.
ImageEncoder = Callable[[np.ndarray], Any]


class ModelBatches:
  """Iterator of model feature batches (numpy, this host's rows)."""

  def __init__(self, make_dataset: Callable[[], tf.data.Dataset], batch_size: int,
               text_length: int, bos_id: int, encode_images: Optional[ImageEncoder] = None,
               position: int = 0):
    """
    Args:
      make_dataset: a fresh dataset of examples in order (tasks.examples).
      batch_size: rows per batch on this host.
      text_length: the encoder's input length.
      bos_id: the decoder's start id (the codebook size).
      encode_images: the tokenizer, for examples without 'image_tokens'.
      position: examples already consumed (from a checkpoint).
    """
    self._make_dataset = make_dataset
    self.batch_size = batch_size
    self.text_length = text_length
    self.bos_id = bos_id
    self.encode_images = encode_images
    self.position = position
    self._iterator = self._start()

  def _start(self) -> Iterator[Dict[str, np.ndarray]]:
    dataset = self._make_dataset().repeat().skip(self.position)
    spec = dataset.element_spec
    padded = {'text_tokens': [self.text_length]}
    dataset = dataset.padded_batch(self.batch_size, padded_shapes={
        name: padded.get(name, s.shape) for name, s in spec.items()}, drop_remainder=True)
    return iter(dataset.prefetch(2).as_numpy_iterator())

  def close(self) -> None:
    """Stops the input threads now. Left to interpreter exit (say, when an
    error propagates), TensorFlow's prefetch threads can wait forever for the
    Python reader they call, and the process hangs instead of exiting."""
    self._iterator = None

  def state(self) -> Dict[str, int]:
    return {'position': self.position}

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    try:
      examples = next(self._iterator)
      failure = None
    except tf.errors.OpError as e:
      failure = e.message
    if failure is not None:
      # Raised outside the handler, so no traceback keeps TensorFlow's frames
      # (and through them the iterator) alive: close() can then stop it.
      raise PipelineError(f'the input pipeline failed: {failure}')
    self.position += self.batch_size
    if 'image_tokens' in examples:
      image_tokens = examples['image_tokens']
    elif self.encode_images is None:
      raise ValueError('examples carry images but no image tokenizer was given')
    else:
      image_tokens = np.asarray(self.encode_images(examples['image']))
    batch = features.model_features_numpy(examples['text_tokens'], image_tokens,
                                          self.text_length, self.bos_id)
    batch['caption_dropped'] = examples['caption_dropped']
    return batch
