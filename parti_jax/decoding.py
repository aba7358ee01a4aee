"""Sampling image tokens from text: one jit-compiled loop over the KV cache.

The encoder runs once per prompt; `lax.scan` then feeds one token per step
through PartiModel.decode_step. Classifier-free guidance (Parti §2.4) runs the
conditional and unconditional branches as one batch of 2B rows, the second
half encoding the empty caption, and mixes their logits as
    uncond + scale * (cond - uncond);
scale 1 is plain conditional sampling (the unconditional rows are then not
computed at all) and scale 0 plain unconditional sampling.

Randomness is per row: row b draws position t from fold_in(keys[b], t), so a
prompt with a given key yields the same image alone or inside any batch.
Forced tokens (an image prefix for continuation, or any mask for editing a
region) replace the sample wherever `forced_mask` is set.
"""
import dataclasses
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from parti_jax import layers, partitioning
from parti_jax.errors import ConfigError
from parti_jax.models import PartiModel

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature 0 (or top_k 1) is greedy; top_k 0 and top_p 1 switch those
  filters off; cfg_scale is Parti's 1.2 unless set."""
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  cfg_scale: float = 1.2

  def __post_init__(self):
    if self.temperature < 0:
      raise ConfigError(f'temperature must be >= 0, got {self.temperature}')
    if self.top_k < 0:
      raise ConfigError(f'top_k must be >= 0 (0: off), got {self.top_k}')
    if not 0.0 < self.top_p <= 1.0:
      raise ConfigError(f'top_p must lie in (0, 1], got {self.top_p}')

  @property
  def greedy(self) -> bool:
    return self.temperature == 0 or self.top_k == 1


