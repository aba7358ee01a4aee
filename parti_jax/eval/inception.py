"""InceptionV3 pool3 features in Flax: the network that defines FID.

The architecture is that of TensorFlow's 'inception-2015-12-05' graph, which
the original FID code used, as pytorch-fid ported it (its
pt_inception-2015-12-05 weights). It differs from the usual InceptionV3 only
in the pooling branches:

  Mixed_5b-5d, 6b-6e, 7b  average pooling that leaves the padding out of
                          the average (TensorFlow's way);
  Mixed_7c                max pooling, an accident of that graph that FID
                          numbers depend on.

Every convolution has no bias and is followed by batch norm (epsilon 0.001)
and a ReLU. Images are resized to 299x299 bilinearly and scaled to [-1, 1];
the features are the 2048 final channels averaged over space ('pool3').

No weights ship with the package: convert pytorch-fid's file with
parti_jax.tools.convert_inception and load the .npz with
`InceptionV3Features.from_weights`. Its variables are stored flat, as
'params/Mixed_5b/branch1x1/conv/kernel', 'batch_stats/.../bn/mean' and so on.
"""
import functools
import os
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from parti_jax.errors import ConfigError
from parti_jax.eval.reconstruction import to_unit_float

NETWORK_NAME = 'inception_v3_pool3'
FID_INPUT_SIZE = 299
# The smallest input whose feature map survives every unpadded stride.
MIN_INPUT_SIZE = 75
FEATURE_DIM = 2048
WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
               'pt_inception-2015-12-05-6726825d.pth')
_SEPARATOR = '/'


class ConvBN(nn.Module):
  """Convolution without bias, batch norm with running statistics, ReLU."""
  features: int
  kernel: Tuple[int, int] = (1, 1)
  strides: int = 1
  # For the odd kernels here, stride-1 'SAME' pads (k - 1) / 2 on both sides,
  # as the PyTorch port does.
  padding: str = 'SAME'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Full float32 even where the backend would round convolutions to
    # bfloat16 or TF32: FID compares to numbers computed in float32.
    x = nn.Conv(self.features, self.kernel, (self.strides, self.strides), self.padding,
                use_bias=False, precision=jax.lax.Precision.HIGHEST, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3 average over the window's pixels inside the image (no zero padding
  counted), stride 1."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


