"""Reconstruction and adversarial losses of the ViT-VQGAN tokenizer.

ViT-VQGAN (Yu et al. 2021, §3) trains with
  L_VQ + 0.1 L_adversarial + 0.1 L_perceptual + 0.1 L_logit-laplace + 1.0 L_2.
This module holds the pixel losses (L_2, logit-Laplace), the StyleGAN GAN
losses on discriminator logits and the R1 gradient penalty; the perceptual
loss lives in perceptual.py. Images are float32 in [0, 1], shape [B, H, W, 3].
Every loss returns a float32 scalar.
"""
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def l2_loss(recon: Array, target: Array) -> Array:
  """Mean squared error over every pixel and channel."""
  return jnp.mean(jnp.square(recon.astype(jnp.float32) - target.astype(jnp.float32)))


def _check_eps(eps: float) -> None:
  if not 0.0 < eps < 0.5:
    raise ValueError(f'logit-Laplace eps must lie in (0, 0.5), got {eps}')


def logit_laplace_loss(mu_logits: Array, log_scale: Array, target: Array,
                       eps: float = 0.1) -> Array:
  """Negative log-likelihood of the logit-Laplace distribution (DALL-E §A.3).

  Parameterisation: the decoder emits, per pixel and channel, a location
  `mu_logits` (in logit space) and `log_scale` = log b, so b = exp(log_scale)
  is positive without a constraint; a decoder head with 6 output channels
  splits them as [mu (3) | log b (3)]. Pixels x in [0, 1] are squeezed to
  x' = (1 - 2 eps) x + eps in (eps, 1 - eps), keeping logit(x') finite, and x'
  has the density

    p(x' | mu, b) = 1 / (2 b x' (1 - x')) exp(-|logit(x') - mu| / b),

  that is a Laplace density on logit(x') times the Jacobian of the logit.

  Args:
    mu_logits: [B, H, W, C] locations in logit space.
    log_scale: [B, H, W, C] log of the Laplace scale b.
    target: [B, H, W, C] pixels in [0, 1].
    eps: squeeze margin, in (0, 0.5).

  Returns:
    -log p(x'), averaged over batch, pixels and channels.
  """
  _check_eps(eps)
  x = (1.0 - 2.0 * eps) * target.astype(jnp.float32) + eps
  logit_x = jnp.log(x) - jnp.log1p(-x)
  mu = mu_logits.astype(jnp.float32)
  log_b = log_scale.astype(jnp.float32)
  nll = (jnp.abs(logit_x - mu) * jnp.exp(-log_b) + log_b + jnp.log(2.0)
         + jnp.log(x) + jnp.log1p(-x))
  return jnp.mean(nll)


def logit_laplace_mean(mu_logits: Array, eps: float = 0.1) -> Array:
  """Maps logit-space locations back to a [0, 1] image.

  sigmoid(mu) lies in the squeezed range (eps, 1 - eps) at best; inverting the
  squeeze can leave [0, 1] slightly, hence the clip.
  """
  _check_eps(eps)
  x = jax.nn.sigmoid(mu_logits.astype(jnp.float32))
  return jnp.clip((x - eps) / (1.0 - 2.0 * eps), 0.0, 1.0)


def generator_loss_nonsaturating(fake_logits: Array) -> Array:
  """-log sigmoid(D(fake)) = softplus(-D(fake)), averaged over the batch."""
  return jnp.mean(jax.nn.softplus(-fake_logits.astype(jnp.float32)))


def discriminator_loss(real_logits: Array, fake_logits: Array) -> Array:
  """Logistic loss: softplus(-D(real)) + softplus(D(fake)), each averaged."""
  real = jnp.mean(jax.nn.softplus(-real_logits.astype(jnp.float32)))
  fake = jnp.mean(jax.nn.softplus(fake_logits.astype(jnp.float32)))
  return real + fake


def r1_penalty(disc_apply: Callable[[Array], Array], real_images: Array) -> Array:
  """R1 gradient penalty (Mescheder et al. 2018): E_x ||grad_x D(x)||^2.

  One backward pass of the batch's summed logits gives every example's input
  gradient at once, exactly so when examples do not interact. A
  minibatch-stddev layer couples the examples of a group slightly; this
  function then differentiates the summed logits as StyleGAN2 does.
  The caller scales the result by gamma / 2.

  Args:
    disc_apply: images [B, H, W, C] -> logits [B] or [B, 1], e.g.
      `lambda x: disc.apply(variables, x)`.
    real_images: [B, H, W, C] real images.

  Returns:
    The squared gradient norm, averaged over the batch.
  """
  def summed_logits(images):
    return jnp.sum(disc_apply(images).astype(jnp.float32))

  grads = jax.grad(summed_logits)(real_images.astype(jnp.float32))
  per_example = jnp.sum(jnp.square(grads).reshape(grads.shape[0], -1), axis=1)
  return jnp.mean(per_example)
