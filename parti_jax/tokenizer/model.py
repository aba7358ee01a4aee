"""ViT-VQGAN: a ViT encoder over image patches, the factorized quantizer, and a
ViT decoder back to pixels (ViT-VQGAN §3.1).

Images are float32 in [0, 1], [B, H, W, 3]. Encoder and decoder are stacks of
the same pre-LayerNorm block as Parti's text encoder (layers.EncoderBlock), each
ending in a 2-layer MLP head with tanh in the middle, as the paper describes.
"""
from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from parti_jax import layers
from parti_jax.tokenizer import losses
from parti_jax.tokenizer.config import VitVqganConfig
from parti_jax.tokenizer.quantizer import FactorizedQuantizer

Array = jax.Array


def patchify(images: Array, patch: int) -> Array:
  """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in raster order."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: Array, patch: int, channels: int) -> Array:
  """Inverse of patchify for a square grid."""
  b, n, _ = patches.shape
  side = int(round(n**0.5))
  x = patches.reshape(b, side, side, patch, patch, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, side * patch, side * patch, channels)


class _VitStack(nn.Module):
  """Position embeddings, pre-LN blocks, final norm and the tanh MLP head."""
  num_layers: int
  dim: int
  heads: int
  mlp_dim: int
  num_tokens: int
  out_features: int
  out_axis: str
  dropout_rate: float
  dtype: jnp.dtype
  remat_policy: str

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    x = x + layers.Embed(self.num_tokens, self.dim, 'length', self.dtype,
                         embedding_init=nn.initializers.normal(0.02),
                         name='position_embedding')(jnp.arange(self.num_tokens))[None]
    x = layers.constrain(x, layers.BATCH_LENGTH_EMBED)
    block_cls = layers.maybe_remat(layers.EncoderBlock, self.remat_policy, static_argnums=(3,))
    for i in range(self.num_layers):
      x = block_cls(num_heads=self.heads, head_dim=self.dim // self.heads, mlp_dim=self.mlp_dim,
                    dropout_rate=self.dropout_rate, dtype=self.dtype,
                    name=f'layer_{i}')(x, None, deterministic)
    x = layers.LayerNorm(dtype=self.dtype, name='final_norm')(x)
    x = jnp.tanh(layers.Dense((self.mlp_dim,), ('embed', 'mlp'), dtype=self.dtype,
                              name='head_hidden')(x))
    return layers.Dense((self.out_features,), ('mlp', self.out_axis), dtype=self.dtype,
                        name='head_out')(x).astype(jnp.float32)


class VitEncoder(nn.Module):
  config: VitVqganConfig

  @nn.compact
  def __call__(self, images: Array, deterministic: bool) -> Array:
    cfg = self.config
    # Pixels centred on zero for the patch projection.
    patches = patchify(images.astype(jnp.float32) * 2.0 - 1.0, cfg.patch_size)
    x = layers.Dense((cfg.encoder_dim,), ('pixels', 'embed'), dtype=cfg.compute_dtype,
                     name='patch_embedding')(patches)
    return _VitStack(cfg.encoder_layers, cfg.encoder_dim, cfg.encoder_heads,
                     cfg.encoder_mlp_dim, cfg.num_tokens, cfg.encoder_dim, 'embed',
                     cfg.dropout_rate, cfg.compute_dtype, cfg.remat_policy,
                     name='stack')(x, deterministic)


class VitDecoder(nn.Module):
  config: VitVqganConfig

  @nn.compact
  def __call__(self, latents: Array, deterministic: bool) -> Dict[str, Array]:
    """Unit latents [B, N, lookup] -> {'image': [B, H, W, 3] float32, plus
    'mu_logits' and 'log_scale' for the logit-Laplace head}."""
    cfg = self.config
    # The "project back up" of the factorized codes belongs to the decoder, so
    # a larger fine-tuned decoder (Parti's stage 2) brings its own.
    x = layers.Dense((cfg.decoder_dim,), ('lookup', 'embed'), dtype=cfg.compute_dtype,
                     name='up_projection')(latents)
    patch_values = cfg.patch_size**2 * cfg.output_channels
    out = _VitStack(cfg.decoder_layers, cfg.decoder_dim, cfg.decoder_heads,
                    cfg.decoder_mlp_dim, cfg.num_tokens, patch_values, 'pixels',
                    cfg.dropout_rate, cfg.compute_dtype, cfg.remat_policy,
                    name='stack')(x, deterministic)
    pixels = unpatchify(out, cfg.patch_size, cfg.output_channels)
    if cfg.output_head == 'linear':
      return {'image': pixels}
    mu, log_scale = pixels[..., :3], pixels[..., 3:]
    return {'image': losses.logit_laplace_mean(mu), 'mu_logits': mu, 'log_scale': log_scale}


class VitVqgan(nn.Module):
  config: VitVqganConfig

  def setup(self):
    cfg = self.config
    self.encoder = VitEncoder(cfg)
    self.quantizer = FactorizedQuantizer(cfg.codebook_size, cfg.lookup_dim, cfg.commitment_beta)
    self.decoder = VitDecoder(cfg)

  def encode(self, images: Array, deterministic: bool = True) -> Tuple[Array, Array, Dict]:
    """Images -> (codes [B, N] int32, straight-through latents, quantizer aux)."""
    indices, latents, aux = self.quantizer(self.encoder(images, deterministic))
    return indices.astype(jnp.int32), latents, aux

  def decode_codes(self, indices: Array, deterministic: bool = True) -> Dict[str, Array]:
    return self.decoder(self.quantizer.codes_to_latents(indices), deterministic)

  def __call__(self, images: Array, deterministic: bool = True
               ) -> Tuple[Dict[str, Array], Array, Dict[str, Array]]:
    indices, latents, aux = self.encode(images, deterministic)
    return self.decoder(latents, deterministic), indices, aux
