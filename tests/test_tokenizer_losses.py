"""Tokenizer losses against numpy/scipy formulas and closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from parti_jax.tokenizer import discriminator, losses


# Threefry's random-bit kernels take seconds each to compile on CPU; rbg's do not.
RBG_KEY = jax.random.key(0, impl='rbg')


def _logits(seed, shape=(16,)):
  return (3.0 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _softplus(x):
  return np.log1p(np.exp(x.astype(np.float64)))


def test_l2_loss_is_mean_squared_error():
  rng = np.random.default_rng(0)
  a, b = rng.random((2, 4, 4, 3), np.float32), rng.random((2, 4, 4, 3), np.float32)
  np.testing.assert_allclose(losses.l2_loss(a, b), np.mean((a - b)**2), rtol=1e-6)


def test_gan_losses_match_numpy():
  real, fake = _logits(1), _logits(2)
  np.testing.assert_allclose(losses.generator_loss_nonsaturating(fake),
                             np.mean(_softplus(-fake)), rtol=1e-5)
  np.testing.assert_allclose(losses.discriminator_loss(real, fake),
                             np.mean(_softplus(-real)) + np.mean(_softplus(fake)), rtol=1e-5)


def test_logit_laplace_loss_matches_scipy_change_of_variables():
  rng = np.random.default_rng(3)
  shape, eps = (2, 4, 4, 3), 0.1
  target = rng.random(shape).astype(np.float32)
  target[0, 0, 0] = [0.0, 1.0, 0.5]  # The ends of the pixel range stay finite.
  mu = rng.standard_normal(shape).astype(np.float32)
  log_b = (0.5 * rng.standard_normal(shape)).astype(np.float32)

  x = (1 - 2 * eps) * target.astype(np.float64) + eps
  log_density = (stats.laplace.logpdf(special.logit(x), loc=mu, scale=np.exp(log_b))
                 - np.log(x * (1 - x)))
  loss = losses.logit_laplace_loss(mu, log_b, target, eps)
  np.testing.assert_allclose(loss, -np.mean(log_density), rtol=1e-5)


def test_logit_laplace_mean_inverts_the_eps_map():
  eps = 0.1
  target = np.linspace(0.0, 1.0, 11, dtype=np.float32)
  mu = special.logit((1 - 2 * eps) * target + eps).astype(np.float32)
  np.testing.assert_allclose(losses.logit_laplace_mean(mu, eps), target, atol=1e-6)
  # Locations beyond the squeezed range clip to the image range.
  extreme = losses.logit_laplace_mean(np.array([-20.0, 20.0], np.float32), eps)
  np.testing.assert_array_equal(extreme, [0.0, 1.0])


def test_logit_laplace_rejects_bad_eps():
  with pytest.raises(ValueError, match='eps'):
    losses.logit_laplace_mean(np.zeros(2, np.float32), eps=0.5)


def test_r1_penalty_of_linear_discriminator_is_squared_weight_norm():
  rng = np.random.default_rng(4)
  w = rng.standard_normal((4, 4, 3)).astype(np.float32)
  images = rng.random((3, 4, 4, 3)).astype(np.float32)
  penalty = losses.r1_penalty(lambda x: jnp.sum(w * x, axis=(1, 2, 3)), images)
  np.testing.assert_allclose(penalty, np.sum(w**2), rtol=1e-5)


def test_r1_penalty_matches_per_example_gradients():
  # Group size 1: the minibatch-stddev layer does not couple examples.
  disc = discriminator.Discriminator(channels=(4, 8), mbstd_group_size=1)
  images = np.random.default_rng(5).random((3, 8, 8, 3)).astype(np.float32)
  variables = jax.jit(disc.init)(RBG_KEY, images)

  def logit_of_one(image):
    return disc.apply(variables, image[None])[0]

  grad_of_one = jax.jit(jax.grad(logit_of_one))
  grads = [grad_of_one(image) for image in images]
  expected = np.mean([np.sum(np.square(g)) for g in grads])
  penalty = jax.jit(lambda x: losses.r1_penalty(lambda y: disc.apply(variables, y), x))(images)
  np.testing.assert_allclose(penalty, expected, rtol=1e-4)
