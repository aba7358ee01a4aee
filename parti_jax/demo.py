"""`make demo`: the tiny Parti model learning a synthetic text -> image-token task.

Each caption is a few random text ids; its "image" is a grid of runs of
codebook ids, one run per text id (a fixed mapping). The model must read the
caption through cross-attention and lay the runs out in raster order, so the
loss only falls if the encoder, the cross-attention and the causal decoder all
work. Later issues replace these tokens with the real shapes pipeline.
"""
import time
from typing import Dict, Iterator

import jax
import numpy as np

from parti_jax import cli, gin_utils, partitioning
from parti_jax.config import TransformerConfig
from parti_jax.trainer import Trainer, make_optimizer


def synthetic_token_batches(cfg: TransformerConfig, batch_size: int,
                            seed: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  # Text id -> codebook id, fixed for the whole run.
  codebook_of = np.random.default_rng(1234).integers(0, cfg.image_vocab_size,
                                                     cfg.text_vocab_size)
  while True:
    text = np.zeros((batch_size, cfg.max_text_length), np.int32)
    image = np.zeros((batch_size, cfg.image_length), np.int32)
    for row in range(batch_size):
      words = rng.integers(2, cfg.text_vocab_size, rng.integers(1, 5))
      text[row, :len(words)] = words
      text[row, len(words)] = 1  # EOS
      runs = np.array_split(np.arange(cfg.image_length), len(words))
      for word, run in zip(words, runs):
        image[row, run] = codebook_of[word]
    inputs = np.concatenate([np.full((batch_size, 1), cfg.bos_id, np.int32), image[:, :-1]], 1)
    yield dict(encoder_input_tokens=text, decoder_input_tokens=inputs,
               decoder_target_tokens=image,
               decoder_loss_weights=np.ones(image.shape, np.float32))


def main(argv=None) -> None:
  p = cli.parser(__doc__)
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--batch_size', type=int, default=16)
  p.add_argument('--learning_rate', type=float, default=3e-3)
  args = cli.parse_with_gin(p, argv)
  model = gin_utils.PartiModel()
  mesh_config = gin_utils.MeshConfig()
  mesh = mesh_config.make_mesh()
  trainer = Trainer(model, make_optimizer(args.learning_rate, name='adamw', weight_decay=0.0),
                    mesh, mesh_config.rules)
  state = trainer.init_state()
  batches = synthetic_token_batches(model.config, args.batch_size)
  print(f'parti_tiny on {len(jax.devices())} {jax.devices()[0].platform} device(s), '
        f'{args.steps} steps of batch {args.batch_size}', flush=True)
  start = time.time()
  for step in range(1, args.steps + 1):
    batch = partitioning.host_to_global_batch(next(batches), mesh, mesh_config.rules)
    state, metrics = trainer.train_step(state, batch)
    if step == 1 or step % 25 == 0 or step == args.steps:
      print(f'step {step:4d}  loss {float(metrics["loss"]):.4f}  '
            f'token accuracy {float(metrics["accuracy"]):.3f}  ({time.time() - start:.0f} s)',
            flush=True)


if __name__ == '__main__':
  cli.run(main)
