"""Feature conversion: text tokens, caption dropout and the model's batch features."""
import math
import types

import numpy as np
import pytest
import tensorflow as tf

from parti_jax.data import features, text_ids
from parti_jax.data.vocab import load_vocabulary
from parti_jax.errors import ConfigError

BYTES = load_vocabulary('byte')  # Id of a byte: its value + 3.
EOS = features.EOS_ID


def _byte_ids(text: str) -> list:
  return [byte + 3 for byte in text.encode()]


def _text_tokens(caption: str, max_length: int) -> np.ndarray:
  example = features.tokenize_text({'caption': tf.constant(caption)}, BYTES, max_length)
  return example['text_tokens'].numpy()


def test_a_short_caption_gets_eos_appended():
  tokens = _text_tokens('hi', 8)
  assert tokens.dtype == np.int32
  assert tokens.tolist() == _byte_ids('hi') + [EOS]


def test_a_long_caption_is_truncated_keeping_eos_last():
  assert _text_tokens('abcdefghij', 4).tolist() == _byte_ids('abc') + [EOS]
  assert _text_tokens('ab', 3).tolist() == _byte_ids('ab') + [EOS]
  assert _text_tokens('abc', 1).tolist() == [EOS]


def test_the_empty_caption_is_the_unconditional_input():
  unconditional = text_ids.unconditional_text_tokens(6)
  assert unconditional.dtype == np.int32
  assert unconditional.tolist() == [EOS, 0, 0, 0, 0, 0]
  padded = np.zeros(6, np.int32)
  tokens = _text_tokens('', 6)
  padded[:len(tokens)] = tokens
  np.testing.assert_array_equal(padded, unconditional)


def test_a_vocabulary_with_another_eos_id_is_refused():
  with pytest.raises(ConfigError, match='EOS id 2'):
    features.tokenize_text({'caption': tf.constant('a')}, types.SimpleNamespace(eos_id=2), 8)
  with pytest.raises(ConfigError, match='max_length must be a positive integer'):
    features.tokenize_text({'caption': tf.constant('a')}, BYTES, 0)


@pytest.mark.parametrize('prompt', ['', 'hi', 'a small red circle above a blue square', 'é' * 9])
def test_prompts_tokenize_as_training_captions(prompt):
  """The sampler's prompt tokens equal the training pipeline's, padded."""
  tokens, cut = features.prompt_tokens(prompt, BYTES, 8)
  expected = np.zeros(8, np.int32)
  from_pipeline = _text_tokens(prompt, 8)
  expected[:len(from_pipeline)] = from_pipeline
  np.testing.assert_array_equal(tokens, expected)
  assert cut == (len(prompt.encode()) > 7)


def test_bos_shift_padding_and_loss_weights_on_a_hand_example():
  example = {'text_tokens': tf.constant([7, 8, EOS]), 'image_tokens': tf.constant([5, 0, 3, 2])}
  out = features.to_model_features(example, text_length=5, image_length=4, bos_id=6)
  assert sorted(out) == ['decoder_input_tokens', 'decoder_loss_weights', 'decoder_target_tokens',
                         'encoder_input_tokens']
  assert out['encoder_input_tokens'].numpy().tolist() == [7, 8, EOS, 0, 0]
  assert out['decoder_input_tokens'].numpy().tolist() == [6, 5, 0, 3]
  assert out['decoder_target_tokens'].numpy().tolist() == [5, 0, 3, 2]
  assert out['decoder_loss_weights'].numpy().tolist() == [1.0] * 4
  assert [out[key].dtype for key in sorted(out)] == [tf.int32, tf.float32, tf.int32, tf.int32]


