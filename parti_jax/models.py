"""PartiModel: loss, scoring and cached decoding around the network.

Plays the role of t5x's EncoderDecoderModel: the network (transformer.py)
computes logits; this module turns a feature batch into a loss and metrics,
per-example log-likelihoods, and single-token decode steps over a KV cache.

A batch is the dict the data pipeline produces:
  encoder_input_tokens   int32 [B, text_len]   text ids, 0 is padding
  decoder_input_tokens   int32 [B, image_len]  BOS then image tokens, shifted right
  decoder_target_tokens  int32 [B, image_len]  image tokens
  decoder_loss_weights   float [B, image_len]  1 where the target counts
"""
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from parti_jax import layers
from parti_jax.config import TransformerConfig
from parti_jax.transformer import EncoderDecoder

Array = jax.Array
PyTree = Any
Batch = Mapping[str, Array]


def cross_entropy(logits: Array, targets: Array, z_loss: float = 0.0) -> Tuple[Array, Array]:
  """Per-token cross-entropy and z-loss (z_loss * log(Z)^2, as in PaLM / t5x)."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  # A one-hot product rather than a gather: its gradient needs no scatter, and
  # it works unchanged when the vocabulary axis is split over devices.
  one_hot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
  target_logits = jnp.sum(logits * one_hot, axis=-1)
  return log_z - target_logits, z_loss * jnp.square(log_z)


class PartiModel:
  """Wraps EncoderDecoder with the loss, scoring and decoding glue."""

  def __init__(self, config: TransformerConfig, z_loss: float = 0.0):
    self.config = config
    self.z_loss = z_loss
    self.module = EncoderDecoder(config)

  def dummy_batch(self, batch_size: int = 1) -> Dict[str, Array]:
    """A batch of the configured shapes, for initialization and shape checks."""
    cfg = self.config
    text = jnp.ones((batch_size, cfg.max_text_length), jnp.int32)
    image = jnp.zeros((batch_size, cfg.image_length), jnp.int32)
    return dict(encoder_input_tokens=text, decoder_input_tokens=image,
                decoder_target_tokens=image,
                decoder_loss_weights=jnp.ones(image.shape, jnp.float32))

  def init_variables(self, rng: Array, batch_size: int = 1) -> PyTree:
    """Parameters boxed with their logical axis names (nn.LogicallyPartitioned)."""
    batch = self.dummy_batch(batch_size)
    return self.module.init({'params': rng}, batch['encoder_input_tokens'],
                            batch['decoder_input_tokens'])

  def abstract_variables(self) -> PyTree:
    """Shapes and logical axes of the variables, allocating nothing."""
    return jax.eval_shape(self.init_variables, jax.random.key(0))

  def abstract_params(self) -> PyTree:
    """ShapeDtypeStructs of the (unboxed) parameters."""
    return nn.unbox(self.abstract_variables())['params']

  def param_logical_axes(self) -> PyTree:
    """PartitionSpecs of logical axis names, one per parameter."""
    return nn.get_partition_spec(self.abstract_variables())['params']

  def logits(self, params: PyTree, batch: Batch, dropout_rng: Optional[Array] = None) -> Array:
    rngs = None if dropout_rng is None else {'dropout': dropout_rng}
    return self.module.apply({'params': params}, batch['encoder_input_tokens'],
                             batch['decoder_input_tokens'], enable_dropout=rngs is not None,
                             rngs=rngs)

  def loss_fn(self, params: PyTree, batch: Batch,
              dropout_rng: Optional[Array] = None) -> Tuple[Array, Dict[str, Array]]:
    """Mean cross-entropy over weighted target tokens (+ z-loss) and metrics.

    Dropout is on exactly when `dropout_rng` is given.
    """
    logits = self.logits(params, batch, dropout_rng)
    targets = batch['decoder_target_tokens']
    weights = batch['decoder_loss_weights'].astype(jnp.float32)
    xent, z = cross_entropy(logits, targets, self.z_loss)
    num_tokens = jnp.sum(weights)
    denominator = jnp.maximum(num_tokens, 1.0)
    mean_xent = jnp.sum(xent * weights) / denominator
    mean_z = jnp.sum(z * weights) / denominator
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    metrics = {
        'loss': mean_xent + mean_z,
        'cross_entropy': mean_xent,
        'z_loss': mean_z,
        'accuracy': jnp.sum(correct * weights) / denominator,
        'num_tokens': num_tokens,
    }
    return metrics['loss'], metrics

  def score_batch(self, params: PyTree, batch: Batch) -> Array:
    """Log-likelihood of each example's weighted target tokens, float32 [B]."""
    logits = self.logits(params, batch)
    xent, _ = cross_entropy(logits, batch['decoder_target_tokens'])
    return -jnp.sum(xent * batch['decoder_loss_weights'], axis=-1)

  # Cached decoding: encode once, create the cache, then one token per step.

  def encode(self, params: PyTree, encoder_input_tokens: Array) -> Array:
    return self.module.apply({'params': params}, encoder_input_tokens,
                             method=EncoderDecoder.encode)

  def init_decode_cache(self, params: PyTree, encoded: Array,
                        encoder_input_tokens: Array) -> PyTree:
    """An empty self-attention cache of the full image length, with the
    encoder's keys/values already projected for cross-attention."""
    batch = encoded.shape[0]
    placeholder = jnp.zeros((batch, self.config.image_length), jnp.int32)
    _, variables = self.module.apply({'params': params}, encoded, encoder_input_tokens,
                                     placeholder, decode=True, mutable=['cache'],
                                     method=EncoderDecoder.decode)
    return variables['cache']

  def decode_step(self, params: PyTree, cache: PyTree, tokens: Array) -> Tuple[Array, PyTree]:
    """Feeds tokens [B] (the previous output, or BOS) and returns float32
    logits [B, image_vocab] for the next position and the updated cache."""
    logits, variables = self.module.apply({'params': params, 'cache': cache}, None, None,
                                          tokens[:, None], decode=True, mutable=['cache'],
                                          method=EncoderDecoder.decode)
    return logits[:, 0], variables['cache']

  @staticmethod
  def resize_decode_cache(cache: PyTree, length: int) -> PyTree:
    """The cache with its self-attention keys and values cut, or zero-padded,
    to `length` positions: a decode step attends to every position its cache
    holds, so a cache only as long as the positions written so far (plus
    some empty ones, which the step masks) gives the same logits for less
    memory read. Everything else in the cache is kept as it is."""
    def resize(path, leaf):
      if getattr(path[-1], 'key', None) not in layers.SELF_ATTENTION_CACHE:
        return leaf
      axis = layers.CACHE_LENGTH_AXIS
      if length <= leaf.shape[axis]:
        return jax.lax.slice_in_dim(leaf, 0, length, axis=axis)
      padding = [(0, 0)] * leaf.ndim
      padding[axis] = (0, length - leaf.shape[axis])
      return jnp.pad(leaf, padding)

    return jax.tree_util.tree_map_with_path(resize, cache)
