"""The benchmark commands run and report what they promise (no timing asserts)."""
import json

import pytest

from tests.conftest import run_module


@pytest.mark.slow
def test_train_benchmark_reports_mfu_and_checkpoint_cost():
  result = run_module('parti_jax.bench', 'train', '--preset=tiny', '--steps=2')
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  for key in ('step_time_s', 'mfu', 'peak_flops', 'checkpoint_save_s', 'checkpoint_overhead'):
    assert report[key] > 0, key
  assert report['preset'] == 'tiny' and report['checkpoint_every'] == 100


@pytest.mark.slow
def test_decode_benchmark_reports_cached_and_uncached_times():
  result = run_module('parti_jax.bench', 'decode', '--preset=tiny', '--steps=1',
                      '--attention_block=16')
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  for key in ('seconds_per_batch', 'image_tokens_per_s', 'no_cache_seconds_per_batch',
              'forward16_s'):
    assert report[key] > 0, key
  assert report['rows'] == 16 and report['cfg_scale'] == 1.2
  assert report['attention_block'] == 16


@pytest.mark.slow
def test_decode_benchmark_splits_the_model_over_cpu_devices():
  result = run_module('parti_jax.bench', 'decode', '--preset=tiny', '--steps=1',
                      '--cpu_devices=2', '--model_parallel=2', '--dtype=bfloat16',
                      '--cache_dtype=float32', '--skip_no_cache')
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['mesh'] == {'data': 1, 'fsdp': 1, 'model': 2}
  assert len(report['devices']) == 2 and report['seconds_per_batch'] > 0
  assert report['config']['decode_cache_dtype'] == 'float32'
  assert 'no_cache_seconds_per_batch' not in report
