"""Feature conversion: captions and image tokens -> the model's batch features.

TensorFlow ops on tf.data examples (dicts of tensors), so they run inside seqio
preprocessors and tf.data maps; no JAX. The steps, in pipeline order:

  tokenize_text      'caption' -> 'text_tokens' (ids, then EOS)
  drop_captions      classifier-free guidance: some 'text_tokens' become the
                     empty caption's
  to_model_features  'text_tokens', 'image_tokens' -> the batch PartiModel
                     consumes (models.py):
    encoder_input_tokens   int32 [text_length]    ids, EOS, then PAD_ID
    decoder_input_tokens   int32 [image_length]   bos_id, then image tokens shifted right
    decoder_target_tokens  int32 [image_length]   image tokens
    decoder_loss_weights   float32 [image_length] ones

`model_features_numpy` builds the same batch with numpy, for callers outside
tf.data (the sampler, evaluation, tests).
"""
from typing import Dict, Sequence, Tuple, Union

from parti_jax import tf_setup  # pylint: disable=g-bad-import-order (before TensorFlow)

import numpy as np
import seqio
import tensorflow as tf

from parti_jax.data.text_ids import EMPTY_CAPTION_TOKENS, EOS_ID, PAD_ID  # pylint: disable=unused-import (PAD_ID re-exported)
from parti_jax.data.text_ids import check_length as _check_length, pad as _pad_numpy
from parti_jax.errors import ConfigError

Example = Dict[str, tf.Tensor]
# Mixed into the caption-dropout seed so that its draws are unrelated to any
# other per-example random stream derived from the same (seed, example id).
_CAPTION_DROPOUT_STREAM = 0xC0D0
# A fixed algorithm rather than 'auto_select', which may differ between
# devices and TensorFlow builds: every host and run must draw the same.
_RNG_ALG = 'philox'


def tokenize_text(example: Example, vocabulary: seqio.Vocabulary, max_length: int) -> Example:
  """Adds 'text_tokens' (int32 [<= max_length]): the caption's ids, then EOS.

  A caption too long keeps its first max_length - 1 ids and still ends in EOS,
  so the encoder always sees where the text ends.
  """
  _check_length('max_length', max_length)
  if vocabulary.eos_id != EOS_ID:
    raise ConfigError(f'the text vocabulary has EOS id {vocabulary.eos_id}, but the pipeline '
                      f'expects {EOS_ID} (T5/seqio convention); train one with '
                      'python -m parti_jax.data.vocab train')
  ids = tf.cast(vocabulary.encode_tf(example['caption']), tf.int32)[:max_length - 1]
  return {**example, 'text_tokens': tf.concat([ids, [EOS_ID]], axis=0)}


def prompt_tokens(prompt: str, vocabulary: seqio.Vocabulary,
                  max_length: int) -> Tuple[np.ndarray, bool]:
  """A prompt as the encoder reads it at sampling time, int32 [max_length]
  padded: the same ids and truncation rule as tokenize_text, so a caption
  seen in training and the same prompt at inference match. Also returns
  whether the prompt was cut."""
  _check_length('max_length', max_length)
  ids = list(vocabulary.encode(prompt))
  return _pad_numpy(ids[:max_length - 1] + [EOS_ID], max_length), len(ids) > max_length - 1


def drop_captions(example: Example, rate: float, seed: int, id_feature: str = 'index') -> Example:
  """Replaces 'text_tokens' by the empty caption's with probability `rate`.

  Classifier-free guidance (Parti §2.4) needs the model to also learn images
  without their text. The draw depends only on (seed, example[id_feature]), so
  an example drops the same way on every run and host, whatever the order or
  sharding of the data. Adds 'caption_dropped' (tf.bool); 'caption' is kept.

  Args:
    example: has 'text_tokens' and `id_feature`.
    rate: probability of dropping, in [0, 1].
    seed: the data seed.
    id_feature: a scalar integer or string feature unique to the example.
  """
  if not 0.0 <= rate <= 1.0:
    raise ConfigError(f'caption dropout rate must be in [0, 1], got {rate}')
  if id_feature not in example:
    raise ConfigError(f'caption dropout draws from the example id feature {id_feature!r}, '
                      f'which the examples lack; they have {sorted(example)}')
  draw = tf.random.stateless_uniform([], seed=_example_seed(seed, example[id_feature]),
                                     alg=_RNG_ALG)
  dropped = draw < rate
  tokens = tf.cond(dropped, lambda: tf.constant(EMPTY_CAPTION_TOKENS, tf.int32),
                   lambda: example['text_tokens'])
  return {**example, 'text_tokens': tokens, 'caption_dropped': dropped}


