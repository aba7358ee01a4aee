"""The benchmark commands run and report what they promise (no timing asserts)."""
import json

from tests.conftest import run_module


def test_train_benchmark_reports_mfu_and_checkpoint_cost():
  result = run_module('parti_jax.bench', 'train', '--preset=tiny', '--steps=2')
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  for key in ('step_time_s', 'mfu', 'peak_flops', 'checkpoint_save_s', 'checkpoint_overhead'):
    assert report[key] > 0, key
  assert report['preset'] == 'tiny' and report['checkpoint_every'] == 100