def _convert_generated(text: list, image: list, text_length: int = 4, image_length: int = 4):
  """Runs to_model_features in a tf.data map on lengths known only at run time."""
  spec = {'text_tokens': tf.TensorSpec([None], tf.int32),
          'image_tokens': tf.TensorSpec([None], tf.int32)}
  row = {'text_tokens': np.array(text, np.int32), 'image_tokens': np.array(image, np.int32)}
  dataset = tf.data.Dataset.from_generator(lambda: iter([row]), output_signature=spec)
  return list(dataset.map(lambda x: features.to_model_features(x, text_length, image_length, 9)))


@pytest.mark.parametrize('text,image,message', [
    ([3, EOS], [1, 2, 3], 'image_tokens must have exactly image_length=4 entries'),
    ([3, EOS], [1, 2, 3, 4, 5], 'image_tokens must have exactly image_length=4 entries'),
    ([3, 3, 3, 3, EOS], [1, 2, 3, 4], 'text_tokens is longer than text_length=4'),
    ([3, EOS], [1, 2, 3, 9], 'image_tokens must be below bos_id=9'),
    ([3, EOS], [1, -1, 3, 4], 'image_tokens must be non-negative'),
])
def test_wrong_lengths_and_ids_fail_with_a_clear_message(text, image, message):
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    _convert_generated(text, image)


def test_a_length_known_when_the_map_is_traced_fails_there():
  static = {'text_tokens': tf.constant([[3, EOS]]), 'image_tokens': tf.constant([[1, 2, 3]])}
  with pytest.raises(tf.errors.InvalidArgumentError, match='exactly image_length=4'):
    tf.data.Dataset.from_tensor_slices(static).map(
        lambda x: features.to_model_features(x, 4, 4, 9))


def test_correct_features_pass_the_run_time_checks():
  [out] = _convert_generated([3, EOS], [1, 2, 3, 8])
  assert out['encoder_input_tokens'].numpy().tolist() == [3, EOS, 0, 0]
  assert out['decoder_input_tokens'].numpy().tolist() == [9, 1, 2, 3]


DROPOUT_EXAMPLES = 4000
DROPOUT_RATE = 0.1


def _dropout_run(rate: float, seed: int, ids=None, shuffle: bool = False):
  """(dropped flags, text tokens padded to 4) of DROPOUT_EXAMPLES examples, by index."""
  count = DROPOUT_EXAMPLES
  dataset = tf.data.Dataset.from_tensor_slices({
      'index': tf.range(count, dtype=tf.int64),
      'key': tf.constant(ids if ids is not None else [''] * count),
      'text_tokens': tf.tile(tf.constant([[7, 8, EOS]]), [count, 1]),
  })
  if shuffle:
    dataset = dataset.shuffle(count, seed=1)
  id_feature = 'key' if ids is not None else 'index'
  dataset = dataset.map(lambda x: features.drop_captions(x, rate, seed, id_feature))
  batch = next(iter(dataset.padded_batch(count, padded_shapes={
      'index': [], 'key': [], 'text_tokens': [4], 'caption_dropped': []})))
  order = np.argsort(batch['index'].numpy())
  return batch['caption_dropped'].numpy()[order], batch['text_tokens'].numpy()[order]


def test_caption_dropout_rate_is_within_binomial_tolerance():
  dropped, tokens = _dropout_run(DROPOUT_RATE, seed=0)
  expected = DROPOUT_EXAMPLES * DROPOUT_RATE
  std = math.sqrt(DROPOUT_EXAMPLES * DROPOUT_RATE * (1 - DROPOUT_RATE))  # About 19.
  # 4 standard deviations: a correct implementation fails this once in ~16,000 seeds.
  assert abs(dropped.sum() - expected) <= 4 * std
  np.testing.assert_array_equal(tokens[dropped],
                                np.tile(text_ids.unconditional_text_tokens(4), [dropped.sum(), 1]))
  np.testing.assert_array_equal(tokens[~dropped], np.tile([7, 8, EOS, 0], [(~dropped).sum(), 1]))


