"""Factorized, l2-normalized vector quantizer (ViT-VQGAN §3.2).

Encoder outputs are projected to a low-dimensional lookup space (32-d by
default) and l2-normalized; the codebook entries are l2-normalized too, so the
nearest code is the one of highest cosine similarity. The chosen code passes
its gradient straight through to the encoder and is projected back up for the
decoder. Low lookup dimension and normalization are what keep most codes in use
(ViT-VQGAN Table 3).
"""
from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from parti_jax import layers

Array = jax.Array


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-6) -> Array:
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True) + eps)


def code_statistics(indices: Array, codebook_size: int) -> Dict[str, Array]:
  """Usage (share of codes chosen at least once) and perplexity (exp of the
  entropy of the code histogram) of a batch of code indices."""
  counts = jnp.bincount(indices.reshape(-1), length=codebook_size)
  probs = counts / jnp.maximum(jnp.sum(counts), 1)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1)), 0))
  return {'codebook_usage': jnp.mean(counts > 0), 'perplexity': jnp.exp(entropy)}


class FactorizedQuantizer(nn.Module):
  codebook_size: int
  lookup_dim: int
  commitment_beta: float = 0.25

  def setup(self):
    self.down = layers.Dense((self.lookup_dim,), ('embed', 'lookup'), name='down')
    self.codebook = self.param(
        'codebook', nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                 ('codebook', 'lookup')),
        (self.codebook_size, self.lookup_dim), jnp.float32)

  def normalized_codebook(self) -> Array:
    return l2_normalize(self.codebook)

  def lookup(self, z: Array) -> Array:
    """[..., embed] encoder output -> [..., lookup] unit vectors."""
    return l2_normalize(self.down(z).astype(jnp.float32))

  def nearest(self, latents: Array) -> Array:
    """Index of the cosine-nearest code for unit `latents` [..., lookup]."""
    return jnp.argmax(jnp.einsum('...d,kd->...k', latents, self.normalized_codebook()), axis=-1)

  def codes_to_latents(self, indices: Array) -> Array:
    return jnp.take(self.normalized_codebook(), indices, axis=0)

  def __call__(self, z: Array) -> Tuple[Array, Array, Dict[str, Array]]:
    """Quantizes encoder outputs [B, N, embed].

    Returns indices [B, N], straight-through quantized latents [B, N, lookup]
    (the decoder's input), and the losses and statistics: 'vq_loss' is the
    codebook term plus beta times the commitment term.
    """
    latents = self.lookup(z)
    indices = self.nearest(latents)
    quantized = self.codes_to_latents(indices)
    codebook_loss = jnp.mean(jnp.sum(jnp.square(jax.lax.stop_gradient(latents) - quantized), -1))
    commitment = jnp.mean(jnp.sum(jnp.square(latents - jax.lax.stop_gradient(quantized)), -1))
    straight_through = latents + jax.lax.stop_gradient(quantized - latents)
    aux = dict(code_statistics(indices, self.codebook_size),
               vq_loss=codebook_loss + self.commitment_beta * commitment,
               commitment_loss=commitment, latents=latents)
    return indices, straight_through, aux


def restart_dead_codes(codebook: Array, steps_unused: Array, indices: Array, latents: Array,
                       rng: Array, restart_after: int) -> Tuple[Array, Array, Array]:
  """Replaces codes unused for `restart_after` steps with recent encoder outputs.

  steps_unused: int32 [K], steps since each code was last chosen.
  indices, latents: this step's codes [B, N] and unit encoder latents [B, N, lookup].
  Each dead code takes a latent of the batch drawn with probability
  proportional to its quantization error (1 - cosine to its code), so codes
  return where the codebook serves the encoder worst rather than to the most
  common latents (on mostly-blank images, the background). Returns the new
  codebook, counters and number restarted.
  """
  used = jnp.zeros(codebook.shape[0], bool).at[indices.reshape(-1)].set(True)
  steps_unused = jnp.where(used, 0, steps_unused + 1)
  dead = steps_unused >= restart_after
  flat = latents.reshape(-1, latents.shape[-1])
  assigned = l2_normalize(codebook)[indices.reshape(-1)]
  error = jnp.maximum(1.0 - jnp.sum(flat * assigned, axis=-1), 0.0)
  picks = jax.random.categorical(rng, jnp.log(error + 1e-6), shape=(codebook.shape[0],))
  codebook = jnp.where(dead[:, None], flat[picks].astype(codebook.dtype), codebook)
  return codebook, jnp.where(dead, 0, steps_unused), jnp.sum(dead)
