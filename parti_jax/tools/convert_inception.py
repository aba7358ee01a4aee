"""Converts pytorch-fid's InceptionV3 weights into the .npz that
parti_jax.eval.inception loads, for FID.

The weights must be downloaded by hand (nothing here fetches them):

  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

then

  python -m parti_jax.tools.convert_inception \
      --input=pt_inception-2015-12-05-6726825d.pth --output=inception_fid.npz

Reading the .pth needs torch (pip install torch; the CPU build is enough);
evaluating with the .npz does not. Convolution kernels go from PyTorch's
[out, in, height, width] to Flax's [height, width, in, out]; batch norm's
weight, bias, running_mean and running_var become scale, bias, mean and var.
The 1008-way classifier (fc) is left out: FID stops at pool3.
"""
import argparse
import json
import os
from typing import Dict, Mapping, Optional

import numpy as np

from parti_jax import cli
from parti_jax.errors import ConfigError
from parti_jax.eval import inception

# PyTorch batch-norm entry -> (Flax collection, Flax name).
_BATCH_NORM = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
               'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def _flax_name(key: str) -> Optional[str]:
  """The flat Flax variable name of a PyTorch entry ('Mixed_5b.branch1x1.conv.weight'),
  or None for entries FID does not use."""
  parts = key.split('.')
  if parts[0] == 'fc' or parts[-1] == 'num_batches_tracked':
    return None
  if len(parts) >= 3:
    *path, layer, field = parts
    if layer == 'conv' and field == 'weight':
      return '/'.join(['params', *path, 'conv', 'kernel'])
    if layer == 'bn' and field in _BATCH_NORM:
      collection, name = _BATCH_NORM[field]
      return '/'.join([collection, *path, 'bn', name])
  raise ConfigError(f'unexpected entry {key} in the state dict: is this pytorch-fid\'s '
                    f'InceptionV3?')


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """pytorch-fid's state dict (name -> array) -> inception's flat variables.

  Raises:
    ConfigError: entries that are not the FID InceptionV3's, or missing ones.
  """
  flat = {}
  for key, value in state_dict.items():
    name = _flax_name(key)
    if name is None:
      continue
    value = np.asarray(value, np.float32)
    flat[name] = value.transpose(2, 3, 1, 0) if name.endswith('kernel') else value
  inception.check_variables(flat)
  return flat


def _read_state_dict(path: str) -> Dict[str, np.ndarray]:
  if not os.path.exists(path):
    raise FileNotFoundError(f'no such file: {path} (download it from {inception.WEIGHTS_URL})')
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConfigError('reading a .pth file needs torch: pip install torch (CPU is enough) to '
                      'convert') from e
  state_dict = torch.load(path, map_location='cpu', weights_only=True)
  return {key: tensor.numpy() for key, tensor in state_dict.items()}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--input', required=True, help="pytorch-fid's .pth weights")
  p.add_argument('--output', required=True, help='the .npz to write')
  args = p.parse_args(argv)
  flat = convert_state_dict(_read_state_dict(args.input))
  np.savez(args.output, **flat)
  print(json.dumps({'output': args.output, 'arrays': len(flat),
                    'parameters': int(sum(value.size for value in flat.values()))}))


if __name__ == '__main__':
  cli.run(main)
