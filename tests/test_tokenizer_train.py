"""The tokenizer training command: checkpoints, resume, preemption (SIGTERM),
the API, stage 2."""
import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from parti_jax import checkpoints
from parti_jax.tokenizer import api
from tests.conftest import REPO, run_module

MICRO = [
    '--gin_file=tokenizer/vit_vqgan_tiny.gin', '--gin_file=data/shapes.gin',
    '--gin.ShapesDataset.resolution=32', '--gin.VitVqganConfig.image_size=32',
    '--gin.VitVqganConfig.patch_size=8',
    '--gin.VitVqganConfig.encoder_layers=1', '--gin.VitVqganConfig.decoder_layers=1',
    '--gin.VitVqganConfig.encoder_dim=32', '--gin.VitVqganConfig.decoder_dim=32',
    '--gin.VitVqganConfig.encoder_mlp_dim=64', '--gin.VitVqganConfig.decoder_mlp_dim=64',
    '--gin.VitVqganConfig.codebook_size=32', '--gin.Discriminator.channels=(8, 16)',
    '--gin.train_tokenizer.batch_size=8', '--gin.train_tokenizer.eval_examples=16',
    '--gin.train_tokenizer.checkpoint_every=3', '--gin.train_tokenizer.eval_every=3',
    '--gin.train_tokenizer.log_every=3', '--gin.LossWeights.adversarial_start_step=4',
]


def train(model_dir, steps, *extra):
  result = run_module('parti_jax.tokenizer.train', *MICRO, f'--gin.MODEL_DIR="{model_dir}"',
                      f'--gin.train_tokenizer.train_steps={steps}', *extra)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def train_until_sigterm(model_dir, after_step: int):
  """Runs the job towards 1000 steps and sends it SIGTERM (a preempted TPU VM)
  once it logs `after_step`; returns (the step it saved, its log)."""
  args = [sys.executable, '-m', 'parti_jax.tokenizer.train', *MICRO,
          f'--gin.MODEL_DIR="{model_dir}"', '--gin.train_tokenizer.train_steps=1000',
          '--gin.train_tokenizer.log_every=1', '--gin.train_tokenizer.checkpoint_every=1000',
          '--gin.train_tokenizer.eval_every=1000']
  job = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  seen = []
  for line in job.stderr:
    seen.append(line)
    logged = re.search(r'step (\d+)/1000', line)
    if logged and int(logged.group(1)) >= after_step:
      job.send_signal(signal.SIGTERM)
      break
  _, rest = job.communicate(timeout=120)
  log = ''.join(seen) + rest
  assert job.returncode == 143, log[-3000:]
  return int(re.search(r'preempted: saved step (\d+)', log).group(1)), log


def test_train_resume_load_and_fine_tune(tmp_path):
  stage1 = tmp_path / 'stage1'
  metrics, log = train(stage1, 3)
  assert metrics['steps'] == 3 and 0 < metrics['eval_codebook_usage'] <= 1
  assert 'NO VGG16 WEIGHTS' in log and 'step 3/3' in log
  assert os.path.exists(stage1 / 'config.gin')
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(stage1))

  # A second run with more steps resumes where the first stopped and enters
  # the adversarial phase at step 4; SIGTERM after it makes it save the step
  # it reached (between checkpoints) and exit with 143.
  saved_step, log = train_until_sigterm(stage1, after_step=4)
  assert 'resumed from step 3' in log and saved_step >= 4
  saved = checkpoints.Checkpointer(str(stage1 / 'checkpoints'))
  assert saved.latest_step() == saved_step
  saved.close()

  tokenizer = api.ImageTokenizer.from_checkpoint(str(stage1 / 'checkpoints'))
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
  ids = tokenizer.encode(images)
  assert ids.shape == (2, 16)
  assert tokenizer.decode(ids).shape == (2, 32, 32, 3)

  # Stage 2: a new, larger decoder on the frozen stage-1 encoder and codebook.
  stage2 = tmp_path / 'stage2'
  train(stage2, 2, f'--gin.train_tokenizer.init_from="{stage1 / "checkpoints"}"',
        "--gin.train_tokenizer.frozen=('encoder', 'quantizer')",
        '--gin.train_tokenizer.restart_unused_after=0',
        '--gin.VitVqganConfig.decoder_layers=2', "--gin.VitVqganConfig.output_head='linear'")
  _, before = api.load_generator(str(stage1 / 'checkpoints'))
  config, after = api.load_generator(str(stage2 / 'checkpoints'))
  assert config.decoder_layers == 2 and config.output_head == 'linear'
  for module in ('encoder', 'quantizer'):
    jax.tree.map(np.testing.assert_array_equal, before[module], after[module])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  result = run_module('parti_jax.tokenizer.train', *MICRO, f'--gin.MODEL_DIR="{tmp_path}"',
                      f'--gin.train_tokenizer.init_from="{tmp_path / "nothing"}"')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith('error: no tokenizer checkpoint in')


@pytest.mark.slow  # 26 s; the folder source itself is tested fast in test_data_sources.py.
def test_training_on_a_folder_of_photo_crops(tmp_path):
  """The tokenizer trains on the user's own images (data/folder.gin), held-out
  metrics from the validation folder; crops as photo_crops writes them."""
  from parti_jax.tools import photo_crops  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  photos = {f'photo{i}': rng.integers(0, 256, (48, 40, 3), np.uint8) for i in range(3)}
  assert photo_crops.write_crops(photos, str(tmp_path / 'train'), 32, 4, seed=0) == 12
  assert photo_crops.write_crops({'other': photos.pop('photo0')}, str(tmp_path / 'held_out'),
                                 32, 8, seed=1) == 8
  folder = [arg for arg in MICRO if 'shapes' not in arg.lower()] + [
      '--gin_file=data/folder.gin', f'--gin.DATA_ROOT="{tmp_path / "train"}"',
      f'--gin.VALIDATION_ROOT="{tmp_path / "held_out"}"', '--gin.data_task.image_size=32']
  result = run_module('parti_jax.tokenizer.train', *folder,
                      f'--gin.MODEL_DIR="{tmp_path / "run"}"',
                      '--gin.train_tokenizer.train_steps=3')
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert metrics['steps'] == 3 and np.isfinite(metrics['eval_psnr'])


def test_photographs_load_as_rgb():
  pytest.importorskip('skimage')
  from parti_jax.tools import photo_crops  # pylint: disable=import-outside-toplevel
  photos = photo_crops.load_photographs(['camera', 'astronaut'])
  assert photos['camera'].shape == (512, 512, 3) and photos['camera'].dtype == np.uint8
  assert not set(photo_crops.TRAIN_PHOTOS) & set(photo_crops.HELD_OUT_PHOTOS)
