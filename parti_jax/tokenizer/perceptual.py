"""VGG16 perceptual loss of the ViT-VQGAN tokenizer, with weight loading.

The loss compares VGG16 (configuration D, Simonyan & Zisserman 2015) features
of two images in the manner of LPIPS (Zhang et al. 2018). Pretrained ImageNet
weights are required: this module never initializes VGG randomly for a loss.
They cannot be downloaded here, so a user converts torchvision's once:

  1. Obtain the torchvision checkpoint, on a machine with internet access:
       pip install torch torchvision
       python -c "import torch, torchvision; torch.save(
           torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict(),
           'vgg16-397923af.pth')"
     (or download torchvision's file vgg16-397923af.pth itself).
  2. Convert it to this package's .npz layout (only this step needs torch):
       python -m parti_jax.tokenizer.perceptual convert \
           --torch_checkpoint=vgg16-397923af.pth --output=vgg16.npz
  3. Load it with `load_vgg16_params('vgg16.npz')`.

The .npz holds 'conv1_1/kernel' ([3, 3, in, out] HWIO float32),
'conv1_1/bias' ([out]), ... up to 'conv5_3/kernel' and 'conv5_3/bias'.
"""
import argparse
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from parti_jax.errors import ConfigError

Array = jax.Array
Params = Dict[str, Dict[str, Any]]

# Output channels of each conv, block by block (VGG16, configuration D).
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# torchvision's vgg16.features indices of the convs, in order (the rest are
# ReLUs and max-pools, which have no weights).
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CONV_AXES = ('conv_height', 'conv_width', 'conv_in', 'conv_out')
HOW_TO_GET_WEIGHTS = ('produce it from torchvision\'s VGG16 weights with `python -m '
                      'parti_jax.tokenizer.perceptual convert --torch_checkpoint='
                      'vgg16-397923af.pth --output=vgg16.npz` (see the docstring of '
                      'parti_jax/tokenizer/perceptual.py)')


def conv_shapes() -> Dict[str, Tuple[int, int, int, int]]:
  """HWIO kernel shape of every conv, keyed by VGG name ('conv1_1', ...)."""
  shapes, channels_in = {}, 3
  for block, widths in enumerate(VGG16_BLOCKS, start=1):
    for layer, channels_out in enumerate(widths, start=1):
      shapes[f'conv{block}_{layer}'] = (3, 3, channels_in, channels_out)
      channels_in = channels_out
  return shapes


def expected_npz_shapes() -> Dict[str, Tuple[int, ...]]:
  """Every key of the .npz layout with its shape."""
  shapes = {}
  for name, kernel in conv_shapes().items():
    shapes[f'{name}/kernel'] = kernel
    shapes[f'{name}/bias'] = (kernel[-1],)
  return shapes


class VGG16Features(nn.Module):
  """Images [B, H, W, 3] in [0, 1] -> the five relu{k}_{last} activations.

  H and W should divide by 16 (four 2x2 max-pools). Returns a list of
  [B, H / 2**k, W / 2**k, C_k] float32 arrays for k = 0..4.
  """

  @nn.compact
  def __call__(self, images: Array) -> List[Array]:
    x = (images.astype(jnp.float32) - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)
    features = []
    for block, widths in enumerate(VGG16_BLOCKS, start=1):
      if block > 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for layer, channels in enumerate(widths, start=1):
        conv = nn.Conv(channels, (3, 3), padding='SAME', name=f'conv{block}_{layer}',
                       kernel_init=nn.with_logical_partitioning(
                           nn.initializers.lecun_normal(), CONV_AXES),
                       bias_init=nn.with_logical_partitioning(
                           nn.initializers.zeros, ('conv_out',)))
        x = nn.relu(conv(x))
      features.append(x)
    return features


def load_vgg16_params(path: str) -> Params:
  """Reads VGG16 weights in the .npz layout; returns VGG16Features params.

  Raises:
    ConfigError: the file is missing, unreadable, or lacks a key or has one
      of the wrong shape; the message names the file and the key.
  """
  if not os.path.isfile(path):
    raise ConfigError(f'VGG16 weights file {path!r} not found; {HOW_TO_GET_WEIGHTS}')
  try:
    npz = np.load(path)
  except (OSError, ValueError) as e:
    raise ConfigError(f'cannot read VGG16 weights file {path!r} ({e}); '
                      f'{HOW_TO_GET_WEIGHTS}') from e
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise ConfigError(f'VGG16 weights file {path!r} is not an .npz archive; {HOW_TO_GET_WEIGHTS}')
  params: Params = {}
  with npz:
    for key, shape in expected_npz_shapes().items():
      layer, kind = key.split('/')
      params.setdefault(layer, {})[kind] = _read_checked(npz, key, shape, path)
  return params


