"""Layers against direct numpy computations."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parti_jax import layers


def test_layer_norm_matches_numpy_and_stays_float32():
  x = np.random.default_rng(0).standard_normal((3, 5, 16)).astype(np.float32)
  module = layers.LayerNorm(dtype=jnp.bfloat16)
  variables = module.init(jax.random.key(0), x)
  y = module.apply(variables, x)
  expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), expected, rtol=2e-2, atol=2e-2)
  y32 = layers.LayerNorm().apply(variables, x)
  np.testing.assert_allclose(y32, expected, rtol=1e-5, atol=1e-5)


def _numpy_attention(x, params, bias):
  q = np.einsum('bld,dhk->blhk', x, params['query']['kernel']) / 2.0  # 1/sqrt(head_dim)
  k = np.einsum('bld,dhk->blhk', x, params['key']['kernel'])
  v = np.einsum('bld,dhk->blhk', x, params['value']['kernel'])
  logits = np.einsum('bqhk,bshk->bhqs', q, k) + bias
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  mixed = np.einsum('bhqs,bshk->bqhk', w, v)
  return np.einsum('bqhk,hkd->bqd', mixed, params['out']['kernel'])


def test_attention_matches_numpy_reference():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 16)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  bias = np.where(mask, 0.0, layers.NEG_INF)[:, None, None, :].astype(np.float32)
  module = layers.SelfAttention(num_heads=2, head_dim=4)
  variables = nn.unbox(module.init(jax.random.key(0), x, bias, True))
  out = module.apply(variables, x, bias, True)
  np.testing.assert_allclose(out, _numpy_attention(x, variables['params'], bias), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize('blocks', [1, 3, 7, 9])
def test_causal_attention_in_query_blocks_matches_numpy(blocks):
  """Blocks of queries that skip the keys after them (7 positions in 3 blocks
  of 3, 3 and 1; more blocks than positions) give the masked square's output
  and gradients."""
  x = np.random.default_rng(2).standard_normal((2, 7, 16)).astype(np.float32)
  causal = np.where(np.tril(np.ones((7, 7), bool)), 0.0, layers.NEG_INF).astype(np.float32)
  module = layers.SelfAttention(num_heads=2, head_dim=4, causal_query_blocks=blocks)
  variables = nn.unbox(module.init(jax.random.key(0), x, None, True))
  np.testing.assert_allclose(module.apply(variables, x, None, True),
                             _numpy_attention(x, variables['params'], causal), rtol=1e-5,
                             atol=1e-5)

  def loss(variables, module):
    return jnp.sum(jnp.sin(module.apply(variables, x, None, True)))

  one_block = layers.SelfAttention(num_heads=2, head_dim=4, causal_query_blocks=1)
  gradients = jax.jit(jax.grad(loss), static_argnums=1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               gradients(variables, module), gradients(variables, one_block))
  with pytest.raises(ValueError, match='causal attention builds its own mask'):
    module.apply(variables, x, causal[None, None], True)


def test_every_parameter_has_logical_axes_for_each_dimension():
  from tests.conftest import small_config  # pylint: disable=import-outside-toplevel
  from parti_jax.models import PartiModel  # pylint: disable=import-outside-toplevel
  abstract = PartiModel(small_config()).abstract_variables()['params']
  boxed = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert boxed
  for leaf in boxed:
    assert isinstance(leaf, nn.LogicallyPartitioned)
    assert len(leaf.names) == len(leaf.value.shape)
