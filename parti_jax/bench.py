"""Benchmarks; each prints one JSON object (its last line) with the figures and
the configuration measured.

  python -m parti_jax.bench train --preset=bench-s
  python -m parti_jax.bench decode --preset=bench-s
  python -m parti_jax.bench tokenizer --preset=small
  python -m parti_jax.bench tokenizer --checkpoint_dir=RUN/checkpoints
  python -m parti_jax.bench data
"""
import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

from typing import Optional

import flax
import jax
import numpy as np

from parti_jax import checkpoints, flops, partitioning, timing
from parti_jax.config import TransformerConfig
from parti_jax.data.text_ids import unconditional_text_tokens
from parti_jax.decoding import SamplingConfig, Sampler
from parti_jax.data.shapes import ShapesDataset
from parti_jax.eval import reconstruction
from parti_jax.models import PartiModel
from parti_jax.tokenizer.api import ImageTokenizer
from parti_jax.tokenizer.config import VitVqganConfig
from parti_jax.tokenizer.model import VitVqgan
from parti_jax.trainer import Trainer, make_optimizer, state_items

PRESETS = {
    # The reference shape of the issues: Parti's layout at a CPU-friendly size.
    'bench-s': dict(
        config=dict(emb_dim=512, num_heads=8, mlp_dim=2048, num_encoder_layers=6,
                    num_decoder_layers=6, max_text_length=64, image_grid=(16, 16),
                    image_vocab_size=8192, text_vocab_size=16000, dtype='float32'),
        batch_size=8),
    # Parti-350M (gin_configs/models/parti_350m.gin) for accelerators.
    'parti-350m': dict(
        config=dict(emb_dim=1024, num_heads=16, mlp_dim=4096, num_encoder_layers=12,
                    num_decoder_layers=12, max_text_length=128, image_grid=(32, 32),
                    image_vocab_size=8192, text_vocab_size=16000, dtype='bfloat16'),
        batch_size=16),
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


CHECKPOINT_EVERY = 100


def checkpoint_cost(current_state, step, step_time: float, overlap_steps: int = 3):
  """(seconds the loop blocks in save(), seconds the save adds to the loop).

  Saves the train state as train.py does, keeps stepping while the write runs
  in the background, then waits for it: the added time is the wall time of
  save + `overlap_steps` steps + wait, less those steps' normal time. Waiting
  for the write (a real run overlaps it with the next 100 steps) makes this
  an upper bound.
  """
  with tempfile.TemporaryDirectory() as directory:
    checkpointer = checkpoints.Checkpointer(directory)
    start = time.perf_counter()
    checkpointer.save(1, state_items(current_state()))
    blocked = time.perf_counter() - start
    for _ in range(overlap_steps):
      step()
    checkpointer.wait()
    extra = max(time.perf_counter() - start - overlap_steps * step_time, 0.0)
    checkpointer.close()
  return blocked, extra


def bench_train(preset: dict, steps: int, dropout_rate: float, dtype: Optional[str]) -> dict:
  cfg = TransformerConfig(**dict(preset['config'], dtype=dtype or preset['config']['dtype']),
                          dropout_rate=dropout_rate)
  batch_size = preset['batch_size']
  peak, peak_source = timing.device_peak_flops(cfg.compute_dtype)
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
  save_s, extra_s = checkpoint_cost(lambda: state, step, step_time)
  return {
      'benchmark': 'train',
      'step_time_s': step_time,
      'tokens_per_s': batch_size * (cfg.max_text_length + cfg.image_length) / step_time,
      'image_tokens_per_s': batch_size * cfg.image_length / step_time,
      'flops_per_step': flops_per_step,
      'peak_flops': peak,
      'peak_source': peak_source,
      'mfu': flops_per_step / step_time / (peak * jax.device_count()),
      'timing': result,
      'checkpoint_save_s': save_s,
      'checkpoint_extra_s': extra_s,
      'checkpoint_overhead': extra_s / (CHECKPOINT_EVERY * step_time),
      'checkpoint_every': CHECKPOINT_EVERY,
      'batch_size': batch_size,
      'config': dataclasses.asdict(cfg),
      'optimizer': 'adafactor',
      'devices': [str(d) for d in jax.devices()],
  }


def bench_decode(preset: dict, repeats: int, dtype: Optional[str], attention_block: int,
                 cache_dtype: Optional[str] = None, model_parallel: int = 1,
                 no_cache: bool = True, prompts: int = 8) -> dict:
  """Guided sampling of `prompts` images (2 x prompts rows through the cache),
  against the same sampling without the cache (unless `no_cache` is False)
  and one cached forward step.

  model_parallel: devices that split heads, MLP and vocabulary ('data_model'
    mesh); the rest split the rows.
  """
  cfg = TransformerConfig(**dict(preset['config'], dtype=dtype or preset['config']['dtype']),
                          decode_cache_dtype=cache_dtype, dropout_rate=0.0)
  model = PartiModel(cfg)
  mesh_config = (partitioning.MeshConfig(preset='data_model', model=model_parallel)
                 if model_parallel > 1 else partitioning.MeshConfig())
  mesh = mesh_config.make_mesh()
  sampler = Sampler(model, mesh, mesh_config.rules, attention_block)
  shardings = partitioning.shardings_from_logical(model.param_logical_axes(), mesh,
                                                  mesh_config.rules)
  params = jax.jit(lambda: flax.linen.unbox(model.init_variables(jax.random.key(0)))['params'],
                   out_shardings=shardings)()
  text = random_batch(cfg, prompts)['encoder_input_tokens']
  empty = unconditional_text_tokens(cfg.max_text_length)
  keys = jax.numpy.stack([jax.random.key(i) for i in range(prompts)])
  config = SamplingConfig()

  def sample(fn):
    return lambda: jax.block_until_ready(fn(params, text, keys, config, empty))

  cached = sample(sampler)
  start = time.perf_counter()
  cached()
  compile_s = time.perf_counter() - start
  cached_timing = timing.measure(cached, repeats)
  seconds = cached_timing['median_s']
  result = {
      'benchmark': 'decode',
      'seconds_per_batch': seconds,
      'image_tokens_per_s': prompts * cfg.image_length / seconds,
      'seconds_per_step': seconds / cfg.image_length,
      'first_call_s': compile_s,
  }
  if no_cache:
    recomputed = sample(sampler.without_cache)
    recomputed()  # Compiles.
    recompute_s = timing.measure(recomputed, 1)['median_s']
    result.update(no_cache_seconds_per_batch=recompute_s, cache_speedup=recompute_s / seconds)

  with partitioning.activate(mesh, mesh_config.rules):
    rows = np.concatenate([text, np.broadcast_to(empty, text.shape)])
    # Jitted: run op by op, the sharded encoder would queue dozens of small
    # multi-device programs, and XLA's CPU runtime can deadlock on those
    # (each waits in an all-reduce for a device whose queue is full).
    cache = jax.jit(lambda p, r: model.init_decode_cache(p, model.encode(p, r), r))(params, rows)
    step = jax.jit(model.decode_step)
    tokens = jax.numpy.zeros((2 * prompts,), jax.numpy.int32)
    forward = lambda: jax.block_until_ready(step(params, cache, tokens))
    forward()
    forward_timing = timing.measure(forward, 20)
  return dict(
      result, **{f'forward{2 * prompts}_s': forward_timing['median_s']},
      prompts=prompts, rows=2 * prompts, cfg_scale=config.cfg_scale,
      attention_block=attention_block, model_parallel=model_parallel,
      mesh=dict(zip(mesh.axis_names, mesh.devices.shape)),
      timing=cached_timing, config=dataclasses.asdict(cfg),
      devices=[str(d) for d in jax.devices()])


TOKENIZER_PRESETS = {
    # ViT-VQGAN-Small at Parti's resolution.
    'small': dict(config=dict(), batch_size=8),
    'tiny': dict(config=dict(image_size=64, patch_size=4, encoder_layers=2, encoder_dim=128,
                             encoder_heads=4, encoder_mlp_dim=512, decoder_layers=2,
                             decoder_dim=128, decoder_heads=4, decoder_mlp_dim=512,
                             codebook_size=1024, lookup_dim=8), batch_size=32),
}


def bench_tokenizer(preset: dict, steps: int, checkpoint_dir: Optional[str],
                    eval_examples: int, dtype: Optional[str]) -> dict:
  """Encode and decode throughput (and MFU) of a randomly initialized
  tokenizer; with a checkpoint, its reconstruction quality on held-out shapes."""
  config = VitVqganConfig(**dict(preset['config'], dtype=dtype or 'float32'))
  if checkpoint_dir:
    tokenizer = ImageTokenizer.from_checkpoint(checkpoint_dir)
    config = tokenizer.config
  else:
    model = VitVqgan(config)
    params = model.init(jax.random.key(0), np.zeros((1, config.image_size, config.image_size, 3),
                                                    np.float32))
    tokenizer = ImageTokenizer(config, flax.linen.unbox(params)['params'])
  batch = preset['batch_size']
  images = np.random.default_rng(0).integers(0, 256, (batch, config.image_size,
                                                      config.image_size, 3), np.uint8)
  ids = tokenizer.encode(images)
  jax.block_until_ready(tokenizer.decode(ids))
  peak, peak_source = timing.device_peak_flops(config.compute_dtype)
  encode = timing.measure(lambda: jax.block_until_ready(tokenizer.encode(images)), steps)
  decode = timing.measure(lambda: jax.block_until_ready(tokenizer.decode(ids)), steps)
  pixels = config.patch_size**2 * 3
  encode_flops = flops.vit_stack_flops(config.encoder_layers, config.encoder_dim,
                                       config.encoder_mlp_dim, config.num_tokens, pixels,
                                       config.encoder_dim, batch)
  decode_flops = flops.vit_stack_flops(config.decoder_layers, config.decoder_dim,
                                       config.decoder_mlp_dim, config.num_tokens,
                                       config.lookup_dim,
                                       config.patch_size**2 * config.output_channels, batch)
  result = {
      'benchmark': 'tokenizer',
      'encode_images_per_s': batch / encode['median_s'],
      'decode_images_per_s': batch / decode['median_s'],
      'encode_mfu': encode_flops / encode['median_s'] / peak,
      'decode_mfu': decode_flops / decode['median_s'] / peak,
      'encode_flops': encode_flops, 'decode_flops': decode_flops, 'peak_flops': peak,
      'peak_source': peak_source,
      'encode_timing': encode, 'decode_timing': decode, 'batch_size': batch,
      'config': dataclasses.asdict(config), 'checkpoint_dir': checkpoint_dir,
  }
  if checkpoint_dir:
    result.update(shapes_reconstruction(tokenizer, eval_examples, batch))
  return result


def shapes_reconstruction(tokenizer: 'ImageTokenizer', num_examples: int, batch: int) -> dict:
  """PSNR, SSIM, codebook usage and perplexity on shapes no run trains on."""
  batches = reconstruction.heldout_shapes(tokenizer.config.image_size, num_examples, batch)
  return {f'heldout_{name}': value
          for name, value in reconstruction.reconstruction_metrics(tokenizer, batches).items()}


def bench_data(num_examples: int, image_size: int, batch_size: int) -> dict:
  """Examples/s into model batches from three sources: a folder of JPEGs
  (decode, resize, crop at `image_size`), a pre-tokenized task, and shapes."""
  # Imported here: they bring in TensorFlow, which the other benchmarks do without.
  # pylint: disable=import-outside-toplevel
  import seqio
  from PIL import Image
  from parti_jax.data import pretokenize, tasks
  from parti_jax.data.pipeline import ModelBatches
  # pylint: enable=import-outside-toplevel

  vocabulary = seqio.ByteVocabulary()
  num_tokens = (image_size // 8)**2
  rng = np.random.default_rng(0)

  def random_tokens(images):
    return rng.integers(0, 8192, (len(images), num_tokens), np.int32)

  def examples_per_s(task, encode):
    batches = ModelBatches(lambda: tasks.examples(task), batch_size, 128, 8192, encode)
    next(batches)  # Start-up (tracing, first file opens) is not throughput.
    count = num_examples // batch_size
    result = timing.measure(lambda: [next(batches) for _ in range(count)], 1)
    return count * batch_size / result['median_s'], result

  with tempfile.TemporaryDirectory() as root:
    shapes = ShapesDataset(resolution=2 * image_size)
    with open(os.path.join(root, 'captions.jsonl'), 'w') as f:
      for i in range(num_examples + batch_size):
        example = shapes.example(i)
        # Photo-like: larger than the target, not square, JPEG.
        Image.fromarray(example['image'][:, : 3 * image_size // 2]).save(
            os.path.join(root, f'{i}.jpg'), quality=90)
        f.write(json.dumps({'image': f'{i}.jpg', 'caption': example['caption']}) + '\n')
    options = tasks.ImageOptions(size=image_size)
    folder = tasks.register('bench_folder', {'train': tasks.folder_reader(root)}, vocabulary,
                            options)
    folder_rate, folder_timing = examples_per_s(folder, random_tokens)
    shards = os.path.join(root, 'tokens')
    pretokenize.write_shards(tasks.examples(folder), random_tokens, shards, batch_size * 8,
                             batch_size)
    pre = tasks.register_pretokenized('bench_pre', shards, num_tokens, vocabulary)
    pre_rate, pre_timing = examples_per_s(pre, None)
  shapes_task = tasks.register('bench_shapes', {'train': tasks.shapes_reader(
      ShapesDataset(resolution=image_size))}, vocabulary, tasks.ImageOptions(size=image_size))
  shapes_rate, shapes_timing = examples_per_s(shapes_task, random_tokens)
  return {
      'benchmark': 'data',
      'folder_jpeg_examples_per_s': folder_rate,
      'pretokenized_examples_per_s': pre_rate,
      'shapes_examples_per_s': shapes_rate,
      'timing': {'folder': folder_timing, 'pretokenized': pre_timing, 'shapes': shapes_timing},
      'image_size': image_size, 'batch_size': batch_size, 'examples': num_examples,
      'note': 'image tokens are random ids here: the tokenizer\'s own cost is '
              '`bench tokenizer`',
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('what', choices=['train', 'decode', 'tokenizer', 'data'])
  parser.add_argument('--preset', default=None,
                      help=f'train, decode: {sorted(PRESETS)}; tokenizer: '
                      f'{sorted(TOKENIZER_PRESETS)}')
  parser.add_argument('--steps', type=int, default=5, help='timed repetitions')
  parser.add_argument('--dropout_rate', type=float, default=0.0)
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default=None,
                      help='matmul dtype (default: the preset\'s); the MFU peak is the '
                      'datasheet bf16 peak on known accelerators, else a matmul measured in '
                      'this dtype')
  parser.add_argument('--attention_block', type=int, default=64,
                      help='decode: the sampler grows its cache in blocks of this many '
                      'positions (0: full length from the start)')
  parser.add_argument('--cache_dtype', choices=['float32', 'bfloat16'], default=None,
                      help='decode: dtype of the self-attention cache (default: --dtype); '
                      'float32 with --dtype=bfloat16 is fastest on CPUs')
  parser.add_argument('--model_parallel', type=int, default=1,
                      help='decode: split heads, MLP and vocabulary over this many devices')
  parser.add_argument('--cpu_devices', type=int, default=0,
                      help='run XLA\'s CPU backend as this many devices (one thread each), '
                      'e.g. 2 with --model_parallel=2 to stream weights on two cores at once')
  parser.add_argument('--skip_no_cache', action='store_true',
                      help='decode: leave out the full-recompute comparison (two runs of '
                      'about 5 minutes each at bench-s on a 2-core CPU)')
  parser.add_argument('--checkpoint_dir', default=None,
                      help='tokenizer: evaluate this trained tokenizer on held-out shapes')
  parser.add_argument('--eval_examples', type=int, default=512)
  parser.add_argument('--data_examples', type=int, default=512,
                      help='data: examples timed per source')
  args = parser.parse_args(argv)
  if args.cpu_devices:
    # Read when the backend starts, at the first device query. (jax's
    # jax_num_cpu_devices option deadlocks in collectives between them here.)
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={args.cpu_devices}')
  if args.what == 'data':
    result = bench_data(args.data_examples, 256, 8)
    print(json.dumps(result))
    return
  presets = TOKENIZER_PRESETS if args.what == 'tokenizer' else PRESETS
  preset = args.preset or next(iter(presets))
  if preset not in presets:
    parser.error(f'unknown preset {preset!r} for {args.what}; choose from {sorted(presets)}')
  if args.what == 'train':
    result = bench_train(presets[preset], args.steps, args.dropout_rate, args.dtype)
  elif args.what == 'decode':
    result = bench_decode(presets[preset], args.steps, args.dtype, args.attention_block,
                          args.cache_dtype, args.model_parallel, not args.skip_no_cache)
  else:
    result = bench_tokenizer(presets[preset], args.steps, args.checkpoint_dir,
                             args.eval_examples, args.dtype)
  result['preset'] = preset
  print(json.dumps(result))
  sys.stdout.flush()


if __name__ == '__main__':
  main()
