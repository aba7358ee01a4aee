"""The Parti network: a text encoder and an image-token decoder (Parti §2.2).

Pre-LayerNorm blocks, a final LayerNorm on each stack's output, learned 1-D
positions for text and row + column positions for the image-token grid.
The decoder reads BOS-shifted image tokens and predicts logits over the codebook.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from parti_jax import layers
from parti_jax.config import TransformerConfig

Array = jax.Array


def padding_bias(encoder_tokens: Array) -> Array:
  """[batch, 1, 1, text_len] bias hiding padding (id 0) from attention."""
  return jnp.where(encoder_tokens > 0, 0.0, layers.NEG_INF)[:, None, None, :]


def _attention_kwargs(config: TransformerConfig):
  return dict(num_heads=config.num_heads, head_dim=config.attention_head_dim,
              dropout_rate=config.dropout_rate, dtype=config.compute_dtype)


class DecoderLayer(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, encoded: Optional[Array], cross_bias: Optional[Array],
               deterministic: bool, decode: bool = False) -> Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    h = layers.LayerNorm(dtype=dtype, name='pre_self_attention_norm')(x)
    h = layers.SelfAttention(**_attention_kwargs(cfg), cache_dtype=cfg.cache_dtype,
                             causal_query_blocks=cfg.causal_query_blocks,
                             name='self_attention')(h, None, deterministic, decode)
    x = layers.Residual(cfg.dropout_rate)(x, h, deterministic)
    h = layers.LayerNorm(dtype=dtype, name='pre_cross_attention_norm')(x)
    h = layers.CrossAttention(**_attention_kwargs(cfg), name='cross_attention')(
        h, encoded, cross_bias, deterministic, decode)
    x = layers.Residual(cfg.dropout_rate)(x, h, deterministic)
    h = layers.LayerNorm(dtype=dtype, name='pre_mlp_norm')(x)
    h = layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype,
                        name='mlp')(h, deterministic)
    return layers.Residual(cfg.dropout_rate)(x, h, deterministic)


class Encoder(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, tokens: Array, deterministic: bool) -> Array:
    cfg = self.config
    length = tokens.shape[1]
    if length > cfg.max_text_length:
      raise ValueError(f'text length {length} exceeds max_text_length {cfg.max_text_length}')
    x = layers.Embed(cfg.text_embedding_rows, cfg.emb_dim, 'vocab', cfg.compute_dtype,
                     name='token_embedding')(tokens)
    x = x + layers.Embed(cfg.max_text_length, cfg.emb_dim, 'length', cfg.compute_dtype,
                         name='position_embedding')(jnp.arange(length))[None]
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)
    bias = padding_bias(tokens)
    block_cls = layers.maybe_remat(layers.EncoderBlock, cfg.remat_policy, static_argnums=(3,))
    for i in range(cfg.num_encoder_layers):
      x = block_cls(mlp_dim=cfg.mlp_dim, mlp_activations=cfg.mlp_activations,
                    **_attention_kwargs(cfg), name=f'layer_{i}')(x, bias, deterministic)
    return layers.LayerNorm(dtype=cfg.compute_dtype, name='final_norm')(x)


class Decoder(nn.Module):
  config: TransformerConfig

  def _positions(self, length: int, decode: bool) -> Array:
    """Raster-order positions of the inputs; in decode steps, the cached step."""
    if decode:
      initialized = self.has_variable('cache', 'position')
      position = self.variable('cache', 'position', lambda: jnp.zeros((), jnp.int32))
      if initialized:
        step = position.value
        position.value = step + 1
        return step[None]
    return jnp.arange(length)

  @nn.compact
  def __call__(self, encoded: Optional[Array], encoder_tokens: Optional[Array],
               decoder_input_tokens: Array, deterministic: bool, decode: bool = False) -> Array:
    cfg = self.config
    length = decoder_input_tokens.shape[1]
    if length > cfg.image_length:
      raise ValueError(f'image length {length} exceeds the grid {cfg.image_grid}')
    dtype = cfg.compute_dtype
    x = layers.Embed(cfg.image_embedding_rows, cfg.emb_dim, 'image_vocab', dtype,
                     name='token_embedding')(decoder_input_tokens)
    positions = self._positions(length, decode)
    grid_w = cfg.image_grid[1]
    x = x + (layers.Embed(cfg.image_grid[0], cfg.emb_dim, 'length', dtype,
                          name='row_embedding')(positions // grid_w) +
             layers.Embed(grid_w, cfg.emb_dim, 'length', dtype,
                          name='column_embedding')(positions % grid_w))[None]
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)
    cross_bias = None if encoder_tokens is None else padding_bias(encoder_tokens)
    layer_cls = layers.maybe_remat(DecoderLayer, cfg.remat_policy, static_argnums=(4, 5))
    for i in range(cfg.num_decoder_layers):
      x = layer_cls(cfg, name=f'layer_{i}')(x, encoded, cross_bias, deterministic, decode)
    x = layers.LayerNorm(dtype=jnp.float32, name='final_norm')(x)
    # Logits in float32 (Parti §2.2).
    logits = layers.Dense((cfg.image_vocab_size,), ('embed', 'image_vocab'), dtype=jnp.float32,
                          name='logits')(x)
    return layers.constrain(logits, ('activation_batch', 'activation_length',
                                     'activation_vocab'))


class EncoderDecoder(nn.Module):
  """Text tokens -> logits over image tokens."""
  config: TransformerConfig

  def setup(self):
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False) -> Array:
    return self.encoder(encoder_input_tokens, not enable_dropout)

  def decode(self, encoded: Optional[Array], encoder_input_tokens: Optional[Array],
             decoder_input_tokens: Array, enable_dropout: bool = False,
             decode: bool = False) -> Array:
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens, not enable_dropout,
                        decode)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               enable_dropout: bool = False) -> Array:
    encoded = self.encode(encoder_input_tokens, enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, enable_dropout)
