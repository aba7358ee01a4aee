"""Sharded execution over 8 fake CPU devices equals the single-device result."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from parti_jax import partitioning
from parti_jax.models import PartiModel
from parti_jax.trainer import Trainer, make_optimizer
from tests.conftest import small_config, token_batch

MESHES = [
    ('data_model', dict(data=2, fsdp=1, model=4)),
    ('fsdp_model', dict(data=2, fsdp=2, model=2)),
    ('fsdp', dict(data=2, fsdp=4, model=1)),
]


def assert_close(actual, expected):
  """Relative tolerance 1e-5, measured against the array's largest entry."""
  expected = np.asarray(expected)
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5,
                             atol=1e-5 * float(np.abs(expected).max()))


def logits_and_grads(model, params, batch, mesh, rules):
  specs = model.param_logical_axes()
  shardings = partitioning.shardings_from_logical(specs, mesh, rules)
  params = jax.device_put(params, shardings)
  batch = partitioning.host_to_global_batch(batch, mesh, rules)

  def f(p, b):
    return model.logits(p, b), jax.grad(lambda q: model.loss_fn(q, b)[0])(p)

  with partitioning.activate(mesh, rules):
    return jax.jit(f, in_shardings=(shardings, None), out_shardings=(None, shardings))(
        params, batch)


@pytest.fixture(scope='module')
def reference():
  model = PartiModel(small_config(causal_query_blocks=2))
  params = nn.unbox(model.init_variables(jax.random.key(0)))['params']
  batch = token_batch(model.config, 8)
  single = partitioning.MeshConfig(data=1).make_mesh(jax.devices()[:1])
  logits, grads = logits_and_grads(model, params, batch, single,
                                   partitioning.logical_axis_rules('data_parallel'))
  return model, params, batch, logits, grads


@pytest.mark.parametrize('preset,sizes', MESHES)
def test_forward_and_gradients_match_single_device(eight_devices, reference, preset, sizes):
  model, params, batch, logits, grads = reference
  mesh = partitioning.MeshConfig(preset=preset, **sizes).make_mesh(eight_devices)
  rules = partitioning.logical_axis_rules(preset)
  sharded_logits, sharded_grads = logits_and_grads(model, params, batch, mesh, rules)
  assert_close(sharded_logits, logits)
  for path, expected in jax.tree_util.tree_flatten_with_path(grads)[0]:
    actual = sharded_grads
    for key in path:
      actual = actual[key.key]
    assert_close(actual, expected)

  # Parameters (and their gradients) are split as the preset says.
  mlp_in = sharded_grads['decoder']['layer_0']['mlp']['wi_0']['kernel']
  query = sharded_grads['encoder']['layer_1']['attention']['query']['kernel']
  norm = sharded_grads['decoder']['final_norm']['scale']
  embed_axis = 'fsdp' if 'fsdp' in preset else None
  model_axis = 'model' if 'model' in preset else None
  assert mlp_in.sharding.spec == P(embed_axis, model_axis)
  assert query.sharding.spec == P(embed_axis, model_axis, None)
  assert norm.sharding.spec == P(embed_axis)
  shard_shape = mlp_in.sharding.shard_shape(mlp_in.shape)
  assert shard_shape == (32 // sizes['fsdp'] if embed_axis else 32, 64 // sizes['model'])


def test_train_step_matches_single_device(eight_devices):
  """Initialization and one optimizer update agree between 1 and 8 devices."""
  model = PartiModel(small_config())
  batch = token_batch(model.config, 4)
  results = []
  for preset, devices, sizes in [('data_parallel', jax.devices()[:1], dict(data=1)),
                                 ('fsdp_model', eight_devices, dict(data=2, fsdp=2, model=2))]:
    config = partitioning.MeshConfig(preset=preset, **sizes)
    mesh = config.make_mesh(devices)
    trainer = Trainer(model, make_optimizer(1e-3), mesh, config.rules)
    state = trainer.init_state()
    initial = jax.tree.map(np.asarray, state.params)
    state, metrics = trainer.train_step(state,
                                        partitioning.host_to_global_batch(batch, mesh,
                                                                          config.rules))
    results.append((initial, jax.tree.map(np.asarray, state.params), metrics))
  (init_a, params_a, metrics_a), (init_b, params_b, metrics_b) = results
  jax.tree.map(np.testing.assert_array_equal, init_a, init_b)
  jax.tree.map(assert_close, params_b, params_a)
  assert_close(metrics_b['loss'], metrics_a['loss'])
  assert int(metrics_a['num_tokens']) == batch['decoder_loss_weights'].sum()