def _example_seed(seed: int, example_id: tf.Tensor) -> tf.Tensor:
  """A stateless-RNG seed pair for one example."""
  if example_id.dtype == tf.string:
    # FarmHash fingerprint: the same on every host, run and TensorFlow build.
    example_id = tf.strings.to_hash_bucket_fast(example_id, 2**63 - 1)
  base = tf.constant([seed, _CAPTION_DROPOUT_STREAM], tf.int64)
  return tf.random.experimental.stateless_fold_in(base, tf.cast(example_id, tf.int64),
                                                  alg=_RNG_ALG)


def to_model_features(example: Example, text_length: int, image_length: int,
                      bos_id: int) -> Example:
  """The model's features (see the module docstring) of one example.

  Args:
    example: 'text_tokens' (integer [<= text_length]) and 'image_tokens'
      (integer [image_length], each in [0, bos_id)).
    text_length: the encoder's input length (TransformerConfig.max_text_length).
    image_length: tokens per image (TransformerConfig.image_length).
    bos_id: the decoder's start id (TransformerConfig.bos_id, the image
      vocabulary size).
  """
  _check_length('text_length', text_length)
  _check_length('image_length', image_length)
  text = tf.cast(example['text_tokens'], tf.int32)
  image = tf.cast(example['image_tokens'], tf.int32)
  checks = [
      tf.debugging.assert_rank(text, 1, message='text_tokens must be a 1-D sequence of ids'),
      tf.debugging.assert_less_equal(
          tf.size(text), text_length,
          message=f'text_tokens is longer than text_length={text_length}; tokenize with '
          'max_length <= text_length'),
      tf.debugging.assert_rank(image, 1, message='image_tokens must be a 1-D sequence'),
      tf.debugging.assert_equal(
          tf.size(image), image_length,
          message=f'image_tokens must have exactly image_length={image_length} entries'),
      tf.debugging.assert_non_negative(image, message='image_tokens must be non-negative'),
      tf.debugging.assert_less(
          image, bos_id, message=f'image_tokens must be below bos_id={bos_id} (the image '
          'vocabulary size): is the image tokenizer the one the model was configured for?'),
  ]
  # Graph-mode asserts only run when something depends on them.
  with tf.control_dependencies(checks):
    text = tf.pad(text, [[0, text_length - tf.size(text)]], constant_values=PAD_ID)
    image = tf.identity(image)
  # Static shapes, so that batches of these features have fixed shapes.
  text = tf.ensure_shape(text, [text_length])
  image = tf.ensure_shape(image, [image_length])
  return {
      'encoder_input_tokens': text,
      'decoder_input_tokens': tf.concat([[bos_id], image[:-1]], axis=0),
      'decoder_target_tokens': image,
      'decoder_loss_weights': tf.ones([image_length], tf.float32),
  }


def model_features_numpy(text_tokens: Union[Sequence[Sequence[int]], np.ndarray],
                         image_tokens: np.ndarray, text_length: int,
                         bos_id: int) -> Dict[str, np.ndarray]:
  """The batch `to_model_features` gives, built with numpy.

  Args:
    text_tokens: one id sequence per example (ending in EOS); trailing PAD_ID
      entries are ignored, so an already padded [batch, n] array works too.
    image_tokens: integer [batch, image_length], each in [0, bos_id).
    text_length: the encoder's input length.
    bos_id: the decoder's start id.

  Returns:
    encoder_input_tokens int32 [batch, text_length], decoder_input_tokens and
    decoder_target_tokens int32 [batch, image_length], decoder_loss_weights
    float32 [batch, image_length].
  """
  _check_length('text_length', text_length)
  image = np.asarray(image_tokens)
  if image.ndim != 2:
    raise ValueError(f'image_tokens must be [batch, image_length], got shape {image.shape}')
  if len(text_tokens) != image.shape[0]:
    raise ValueError(f'{len(text_tokens)} text token sequences for {image.shape[0]} images')
  if image.size and (image.min() < 0 or image.max() >= bos_id):
    raise ValueError(f'image_tokens must be in [0, bos_id={bos_id}), got values from '
                     f'{image.min()} to {image.max()}')
  image = image.astype(np.int32)
  text = np.zeros([image.shape[0], text_length], np.int32)
  for row, tokens in enumerate(text_tokens):
    text[row] = _pad_numpy(np.trim_zeros(np.asarray(tokens, np.int32), 'b'), text_length)
  bos = np.full([image.shape[0], 1], bos_id, np.int32)
  return {
      'encoder_input_tokens': text,
      'decoder_input_tokens': np.concatenate([bos, image[:, :-1]], axis=1),
      'decoder_target_tokens': image,
      'decoder_loss_weights': np.ones(image.shape, np.float32),
  }
