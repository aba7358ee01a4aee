"""Building blocks of the Parti transformer: dense, embeddings, layer norm,
attention with a KV cache, and the MLP.

Every parameter is created with logical axis names (nn.with_logical_partitioning)
and the main activations are constrained with activation_* names, so the same
code runs replicated on one CPU or sharded over a TPU pod; partitioning.py maps
the names onto mesh axes.
"""
import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# Added to attention logits of masked positions. Finite, so that a query with
# every key masked (an all-padding caption) yields a uniform average instead of
# NaN.
NEG_INF = -1e9

BATCH_LENGTH_EMBED = ('activation_batch', 'activation_length', 'activation_embed')
BATCH_LENGTH_HEADS_KV = ('activation_batch', 'activation_length', 'activation_heads',
                         'activation_kv')

default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def constrain(x: Array, logical_axes: Sequence[Optional[str]]) -> Array:
  return nn.with_logical_constraint(x, tuple(logical_axes))


class Dense(nn.Module):
  """x[..., *in_features] @ kernel -> [..., *features], no bias (as T5).

  `kernel_axes` names the kernel's in-feature then out-feature dimensions.
  """
  features: Tuple[int, ...]
  kernel_axes: Tuple[str, ...]
  num_contracting_dims: int = 1
  dtype: Dtype = jnp.float32
  kernel_init: Callable = default_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n = self.num_contracting_dims
    kernel_shape = tuple(x.shape[-n:]) + tuple(self.features)

    def init(key, shape, dtype):
      # Initialize as a 2-D matrix so variance scaling sees the true fan-in.
      matrix = (math.prod(shape[:n]), math.prod(shape[n:]))
      return self.kernel_init(key, matrix, dtype).reshape(shape)

    kernel = self.param('kernel', nn.with_logical_partitioning(init, self.kernel_axes),
                        kernel_shape, jnp.float32)
    # As one 2-D matmul: XLA's CPU backend runs the backward pass of a
    # contraction over several leading dimensions about twice as slowly.
    # Accumulating in float32 is what the hardware does anyway (TPU MXU, CPU
    # AMX); asking for it lets XLA's CPU backend use its fast bfloat16 kernels.
    lead = x.shape[:-n]
    y = jnp.dot(x.astype(self.dtype).reshape(math.prod(lead), math.prod(x.shape[-n:])),
                kernel.astype(self.dtype).reshape(math.prod(kernel_shape[:n]), -1),
                preferred_element_type=jnp.float32)
    return y.astype(self.dtype).reshape(lead + tuple(self.features))


class Embed(nn.Module):
  """Lookup table whose rows are split on `vocab_axis`."""
  num_embeddings: int
  features: int
  vocab_axis: str
  dtype: Dtype = jnp.float32
  embedding_init: Callable = nn.initializers.normal(stddev=1.0)

  @nn.compact
  def __call__(self, ids: Array) -> Array:
    table = self.param('embedding',
                       nn.with_logical_partitioning(self.embedding_init, (self.vocab_axis, 'embed')),
                       (self.num_embeddings, self.features), jnp.float32)
    return jnp.take(table, ids, axis=0).astype(self.dtype)


