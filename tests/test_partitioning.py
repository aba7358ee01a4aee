"""Mesh shapes, rules presets, optimizer-state specs and global batches."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from parti_jax import partitioning
from parti_jax.errors import ConfigError
from parti_jax.models import PartiModel
from parti_jax.trainer import make_optimizer
from tests.conftest import small_config


@pytest.mark.parametrize('sizes,devices,expected', [
    (dict(data=-1), 8, (8, 1, 1)),
    (dict(data=-1, model=4), 8, (2, 1, 4)),
    (dict(data=2, fsdp=-1, model=2), 8, (2, 2, 2)),
    (dict(data=1, fsdp=-1, model=8), 1024, (1, 128, 8)),
])
def test_mesh_sizes_fill_the_devices(sizes, devices, expected):
  assert partitioning.resolve_axis_sizes(sizes, devices) == expected


@pytest.mark.parametrize('sizes,devices,message', [
    (dict(data=-1, model=3), 8, 'cannot fill'),
    (dict(data=-1, fsdp=-1), 8, 'at most one -1'),
    (dict(data=2, model=2), 8, 'needs 4 devices'),
    (dict(dta=2), 8, 'unknown mesh axes'),
])
def test_bad_mesh_sizes_are_named(sizes, devices, message):
  with pytest.raises(ConfigError, match=message):
    partitioning.resolve_axis_sizes(sizes, devices)


def test_unknown_preset_is_named():
  with pytest.raises(ConfigError, match="unknown mesh preset 'tensor'"):
    partitioning.MeshConfig(preset='tensor')


def test_every_logical_name_of_the_model_has_a_rule():
  """A logical name missing from the rules would silently replicate."""
  specs = PartiModel(small_config()).param_logical_axes()
  names = {name for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
           for name in spec if name is not None}
  assert names <= partitioning.LOGICAL_AXIS_NAMES
  for rules in partitioning.RULE_PRESETS.values():
    assert {name for name, _ in rules} == partitioning.LOGICAL_AXIS_NAMES


@pytest.mark.parametrize('name', ['adafactor', 'adamw'])
def test_optimizer_state_follows_parameter_specs(name):
  model = PartiModel(small_config(emb_dim=64, mlp_dim=128))
  abstract = model.abstract_variables()
  params = nn.unbox(abstract)['params']
  specs = model.param_logical_axes()
  state = jax.eval_shape(make_optimizer(1e-3, name=name).init, params)
  state_specs = partitioning.optimizer_state_logical_axes(state, params, specs)
  pairs = list(zip(jax.tree.leaves(state),
                   jax.tree.leaves(state_specs, is_leaf=lambda x: isinstance(x, P))))
  assert len(pairs) == len(jax.tree.leaves(state))
  wi = params['decoder']['layer_0']['mlp']['wi_0']['kernel']  # (embed, mlp)
  full = [spec for leaf, spec in pairs if leaf.shape == wi.shape]
  assert full and all(spec == P('embed', 'mlp') for spec in full)
  if name == 'adafactor':
    # Factored second moments keep the axis of the dimension they did not reduce.
    assert P('mlp') in [spec for leaf, spec in pairs if leaf.shape == (128,)]
    assert P('embed') in [spec for leaf, spec in pairs if leaf.shape == (64,)]
  for leaf, spec in pairs:
    assert len(spec) in (0, len(leaf.shape))


def test_host_batch_becomes_a_global_sharded_array(eight_devices):
  config = partitioning.MeshConfig(preset='fsdp_model', data=2, fsdp=2, model=2)
  mesh = config.make_mesh(eight_devices)
  local = {'x': np.arange(8 * 3).reshape(8, 3)}
  global_batch = partitioning.host_to_global_batch(local, mesh, config.rules)
  np.testing.assert_array_equal(global_batch['x'], local['x'])
  assert global_batch['x'].sharding.spec == P(('data', 'fsdp'), None)
  with pytest.raises(ConfigError, match='does not split evenly'):
    partitioning.host_to_global_batch({'x': np.zeros((6, 3))}, mesh, config.rules)
