"""The sampler against full recomputation, guidance algebra, filters, seeds,
forced tokens and sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parti_jax import partitioning
from parti_jax.decoding import (SamplingConfig, Sampler, cache_blocks, draw_categorical,
                                invert_cdf, top_k_filter, top_p_filter)
from parti_jax.errors import ConfigError
from parti_jax.models import PartiModel
from tests.conftest import small_config, token_batch

EMPTY = np.array([1] + [0] * 7, np.int32)  # [EOS, 0, ...]: the empty caption, length 8.


@pytest.fixture(scope='module')
def setup():
  cfg = small_config()
  model = PartiModel(cfg)
  params = jax.device_get(model.init_variables(jax.random.key(0)))
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, 'unbox') else x, params,
                        is_leaf=lambda x: hasattr(x, 'unbox'))['params']
  config = partitioning.MeshConfig(data=1)
  # Blocks of 6 over 16 positions (6, 6, 4): every test below also checks
  # that the growing cache changes nothing.
  sampler = Sampler(model, config.make_mesh(jax.devices()[:1]), config.rules, attention_block=6)
  text = token_batch(cfg, 4, seed=1)['encoder_input_tokens']
  return model, params, sampler, text


def keys(n, first_seed=0):
  return jnp.stack([jax.random.key(first_seed + i) for i in range(n)])


def recompute(model, params, text, choose):
  """Decoding by a full forward pass over the whole prefix at every position."""
  cfg = model.config
  tokens = np.zeros((text.shape[0], cfg.image_length), np.int32)
  for t in range(cfg.image_length):
    inputs = np.concatenate([np.full((text.shape[0], 1), cfg.bos_id), tokens[:, :-1]], 1)
    logits = model.logits(params, dict(encoder_input_tokens=text, decoder_input_tokens=inputs))
    tokens[:, t] = choose(np.asarray(logits[:, t]), t)
  return tokens


def test_cached_greedy_equals_full_recompute(setup):
  model, params, sampler, text = setup
  cached = sampler(params, text, keys(4), SamplingConfig(top_k=1, cfg_scale=1.0))
  expected = recompute(model, params, text, lambda logits, t: logits.argmax(-1))
  np.testing.assert_array_equal(np.asarray(cached), expected)


def test_guided_greedy_equals_recomputed_guidance(setup):
  model, params, sampler, text = setup
  scale = 3.0
  cached = sampler(params, text, keys(4), SamplingConfig(temperature=0.0, cfg_scale=scale),
                   uncond_text_tokens=EMPTY)
  empty = np.broadcast_to(EMPTY, text.shape)
  cfg = model.config

  tokens = np.zeros((4, cfg.image_length), np.int32)
  for t in range(cfg.image_length):
    inputs = np.concatenate([np.full((4, 1), cfg.bos_id), tokens[:, :-1]], 1)
    cond = np.asarray(model.logits(params, dict(encoder_input_tokens=text,
                                                decoder_input_tokens=inputs))[:, t])
    uncond = np.asarray(model.logits(params, dict(encoder_input_tokens=empty,
                                                  decoder_input_tokens=inputs))[:, t])
    tokens[:, t] = (uncond + scale * (cond - uncond)).argmax(-1)
  np.testing.assert_array_equal(np.asarray(cached), tokens)


def test_guidance_scale_zero_and_one(setup):
  """Scale 1 is conditional sampling, scale 0 sampling from the empty caption."""
  _, params, sampler, text = setup
  k = keys(4)
  conditional = sampler(params, text, k, SamplingConfig(cfg_scale=1.0))
  one = sampler(params, text, k, SamplingConfig(cfg_scale=1.0), uncond_text_tokens=EMPTY,
                guidance_scales=jnp.ones(16))  # the guided path (2B rows) at scale 1
  np.testing.assert_array_equal(one, conditional)
  empty = np.broadcast_to(EMPTY, text.shape)
  unconditional = sampler(params, empty, k, SamplingConfig(cfg_scale=1.0))
  zero = sampler(params, text, k, SamplingConfig(cfg_scale=0.0), uncond_text_tokens=EMPTY)
  np.testing.assert_array_equal(zero, unconditional)
  with pytest.raises(ConfigError, match='empty caption'):
    sampler(params, text, k, SamplingConfig(cfg_scale=2.0))


def test_sampling_without_cache_gives_the_same_images(setup):
  """The full-recompute path (the benchmark's baseline) samples the same
  tokens as the cached loop, guidance and randomness included."""
  _, params, sampler, text = setup
  config = SamplingConfig(temperature=1.0, top_k=10, cfg_scale=2.0)
  cached = sampler(params, text, keys(4), config, uncond_text_tokens=EMPTY)
  recomputed = sampler.without_cache(params, text, keys(4), config, uncond_text_tokens=EMPTY)
  np.testing.assert_array_equal(np.asarray(recomputed), np.asarray(cached))


def test_seeds_are_per_row_and_reproducible(setup):
  _, params, sampler, text = setup
  config = SamplingConfig(temperature=1.5, cfg_scale=1.0)
  batch = np.asarray(sampler(params, text, keys(4, first_seed=10), config))
  again = np.asarray(sampler(params, text, keys(4, first_seed=10), config))
  np.testing.assert_array_equal(batch, again)
  alone = np.asarray(sampler(params, text[2:3], keys(1, first_seed=12), config))
  np.testing.assert_array_equal(alone[0], batch[2])
  other = np.asarray(sampler(params, text, keys(4, first_seed=50), config))
  assert (other != batch).any()


def test_forced_tokens_appear_unchanged(setup):
  model, params, sampler, text = setup
  length = model.config.image_length
  forced = np.random.default_rng(0).integers(0, model.config.image_vocab_size, (4, length))
  mask = np.zeros((4, length), bool)
  mask[:, :5] = True  # a prefix
  mask[1, 9] = True  # and a single position elsewhere
  out = np.asarray(sampler(params, text, keys(4), SamplingConfig(cfg_scale=1.0),
                           forced_tokens=forced, forced_mask=mask))
  np.testing.assert_array_equal(out[mask], forced[mask])


def test_top_k_and_top_p_never_leave_the_allowed_set():
  """Thousands of draws from a fixed distribution, as the sampler draws them:
  in proportion to the probabilities, and with a filter only allowed tokens
  appear (top-k: in proportion to their renormalized probabilities)."""
  probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], np.float32)
  logits = jnp.log(jnp.asarray(probs))[None].repeat(20000, 0)
  row_keys = jax.random.split(jax.random.key(0), logits.shape[0])
  draw = lambda filtered: np.asarray(jax.vmap(draw_categorical)(row_keys, filtered))
  unfiltered = draw(logits)
  np.testing.assert_allclose(np.bincount(unfiltered, minlength=6) / 20000, probs, atol=0.015)
  top3 = draw(top_k_filter(logits, 3))
  assert set(np.unique(top3)) == {0, 1, 2}
  np.testing.assert_allclose(np.bincount(top3, minlength=6)[:3] / 20000,
                             probs[:3] / probs[:3].sum(), atol=0.015)
  nucleus = draw(top_p_filter(logits, 0.7))  # 0.4 + 0.25 < 0.7 <= 0.4 + 0.25 + 0.15
  assert set(np.unique(nucleus)) == {0, 1, 2}
  assert set(np.unique(draw(top_p_filter(logits, 0.3)))) == {0}


def test_inverse_cdf_never_returns_a_token_of_weight_zero():
  """The draw's edges: u = 0 and u at (or rounded to) the total."""
  weights = jnp.asarray([0.0, 0.5, 0.0, 0.5, 0.0])
  for u, expected in ((0.0, 1), (0.49, 1), (0.5, 3), (1 - 1e-7, 3), (1.0, 3)):
    assert int(invert_cdf(weights, jnp.float32(u))) == expected, u


def test_sharded_sampling_equals_one_device(setup, eight_devices):
  model, params, sampler, _ = setup
  text = token_batch(model.config, 8, seed=4)['encoder_input_tokens']
  config = SamplingConfig(temperature=1.0, top_k=20, cfg_scale=2.0)
  single = sampler(params, text, keys(8), config, uncond_text_tokens=EMPTY)
  mesh_config = partitioning.MeshConfig(preset='data_model', data=4, model=2)
  sharded = Sampler(model, mesh_config.make_mesh(eight_devices), mesh_config.rules,
                    attention_block=6)
  out = sharded(params, text, keys(8), config, uncond_text_tokens=EMPTY)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(single))