def _max_pool_down(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  """Mixed_5b-5d (35x35)."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = ConvBN(64, name='branch1x1')(x)
    branch5x5 = ConvBN(48, name='branch5x5_1')(x)
    branch5x5 = ConvBN(64, (5, 5), name='branch5x5_2')(branch5x5)
    branch3x3 = ConvBN(64, name='branch3x3dbl_1')(x)
    branch3x3 = ConvBN(96, (3, 3), name='branch3x3dbl_2')(branch3x3)
    branch3x3 = ConvBN(96, (3, 3), name='branch3x3dbl_3')(branch3x3)
    pool = ConvBN(self.pool_features, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3, pool], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: 35x35 -> 17x17."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = ConvBN(384, (3, 3), 2, 'VALID', name='branch3x3')(x)
    branch3x3dbl = ConvBN(64, name='branch3x3dbl_1')(x)
    branch3x3dbl = ConvBN(96, (3, 3), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = ConvBN(96, (3, 3), 2, 'VALID', name='branch3x3dbl_3')(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_down(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-6e (17x17), with factorized 7x7 convolutions."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    branch1x1 = ConvBN(192, name='branch1x1')(x)
    branch7x7 = ConvBN(c7, name='branch7x7_1')(x)
    branch7x7 = ConvBN(c7, (1, 7), name='branch7x7_2')(branch7x7)
    branch7x7 = ConvBN(192, (7, 1), name='branch7x7_3')(branch7x7)
    branch7x7dbl = ConvBN(c7, name='branch7x7dbl_1')(x)
    for index, (features, kernel) in enumerate(
        [(c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))], start=2):
      branch7x7dbl = ConvBN(features, kernel, name=f'branch7x7dbl_{index}')(branch7x7dbl)
    pool = ConvBN(192, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, pool], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: 17x17 -> 8x8."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = ConvBN(192, name='branch3x3_1')(x)
    branch3x3 = ConvBN(320, (3, 3), 2, 'VALID', name='branch3x3_2')(branch3x3)
    branch7x7x3 = ConvBN(192, name='branch7x7x3_1')(x)
    branch7x7x3 = ConvBN(192, (1, 7), name='branch7x7x3_2')(branch7x7x3)
    branch7x7x3 = ConvBN(192, (7, 1), name='branch7x7x3_3')(branch7x7x3)
    branch7x7x3 = ConvBN(192, (3, 3), 2, 'VALID', name='branch7x7x3_4')(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_down(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b and 7c (8x8), with split 3x3 convolutions; `max_pool` picks
  the pooling branch's pooling (see the module docstring)."""
  max_pool: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    def split(y, prefix):
      return jnp.concatenate([ConvBN(384, (1, 3), name=f'{prefix}a')(y),
                              ConvBN(384, (3, 1), name=f'{prefix}b')(y)], axis=-1)

    branch1x1 = ConvBN(320, name='branch1x1')(x)
    branch3x3 = split(ConvBN(384, name='branch3x3_1')(x), 'branch3x3_2')
    branch3x3dbl = ConvBN(448, name='branch3x3dbl_1')(x)
    branch3x3dbl = split(ConvBN(384, (3, 3), name='branch3x3dbl_2')(branch3x3dbl),
                         'branch3x3dbl_3')
    pooled = _max_pool_3x3(x) if self.max_pool else _avg_pool_3x3(x)
    pool = ConvBN(192, name='branch_pool')(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, pool], axis=-1)


class InceptionV3(nn.Module):
  """[N, H, W, 3] images in [-1, 1] (H, W >= 75) -> pool3 features [N, 2048].

  Submodules carry the PyTorch port's names, so that its weights map over
  name for name.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ConvBN(32, (3, 3), 2, 'VALID', name='Conv2d_1a_3x3')(x)
    x = ConvBN(32, (3, 3), padding='VALID', name='Conv2d_2a_3x3')(x)
    x = ConvBN(64, (3, 3), name='Conv2d_2b_3x3')(x)
    x = _max_pool_down(x)
    x = ConvBN(80, name='Conv2d_3b_1x1')(x)
    x = ConvBN(192, (3, 3), padding='VALID', name='Conv2d_4a_3x3')(x)
    x = _max_pool_down(x)
    for name, pool_features in (('Mixed_5b', 32), ('Mixed_5c', 64), ('Mixed_5d', 64)):
      x = InceptionA(pool_features, name=name)(x)
    x = InceptionB(name='Mixed_6a')(x)
    for name, channels in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160),
                           ('Mixed_6e', 192)):
      x = InceptionC(channels, name=name)(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE(max_pool=False, name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, name='Mixed_7c')(x)
    return x.mean(axis=(1, 2))


def flatten_variables(variables: Any) -> Dict[str, Any]:
  """{'params': {'Mixed_5b': ...}} -> {'params/Mixed_5b/...': leaf}."""
  return traverse_util.flatten_dict(variables, sep=_SEPARATOR)


def unflatten_variables(flat: Dict[str, Any]) -> Dict[str, Any]:
  return traverse_util.unflatten_dict(flat, sep=_SEPARATOR)


@functools.lru_cache(maxsize=1)
def _traced_shapes() -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
  # Tracing the model takes seconds; its shapes never change.
  example = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0), example)
  return tuple((name, leaf.shape) for name, leaf in flatten_variables(shapes).items())


def variable_shapes() -> Dict[str, Tuple[int, ...]]:
  """Flat variable name -> shape, without computing anything."""
  return dict(_traced_shapes())


def check_variables(flat: Dict[str, np.ndarray]) -> None:
  """Raises ConfigError unless `flat` holds exactly the model's variables, in
  their shapes."""
  expected = variable_shapes()
  problems = [f'missing {name}' for name in sorted(set(expected) - set(flat))]
  problems += [f'unexpected {name}' for name in sorted(set(flat) - set(expected))]
  problems += [f'{name} has shape {np.shape(flat[name])}, expected {shape}'
               for name, shape in sorted(expected.items())
               if name in flat and np.shape(flat[name]) != shape]
  if problems:
    shown = '; '.join(problems[:5])
    raise ConfigError(f'not the InceptionV3 FID variables ({len(problems)} problems): {shown}')


def random_variables(seed: int = 0) -> Dict[str, Any]:
  """Random variables of the right shapes (He-normal kernels, batch norm
  near identity): for tests and timing, not for FID."""
  rng = np.random.default_rng(seed)
  flat = {}
  for name, shape in variable_shapes().items():
    if name.endswith('kernel'):
      flat[name] = rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[:-1]))
    elif name.endswith(('scale', 'var')):
      flat[name] = 1 + 0.1 * rng.random(shape)
    else:
      flat[name] = 0.1 * rng.standard_normal(shape)
  return unflatten_variables({name: value.astype(np.float32) for name, value in flat.items()})


def load_variables(path: str) -> Dict[str, Any]:
  """The variables in an .npz written by parti_jax.tools.convert_inception.

  Raises:
    FileNotFoundError: no such file; the message says how to make one.
    ConfigError: the file holds other variables.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'InceptionV3 FID weights not found at {path}. Download {WEIGHTS_URL} and convert '
        f'it: python -m parti_jax.tools.convert_inception '
        f'--input=pt_inception-2015-12-05-6726825d.pth --output={path}')
  with np.load(path) as data:
    flat = {name: data[name] for name in data.files}
  check_variables(flat)
  return unflatten_variables(flat)