class LayerNorm(nn.Module):
  """Layer norm computed in float32 whatever the matmul dtype."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (features,), jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                      (features,), jnp.float32)
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype)


class MlpBlock(nn.Module):
  """Position-wise feed-forward block; several activations make it gated."""
  mlp_dim: int
  activations: Sequence[str] = ('gelu',)
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    hidden = None
    for i, name in enumerate(self.activations):
      h = Dense((self.mlp_dim,), ('embed', 'mlp'), dtype=self.dtype, name=f'wi_{i}')(x)
      h = h if name == 'linear' else getattr(nn, name)(h)
      hidden = h if hidden is None else hidden * h
    hidden = constrain(hidden, ('activation_batch', 'activation_length', 'activation_mlp'))
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
    out = Dense((x.shape[-1],), ('mlp', 'embed'), dtype=self.dtype, name='wo')(hidden)
    return constrain(out, BATCH_LENGTH_EMBED)


class _Attention(nn.Module):
  """Multi-head dot-product attention: projections and the attention core."""
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  def setup(self):
    def projection(name):
      return Dense((self.num_heads, self.head_dim), ('embed', 'heads', 'kv'), dtype=self.dtype,
                   name=name)

    self.query = projection('query')
    self.key = projection('key')
    self.value = projection('value')

  def project_kv(self, inputs: Array) -> Tuple[Array, Array]:
    """Keys and values of `inputs`, heads-major: [batch, heads, length, kv].

    Heads-major because batched matmuls with leading batch dimensions are
    markedly faster on XLA's CPU backend than einsums over interleaved ones,
    and because a decode cache kept in this layout is read in place at every
    step instead of being transposed (copied whole) each time.
    """
    k = constrain(self.key(inputs), BATCH_LENGTH_HEADS_KV)
    v = constrain(self.value(inputs), BATCH_LENGTH_HEADS_KV)
    return k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

  def attend(self, inputs_q: Array, key: Array, value: Array, bias: Optional[Array],
             deterministic: bool, causal_query_blocks: int = 0) -> Array:
    """Attends queries from `inputs_q` to heads-major keys and values
    ([batch, heads, kv_length, kv], as project_kv makes them).

    bias: float32, broadcastable to [batch, heads, q_length, kv_length], or
      None for no mask.
    causal_query_blocks: 0, or causal self-attention (query i sees keys up to
      i; `bias` must be None) computed in that many blocks of queries, each
      reading only the keys up to its end: with n blocks, (n - 1) / 2n of the
      full [q, kv] work (3/8 at 4) is masked and never computed.
    """
    query = constrain(self.query(inputs_q), BATCH_LENGTH_HEADS_KV)
    query = (query * jnp.asarray(self.head_dim**-0.5, self.dtype)).transpose(0, 2, 1, 3)
    if causal_query_blocks:
      if bias is not None:
        raise ValueError('causal attention builds its own mask; got a bias as well')
      mixed = jnp.concatenate([
          self._mix(query[:, :, start:end], key[:, :, :end], value[:, :, :end],
                    causal_bias(start, end), deterministic)
          for start, end in query_blocks(query.shape[2], causal_query_blocks)], axis=2)
    else:
      mixed = self._mix(query, key, value, bias, deterministic)
    out = constrain(mixed.transpose(0, 2, 1, 3), BATCH_LENGTH_HEADS_KV)
    out = Dense((inputs_q.shape[-1],), ('heads', 'kv', 'embed'), num_contracting_dims=2,
                dtype=self.dtype, name='out')(out)
    return constrain(out, BATCH_LENGTH_EMBED)

  def _mix(self, query: Array, key: Array, value: Array, bias: Optional[Array],
           deterministic: bool) -> Array:
    """Softmax(query . key + bias) . value, heads-major [batch, heads, q, kv].

    The softmax is normalized after the value matmul, as flash attention does:
    dividing the [q, kv] output instead of the [q, kv_length] weights saves a
    pass over the largest array (the forward pass of parti_tiny's 256-token
    self-attention ran 3x faster on CPU). Dropout on the unnormalized weights
    is the same as on the normalized ones: both scale rows elementwise.
    """
    logits = jnp.einsum('bhqd,bhkd->bhqk', query, key, preferred_element_type=jnp.float32)
    if bias is not None:
      logits = logits + bias
    weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    total = weights.sum(axis=-1, keepdims=True)
    weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
    mixed = jnp.einsum('bhqk,bhkd->bhqd', weights.astype(self.dtype), value,
                       preferred_element_type=jnp.float32)
    return (mixed / total).astype(self.dtype)


def query_blocks(length: int, count: int) -> Sequence[Tuple[int, int]]:
  """(start, end) of `count` near-equal blocks of positions, empty ones left out."""
  ends = [-(-length * (i + 1) // count) for i in range(count)]
  return [(start, end) for start, end in zip([0] + ends[:-1], ends) if end > start]


def causal_bias(query_start: int, query_end: int) -> Array:
  """[1, 1, q, query_end] bias letting query positions [query_start, query_end)
  see the keys at or before them."""
  queries = jnp.arange(query_start, query_end)[:, None]
  return jnp.where(jnp.arange(query_end)[None, :] <= queries, 0.0, NEG_INF)[None, None]


# The decode cache of SelfAttention: keys and values [batch, heads, length, kv].
SELF_ATTENTION_CACHE = ('cached_key', 'cached_value')
CACHE_LENGTH_AXIS = 2


class SelfAttention(_Attention):
  """Self-attention; with decode=True it keeps a KV cache in the 'cache' collection.

  Decoding follows t5x: a first call with the full-length input creates an
  empty cache (its output is meaningless); each later call takes one token,
  writes its key and value at `cache_index` and attends causally to the cache.
  The cache holds `cache_dtype` (default: `dtype`).

  causal_query_blocks: 0 for attention masked by the `bias` argument alone
    (the text encoder's), or causal attention computed in that many blocks of
    queries (see `attend`); `bias` is then None.
  """
  cache_dtype: Optional[Dtype] = None
  causal_query_blocks: int = 0

  @nn.compact
  def __call__(self, x: Array, bias: Optional[Array], deterministic: bool,
               decode: bool = False) -> Array:
    key, value = self.project_kv(x)
    if decode:
      key, value = (a.astype(self.cache_dtype or self.dtype) for a in (key, value))
      initialized = self.has_variable('cache', 'cached_key')
      cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
      index = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
      if initialized:
        if x.shape[1] != 1:
          raise ValueError(f'decode steps take one token at a time, got length {x.shape[1]}')
        i = index.value
        cached_key.value = jax.lax.dynamic_update_slice_in_dim(cached_key.value, key, i,
                                                               axis=CACHE_LENGTH_AXIS)
        cached_value.value = jax.lax.dynamic_update_slice_in_dim(cached_value.value, value, i,
                                                                 axis=CACHE_LENGTH_AXIS)
        index.value = i + 1
        key, value = cached_key.value, cached_value.value
        # Only positions written so far (<= i) are visible.
        bias = jnp.where(jnp.arange(key.shape[CACHE_LENGTH_AXIS]) <= i, 0.0,
                         NEG_INF)[None, None, None, :]
        return self.attend(x, key, value, bias, deterministic)
    return self.attend(x, key, value, bias, deterministic, self.causal_query_blocks)


class CrossAttention(_Attention):
  """Attention from the decoder to the encoded text.

  In decode mode the projected encoder keys/values and the padding bias are
  computed once, when the cache is created, and read back at every step.
  """

  @nn.compact
  def __call__(self, x: Array, encoded: Optional[Array], bias: Optional[Array],
               deterministic: bool, decode: bool = False) -> Array:
    if decode:
      kv = self.variable('cache', 'cross_key_value', lambda: self.project_kv(encoded))
      cached_bias = self.variable('cache', 'cross_bias', lambda: bias)
      (key, value), bias = kv.value, cached_bias.value
    else:
      key, value = self.project_kv(encoded)
    return self.attend(x, key, value, bias, deterministic)


class Residual(nn.Module):
  """Dropout on a residual branch, added to the stream."""
  rate: float

  @nn.compact
  def __call__(self, x: Array, branch: Array, deterministic: bool) -> Array:
    out = x + nn.Dropout(self.rate)(branch, deterministic=deterministic)
    return constrain(out, BATCH_LENGTH_EMBED)


class EncoderBlock(nn.Module):
  """Pre-LayerNorm block of bidirectional self-attention and MLP: Parti's text
  encoder layer and the ViT-VQGAN tokenizer's block."""
  num_heads: int
  head_dim: int
  mlp_dim: int
  mlp_activations: Sequence[str] = ('gelu',)
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, bias: Optional[Array], deterministic: bool) -> Array:
    h = LayerNorm(dtype=self.dtype, name='pre_attention_norm')(x)
    h = SelfAttention(self.num_heads, self.head_dim, self.dropout_rate, self.dtype,
                      name='attention')(h, bias, deterministic)
    x = Residual(self.dropout_rate)(x, h, deterministic)
    h = LayerNorm(dtype=self.dtype, name='pre_mlp_norm')(x)
    h = MlpBlock(self.mlp_dim, self.mlp_activations, self.dropout_rate, self.dtype,
                 name='mlp')(h, deterministic)
    return Residual(self.dropout_rate)(x, h, deterministic)


def maybe_remat(block_cls, policy: str, static_argnums: Tuple[int, ...]):
  """`block_cls` rematerialized when policy is 'full'; `static_argnums` (the
  module itself is 0) are the block's Python-bool arguments."""
  if policy == 'full':
    return nn.remat(block_cls, static_argnums=static_argnums)
  return block_cls
