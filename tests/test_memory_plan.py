"""The memory planner's per-device bytes against direct counts."""
import math

import flax.linen as nn
import jax
import pytest

from parti_jax import partitioning
from parti_jax.models import PartiModel
from parti_jax.tools import memory_plan
from tests.conftest import small_config


def test_per_device_bytes_divide_by_the_mesh():
  model = PartiModel(small_config(emb_dim=64, mlp_dim=128))
  params = nn.unbox(model.abstract_variables())['params']
  total = 4 * sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  dp = memory_plan.plan(model, partitioning.MeshConfig(preset='data_parallel'), 8, 64)
  assert dp['per_device_bytes']['params'] == total
  assert dp['batch_per_device'] == 8
  fsdp = memory_plan.plan(model, partitioning.MeshConfig(preset='fsdp', data=1, fsdp=-1), 8, 64)
  # Every parameter has an embed dimension of 64, split 8 ways.
  assert fsdp['per_device_bytes']['params'] == total // 8
  tp = memory_plan.plan(model, partitioning.MeshConfig(preset='data_model', data=2, model=4), 8,
                        64)
  assert total // 4 < tp['per_device_bytes']['params'] < total // 2
  assert tp['per_device_bytes']['gradients'] == tp['per_device_bytes']['params']


def test_activation_estimate_shrinks_with_remat_and_model_parallelism():
  cfg = small_config(max_text_length=128, image_grid=(32, 32), emb_dim=1024, num_heads=16,
                     num_encoder_layers=12, num_decoder_layers=12)
  full = memory_plan.activation_bytes(cfg, 8, 1)
  assert memory_plan.activation_bytes(cfg, 8, 4) < full
  remat = small_config(**{**cfg.__dict__, 'remat_policy': 'full'})
  assert memory_plan.activation_bytes(remat, 8, 1) < full / 5
  assert memory_plan.activation_bytes(cfg, 16, 1) > 1.9 * full


def test_a_run_preset_gives_the_devices_and_the_microbatch(capsys):
  """`--gin_file=runs/<preset>.gin` alone plans what the preset runs: its pinned
  mesh's devices and one microbatch; a mesh left open needs --num_devices."""
  import gin  # pylint: disable=import-outside-toplevel
  from parti_jax import gin_utils  # pylint: disable=import-outside-toplevel
  from parti_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  try:
    memory_plan.main(['--gin_file=runs/parti_350m_v6e_8.gin'])
    printed = capsys.readouterr().out
    # v6e-8: data=8; BATCH_SIZE 8192 in 128 microbatches.
    assert 'mesh data=8 x fsdp=1 x model=1, global batch 64 (8 per data shard)' in printed
    assert 'one of 128 microbatches of the batch of 8192' in printed
    expected = memory_plan.plan(gin_utils.PartiModel(), gin_utils.MeshConfig(), 8, 64)
    assert memory_plan.format_plan(expected) in printed
    gin.clear_config()
    with pytest.raises(ConfigError, match='give --num_devices'):
      memory_plan.main(['--gin_file=models/parti_tiny.gin'])
  finally:
    gin.clear_config()