class InceptionV3Features:
  """A frechet.FeatureNetwork: pool3 features of uint8 (or [0, 1] float)
  images [N, H, W, 3] of any size, jitted (one compilation per batch shape).

  Images are resized to input_size x input_size as pytorch-fid does:
  bilinear, half-pixel centres, no antialiasing. PyTorch's
  F.interpolate(mode='bilinear', align_corners=False) computes exactly that,
  both up and down; antialiasing would change only downsampling, and
  pytorch-fid does not antialias.
  """

  def __init__(self, variables: Dict[str, Any], name: str,
               input_size: int = FID_INPUT_SIZE, batch_size: int = 50):
    """Use `from_weights` for FID; `name` must say which weights these are."""
    if input_size < MIN_INPUT_SIZE:
      raise ConfigError(f'InceptionV3 needs inputs of at least {MIN_INPUT_SIZE} pixels a side, '
                        f'got input_size={input_size}')
    self.name = name
    self.batch_size = batch_size
    self._variables = jax.device_put(variables)
    model = InceptionV3()

    def features(variables, images):
      resized = jax.image.resize(images, (images.shape[0], input_size, input_size, 3),
                                 'bilinear', antialias=False)
      return model.apply(variables, 2 * resized - 1)

    self._features = jax.jit(features)

  @classmethod
  def from_weights(cls, path: str, input_size: int = FID_INPUT_SIZE,
                   batch_size: int = 50) -> 'InceptionV3Features':
    """The FID network from a converted weights file (see load_variables).

    At any input size but 299 the features are no longer FID's, and the name
    says the size: 'inception_v3_pool3_128px'.
    """
    name = NETWORK_NAME if input_size == FID_INPUT_SIZE else f'{NETWORK_NAME}_{input_size}px'
    return cls(load_variables(path), name, input_size, batch_size)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    images = to_unit_float(images).astype(np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected RGB images [N, H, W, 3], got shape {images.shape}')
    chunks = [np.asarray(self._features(self._variables, images[start:start + self.batch_size]))
              for start in range(0, len(images), self.batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, FEATURE_DIM), np.float32)
