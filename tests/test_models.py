"""PartiModel: loss and scores against numpy, cached decoding against the full forward."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parti_jax.errors import ConfigError
from parti_jax.models import PartiModel
from tests.conftest import small_config, token_batch


@pytest.fixture(scope='module')
def model_and_params():
  model = PartiModel(small_config(), z_loss=1e-3)
  params = nn.unbox(model.init_variables(jax.random.key(0)))['params']
  return model, params


def numpy_log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_loss_and_metrics_match_numpy(model_and_params):
  model, params = model_and_params
  batch = token_batch(model.config, 3)
  loss, metrics = model.loss_fn(params, batch)
  logits = np.asarray(model.logits(params, batch), np.float64)
  targets, weights = batch['decoder_target_tokens'], batch['decoder_loss_weights']
  nll = -np.take_along_axis(numpy_log_softmax(logits), targets[..., None], -1)[..., 0]
  log_z = np.log(np.exp(logits).sum(-1))
  n = weights.sum()
  np.testing.assert_allclose(metrics['cross_entropy'], (nll * weights).sum() / n, rtol=1e-5)
  np.testing.assert_allclose(metrics['z_loss'], 1e-3 * (log_z**2 * weights).sum() / n,
                             rtol=1e-5)
  np.testing.assert_allclose(loss, metrics['cross_entropy'] + metrics['z_loss'], rtol=1e-6)
  accuracy = ((logits.argmax(-1) == targets) * weights).sum() / n
  np.testing.assert_allclose(metrics['accuracy'], accuracy, rtol=1e-6)
  assert metrics['num_tokens'] == n


def test_score_is_per_example_log_likelihood(model_and_params):
  model, params = model_and_params
  batch = token_batch(model.config, 3)
  scores = model.score_batch(params, batch)
  log_probs = numpy_log_softmax(model.logits(params, batch))
  expected = (np.take_along_axis(log_probs, batch['decoder_target_tokens'][..., None], -1)[..., 0]
              * batch['decoder_loss_weights']).sum(-1)
  assert scores.shape == (3,)
  np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_empty_caption_is_representable(model_and_params):
  """An all-padding caption (the unconditional input of guidance) gives finite
  logits that differ from a real caption's."""
  model, params = model_and_params
  batch = token_batch(model.config, 2)
  batch['encoder_input_tokens'][0] = 0
  logits = np.asarray(model.logits(params, batch))
  assert np.isfinite(logits).all()
  assert not np.allclose(logits[0], logits[1])


def test_dropout_only_with_an_rng():
  model = PartiModel(small_config(dropout_rate=0.3))
  params = nn.unbox(model.init_variables(jax.random.key(0)))['params']
  batch = token_batch(model.config, 2)
  logits = jax.jit(model.logits)
  plain = logits(params, batch)
  np.testing.assert_array_equal(plain, logits(params, batch))
  a = logits(params, batch, jax.random.key(1))
  b = logits(params, batch, jax.random.key(1))
  c = logits(params, batch, jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, plain) and not np.allclose(a, c)


def stepped_logits(model, params, batch):
  """[batch, image_length, vocab] logits of feeding the decoder inputs one by one
  through the cache, and the final cache."""
  encoded = model.encode(params, batch['encoder_input_tokens'])
  cache = model.init_decode_cache(params, encoded, batch['encoder_input_tokens'])
  step = jax.jit(model.decode_step)
  stepped = []
  for i in range(model.config.image_length):
    logits, cache = step(params, cache, jnp.asarray(batch['decoder_input_tokens'][:, i]))
    stepped.append(np.asarray(logits))
  return np.stack(stepped, axis=1), cache


@pytest.mark.parametrize('overrides', [{}, dict(mlp_activations=('gelu', 'linear')),
                                       dict(causal_query_blocks=3)])
def test_kv_cached_decoding_equals_full_forward(overrides):
  """Feeding tokens one by one through the cache gives the full forward's logits
  at every position, for a batch whose captions have different lengths."""
  model = PartiModel(small_config(**overrides))
  params = nn.unbox(model.init_variables(jax.random.key(3)))['params']
  batch = token_batch(model.config, 4, seed=5)
  full = np.asarray(model.logits(params, batch))
  stepped, _ = stepped_logits(model, params, batch)
  assert len(set(np.count_nonzero(batch['encoder_input_tokens'], axis=1))) == 4
  np.testing.assert_allclose(stepped, full, rtol=1e-5, atol=1e-5 * np.abs(full).max())


def test_float32_cache_of_a_bfloat16_model_computes_the_same():
  """A float32 cache holds the bfloat16 keys and values exactly, so decoding
  through it matches the bfloat16 cache up to the order of float32 sums."""
  batch = token_batch(small_config(), 4, seed=5)
  results = {}
  for cache_dtype in (None, 'float32'):
    model = PartiModel(small_config(dtype='bfloat16', decode_cache_dtype=cache_dtype))
    params = nn.unbox(model.init_variables(jax.random.key(3)))['params']
    results[cache_dtype] = stepped_logits(model, params, batch)
  (bf16_logits, bf16_cache), (f32_logits, f32_cache) = results[None], results['float32']
  dtypes = lambda cache: {leaf.dtype for path, leaf in jax.tree_util.tree_leaves_with_path(cache)
                          if 'cached_key' in jax.tree_util.keystr(path)}
  assert dtypes(bf16_cache) == {jnp.dtype('bfloat16')}
  assert dtypes(f32_cache) == {jnp.dtype('float32')}
  scale = np.abs(bf16_logits).max()
  np.testing.assert_allclose(f32_logits, bf16_logits, atol=0.02 * scale)
  assert np.mean(np.abs(f32_logits - bf16_logits) < 1e-3 * scale) > 0.9


@pytest.mark.parametrize('field, value', [('dtype', 'float16'), ('remat_policy', 'some'),
                                          ('decode_cache_dtype', 'int8')])
def test_bad_numerics_settings_are_refused(field, value):
  with pytest.raises(ConfigError, match=field):
    small_config(**{field: value})


def test_remat_gives_the_same_gradients():
  batch = token_batch(small_config(), 2)
  plain = PartiModel(small_config())
  remat = PartiModel(small_config(remat_policy='full'))
  params = nn.unbox(plain.init_variables(jax.random.key(0)))['params']
  g1 = jax.jit(jax.grad(lambda p: plain.loss_fn(p, batch)[0]))(params)
  g2 = jax.jit(jax.grad(lambda p: remat.loss_fn(p, batch)[0]))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bfloat16_matmuls_keep_float32_params_and_logits():
  model = PartiModel(small_config(dtype='bfloat16'))
  params = nn.unbox(model.init_variables(jax.random.key(0)))['params']
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype('float32')}
  batch = token_batch(model.config, 2)
  logits = model.logits(params, batch)
  assert logits.dtype == jnp.float32
  reference = PartiModel(small_config()).logits(params, batch)
  np.testing.assert_allclose(logits, reference, atol=0.1 * float(np.abs(reference).max()))


def test_too_long_inputs_are_refused():
  model = PartiModel(small_config())
  params = nn.unbox(model.init_variables(jax.random.key(0)))['params']
  batch = token_batch(model.config, 1)
  batch['encoder_input_tokens'] = np.ones((1, model.config.max_text_length + 1), np.int32)
  with pytest.raises(ValueError, match='max_text_length'):
    model.logits(params, batch)
