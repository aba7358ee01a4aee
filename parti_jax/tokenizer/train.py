"""Train the ViT-VQGAN tokenizer.

  python -m parti_jax.tokenizer.train \
      --gin_file=tokenizer/vit_vqgan_tiny.gin --gin_file=data/shapes.gin \
      --gin.MODEL_DIR="'/tmp/tokenizer'"

Resumes from the latest checkpoint in MODEL_DIR/checkpoints; on SIGTERM (a
preempted TPU VM) saves the step reached and exits with status 143. Writes the
operative gin config, TensorBoard summaries (losses, PSNR, codebook usage,
perplexity, reconstructions) and, at the end, one JSON line of held-out metrics.
"""
import itertools
import json
import logging
import os
from typing import Any, Dict, Iterator, Optional, Sequence

import gin
import jax
import numpy as np

from parti_jax import checkpoints, cli, gin_utils, metrics, multihost, partitioning, preemption
from parti_jax.data import configured as _registers_data_configurables  # noqa: F401 (gin)
from parti_jax.data.task_images import TaskImages
from parti_jax.errors import ConfigError
from parti_jax.tokenizer import api, perceptual
from parti_jax.tokenizer.config import VitVqganConfig
from parti_jax.tokenizer.model import VitVqgan
from parti_jax.tokenizer.quantizer import code_statistics
from parti_jax.tokenizer.trainer import TokenizerState, TokenizerTrainer
from parti_jax.trainer import make_optimizer, warmup_cosine

log = logging.getLogger(__name__)

# State fields saved as separate checkpoint items, so inference can read the
# generator alone.
_ITEMS = ('generator', 'discriminator', 'generator_opt', 'discriminator_opt')


def local_images(dataset, step: int, global_batch: int) -> np.ndarray:
  """This process's rows of the global batch of `step` from a random-access
  dataset (ShapesDataset), float32 in [0, 1].

  Row r of step s is example s * global_batch + r, so the data seen depends on
  the step alone: resuming at a step resumes the data exactly.
  """
  per_process = global_batch // jax.process_count()
  first = step * global_batch + jax.process_index() * per_process
  return np.stack([dataset.example(first + i)['image'] for i in range(per_process)]
                  ).astype(np.float32) / 255.0


def image_batches(dataset, first_step: int, global_batch: int) -> Iterator[np.ndarray]:
  """This process's image batches from step `first_step` on, from a
  random-access dataset or from the images of a task (data/task_images.py)."""
  if isinstance(dataset, TaskImages):
    per_process = global_batch // jax.process_count()
    return dataset.batches(first_step * per_process, per_process)
  return (local_images(dataset, step, global_batch) for step in itertools.count(first_step))


def _state_items(state: TokenizerState) -> Dict[str, Any]:
  items = {name: getattr(state, name) for name in _ITEMS}
  items['counters'] = {'step': state.step, 'steps_unused': state.steps_unused}
  return items


def _state_from_items(items: Dict[str, Any]) -> TokenizerState:
  counters = items['counters']
  return TokenizerState(step=counters['step'], steps_unused=counters['steps_unused'],
                        **{name: items[name] for name in _ITEMS})


def _pretrained_modules(checkpoint_dir: str, config: VitVqganConfig,
                        modules: Sequence[str]) -> Dict[str, Any]:
  """Modules of a stage-1 tokenizer, checked to be shape-compatible."""
  source_config, params = api.load_generator(checkpoint_dir)
  for field in ('image_size', 'patch_size', 'encoder_layers', 'encoder_dim', 'encoder_heads',
                'encoder_mlp_dim', 'codebook_size', 'lookup_dim'):
    if getattr(source_config, field) != getattr(config, field):
      raise ConfigError(f'{checkpoint_dir} has {field}={getattr(source_config, field)}, the '
                        f'config asks for {getattr(config, field)}')
  return {name: params[name] for name in modules}