def test_caption_dropout_is_a_function_of_seed_and_example_id_only():
  dropped, _ = _dropout_run(DROPOUT_RATE, seed=0)
  again, _ = _dropout_run(DROPOUT_RATE, seed=0, shuffle=True)
  np.testing.assert_array_equal(again, dropped)
  other_seed, _ = _dropout_run(DROPOUT_RATE, seed=1)
  assert (other_seed != dropped).any()


def test_caption_dropout_with_string_example_ids():
  ids = [f'shard-{i % 7}.tar:{i:06d}' for i in range(DROPOUT_EXAMPLES)]
  dropped, _ = _dropout_run(DROPOUT_RATE, seed=0, ids=ids)
  again, _ = _dropout_run(DROPOUT_RATE, seed=0, ids=ids, shuffle=True)
  np.testing.assert_array_equal(again, dropped)
  std = math.sqrt(DROPOUT_EXAMPLES * DROPOUT_RATE * (1 - DROPOUT_RATE))
  assert abs(dropped.sum() - DROPOUT_EXAMPLES * DROPOUT_RATE) <= 4 * std


def test_caption_dropout_rates_zero_and_one_and_bad_arguments():
  assert not _dropout_run(0.0, seed=0)[0].any()
  assert _dropout_run(1.0, seed=0)[0].all()
  example = {'index': tf.constant(0, tf.int64), 'text_tokens': tf.constant([EOS])}
  with pytest.raises(ConfigError, match=r'rate must be in \[0, 1\], got 1.5'):
    features.drop_captions(example, 1.5, seed=0)
  with pytest.raises(ConfigError, match="example id feature 'id'"):
    features.drop_captions(example, 0.1, seed=0, id_feature='id')


def test_numpy_and_tensorflow_conversions_agree():
  rng = np.random.default_rng(0)
  text_length, image_length, bos_id = 6, 8, 16
  text = [list(rng.integers(3, 50, n)) + [EOS] for n in (0, 2, 5, 3)]
  image = rng.integers(0, bos_id, (len(text), image_length)).astype(np.int32)
  dataset = tf.data.Dataset.from_generator(
      lambda: ({'text_tokens': np.array(t, np.int32), 'image_tokens': i}
               for t, i in zip(text, image)),
      output_signature={'text_tokens': tf.TensorSpec([None], tf.int32),
                        'image_tokens': tf.TensorSpec([image_length], tf.int32)})
  dataset = dataset.map(
      lambda x: features.to_model_features(x, text_length, image_length, bos_id)).batch(len(text))
  from_tf = {key: value.numpy() for key, value in next(iter(dataset)).items()}
  from_numpy = features.model_features_numpy(text, image, text_length, bos_id)
  assert sorted(from_numpy) == sorted(from_tf)
  for key, value in from_tf.items():
    assert from_numpy[key].dtype == value.dtype, key
    np.testing.assert_array_equal(from_numpy[key], value, err_msg=key)
  # An already padded array gives the same batch.
  padded = features.model_features_numpy(from_tf['encoder_input_tokens'], image, text_length,
                                          bos_id)
  np.testing.assert_array_equal(padded['encoder_input_tokens'], from_tf['encoder_input_tokens'])


def test_numpy_conversion_rejects_bad_batches():
  image = np.zeros((2, 4), np.int32)
  with pytest.raises(ValueError, match='do not fit text_length=2'):
    features.model_features_numpy([[5, 5, EOS], [EOS]], image, 2, bos_id=9)
  with pytest.raises(ValueError, match='1 text token sequences for 2 images'):
    features.model_features_numpy([[EOS]], image, 2, bos_id=9)
  with pytest.raises(ValueError, match=r'must be in \[0, bos_id=9\)'):
    features.model_features_numpy([[EOS], [EOS]], image + 9, 2, bos_id=9)
  with pytest.raises(ValueError, match=r'must be \[batch, image_length\]'):
    features.model_features_numpy([[EOS]], image[0], 2, bos_id=9)
