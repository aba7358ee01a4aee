"""Test setup: 8 fake CPU devices, so meshes such as 2x4 can be tested here.

XLA reads the flag when JAX initializes, so it is set before anything imports jax.
"""
import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

from parti_jax.config import TransformerConfig  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(**overrides) -> TransformerConfig:
  """Every architectural feature at a size that compiles in seconds; head,
  MLP and vocab sizes divide by 4 so a model=4 mesh axis can split them."""
  # One causal query block: at 16 positions blocks save nothing and double
  # the compile time of some graphs; tests that need blocks ask for them.
  values = dict(text_vocab_size=100, image_vocab_size=64, max_text_length=8, image_grid=(4, 4),
                emb_dim=32, num_heads=4, mlp_dim=64, num_encoder_layers=2,
                num_decoder_layers=2, dropout_rate=0.0, causal_query_blocks=1)
  values.update(overrides)
  return TransformerConfig(**values)


def token_batch(cfg: TransformerConfig, batch_size: int, seed: int = 0) -> dict:
  """Random feature batch whose captions have different lengths (then padding)."""
  rng = np.random.default_rng(seed)
  text = np.zeros((batch_size, cfg.max_text_length), np.int32)
  for row in range(batch_size):
    n = 1 + row % cfg.max_text_length
    text[row, :n] = rng.integers(2, cfg.text_vocab_size, n)
  image = rng.integers(0, cfg.image_vocab_size, (batch_size, cfg.image_length)).astype(np.int32)
  inputs = np.concatenate([np.full((batch_size, 1), cfg.bos_id, np.int32), image[:, :-1]], 1)
  weights = np.ones(image.shape, np.float32)
  weights[0, -3:] = 0  # Some targets excluded from the loss.
  return dict(encoder_input_tokens=text, decoder_input_tokens=inputs,
              decoder_target_tokens=image, decoder_loss_weights=weights)


def run_module(module: str, *args: str, timeout: int = 300):
  """Runs `python -m module args` from the repository root; returns the result."""
  import subprocess  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def write_random_tokenizer(directory, image_size: int, patch_size: int,
                           codebook_size: int = 64) -> None:
  """A tiny, randomly initialized tokenizer checkpoint: deterministic codes
  for the data and training paths, without training one."""
  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp
  from flax import linen as nn
  from parti_jax.checkpoints import Checkpointer
  from parti_jax.tokenizer import api
  from parti_jax.tokenizer.config import VitVqganConfig
  from parti_jax.tokenizer.model import VitVqgan
  # pylint: enable=import-outside-toplevel
  config = VitVqganConfig(image_size=image_size, patch_size=patch_size, encoder_layers=1,
                          encoder_dim=16, encoder_heads=2, encoder_mlp_dim=32, decoder_layers=1,
                          decoder_dim=16, decoder_heads=2, decoder_mlp_dim=32,
                          codebook_size=codebook_size, lookup_dim=4)
  params = nn.unbox(VitVqgan(config).init(jax.random.key(0),
                                          jnp.zeros((1, image_size, image_size, 3))))
  checkpointer = Checkpointer(str(directory))
  checkpointer.save(1, {'generator': params['params']},
                    {api.CONFIG_KEY: api.config_to_json(config)})
  checkpointer.close()


def write_random_model(root):
  """A random small Parti export (root/model, byte vocabulary) and a tokenizer
  to match (root/tokenizer, 16x16 images, 16 tokens of 64 codes): what the
  generating commands need, in seconds. Returns root."""
  # pylint: disable=import-outside-toplevel
  from flax import linen as nn
  from parti_jax import export
  from parti_jax.models import PartiModel
  # pylint: enable=import-outside-toplevel
  write_random_tokenizer(root / 'tokenizer', image_size=16, patch_size=4, codebook_size=64)
  cfg = small_config(text_vocab_size=300)  # bytes: 259 ids
  params = nn.unbox(PartiModel(cfg).init_variables(jax.random.key(0)))['params']
  export.export_params(str(root / 'model'), 7, params, cfg, {export.VOCABULARY_KEY: None})
  return root


@pytest.fixture(scope='session')
def eight_devices():
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip(f'needs 8 devices, have {len(devices)}')
  return devices[:8]