def evaluate(trainer: TokenizerTrainer, generator, dataset, num_examples: int,
             batch_size: int, mesh, rules) -> Dict[str, float]:
  """PSNR and L2 over the first `num_examples` held-out images, codebook usage
  and perplexity of all their codes together."""
  psnrs, l2s, codes = [], [], []
  for images in itertools.islice(image_batches(dataset, 0, batch_size),
                                 max(num_examples // batch_size, 1)):
    out = trainer.evaluate(generator, partitioning.host_to_global_batch(
        {'images': images}, mesh, rules)['images'])
    psnrs.append(float(out['psnr']))
    l2s.append(float(out['l2']))
    codes.append(np.asarray(out['indices']))
  stats = code_statistics(np.concatenate(codes), trainer.model.config.codebook_size)
  return {'eval_psnr': float(np.mean(psnrs)), 'eval_l2': float(np.mean(l2s)),
          'eval_codebook_usage': float(stats['codebook_usage']),
          'eval_perplexity': float(stats['perplexity'])}


def _write_held_out(step: int, held_out: Dict[str, float], trainer: TokenizerTrainer,
                    generator, eval_dataset, batch_size: int, mesh, rules, writer) -> None:
  """Held-out metrics to the log and TensorBoard, with four held-out images
  beside their reconstructions."""
  writer.write_scalars(step, held_out)
  log.info('held-out: %s', '  '.join(f'{k} {v:.4g}' for k, v in held_out.items()))
  originals = next(image_batches(eval_dataset, 0, batch_size))
  recon = trainer.evaluate(generator, partitioning.host_to_global_batch(
      {'images': originals}, mesh, rules)['images'])['reconstructions']
  writer.write_images(step, {'reconstructions': np.concatenate(
      [originals[:4], np.asarray(recon)[:4]], axis=2)})


@gin.configurable
def train_tokenizer(model_dir: str = gin.REQUIRED, config: VitVqganConfig = gin.REQUIRED,
                    dataset=gin.REQUIRED, eval_dataset=None,
                    discriminator=None, weights=None,
                    train_steps: int = 1000, batch_size: int = 16,
                    learning_rate: float = 1e-4, final_learning_rate: float = 5e-5,
                    warmup_steps: int = 50_000, weight_decay: float = 1e-4,
                    discriminator_learning_rate: Optional[float] = None,
                    vgg16_weights: Optional[str] = None, frozen: Sequence[str] = (),
                    init_from: Optional[str] = None, restart_unused_after: int = 0,
                    checkpoint_every: int = 500, keep_checkpoints: int = 3,
                    log_every: int = 50, eval_every: int = 500, eval_examples: int = 256,
                    seed: int = 0) -> Dict[str, float]:
  """Trains (or resumes) a tokenizer; returns the final held-out metrics.

  Optimizers follow ViT-VQGAN §4.1: Adam(0.9, 0.99) with decoupled weight
  decay, linear warm-up to `learning_rate`, cosine decay to
  `final_learning_rate`, for generator and discriminator alike.
  """
  if batch_size % jax.process_count():
    raise ConfigError(f'batch_size {batch_size} does not split over '
                      f'{jax.process_count()} processes')
  mesh_config = gin_utils.MeshConfig()
  mesh = mesh_config.make_mesh()
  primary = jax.process_index() == 0

  def adam(peak):
    schedule = warmup_cosine(peak, min(warmup_steps, train_steps // 2), train_steps,
                             final_learning_rate / learning_rate)
    return make_optimizer(schedule, name='adamw', beta1=0.9, adam_beta2=0.99,
                          weight_decay=weight_decay, clip_grad_norm=None)

  trainer = TokenizerTrainer(
      VitVqgan(config), discriminator or gin_utils.Discriminator(),
      adam(learning_rate), adam(discriminator_learning_rate or learning_rate), mesh,
      mesh_config.rules, weights or gin_utils.LossWeights(),
      vgg_params=perceptual.load_vgg16_params(vgg16_weights) if vgg16_weights else None,
      frozen=frozen, restart_unused_after=restart_unused_after, seed=seed)

  checkpointer = checkpoints.Checkpointer(os.path.join(model_dir, 'checkpoints'),
                                          max_to_keep=keep_checkpoints)
  if checkpointer.latest_step() is not None:
    abstract = _state_items(trainer.abstract_state())
    shardings = _state_items(trainer.state_shardings)
    state = _state_from_items(checkpointer.restore(
        checkpoints.abstract_like(abstract, shardings)))
    log.info('resumed from step %d', int(state.step))
  else:
    pretrained = _pretrained_modules(init_from, config, frozen or ('encoder', 'quantizer')
                                     ) if init_from else None
    state = trainer.init_state(pretrained)

  if primary:
    gin_utils.write_operative_config(model_dir)
  writer = metrics.create_writer(model_dir, primary)
  metadata = {api.CONFIG_KEY: api.config_to_json(config)}
  eval_dataset = eval_dataset or dataset

  start_step = int(state.step)
  held_out = None
  progress = metrics.Progress(train_steps, start_step)
  batches = image_batches(dataset, start_step, batch_size)

  def save(step: int) -> None:
    checkpointer.save(step, _state_items(state), metadata, force=True)

  try:
    with preemption.PreemptionWatch() as watch:
      for step in range(start_step, train_steps):
        images = partitioning.host_to_global_batch(
            {'images': next(batches)}, mesh, mesh_config.rules)['images']
        state, step_metrics = trainer.train_step(state, images)
        done = step + 1
        if done % log_every == 0 or done == train_steps:
          values = {k: float(v) for k, v in step_metrics.items()}
          values['steps_per_s'] = progress.steps_per_second(done)
          writer.write_scalars(done, values)
          progress.log(done, {k: values[k] for k in ('generator_loss', 'psnr',
                                                      'codebook_usage')}, values['steps_per_s'])
        if done % eval_every == 0 or done == train_steps:
          held_out = evaluate(trainer, state.generator, eval_dataset, eval_examples, batch_size,
                              mesh, mesh_config.rules)
          _write_held_out(done, held_out, trainer, state.generator, eval_dataset, batch_size,
                          mesh, mesh_config.rules, writer)
        saved = done % checkpoint_every == 0 or done == train_steps
        if saved:
          save(done)
        if watch.reached(done):
          preemption.save_and_exit(done, save, checkpointer, already_saved=saved)
  finally:
    # Pending asynchronous saves finish even when the loop fails.
    checkpointer.close()
  if held_out is None:  # Nothing left to train: evaluate what was restored.
    held_out = evaluate(trainer, state.generator, eval_dataset, eval_examples, batch_size, mesh,
                        mesh_config.rules)
  final = dict(held_out, steps=int(state.step))
  writer.flush()
  return final


def main(argv=None) -> None:
  cli.parse_with_gin(cli.parser(__doc__), argv)
  multihost.initialize()
  result = train_tokenizer()
  print(json.dumps(result))


if __name__ == '__main__':
  cli.run(main)
