"""Entry points: a bad gin binding, file or mesh preset ends in one clear line."""
import json

import pytest

from tests.conftest import run_module

PLAN = 'parti_jax.tools.memory_plan'


@pytest.mark.parametrize('args,message', [
    (['--gin.TransformerConfig.emd_dim=3'], "doesn't have a parameter named 'emd_dim'"),
    (['--gin.MeshConfig.preset="tensor"'], "unknown mesh preset 'tensor'"),
    (['--gin_file=mesh/no_such.gin'], 'gin file not found: mesh/no_such.gin'),
    (['--gin.NoSuchThing.x=1'], "No configurable matching 'NoSuchThing'"),
    (['--gin.MeshConfig.model'], 'needs the form --gin.NAME=VALUE'),
])
def test_config_errors_are_one_line(args, message):
  result = run_module(PLAN, '--gin_file=models/parti_tiny.gin', '--num_devices=8', *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('error: ') and message in lines[0]


def test_memory_plan_for_20b_on_1024_devices():
  result = run_module(PLAN, '--gin_file=models/parti_20b.gin', '--gin_file=mesh/fsdp_model.gin',
                      '--num_devices=1024', '--batch_size=1024')
  assert result.returncode == 0, result.stderr
  plan = json.loads(result.stdout.strip().splitlines()[-1])
  assert plan['mesh'] == {'data': 1, 'fsdp': 128, 'model': 8}
  assert 19.5e9 < plan['num_params'] < 21.5e9
  per_device = plan['per_device_bytes']
  # float32 parameters split 1024 ways (a few small vectors are only split 128 ways).
  assert 4 * plan['num_params'] / 1024 <= per_device['params'] < 1.05 * 4 * plan['num_params'] / 1024
  assert per_device['optimizer_adafactor'] < per_device['optimizer_adamw']
  assert 'total with adamw' in result.stdout