@pytest.mark.parametrize('block', [0, 1, 16])
def test_attention_blocks_change_nothing(setup, block):
  """The cache grown block by block samples what the full-length cache does,
  token for token, with guidance, nucleus sampling and forced tokens."""
  model, params, sampler, text = setup
  config = SamplingConfig(temperature=1.0, top_p=0.9, cfg_scale=2.0)
  forced_mask = np.zeros((4, 16), bool)
  forced_mask[:, 7] = True
  options = dict(uncond_text_tokens=EMPTY, forced_tokens=np.full((4, 16), 3, np.int32),
                 forced_mask=forced_mask)
  other = Sampler(model, sampler.mesh, sampler.rules, attention_block=block)
  np.testing.assert_array_equal(np.asarray(other(params, text, keys(4), config, **options)),
                                np.asarray(sampler(params, text, keys(4), config, **options)))


def test_cache_blocks():
  assert cache_blocks(16, 6) == [(0, 6), (6, 12), (12, 16)]
  assert cache_blocks(16, 0) == cache_blocks(16, 16) == cache_blocks(16, 99) == [(0, 16)]


def test_bad_settings_are_refused():
  with pytest.raises(ConfigError, match='top_p'):
    SamplingConfig(top_p=0.0)
  with pytest.raises(ConfigError, match='temperature'):
    SamplingConfig(temperature=-1.0)
  with pytest.raises(ConfigError, match='attention_block'):
    Sampler(None, None, None, attention_block=-1)
