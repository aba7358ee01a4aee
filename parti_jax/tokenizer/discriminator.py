"""StyleGAN2-style residual discriminator for the ViT-VQGAN adversarial loss.

ViT-VQGAN (Yu et al. 2021, §3) trains its tokenizer against a StyleGAN
discriminator. This one follows StyleGAN2's residual architecture (Karras et
al. 2020): from-RGB 1x1 conv, residual downsampling blocks, a minibatch
standard-deviation feature, a final conv and two dense layers giving one logit
per image. It omits StyleGAN2's equalized learning rate and blurred resampling
(He initialization and plain 2x2 average pooling instead). Params are float32
and carry logical axis names that every partitioning preset leaves replicated:
the network is small, and its single-logit output dimension could not be split.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from parti_jax.errors import ConfigError

Array = jax.Array

CONV_AXES = ('conv_height', 'conv_width', 'conv_in', 'conv_out')
# Dense layers are 1x1 convolutions over flattened features: same names.
DENSE_AXES = ('conv_in', 'conv_out')
LEAKY_SLOPE = 0.2

# He initialization: keeps activation variance steady through leaky ReLUs.
_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')


def _conv(features: int, size: int, name: str, use_bias: bool = True) -> nn.Conv:
  return nn.Conv(features, (size, size), padding='SAME', use_bias=use_bias,
                 kernel_init=nn.with_logical_partitioning(_kernel_init, CONV_AXES),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('conv_out',)),
                 name=name)


def _dense(features: int, name: str) -> nn.Dense:
  return nn.Dense(features,
                  kernel_init=nn.with_logical_partitioning(_kernel_init, DENSE_AXES),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('conv_out',)),
                  name=name)


def _lrelu(x: Array) -> Array:
  return nn.leaky_relu(x, LEAKY_SLOPE)


def _downsample(x: Array) -> Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def minibatch_stddev(x: Array, group_size: int) -> Array:
  """Appends the minibatch standard deviation as one extra channel.

  Examples are split into groups of G = min(group_size, batch); as in
  StyleGAN2, group members are strided: example n belongs to group
  n mod (batch / G). Each group's std of every feature (over its G members),
  averaged over channels and pixels, becomes a constant feature map for the
  group's members, so the discriminator can tell a batch lacking variety.

  Args:
    x: [B, H, W, C] activations.
    group_size: wanted group size G; min(G, B) must divide B.

  Returns:
    [B, H, W, C + 1] float32.

  Raises:
    ConfigError: the group size does not divide the batch.
  """
  batch, height, width, _ = x.shape
  group = min(group_size, batch)
  if group < 1 or batch % group:
    raise ConfigError(f'minibatch-stddev group size {group} (from mbstd_group_size={group_size}) '
                      f'must divide the discriminator batch size {batch}')
  x = x.astype(jnp.float32)
  grouped = x.reshape((group, batch // group) + x.shape[1:])
  variance = jnp.var(grouped, axis=0)
  # The small constant keeps sqrt differentiable where a group has no spread.
  stddev = jnp.mean(jnp.sqrt(variance + 1e-8), axis=(1, 2, 3))  # [B / G]
  feature = jnp.tile(stddev, group)[:, None, None, None]
  feature = jnp.broadcast_to(feature, (batch, height, width, 1))
  return jnp.concatenate([x, feature], axis=-1)


class DownBlock(nn.Module):
  """Two 3x3 convs then 2x downsampling, plus a pooled 1x1-conv skip path."""
  features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    skip = _conv(self.features, 1, 'skip', use_bias=False)(_downsample(x))
    h = _lrelu(_conv(x.shape[-1], 3, 'conv0')(x))
    h = _lrelu(_conv(self.features, 3, 'conv1')(h))
    # Scaling the sum by 1/sqrt(2) keeps its variance that of each branch.
    return (_downsample(h) + skip) * (2.0**-0.5)


class Discriminator(nn.Module):
  """Maps images [B, H, W, 3] in [0, 1] to logits of shape [B] (real > 0).

  channels: output channels of each downsampling block; the image side must
    divide by 2**len(channels), and the final feature map (side / 2**len) is
    flattened, so large images want more blocks.
  mbstd_group_size: group size of the minibatch-stddev layer; min(group,
    batch) must divide the batch.
  """
  channels: Sequence[int] = (64, 128, 256, 256)
  mbstd_group_size: int = 4

  @nn.compact
  def __call__(self, images: Array) -> Array:
    self._check_size(images.shape)
    # StyleGAN works on images in [-1, 1].
    x = images.astype(jnp.float32) * 2.0 - 1.0
    x = _lrelu(_conv(self.channels[0], 1, 'from_rgb')(x))
    for i, features in enumerate(self.channels):
      x = DownBlock(features, name=f'block{i}')(x)
    x = minibatch_stddev(x, self.mbstd_group_size)
    x = _lrelu(_conv(self.channels[-1], 3, 'final_conv')(x))
    x = x.reshape(x.shape[0], -1)
    x = _lrelu(_dense(self.channels[-1], 'final_dense')(x))
    return _dense(1, 'logit')(x)[:, 0]

  def _check_size(self, shape: Sequence[int]) -> None:
    factor = 2**len(self.channels)
    if len(shape) != 4 or shape[1] % factor or shape[2] % factor:
      raise ConfigError(f'discriminator input {tuple(shape)} must be [B, H, W, C] with H and W '
                        f'divisible by {factor} (2**len(channels), channels={self.channels})')
