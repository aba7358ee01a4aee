"""The factorized quantizer against numpy brute force and hand-made examples."""
import jax
import jax.numpy as jnp
import numpy as np

from parti_jax.tokenizer.quantizer import (FactorizedQuantizer, code_statistics,
                                           restart_dead_codes)


def make_quantizer():
  module = FactorizedQuantizer(codebook_size=32, lookup_dim=4)
  z = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 8)), jnp.float32)
  variables = module.init(jax.random.key(0), z)
  return module, jax.tree.map(lambda x: getattr(x, 'value', x), variables,
                              is_leaf=lambda x: hasattr(x, 'value')), z


def test_codes_are_unit_norm_and_cosine_nearest():
  module, variables, z = make_quantizer()
  indices, quantized, aux = module.apply(variables, z)
  params = variables['params']
  latents = np.asarray(z) @ np.asarray(params['down']['kernel'])
  codebook = np.asarray(params['codebook'])
  cosine = (latents / np.linalg.norm(latents, axis=-1, keepdims=True)) @ (
      codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)).T
  np.testing.assert_array_equal(indices, cosine.argmax(-1))
  np.testing.assert_allclose(np.linalg.norm(quantized, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(aux['latents'], axis=-1), 1.0, rtol=1e-5)


def test_straight_through_gradient_reaches_the_encoder():
  """d(loss of quantized)/dz equals d(loss of unquantized latents)/dz: the
  quantization step passes gradients through unchanged."""
  module, variables, z = make_quantizer()
  target = jnp.ones((2, 6, 4))

  def through_quantizer(z):
    _, quantized, _ = module.apply(variables, z)
    return jnp.sum(quantized * target)

  def without_quantization(z):
    return jnp.sum(module.apply(variables, z, method=FactorizedQuantizer.lookup) * target)

  g = jax.grad(through_quantizer)(z)
  assert np.abs(g).max() > 0
  np.testing.assert_allclose(g, jax.grad(without_quantization)(z), rtol=1e-6, atol=1e-7)


def test_vq_loss_is_codebook_plus_beta_commitment():
  module, variables, z = make_quantizer()
  _, quantized, aux = module.apply(variables, z)
  distance = np.mean(np.sum((np.asarray(aux['latents']) - np.asarray(quantized))**2, -1))
  np.testing.assert_allclose(aux['vq_loss'], 1.25 * distance, rtol=1e-5)


def test_usage_and_perplexity_on_a_hand_made_example():
  # Codes 0, 0, 1, 3 out of 8: usage 3/8; probabilities (1/2, 1/4, 1/4).
  stats = code_statistics(jnp.array([[0, 0], [1, 3]]), 8)
  np.testing.assert_allclose(stats['codebook_usage'], 3 / 8)
  entropy = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
  np.testing.assert_allclose(stats['perplexity'], np.exp(entropy), rtol=1e-6)
  uniform = code_statistics(jnp.arange(16), 16)
  np.testing.assert_allclose(uniform['perplexity'], 16, rtol=1e-5)


def test_unused_codes_restart_from_encoder_outputs():
  codebook = jnp.zeros((4, 2))
  steps_unused = jnp.array([0, 5, 9, 2])
  indices = jnp.array([[0, 3]])
  latents = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])
  new_codebook, counters, restarted = restart_dead_codes(codebook, steps_unused, indices,
                                                         latents, jax.random.key(0), 10)
  # Code 2 reaches 10 unused steps: replaced by one of the batch's latents.
  assert int(restarted) == 1
  assert any(np.allclose(new_codebook[2], v) for v in ([1.0, 0.0], [0.0, 1.0]))
  np.testing.assert_array_equal(np.asarray(new_codebook)[[0, 1, 3]], 0)
  np.testing.assert_array_equal(counters, [0, 6, 0, 0])


def test_restarts_go_to_the_worst_served_latents():
  """The batch's latent [1, 0] sits exactly on its code and [0, 1] is far from
  it: every dead code restarts at [0, 1]."""
  codebook = jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
  latents = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])
  indices = jnp.array([[0, 0]])
  new_codebook, _, restarted = restart_dead_codes(codebook, jnp.array([0, 9, 9]), indices,
                                                  latents, jax.random.key(1), 10)
  assert int(restarted) == 2
  np.testing.assert_array_equal(np.asarray(new_codebook)[1:], [[0.0, 1.0], [0.0, 1.0]])
