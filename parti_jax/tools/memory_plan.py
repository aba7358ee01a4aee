"""How much memory a config needs per device on a mesh, before paying for it.

  python -m parti_jax.tools.memory_plan \
      --gin_file=models/parti_20b.gin --gin_file=mesh/fsdp_model.gin \
      --num_devices=1024 --batch_size=8192
  python -m parti_jax.tools.memory_plan --gin_file=runs/parti_350m_v6e_8.gin

A run preset (gin_configs/runs/) supplies both numbers: the devices are its
pinned mesh axes multiplied, the batch held at once its BATCH_SIZE divided by
train.accumulate_steps (one microbatch); flags override them.

Shapes come from jax.eval_shape (nothing is allocated, no devices are needed)
and are split by the mesh preset's logical-axis rules exactly as training
splits them. Parameters, gradients and optimizer states are exact; activations
are an estimate (see `activation_bytes`).
"""
import json
import math
import re
import sys
from typing import Any, Dict

import flax.linen as nn
import gin
import jax
import numpy as np

from parti_jax import cli, flops, gin_utils, partitioning, trainer
from parti_jax.config import TransformerConfig
from parti_jax.errors import ConfigError
from parti_jax.models import PartiModel

GIB = 2**30


def per_device_bytes(shapes: Any, specs: Any, rules: partitioning.Rules,
                     axis_sizes: Dict[str, int]) -> int:
  """Bytes one device holds of the arrays `shapes` split by logical `specs`.

  A dimension split over mesh axes of total size n holds ceil(dim / n) of it.
  """
  total = 0
  for leaf, spec in zip(jax.tree.leaves(shapes),
                        jax.tree.leaves(specs, is_leaf=lambda x: isinstance(
                            x, jax.sharding.PartitionSpec))):
    mesh_axes = nn.logical_to_mesh_axes(tuple(spec), rules) if len(spec) else ()
    elements = 1
    for i, dim in enumerate(leaf.shape):
      axes = mesh_axes[i] if i < len(mesh_axes) else None
      axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
      elements *= -(-dim // math.prod(axis_sizes[a] for a in axes))
    total += elements * np.dtype(leaf.dtype).itemsize
  return total


def activation_bytes(cfg: TransformerConfig, batch_per_device: int, model_parallel: int) -> int:
  """Estimate of the activations a training step keeps for its backward pass.

  Per layer and without recomputation, after Korthikanti et al. 2022
  ("Reducing Activation Recomputation in Large Transformer Models", Eq. 2):
  s*b*h*(10 + 24/t) + 5*a*s^2*b/t bytes for 16-bit activations, with sequence
  s, batch b, width h, heads a and t-way model parallelism; doubled for
  float32. The decoder's causal self-attention keeps only the s^2 scores it
  computes (flops.causal_attention_pairs). Decoder layers add the same again
  for cross-attention over the text (with s*s_text scores). With remat_policy='full' only each layer's
  input (s*b*h values) is kept, plus one layer's full activations.
  """
  b, h, a, t = batch_per_device, cfg.emb_dim, cfg.num_heads, model_parallel
  bytes_per_value = 2 if cfg.dtype == 'bfloat16' else 4

  def layer(s: int, score_pairs: int) -> float:
    sixteen_bit = s * b * h * (10 + 24 / t) + 5 * a * score_pairs * b / t
    return sixteen_bit * bytes_per_value / 2

  text, image = cfg.max_text_length, cfg.image_length
  encoder_layer = layer(text, text * text)
  decoder_layer = (layer(image, flops.causal_attention_pairs(image, cfg.causal_query_blocks)) +
                   layer(image, image * text))
  if cfg.remat_policy == 'full':
    kept = ((cfg.num_encoder_layers * text + cfg.num_decoder_layers * image) * b * h *
            bytes_per_value)
    return int(kept + max(encoder_layer, decoder_layer))
  # Logits and their softmax, float32.
  logits = 2 * b * image * cfg.image_vocab_size * 4 / t
  return int(cfg.num_encoder_layers * encoder_layer + cfg.num_decoder_layers * decoder_layer +
             logits)


def plan(model: PartiModel, mesh_config: partitioning.MeshConfig, num_devices: int,
         batch_size: int) -> Dict[str, Any]:
  """Per-device bytes of every part of a training step's state."""
  sizes = dict(zip(partitioning.MESH_AXES, mesh_config.axis_sizes(num_devices)))
  rules = mesh_config.rules
  abstract = model.abstract_variables()
  params = nn.unbox(abstract)['params']
  param_specs = nn.get_partition_spec(abstract)['params']
  param_bytes = per_device_bytes(params, param_specs, rules, sizes)
  optimizers = {}
  for name in ('adafactor', 'adamw'):
    opt_state = jax.eval_shape(trainer.make_optimizer(1e-4, name=name).init, params)
    specs = partitioning.optimizer_state_logical_axes(opt_state, params, param_specs)
    optimizers[name] = per_device_bytes(opt_state, specs, rules, sizes)
  data_shards = sizes['data'] * sizes['fsdp']
  batch_per_device = -(-batch_size // data_shards)
  activations = activation_bytes(model.config, batch_per_device, sizes['model'])
  count = sum(x.size for x in jax.tree.leaves(params))
  return {
      'num_params': count,
      'mesh': sizes,
      'preset': mesh_config.preset,
      'batch_size': batch_size,
      'batch_per_device': batch_per_device,
      'per_device_bytes': {
          'params': param_bytes,
          'gradients': param_bytes,
          'optimizer_adafactor': optimizers['adafactor'],
          'optimizer_adamw': optimizers['adamw'],
          'activations_estimate': activations,
      },
      'total_adafactor_bytes': 2 * param_bytes + optimizers['adafactor'] + activations,
      'total_adamw_bytes': 2 * param_bytes + optimizers['adamw'] + activations,
  }


def format_plan(result: Dict[str, Any]) -> str:
  n = result['num_params']
  size = f'{n / 1e9:.2f}B' if n >= 1e9 else f'{n / 1e6:.1f}M'
  rows = [f"{size} parameters, preset {result['preset']}, mesh "
          + ' x '.join(f'{k}={v}' for k, v in result['mesh'].items())
          + f", global batch {result['batch_size']} ({result['batch_per_device']} per data shard)",
          f"{'per device':<24}{'GiB':>10}"]
  for name, value in result['per_device_bytes'].items():
    rows.append(f'{name:<24}{value / GIB:>10.3f}')
  rows.append(f"{'total with adafactor':<24}{result['total_adafactor_bytes'] / GIB:>10.3f}")
  rows.append(f"{'total with adamw':<24}{result['total_adamw_bytes'] / GIB:>10.3f}")
  return '\n'.join(rows)


def _bound(name: str, default: Any) -> Any:
  """A gin binding (`%MACRO` or `configurable.parameter`), or `default`."""
  try:
    return gin.query_parameter(name)
  except ValueError:  # Not bound by the gin files.
    return default


def slice_devices(mesh_config: partitioning.MeshConfig) -> int:
  """The devices a mesh with every axis pinned fills."""
  sizes = (mesh_config.data, mesh_config.fsdp, mesh_config.model)
  if any(size < 1 for size in sizes):
    raise ConfigError(f'the mesh does not pin every axis (data, fsdp, model = {sizes}): '
                      'give --num_devices')
  return math.prod(sizes)


def main(argv=None) -> None:
  p = cli.parser(__doc__)
  p.add_argument('--num_devices', type=int, default=None,
                 help='devices in the target slice (default: a mesh with every axis pinned, '
                      'as in the run presets)')
  p.add_argument('--batch_size', type=int, default=None,
                 help='examples a step holds at once (default: BATCH_SIZE / '
                      'train.accumulate_steps where gin binds them, else 8192, Parti\'s batch)')
  argv = sys.argv[1:] if argv is None else argv
  if any(re.match(r'--gin_file=(.*/)?runs/', arg) for arg in argv):
    # A run preset binds `train`'s parameters, so `train` must be registered.
    # Only then: the training module brings in TensorFlow, whose start-up
    # chatter would bury a one-line error.
    import parti_jax.train  # pylint: disable=import-outside-toplevel,unused-import
  args = cli.parse_with_gin(p, argv)
  mesh_config = gin_utils.MeshConfig()
  full_batch, accumulate = _bound('%BATCH_SIZE', 8192), _bound('train.accumulate_steps', 1)
  batch_size = args.batch_size or full_batch // accumulate
  result = plan(gin_utils.PartiModel(), mesh_config,
                args.num_devices or slice_devices(mesh_config), batch_size)
  print(format_plan(result))
  if not args.batch_size and accumulate > 1:
    print(f'(one of {accumulate} microbatches of the batch of {full_batch}; accumulating them '
          "keeps one more float32 copy of the gradients, not counted above)")
  print(json.dumps(result))


if __name__ == '__main__':
  cli.run(main)