def _read_checked(npz: Any, key: str, shape: Tuple[int, ...], path: str) -> Array:
  if key not in npz.files:
    raise ConfigError(f'VGG16 weights file {path!r} lacks key {key!r}; {HOW_TO_GET_WEIGHTS}')
  value = npz[key]
  if value.shape != shape:
    raise ConfigError(f'VGG16 weights file {path!r}: key {key!r} has shape {value.shape}, '
                      f'expected {shape}')
  return jnp.asarray(value, jnp.float32)


def convert_torchvision_vgg16(state_dict: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Maps a torchvision `vgg16` state_dict to the .npz layout.

  Conv weights go from PyTorch's OIHW to HWIO; both frameworks compute
  cross-correlations, so no kernel flip is needed. The classifier's weights
  are not used and are dropped.

  Args:
    state_dict: name -> numpy array or torch tensor ('features.0.weight', ...).

  Raises:
    ConfigError: a conv's weight or bias is missing or has the wrong shape.
  """
  flat = {}
  for index, (name, kernel_shape) in zip(TORCHVISION_CONV_INDICES, conv_shapes().items()):
    weight = _as_numpy(state_dict, f'features.{index}.weight')
    bias = _as_numpy(state_dict, f'features.{index}.bias')
    kernel = weight.transpose(2, 3, 1, 0)
    if kernel.shape != kernel_shape or bias.shape != kernel_shape[-1:]:
      raise ConfigError(f'features.{index} ({name}) has weight {weight.shape} and bias '
                        f'{bias.shape}; torchvision vgg16 has OIHW weight '
                        f'{tuple(kernel_shape[i] for i in (3, 2, 0, 1))}: is this a vgg16 '
                        f'state_dict?')
    flat[f'{name}/kernel'] = np.ascontiguousarray(kernel, np.float32)
    flat[f'{name}/bias'] = bias.astype(np.float32)
  return flat


def _as_numpy(state_dict: Mapping[str, Any], key: str) -> np.ndarray:
  if key not in state_dict:
    raise ConfigError(f'state_dict lacks {key!r}: is it torchvision\'s vgg16?')
  value = state_dict[key]
  # torch tensors convert through .numpy() (after detaching from autograd).
  if hasattr(value, 'numpy'):
    value = value.detach().cpu().numpy() if hasattr(value, 'detach') else value.numpy()
  return np.asarray(value)


def _unit_normalize(features: Array) -> Array:
  """features / (||features||_channels + 1e-10), as LPIPS."""
  sum_sq = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
  # sqrt has an infinite gradient at 0; an all-zero ReLU feature vector would
  # otherwise make the whole gradient NaN.
  norm = jnp.sqrt(jnp.maximum(sum_sq, 1e-20))
  return features / (norm + 1e-10)


def perceptual_loss(vgg_params: Params, x: Array, y: Array) -> Array:
  """LPIPS-style distance between image batches x and y ([B, H, W, 3], [0, 1]).

  For each of relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3: unit-normalize
  the features over channels, square the difference, sum over channels and
  average over pixels; then average the five layers and the batch. Unlike
  LPIPS, the channels are not weighted by learned linear layers (their
  weights are not available here), so every channel counts equally.

  Args:
    vgg_params: pretrained weights from `load_vgg16_params`.
    x, y: image batches of the same shape; H and W divisible by 16.

  Returns:
    A float32 scalar, zero when x equals y.
  """
  batch = x.shape[0]
  # One pass over both batches: half the kernel launches of two calls.
  features = VGG16Features().apply({'params': vgg_params}, jnp.concatenate([x, y], axis=0))
  per_layer = []
  for layer in features:
    layer = _unit_normalize(layer)
    diff = jnp.sum(jnp.square(layer[:batch] - layer[batch:]), axis=-1)
    per_layer.append(jnp.mean(diff, axis=(1, 2)))
  return jnp.mean(jnp.stack(per_layer))


def _convert_command(args: argparse.Namespace) -> None:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConfigError('converting VGG16 weights needs PyTorch (only this step does): '
                      'pip install torch') from e
  if not os.path.isfile(args.torch_checkpoint):
    raise ConfigError(f'torch checkpoint {args.torch_checkpoint!r} not found')
  state_dict = torch.load(args.torch_checkpoint, map_location='cpu', weights_only=True)
  np.savez(args.output, **convert_torchvision_vgg16(state_dict))
  print(f'wrote {args.output}')


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; a user's mistake ends in one line on stderr, exit 2."""
  parser = argparse.ArgumentParser(description='VGG16 weights for the perceptual loss.')
  commands = parser.add_subparsers(dest='command', required=True)
  convert = commands.add_parser('convert', help='torchvision vgg16 .pth -> .npz')
  convert.add_argument('--torch_checkpoint', required=True,
                       help='torchvision vgg16 state_dict file, e.g. vgg16-397923af.pth')
  convert.add_argument('--output', required=True, help='.npz file to write')
  args = parser.parse_args(argv)
  try:
    _convert_command(args)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
