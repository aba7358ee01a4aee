"""ImageTokenizer: a trained ViT-VQGAN as images <-> token ids.

  tokenizer = ImageTokenizer.from_checkpoint('runs/tok/checkpoints')
  ids = tokenizer.encode(images)     # uint8 or float [B, H, W, 3] -> int32 [B, h*w]
  images = tokenizer.decode(ids)     # -> float32 [B, H, W, 3] in [0, 1]

Checkpoints written by parti_jax.tokenizer.train carry their model config, so
loading needs nothing else; only the generator's parameters are read.
"""
import dataclasses
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from parti_jax.checkpoints import restore_for_inference
from parti_jax.tokenizer.config import VitVqganConfig
from parti_jax.tokenizer.model import VitVqgan

PyTree = Any
CONFIG_KEY = 'tokenizer_config'


def config_to_json(config: VitVqganConfig) -> dict:
  return dataclasses.asdict(config)


def config_from_json(values: dict) -> VitVqganConfig:
  return VitVqganConfig(**values)


def load_generator(checkpoint_dir: str,
                   step: Optional[int] = None) -> Tuple[VitVqganConfig, PyTree]:
  """The config and generator parameters (on this process's first device) of a checkpoint."""

  def abstract_generator(values: dict) -> PyTree:
    config = config_from_json(values)
    size = config.image_size
    return jax.eval_shape(lambda: nn.unbox(VitVqgan(config).init(
        jax.random.key(0), jnp.zeros((1, size, size, 3)))))['params']

  values, params = restore_for_inference(checkpoint_dir, 'generator', CONFIG_KEY, 'tokenizer',
                                         abstract_generator, step)
  return config_from_json(values), params


class ImageTokenizer:
  """Jit-compiled, batched encode and decode with input checks."""

  def __init__(self, config: VitVqganConfig, params: PyTree):
    self.config = config
    self.params = params
    self.model = VitVqgan(config)
    self._encode = jax.jit(
        lambda p, x: self.model.apply({'params': p}, x, method=VitVqgan.encode)[0])
    self._decode = jax.jit(lambda p, ids: jnp.clip(self.model.apply(
        {'params': p}, ids, method=VitVqgan.decode_codes)['image'], 0.0, 1.0))

  @classmethod
  def from_checkpoint(cls, checkpoint_dir: str, step: Optional[int] = None) -> 'ImageTokenizer':
    return cls(*load_generator(checkpoint_dir, step))

  @property
  def num_tokens(self) -> int:
    return self.config.num_tokens

  @property
  def codebook_size(self) -> int:
    return self.config.codebook_size

  def _images_to_float(self, images) -> jax.Array:
    images = np.asarray(images)
    size = self.config.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
      raise ValueError(f'images must be [batch, {size}, {size}, 3], got {images.shape}')
    if images.dtype == np.uint8:
      return jnp.asarray(images, jnp.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
      raise ValueError(f'images must be uint8 in [0, 255] or float in [0, 1], got {images.dtype}')
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
      raise ValueError('float images must lie in [0, 1]; got values in '
                       f'[{images.min():.3g}, {images.max():.3g}]')
    return jnp.asarray(images, jnp.float32)

  def encode(self, images) -> jax.Array:
    """uint8 [0, 255] or float [0, 1] images [B, H, W, 3] -> int32 token ids [B, h*w]."""
    return self._encode(self.params, self._images_to_float(images))

  def decode(self, ids) -> jax.Array:
    """int token ids [B, h*w] -> float32 images [B, H, W, 3] in [0, 1]."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] != self.num_tokens:
      raise ValueError(f'token ids must be [batch, {self.num_tokens}], got {ids.shape}')
    if not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f'token ids must be integers, got {ids.dtype}')
    if ids.size and (ids.min() < 0 or ids.max() >= self.codebook_size):
      raise ValueError(f'token ids must lie in [0, {self.codebook_size}), got '
                       f'[{ids.min()}, {ids.max()}]')
    return self._decode(self.params, jnp.asarray(ids, jnp.int32))
