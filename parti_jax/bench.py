"""Benchmarks. `python -m parti_jax.bench train --preset=bench-s` prints one
JSON object (its last line) with the figures and the configuration measured.
"""
import argparse
import dataclasses
import json
import sys

import jax
import numpy as np

from parti_jax import flops, partitioning, timing
from parti_jax.config import TransformerConfig
from parti_jax.models import PartiModel
from parti_jax.trainer import Trainer, make_optimizer

PRESETS = {
    # The reference shape of the issues: Parti's layout at a CPU-friendly size.
    'bench-s': dict(
        config=dict(emb_dim=512, num_heads=8, mlp_dim=2048, num_encoder_layers=6,
                    num_decoder_layers=6, max_text_length=64, image_grid=(16, 16),
                    image_vocab_size=8192, text_vocab_size=16000, dtype='float32'),
        batch_size=8),
    'tiny': dict(
        config=dict(emb_dim=128, num_heads=4, mlp_dim=512, num_encoder_layers=2,
                    num_decoder_layers=2, max_text_length=32, image_grid=(8, 8),
                    image_vocab_size=512, text_vocab_size=1000, dtype='float32'),
        batch_size=8),
}


def random_batch(cfg: TransformerConfig, batch_size: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  text = rng.integers(2, cfg.text_vocab_size, (batch_size, cfg.max_text_length), np.int32)
  image = rng.integers(0, cfg.image_vocab_size, (batch_size, cfg.image_length), np.int32)
  decoder_inputs = np.concatenate([np.full((batch_size, 1), cfg.bos_id, np.int32),
                                   image[:, :-1]], axis=1)
  return dict(encoder_input_tokens=text, decoder_input_tokens=decoder_inputs,
              decoder_target_tokens=image,
              decoder_loss_weights=np.ones(image.shape, np.float32))


def bench_train(preset: dict, steps: int, dropout_rate: float) -> dict:
  cfg = TransformerConfig(**preset['config'], dropout_rate=dropout_rate)
  batch_size = preset['batch_size']
  peak = timing.matmul_peak_flops()
  mesh_config = partitioning.MeshConfig()
  mesh = mesh_config.make_mesh()
  trainer = Trainer(PartiModel(cfg), make_optimizer(1e-4), mesh, mesh_config.rules)
  state = trainer.init_state()
  batch = partitioning.host_to_global_batch(random_batch(cfg, batch_size), mesh,
                                            mesh_config.rules)
  for _ in range(2):  # Compile and warm up.
    state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)

  def step():
    nonlocal state
    state, m = trainer.train_step(state, batch)
    jax.block_until_ready(m)

  result = timing.measure(step, steps)
  step_time = result['median_s']
  flops_per_step = flops.train_flops(cfg, batch_size, cfg.max_text_length, cfg.image_length)
  return {
      'benchmark': 'train',
      'step_time_s': step_time,
      'tokens_per_s': batch_size * (cfg.max_text_length + cfg.image_length) / step_time,
      'image_tokens_per_s': batch_size * cfg.image_length / step_time,
      'flops_per_step': flops_per_step,
      'peak_flops': peak,
      'mfu': flops_per_step / step_time / peak,
      'timing': result,
      'batch_size': batch_size,
      'config': dataclasses.asdict(cfg),
      'optimizer': 'adafactor',
      'devices': [str(d) for d in jax.devices()],
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('what', choices=['train'])
  parser.add_argument('--preset', default='bench-s', choices=sorted(PRESETS))
  parser.add_argument('--steps', type=int, default=5, help='timed repetitions')
  parser.add_argument('--dropout_rate', type=float, default=0.0)
  args = parser.parse_args(argv)
  result = bench_train(PRESETS[args.preset], args.steps, args.dropout_rate)
  result['preset'] = args.preset
  print(json.dumps(result))
  sys.stdout.flush()


if __name__ == '__main__':
  main()
