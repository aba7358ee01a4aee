"""The training job end to end: loss falls, exact resume after SIGKILL,
SIGTERM saves and exits, damaged checkpoints are skipped, two processes train
together, and configuration mistakes end in one line.

Runs are subprocesses of `python -m parti_jax.train` at a very small size:
16x16 shapes images, a random 4x4-patch tokenizer (16 tokens from 64 codes)
and parti_tiny shrunk to that grid, on the 8 fake CPU devices.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from parti_jax import checkpoints, export, partitioning, train
from parti_jax.errors import TrainingStopped
from parti_jax.models import PartiModel
from parti_jax.trainer import Trainer, make_optimizer
from tests.conftest import REPO, run_module, small_config, write_random_tokenizer

STEPS = 6


@pytest.fixture(scope='module')
def tokenizer_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('tokenizer')
  write_random_tokenizer(directory, image_size=16, patch_size=4, codebook_size=64)
  return directory


def train_args(model_dir, tokenizer, steps=STEPS, *extra):
  return ('--gin_file=models/parti_tiny.gin', '--gin_file=runs/pretrain_tiny.gin',
          '--gin_file=data/shapes.gin', f'--gin.MODEL_DIR="{model_dir}"',
          f'--gin.TRAIN_STEPS={steps}', '--gin.BATCH_SIZE=8',
          '--gin.TransformerConfig.image_grid=(4, 4)',
          '--gin.TransformerConfig.image_vocab_size=64', '--gin.ShapesDataset.resolution=16',
          '--gin.data_task.image_size=16', f'--gin.train.tokenizer_dir="{tokenizer}"',
          '--gin.train.checkpoint_every=2', '--gin.train.log_every=1',
          '--gin.train.eval_every=1000', '--gin.train.peak_flops_per_device=1e11', *extra)


def run_train(*args, timeout=300):
  result = run_module('parti_jax.train', *args, timeout=timeout)
  return result


def final_metrics(result):
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def exported_params(model_dir):
  config, params = export.load_exported(os.path.join(model_dir, 'params'))
  step = checkpoints.Checkpointer(os.path.join(model_dir, 'params')).latest_step()
  assert config.image_grid == (4, 4)
  return step, jax.device_get(params)


def hook_gin_file(tmp_path, at_step, signal_name):
  path = tmp_path / f'{signal_name}.gin'
  path.write_text('import tests.train_hooks\n'
                  'train.sample_fn = @send_signal_at\n'
                  'train.sample_every = 1\n'
                  f'send_signal_at.at_step = {at_step}\n'
                  f"send_signal_at.signal_name = '{signal_name}'\n")
  return f'--gin_file={path}'


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory, tokenizer_dir):
  """An uninterrupted run of STEPS steps."""
  model_dir = tmp_path_factory.mktemp('reference')
  result = run_train(*train_args(model_dir, tokenizer_dir))
  return model_dir, final_metrics(result), result


def test_loss_falls_and_outputs_are_written(reference_run, tokenizer_dir, tmp_path):
  model_dir, _, _ = reference_run
  del model_dir
  longer = tmp_path / 'longer'
  # Checkpoints every 10 steps, not 2: saving is tested elsewhere, and 15
  # saves were most of this run's time.
  result = run_train(*train_args(longer, tokenizer_dir, 30, '--gin.train.log_every=10',
                                 '--gin.train.checkpoint_every=10',
                                 '--gin.train.profile_steps=(2, 2)'))
  metrics = final_metrics(result)
  losses = [float(line.split('loss ')[1].split()[0]) for line in result.stderr.splitlines()
            if ' loss ' in line and 'step ' in line]
  assert len(losses) == 3, result.stderr[-2000:]
  assert losses[-1] < 0.7 * losses[0], losses
  assert metrics['step'] == 30 and np.isfinite(metrics['loss'])
  for key in ('accuracy', 'learning_rate', 'grad_norm', 'steps_per_s', 'target_tokens_per_s',
              'mfu', 'skipped_updates'):
    assert key in metrics, key
  assert 'eval/loss' in metrics  # shapes has a validation split
  operative = (longer / 'config.gin').read_text()
  assert 'BATCH_SIZE = 8' in operative and 'train.batch_size = %BATCH_SIZE' in operative
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(longer))
  step, _ = exported_params(longer)
  assert step == 30
  traces = [name for _, _, names in os.walk(longer / 'profile') for name in names]
  assert any(name.endswith('.xplane.pb') for name in traces), traces


def test_nonfinite_policy_stops_naming_the_last_checkpoint_or_skips(tmp_path):
  saved = checkpoints.Checkpointer(str(tmp_path))
  saved.save(4, {'params': {'w': np.zeros(3)}})
  bad, good = {'nonfinite': 1.0, 'loss': float('inf')}, {'nonfinite': 0.0, 'loss': 1.0}
  assert not train._check_finite(6, good, 'stop', saved)  # pylint: disable=protected-access
  assert train._check_finite(6, bad, 'skip', saved)  # pylint: disable=protected-access
  with pytest.raises(TrainingStopped,
                     match=f'not finite at step 6 .*last good checkpoint is step 4 in {re.escape(str(tmp_path))}'):
    train._check_finite(6, bad, 'stop', saved)  # pylint: disable=protected-access
  saved.close()


# Slow: the policy's logic is tested above; these run it through the job.
@pytest.mark.slow
@pytest.mark.parametrize('policy', ['stop', 'skip'])
def test_nonfinite_loss_policy(tokenizer_dir, tmp_path, policy):
  """An absurd learning rate makes the loss infinite after the first update:
  'stop' names the step and the last good checkpoint; 'skip' drops and counts."""
  result = run_train(*train_args(tmp_path, tokenizer_dir, 4), '--gin.LEARNING_RATE=1e30',
                     f"--gin.train.on_nonfinite='{policy}'")
  if policy == 'stop':
    assert result.returncode == 1
    stopped = [l for l in result.stderr.splitlines() if l.startswith('stopped:')]
    assert len(stopped) == 1 and 'not finite at step' in stopped[0], result.stderr[-2000:]
    assert 'checkpoint' in stopped[0]
  else:
    metrics = final_metrics(result)
    assert metrics['skipped_updates'] >= 1
    assert 'update skipped' in result.stderr


def test_sigkill_then_resume_equals_an_uninterrupted_run(reference_run, tokenizer_dir, tmp_path):
  model_dir, reference, _ = reference_run
  killed = tmp_path / 'killed'
  result = run_train(*train_args(killed, tokenizer_dir),
                     hook_gin_file(tmp_path, at_step=5, signal_name='SIGKILL'))
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  saved = checkpoints.Checkpointer(str(killed / 'checkpoints'))
  assert saved.latest_step() in (2, 4)  # Step 4's async save may or may not have finished.
  saved.close()
  resumed = run_train(*train_args(killed, tokenizer_dir))
  metrics = final_metrics(resumed)
  assert 'resumed from step' in resumed.stderr
  assert metrics['loss'] == pytest.approx(reference['loss'], abs=1e-6)
  _, expected = exported_params(model_dir)
  step, actual = exported_params(killed)
  assert step == STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), actual, expected)
  examples_seen = checkpoints.Checkpointer(str(killed / 'checkpoints')).metadata()['examples_seen']
  assert examples_seen == STEPS * 8


# Slow: the two-process test below ends by SIGTERM too, checking the same save.
@pytest.mark.slow
def test_sigterm_saves_the_step_reached_and_exits_143(tokenizer_dir, tmp_path):
  model_dir = tmp_path / 'preempted'
  result = run_train(*train_args(model_dir, tokenizer_dir),
                     hook_gin_file(tmp_path, at_step=3, signal_name='SIGTERM'))
  assert result.returncode == 143, result.stderr[-2000:]
  assert 'preempted: saved step 3' in result.stderr
  saved = checkpoints.Checkpointer(str(model_dir / 'checkpoints'))
  assert saved.latest_step() == 3
  assert saved.metadata()['examples_seen'] == 3 * 8
  saved.close()


@pytest.mark.slow  # test_checkpoints.py checks the fallback itself, fast.
def test_a_damaged_latest_checkpoint_is_skipped(reference_run, tokenizer_dir, tmp_path):
  model_dir, _, _ = reference_run
  copy = tmp_path / 'damaged'
  subprocess.run(['cp', '-r', str(model_dir), str(copy)], check=True)
  params_dir = copy / 'checkpoints' / str(STEPS) / 'params'
  files = [os.path.join(root, name) for root, _, names in os.walk(params_dir) for name in names]
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)
  result = run_train(*train_args(copy, tokenizer_dir, STEPS + 2))
  final_metrics(result)
  assert f'checkpoint {copy / "checkpoints"}/{STEPS} is damaged' in result.stderr
  assert f'resumed from step {STEPS - 2}' in result.stderr


@pytest.mark.parametrize('target_mesh', [pytest.param(dict(data=1), marks=pytest.mark.slow),
                                         dict(data=4, model=2)])
def test_checkpoint_restores_on_another_mesh(eight_devices, tmp_path, target_mesh):
  """Written on a 2x4 (data x model) mesh of 8 devices; restored on 1 device
  and on a 4x2 mesh with the same values."""
  cfg = small_config()

  def make_trainer(devices, **axes):
    config = partitioning.MeshConfig(preset='data_model', **axes)
    return Trainer(PartiModel(cfg), make_optimizer(1e-3), config.make_mesh(devices),
                   config.rules)

  writer = make_trainer(eight_devices, data=2, model=4)
  state = writer.init_state()
  saver = checkpoints.Checkpointer(str(tmp_path))
  items = {'params': state.params, 'opt_state': state.opt_state}
  saver.save(1, items)
  saver.close()
  devices = eight_devices[:1] if target_mesh == dict(data=1) else eight_devices
  reader = make_trainer(devices, **target_mesh)
  abstract = checkpoints.abstract_like(
      {'params': reader.abstract_state().params, 'opt_state': reader.abstract_state().opt_state},
      {'params': reader.state_shardings.params, 'opt_state': reader.state_shardings.opt_state})
  restored = checkpoints.Checkpointer(str(tmp_path)).restore(abstract)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(items))
  leaf = jax.tree.leaves(restored['params'])[0]
  assert leaf.sharding.mesh.devices.size == len(devices)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_two_processes(model_dir, tokenizer, steps, extra_for_process_0=()):
  """`python -m parti_jax.train` as two local processes of one jax.distributed
  job (coordinator on 127.0.0.1, 2 CPU devices each); [(status, stdout, stderr)]."""
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=REPO,
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'parti_jax.train',
       *train_args(model_dir, tokenizer, steps),
       f"--gin.initialize.coordinator_address='127.0.0.1:{port}'",
       '--gin.initialize.num_processes=2', f'--gin.initialize.process_id={i}',
       *(extra_for_process_0 if i == 0 else ())],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=400) for p in procs]
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def test_two_processes_train_and_save_one_step_on_sigterm(tokenizer_dir, tmp_path):
  """Two jax.distributed processes train together and agree on every loss.
  Only process 0 gets SIGTERM (after step 3); jax's preemption sync point has
  both save the same agreed step and exit with 143; one process alone then
  restores that checkpoint."""
  model_dir = tmp_path / 'two_hosts'
  results = run_two_processes(model_dir, tokenizer_dir, 30,
                              [hook_gin_file(tmp_path, at_step=3, signal_name='SIGTERM')])
  saved_steps, losses = [], []
  for status, _, err in results:
    assert status == 143, err[-3000:]
    line = [l for l in err.splitlines() if 'preempted: saved step' in l]
    assert len(line) == 1, err[-2000:]
    saved_steps.append(int(line[0].split('saved step ')[1].split()[0]))
    losses.append([l.split(' loss ')[1].split()[0] for l in err.splitlines()
                   if ' loss ' in l and 'step ' in l])
  assert 'process 0 of 2; 2 local and 4 global devices' in results[0][2]
  assert saved_steps[0] == saved_steps[1] and 3 < saved_steps[0] < 30
  assert losses[0] == losses[1] and len(losses[0]) >= saved_steps[0]
  saved = checkpoints.Checkpointer(str(model_dir / 'checkpoints'))
  assert saved.latest_step() == saved_steps[0]
  assert saved.metadata()['examples_seen'] == saved_steps[0] * 8
  saved.close()
  config, params = export.load_exported(str(model_dir / 'checkpoints'))
  assert config.image_grid == (4, 4)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(params)))


@pytest.mark.parametrize('args, message', [
    (('--gin.train.no_such_setting=1',), 'no_such_setting'),
    (('--gin_file=runs/no_such_file.gin',), 'gin file not found: runs/no_such_file.gin'),
])
def test_configuration_mistakes_end_in_one_line(tmp_path, tokenizer_dir, args, message):
  result = run_train(*train_args(tmp_path, tokenizer_dir), *args)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]


# Slow: the pre-tokenized task is tested fast in test_data_tasks.py; this adds
# the job's wiring (data/pretokenized.gin), which the smoke demo also runs.
@pytest.mark.slow
def test_training_on_pretokenized_shards(tokenizer_dir, tmp_path):
  """data/pretokenized.gin: shards from the pretokenize command, text length
  and tokens per image taken from the model."""
  shapes = ('--gin_file=data/shapes.gin', '--gin.ShapesDataset.resolution=16',
            '--gin.data_task.image_size=16', f'--tokenizer_dir={tokenizer_dir}',
            '--max_examples=32', '--examples_per_shard=16', '--batch_size=8')
  made = run_module('parti_jax.data.pretokenize', *shapes, f'--output_dir={tmp_path / "tokens"}')
  assert made.returncode == 0, made.stderr[-2000:]
  args = [a for a in train_args(tmp_path / 'run', tokenizer_dir, 3)
          if 'shapes' not in a.lower() and 'data_task' not in a and 'tokenizer_dir' not in a]
  result = run_train(*args, '--gin_file=data/pretokenized.gin',
                     f'--gin.TOKENS_DIR="{tmp_path / "tokens"}"')
  metrics = final_metrics(result)
  assert metrics['step'] == 3 and 'no validation split' in result.stderr


@pytest.mark.slow
def test_skipped_examples_reach_the_metrics(tokenizer_dir, tmp_path):
  """A folder with a malformed line, a missing file and an empty caption: the
  run trains on the rest and reports the skips by reason."""
  from tests.test_data_tasks import write_folder  # pylint: disable=import-outside-toplevel
  write_folder(tmp_path / 'photos', 8)
  args = [a for a in train_args(tmp_path / 'run', tokenizer_dir, 2)
          if 'shapes' not in a.lower()]
  result = run_train(*args, '--gin_file=data/folder.gin',
                     f'--gin.DATA_ROOT="{tmp_path / "photos"}"')
  metrics = final_metrics(result)
  skipped = {k: v for k, v in metrics.items() if k.startswith('skipped_examples/')}
  assert len(skipped) >= 3 and all(v >= 1 for v in skipped.values()), metrics
