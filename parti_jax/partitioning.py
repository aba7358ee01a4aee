"""Device meshes, logical-axis rules and shardings (the t5x/MaxText scheme).

The network names every parameter and activation dimension with a logical axis
('embed', 'mlp', 'activation_batch', ...). A rules preset maps those names onto
the mesh axes ('data', 'fsdp', 'model'); jax.jit then shards by the resulting
NamedShardings. Changing the preset or the mesh shape never touches model code.
"""
import contextlib
import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from parti_jax.errors import ConfigError

PyTree = Any
Rules = Tuple[Tuple[str, Any], ...]

MESH_AXES = ('data', 'fsdp', 'model')
BATCH_AXES = ('data', 'fsdp')


def _rules(embed=None, model=None) -> Rules:
  """Rules for every logical name the package uses.

  embed: mesh axis holding weights' embed dimension (FSDP);
  model: mesh axis splitting MLP hidden units, heads and vocabularies
  (in-layer model parallelism, as Parti-3B: Parti §3).
  """
  return (
      ('batch', BATCH_AXES),
      ('activation_batch', BATCH_AXES),
      ('embed', embed),
      ('mlp', model),
      ('heads', model),
      ('joined_kv', model),
      ('vocab', model),
      ('image_vocab', model),
      ('activation_mlp', model),
      ('activation_heads', model),
      ('activation_vocab', model),
      ('kv', None),
      ('length', None),
      ('activation_length', None),
      ('activation_embed', None),
      ('activation_kv', None),
      # Image tokenizer: codebook entries, the low-dimensional lookup space,
      # flattened patch pixels; the discriminator's convolutions.
      ('codebook', None),
      ('lookup', None),
      ('pixels', None),
      ('conv_height', None),
      ('conv_width', None),
      ('conv_in', None),
      ('conv_out', None),
  )


RULE_PRESETS: Dict[str, Rules] = {
    # Weights replicated, batch split over every device (Parti-350M / 750M).
    'data_parallel': _rules(),
    # Weights split on their embed dimension over 'fsdp' (ZeRO-3 style).
    'fsdp': _rules(embed='fsdp'),
    # Batch over 'data', weights split on MLP / heads / vocab over 'model'.
    'data_model': _rules(model='model'),
    # Both: what a 20B model needs on a pod.
    'fsdp_model': _rules(embed='fsdp', model='model'),
}

LOGICAL_AXIS_NAMES = frozenset(name for name, _ in RULE_PRESETS['data_parallel'])


def logical_axis_rules(preset: str) -> Rules:
  if preset not in RULE_PRESETS:
    raise ConfigError(f'unknown mesh preset {preset!r}; choose one of {sorted(RULE_PRESETS)}')
  return RULE_PRESETS[preset]


def resolve_axis_sizes(sizes: Mapping[str, int], num_devices: int) -> Tuple[int, ...]:
  """Sizes of (data, fsdp, model); one entry may be -1: all remaining devices."""
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f'unknown mesh axes {sorted(unknown)}; the axes are {MESH_AXES}')
  shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
  fill = [i for i, s in enumerate(shape) if s == -1]
  if len(fill) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f'mesh axis sizes {dict(zip(MESH_AXES, shape))}: use positive sizes and '
                      'at most one -1')
  known = math.prod(s for s in shape if s != -1)
  if fill:
    if num_devices % known:
      raise ConfigError(f'cannot fill mesh {dict(zip(MESH_AXES, shape))} with {num_devices} '
                        'devices')
    shape[fill[0]] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ConfigError(f'mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, '
                      f'{num_devices} are available')
  return tuple(shape)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Which rules preset to use and the mesh shape; -1 fills with the remaining devices."""
  preset: str = 'data_parallel'
  data: int = -1
  fsdp: int = 1
  model: int = 1

  def __post_init__(self):
    logical_axis_rules(self.preset)  # Fails early on an unknown preset.

  @property
  def rules(self) -> Rules:
    return logical_axis_rules(self.preset)

  def axis_sizes(self, num_devices: int) -> Tuple[int, ...]:
    return resolve_axis_sizes(dict(data=self.data, fsdp=self.fsdp, model=self.model),
                              num_devices)

  def make_mesh(self, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = self.axis_sizes(len(devices))
    # Auto axes: GSPMD propagates shardings from the logical constraints.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                         devices=devices)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules):
  """Context in which the network's logical constraints shard over `mesh`.

  Tracing (jit, eval_shape, lowering) must happen inside it; outside, the
  constraints are no-ops.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def shardings_from_logical(logical_specs: PyTree, mesh: Mesh, rules: Rules) -> PyTree:
  """NamedShardings for a tree of PartitionSpecs written in logical names."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def optimizer_state_logical_axes(opt_state_shapes: PyTree, params_shapes: PyTree,
                                 param_specs: PyTree) -> PyTree:
  """Logical PartitionSpecs for any optax state, derived from the parameters'.

  Optimizer states hold subtrees shaped like the parameters (moments), or
  reduced copies of them (Adafactor's factored row/column statistics, which
  drop one dimension). A leaf takes its parameter's spec when the shapes match,
  the spec without the dropped dimension when one was dropped, and is
  replicated otherwise (step counters, placeholders).
  """
  param_treedef = jax.tree.structure(params_shapes)
  param_leaves = [(p.shape, s) for p, s in zip(
      jax.tree.leaves(params_shapes), jax.tree.leaves(param_specs, is_leaf=_is_spec))]

  def spec_for(shape, param_shape, spec) -> PartitionSpec:
    axes = tuple(spec) + (None,) * (len(param_shape) - len(spec))
    if tuple(shape) == tuple(param_shape):
      return PartitionSpec(*axes)
    if len(shape) == len(param_shape) - 1:
      for drop in range(len(param_shape)):
        if param_shape[:drop] + param_shape[drop + 1:] == tuple(shape):
          return PartitionSpec(*(axes[:drop] + axes[drop + 1:]))
    return PartitionSpec()

  def is_param_shaped(node) -> bool:
    return not _is_array_like(node) and jax.tree.structure(node) == param_treedef

  def to_spec(node):
    if not is_param_shaped(node):
      return PartitionSpec()
    return jax.tree.unflatten(param_treedef, [
        spec_for(np.shape(leaf), shape, spec)
        for leaf, (shape, spec) in zip(jax.tree.leaves(node), param_leaves)])

  return jax.tree.map(to_spec, opt_state_shapes, is_leaf=is_param_shaped)


def _is_array_like(x) -> bool:
  return hasattr(x, 'shape') and hasattr(x, 'dtype')


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
  """Sharding of a feature array: batch split, the other dimensions whole."""
  spec = nn.logical_to_mesh_axes(('batch',) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def host_to_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh,
                         rules: Rules) -> Dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded over the batch.

  On one host this is a device_put; on a pod each host passes only the rows it
  read (its data shard) and the global batch is their concatenation.
  """
  shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
  for name, x in local_batch.items():
    global_rows = np.shape(x)[0] * jax.process_count()
    if global_rows % shards:
      raise ConfigError(f'global batch of {global_rows} ({name}) does not split evenly over the '
                        f'{shards} data shards (data x fsdp) of the mesh')
  return {
      name: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, np.ndim(x)),
                                                   np.asarray(x))
      for name, x in local_batch.items()
  }
