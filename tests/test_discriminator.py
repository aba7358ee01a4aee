"""StyleGAN2-style discriminator: minibatch stddev against numpy, shapes, errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parti_jax.errors import ConfigError
from parti_jax.partitioning import LOGICAL_AXIS_NAMES
from parti_jax.tokenizer.discriminator import Discriminator, minibatch_stddev

# Threefry's random-bit kernels take seconds each to compile on CPU; rbg's do not.
RBG_KEY = jax.random.key(0, impl='rbg')
TINY = dict(channels=(4, 8, 8), mbstd_group_size=2)


def _images(batch, size, seed=0):
  return np.random.default_rng(seed).random((batch, size, size, 3)).astype(np.float32)


def _numpy_minibatch_stddev(x, group_size):
  batch = x.shape[0]
  group = min(group_size, batch)
  num_groups = batch // group
  out = np.empty(x.shape[:3] + (1,), np.float64)
  for n in range(batch):
    members = x[n % num_groups::num_groups].astype(np.float64)  # Strided groups.
    out[n] = np.mean(np.sqrt(members.var(axis=0) + 1e-8))
  return np.concatenate([x, out], axis=-1)


@pytest.mark.parametrize('batch,group_size', [(8, 4), (6, 2), (3, 4), (4, 1)])
def test_minibatch_stddev_matches_numpy(batch, group_size):
  x = np.random.default_rng(1).standard_normal((batch, 3, 2, 5)).astype(np.float32)
  y = minibatch_stddev(x, group_size)
  assert y.shape == (batch, 3, 2, 6)
  np.testing.assert_allclose(y, _numpy_minibatch_stddev(x, group_size), rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_group_must_divide_batch():
  with pytest.raises(ConfigError, match='group size 4 .* must divide .* batch size 6'):
    minibatch_stddev(np.zeros((6, 2, 2, 3), np.float32), 4)


@pytest.mark.parametrize('size', [32, 64])
def test_discriminator_gives_one_logit_per_image(size):
  images = _images(4, size)
  disc = Discriminator(**TINY)
  variables = jax.jit(disc.init)(RBG_KEY, images)
  logits = jax.jit(disc.apply)(variables, images)
  assert logits.shape == (4,) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_discriminator_params_are_float32_with_known_logical_axes():
  disc = Discriminator(**TINY)
  boxed = jax.eval_shape(disc.init, RBG_KEY, _images(2, 32))['params']
  for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    assert isinstance(leaf, nn.Partitioned)
    assert leaf.value.dtype == jnp.float32
    assert set(leaf.names) <= LOGICAL_AXIS_NAMES, leaf.names


def test_discriminator_bad_batch_or_size_is_a_clear_error():
  disc = Discriminator(**TINY)
  with pytest.raises(ConfigError, match='must divide the discriminator batch size 3'):
    jax.eval_shape(disc.init, RBG_KEY, _images(3, 32))
  with pytest.raises(ConfigError, match='divisible by 8'):
    jax.eval_shape(disc.init, RBG_KEY, _images(2, 36))


def test_discriminator_gradient_wrt_params_is_finite():
  real, fake = _images(4, 32, seed=1), _images(4, 32, seed=2)
  disc = Discriminator(**TINY)
  params = nn.unbox(jax.jit(disc.init)(RBG_KEY, real))['params']

  @jax.jit
  def loss_grad(params):
    def loss(params):
      real_logits = disc.apply({'params': params}, real)
      fake_logits = disc.apply({'params': params}, fake)
      return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
    return jax.grad(loss)(params)

  grads = loss_grad(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('size', [32, 256])
def test_default_discriminator_shapes(size):
  disc = Discriminator()
  images = jax.ShapeDtypeStruct((4, size, size, 3), jnp.float32)
  variables = jax.eval_shape(disc.init, RBG_KEY, images)
  assert jax.eval_shape(disc.apply, variables, images).shape == (4,)