def top_k_filter(logits: Array, k: int) -> Array:
  """-inf for every logit below the k-th largest of its row (0: no filter)."""
  if not k:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: Array, p: float) -> Array:
  """Nucleus filter: keeps the most probable tokens whose probabilities, taken
  in decreasing order, first reach `p` (always at least the top one)."""
  if p >= 1.0:
    return logits
  probs = jax.nn.softmax(logits, axis=-1)
  ordered = jnp.sort(probs, axis=-1)[..., ::-1]
  # A token is kept if the mass strictly before it is still below p.
  before = jnp.cumsum(ordered, axis=-1) - ordered
  smallest_kept = jnp.min(jnp.where(before < p, ordered, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(probs < smallest_kept, -jnp.inf, logits)


def invert_cdf(weights: Array, u: Array) -> Array:
  """The first index whose cumulative weight exceeds u * total ([vocab]
  weights, u in [0, 1)): a draw from weights / total. An index of weight 0
  is never returned, since its cumulative weight equals its predecessor's."""
  cdf = jnp.cumsum(weights)
  index = jnp.sum(cdf <= u * cdf[-1])
  # Rounding can put u * total at the total itself: the last index of weight > 0.
  last = weights.shape[0] - 1 - jnp.argmax(weights[::-1] > 0)
  return jnp.minimum(index, last)


def draw_categorical(key: Array, logits: Array) -> Array:
  """One token from softmax(logits) [vocab], from a single uniform number.

  jax.random.categorical draws a Gumbel number per vocabulary entry instead:
  8192 random numbers and two logarithms each, about four times the cost of
  this whole draw on a CPU (1.2 ms against 0.3 ms a step for 8 rows).
  Filtered tokens (-inf) have weight 0 and are never drawn.
  """
  return invert_cdf(jnp.exp(logits - jnp.max(logits)), jax.random.uniform(key, ()))


def guide(cond: Array, uncond: Array, scale) -> Array:
  return uncond + scale * (cond - uncond)


def _unconditional_rows(text_tokens: Array, uncond_text_tokens: Optional[Array],
                        guided: bool) -> Array:
  """The empty caption repeated for every row (zeros when unguided: unused)."""
  if uncond_text_tokens is None:
    if guided:
      raise ConfigError('guidance needs the empty caption (uncond_text_tokens)')
    return jnp.zeros_like(text_tokens)
  return jnp.broadcast_to(jnp.asarray(uncond_text_tokens, jnp.int32), text_tokens.shape)


def cache_blocks(length: int, block: int) -> List[Tuple[int, int]]:
  """[start, end) position ranges of `block` positions (the last may be
  shorter) covering `length`; 0 or a block >= length: one range."""
  block = block or length
  return [(start, min(start + block, length)) for start in range(0, length, block)]


class Sampler:
  """Compiles the sampling loop of `model` once per shape, over `mesh`.

  attention_block: the loop runs in blocks of this many positions, and during
    a block the self-attention cache holds only the positions up to the
    block's end (model.resize_decode_cache), so a step reads on average
    (length + block) / 2 cached positions instead of length; the outputs are
    the same.
    Decoding reads every cached key and value at every step, so on memory-
    bound hardware (CPUs) this is most of a step's time. Each block compiles
    its own loop body: fewer, longer blocks compile faster. 0: one loop over
    the full-length cache.
  """

  def __init__(self, model: PartiModel, mesh: Mesh, rules: partitioning.Rules,
               attention_block: int = 64):
    if attention_block < 0:
      raise ConfigError(f'attention_block must be >= 0 (0: off), got {attention_block}')
    self.model = model
    self.mesh = mesh
    self.rules = rules
    self.attention_block = attention_block
    self._sample = jax.jit(self._sample_impl, static_argnames=('config', 'guided'))
    self._recompute = jax.jit(self._recompute_impl, static_argnames=('config', 'guided'))

  def __call__(self, params, text_tokens: Array, keys: Array, config: SamplingConfig,
               uncond_text_tokens: Optional[Array] = None,
               forced_tokens: Optional[Array] = None, forced_mask: Optional[Array] = None,
               guidance_scales: Optional[Array] = None) -> Array:
    """Image tokens int32 [B, image_length] for text tokens [B, text_length].

    Args:
      keys: typed PRNG keys [B], one per row (e.g. jax.random.key(seed) each).
      uncond_text_tokens: the empty caption [text_length] (data.features.
        unconditional_text_tokens); needed when guidance is on.
      forced_tokens, forced_mask: [B, image_length]; where the mask is set the
        output is the forced token.
      guidance_scales: [image_length] scale per position (a guidance
        schedule); default: config.cfg_scale everywhere.
    """
    batch = text_tokens.shape[0]
    length = self.model.config.image_length
    guided = guidance_scales is not None or config.cfg_scale != 1.0
    uncond = _unconditional_rows(text_tokens, uncond_text_tokens, guided)
    if keys.shape != (batch,):
      raise ConfigError(f'need one key per row: {batch} rows, keys of shape {keys.shape}')
    if guidance_scales is None:
      guidance_scales = jnp.full((length,), config.cfg_scale, jnp.float32)
    if forced_mask is None:
      forced_tokens = jnp.zeros((batch, length), jnp.int32)
      forced_mask = jnp.zeros((batch, length), bool)
    with partitioning.activate(self.mesh, self.rules):
      return self._sample(params, jnp.asarray(text_tokens, jnp.int32), uncond, keys,
                          jnp.asarray(forced_tokens, jnp.int32), jnp.asarray(forced_mask, bool),
                          jnp.asarray(guidance_scales, jnp.float32), config=config,
                          guided=guided)

  def _choose(self, logits: Array, keys: Array, position: Array,
              config: SamplingConfig) -> Array:
    if config.greedy:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    # Whole rows on every device: the filters and the draw scan the vocabulary,
    # which over a split vocabulary takes collectives inside the scan (8 ms a
    # step at bench-s over two CPU devices); gathering the rows is cheap.
    logits = layers.constrain(logits, ('activation_batch', None))
    logits = top_p_filter(top_k_filter(logits / config.temperature, config.top_k), config.top_p)
    draw = lambda key, row: draw_categorical(jax.random.fold_in(key, position), row)
    return jax.vmap(draw)(keys, logits).astype(jnp.int32)

  def _sample_impl(self, params, text_tokens: Array, uncond_tokens: Array, keys: Array,
                   forced_tokens: Array, forced_mask: Array, guidance_scales: Array,
                   config: SamplingConfig, guided: bool) -> Array:
    model = self.model
    batch = text_tokens.shape[0]
    rows = jnp.concatenate([text_tokens, uncond_tokens]) if guided else text_tokens
    cache = model.init_decode_cache(params, model.encode(params, rows), rows)

    def step(carry, position):
      cache, previous = carry
      inputs = jnp.concatenate([previous, previous]) if guided else previous
      logits, cache = model.decode_step(params, cache, inputs)
      if guided:
        logits = guide(logits[:batch], logits[batch:], guidance_scales[position])
      token = self._choose(logits, keys, position, config)
      token = jnp.where(forced_mask[:, position], forced_tokens[:, position], token)
      return (cache, token), token

    previous = jnp.full((batch,), model.config.bos_id, jnp.int32)
    tokens = []
    for start, end in cache_blocks(model.config.image_length, self.attention_block):
      cache = model.resize_decode_cache(cache, end)
      (cache, previous), block_tokens = jax.lax.scan(step, (cache, previous),
                                                     jnp.arange(start, end))
      tokens.append(block_tokens)
    return jnp.concatenate(tokens).T

  def without_cache(self, params, text_tokens: Array, keys: Array, config: SamplingConfig,
                    uncond_text_tokens: Optional[Array] = None) -> Array:
    """The same sampling with the cache disabled: every step runs the full
    forward pass over the whole sequence (what samplers without a KV cache
    do). For benchmarks and as a reference; output equals __call__'s."""
    guided = config.cfg_scale != 1.0
    uncond = _unconditional_rows(text_tokens, uncond_text_tokens, guided)
    with partitioning.activate(self.mesh, self.rules):
      return self._recompute(params, jnp.asarray(text_tokens, jnp.int32), uncond, keys,
                             config=config, guided=guided)

  def _recompute_impl(self, params, text_tokens: Array, uncond_tokens: Array, keys: Array,
                 config: SamplingConfig, guided: bool) -> Array:
    model = self.model
    batch, length = text_tokens.shape[0], model.config.image_length
    rows = jnp.concatenate([text_tokens, uncond_tokens]) if guided else text_tokens

    def step(position, tokens):
      inputs = jnp.concatenate(
          [jnp.full((batch, 1), model.config.bos_id, jnp.int32), tokens[:, :-1]], axis=1)
      if guided:
        inputs = jnp.concatenate([inputs, inputs])
      logits = model.logits(params, dict(encoder_input_tokens=rows, decoder_input_tokens=inputs))
      logits = jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
      if guided:
        logits = guide(logits[:batch], logits[batch:], config.cfg_scale)
      return tokens.at[:, position].set(self._choose(logits, keys, position, config))

    return jax.lax.fori_loop(0, length, step, jnp.zeros((batch, length), jnp.int32))
