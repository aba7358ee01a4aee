"""Train Parti.

  python -m parti_jax.train --gin_file=models/parti_tiny.gin \
      --gin_file=runs/pretrain.gin --gin_file=data/shapes.gin \
      --gin.MODEL_DIR="'/tmp/parti'" --gin.TRAIN_STEPS=1000 \
      --gin.train.tokenizer_dir="'/tmp/tokenizer/checkpoints'"

The job resumes from the newest checkpoint in MODEL_DIR/checkpoints that
restores (a damaged one is skipped with a warning), so relaunching the same
command after a crash or a preemption continues the run; the data resumes at
the next example. On SIGTERM it saves the current step and exits with status
143. It writes the operative gin config to MODEL_DIR/config.gin, TensorBoard
summaries to MODEL_DIR (process 0 only), and at the end a parameters-only copy
for inference to MODEL_DIR/params.
"""
import json
import logging
import os
from typing import Any, Callable, Dict, Optional, Tuple

import gin
import jax
import optax

from parti_jax import checkpoints, cli, export, flops, gin_utils, metrics, multihost
from parti_jax import partitioning, preemption, timing
from parti_jax.data import configured, tasks, vocab
from parti_jax.data.pipeline import ModelBatches
from parti_jax.errors import ConfigError, TrainingStopped
from parti_jax.models import PartiModel
from parti_jax.tokenizer.api import ImageTokenizer
from parti_jax.trainer import Trainer, state_from_items, state_items

log = logging.getLogger(__name__)

def model_batches(task, split: str, batch_size: int, model: PartiModel,
                  encode_images: Optional[Callable], position: int = 0) -> ModelBatches:
  """This process's share of the split, `batch_size` global rows per batch."""
  cfg = model.config
  return ModelBatches(
      lambda: tasks.examples(task, split, jax.process_index(), jax.process_count()),
      batch_size // jax.process_count(), cfg.max_text_length, cfg.bos_id, encode_images,
      position)


def _image_encoder(tokenizer_dir: Optional[str], model: PartiModel) -> Optional[Callable]:
  if not tokenizer_dir:
    return None
  tokenizer = ImageTokenizer.from_checkpoint(tokenizer_dir)
  if tokenizer.config.codebook_size != model.config.image_vocab_size:
    raise ConfigError(f'the tokenizer in {tokenizer_dir} has {tokenizer.config.codebook_size} '
                      f'codes, the model expects image_vocab_size '
                      f'{model.config.image_vocab_size}')
  return tokenizer.encode


class _Loop:
  """The pieces one training run shares between its steps."""

  def __init__(self, trainer: Trainer, batch_size: int, mesh, rules):
    self.trainer = trainer
    self.mesh = mesh
    self.rules = rules
    cfg = trainer.model.config
    self.flops_per_step = flops.train_flops(cfg, batch_size, cfg.max_text_length,
                                            cfg.image_length)

  def global_batch(self, batches: ModelBatches) -> Dict[str, jax.Array]:
    local = dict(next(batches))
    local.pop('caption_dropped')
    return partitioning.host_to_global_batch(local, self.mesh, self.rules)

  def evaluate(self, params, batches: ModelBatches, num_batches: int) -> Dict[str, float]:
    """Token-weighted loss and accuracy over `num_batches` held-out batches;
    closes `batches`."""
    totals: Dict[str, float] = {}
    try:
      for _ in range(num_batches):
        values = jax.device_get(self.trainer.eval_step(params, self.global_batch(batches)))
        tokens = float(values['num_tokens'])
        for key in ('loss', 'accuracy'):
          totals[key] = totals.get(key, 0.0) + float(values[key]) * tokens
        totals['tokens'] = totals.get('tokens', 0.0) + tokens
    finally:
      batches.close()
    tokens = max(totals.pop('tokens'), 1.0)
    return {f'eval/{k}': v / tokens for k, v in totals.items()}


def _check_finite(step: int, values: Dict[str, Any], on_nonfinite: str,
                  checkpointer: checkpoints.Checkpointer) -> bool:
  """Applies the non-finite policy to one step's metrics; True if skipped."""
  if not float(values['nonfinite']):
    return False
  if on_nonfinite == 'skip':
    log.warning('step %d: loss or gradient not finite; update skipped', step)
    return True
  checkpointer.wait()
  last = checkpointer.latest_step()
  where = (f'the last good checkpoint is step {last} in {checkpointer.directory}'
           if last is not None else 'there is no checkpoint yet')
  raise TrainingStopped(f'loss or gradient not finite at step {step} (loss '
                        f'{float(values["loss"])}); {where}. Lower the learning rate, or set '
                        '--gin.train.on_nonfinite="\'skip\'" to skip such updates')


@gin.configurable(denylist=['task'])
def train(task=None, model_dir: str = gin.REQUIRED, model: PartiModel = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, batch_size: int = gin.REQUIRED,
          learning_rate: optax.Schedule = gin.REQUIRED,
          optimizer: Callable[..., optax.GradientTransformation] = gin.REQUIRED,
          accumulate_steps: int = 1, tokenizer_dir: Optional[str] = None,
          checkpoint_every: int = 1000, keep_checkpoints: int = 3,
          keep_every: Optional[int] = None, log_every: int = 100, eval_every: int = 1000,
          eval_batches: int = 4, on_nonfinite: str = 'stop',
          peak_flops_per_device: Optional[float] = None,
          profile_steps: Optional[Tuple[int, int]] = None,
          sample_every: int = 0,
          sample_fn: Optional[Callable[[Any, int, Any], None]] = None,
          seed: int = 0) -> Dict[str, float]:
  """Trains (or resumes) the model on `task` (default: the gin TASK).

  Args:
    tokenizer_dir: image tokenizer checkpoints, for tasks of images; a
      pre-tokenized task (data/pretokenized.gin) needs none.
    keep_every: also keep every checkpoint whose step is a multiple of this.
    on_nonfinite: 'stop' (raise, naming the last good checkpoint) or 'skip'
      (the update is dropped and counted) when the loss or gradient is not finite.
    peak_flops_per_device: the MFU denominator; default: the datasheet bf16
      peak of known accelerators, or a measured matmul.
    profile_steps: (first step, number of steps) to trace with the jax
      profiler into MODEL_DIR/profile.
    sample_every, sample_fn: every `sample_every` steps, call
      sample_fn(params, step, writer) (image samples, from the sampling code).

  Returns the metrics of the last logged step and the last evaluation.
  """
  if on_nonfinite not in ('stop', 'skip'):
    raise ConfigError(f"train.on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
  if batch_size % jax.process_count():
    raise ConfigError(f'batch_size {batch_size} does not split over {jax.process_count()} '
                      'processes')
  task = task or configured.task_from_gin(model.config.max_text_length,
                                         model.config.image_length)
  primary = jax.process_index() == 0
  mesh_config = gin_utils.MeshConfig()
  mesh = mesh_config.make_mesh()
  trainer = Trainer(model, optimizer(learning_rate), mesh, mesh_config.rules,
                    learning_rate=learning_rate, seed=seed, accumulate_steps=accumulate_steps)
  loop = _Loop(trainer, batch_size, mesh, mesh_config.rules)
  peak = peak_flops_per_device
  if peak is None:
    peak, peak_source = timing.device_peak_flops(model.config.compute_dtype)
    log.info('MFU against %.3g FLOP/s per device (%s)', peak, peak_source)

  checkpointer = checkpoints.Checkpointer(os.path.join(model_dir, 'checkpoints'),
                                          max_to_keep=keep_checkpoints, keep_every=keep_every)
  abstract = checkpoints.abstract_like(state_items(trainer.abstract_state()),
                                       state_items(trainer.state_shardings))
  restored = checkpointer.restore_latest(abstract)
  if restored is None:
    state, examples_seen = trainer.init_state(), 0
  else:
    step, items, metadata = restored
    state, examples_seen = state_from_items(items), metadata['examples_seen']
    log.info('resumed from step %d (%d examples seen)', step, examples_seen)

  encode = _image_encoder(tokenizer_dir, model)
  batches = model_batches(task, 'train', batch_size, model, encode,
                          examples_seen // jax.process_count())
  has_validation = 'validation' in task.splits
  if not has_validation:
    log.info('task %s has no validation split: no evaluation loss', task.name)
  writer = metrics.create_writer(model_dir, primary)
  vocabulary = task.output_features['text_tokens'].vocabulary
  if vocabulary.vocab_size > model.config.text_vocab_size:
    raise ConfigError(f'the text vocabulary has {vocabulary.vocab_size} ids but the model embeds '
                      f'only {model.config.text_vocab_size} (TransformerConfig.text_vocab_size)')
  metadata = {export.MODEL_CONFIG_KEY: export.config_to_json(model.config), 'seed': seed,
              export.VOCABULARY_KEY: vocab.vocabulary_spec(vocabulary)}

  def save(step: int) -> None:
    checkpointer.save(step, state_items(state),
                      dict(metadata, examples_seen=batches.position * jax.process_count()))

  start = int(state.step)
  progress = metrics.Progress(train_steps, start)
  skipped_updates, last_logged, last_eval = 0, {}, {}
  pending: Optional[Tuple[int, Dict[str, jax.Array]]] = None
  try:
    with preemption.PreemptionWatch() as watch:
      for step in range(start, train_steps):
        if profile_steps and step == profile_steps[0]:
          jax.profiler.start_trace(os.path.join(model_dir, 'profile'))
        state, step_metrics = trainer.train_step(state, loop.global_batch(batches))
        done = step + 1
        if profile_steps and done == profile_steps[0] + profile_steps[1]:
          jax.block_until_ready(step_metrics)
          jax.profiler.stop_trace()
        # The previous step's metrics are ready by now: reading them keeps one
        # step in flight instead of stalling the device every step.
        if pending is not None:
          skipped_updates += _check_finite(pending[0], jax.device_get(pending[1]),
                                           on_nonfinite, checkpointer)
        pending = (done, step_metrics)
        if done == start + 1 and primary:
          gin_utils.write_operative_config(model_dir)
        if done % log_every == 0 or done == train_steps:
          last_logged = _log_step(done, step_metrics, progress, loop, peak, skipped_updates,
                                  tasks.skip_counts(task.name), writer)
        if has_validation and eval_batches and (done % eval_every == 0 or done == train_steps):
          last_eval = loop.evaluate(state.params, model_batches(
              task, 'validation', batch_size, model, encode), eval_batches)
          writer.write_scalars(done, last_eval)
          log.info('step %d held-out: %s', done,
                   '  '.join(f'{k} {v:.4g}' for k, v in last_eval.items()))
        if sample_fn is not None and sample_every and done % sample_every == 0:
          sample_fn(state.params, done, writer)
        saved = done % checkpoint_every == 0 or done == train_steps
        if saved:
          save(done)
        if watch.reached(done):
          preemption.save_and_exit(done, save, checkpointer, already_saved=saved)
      if pending is not None:
        skipped_updates += _check_finite(pending[0], jax.device_get(pending[1]), on_nonfinite,
                                         checkpointer)
  finally:
    # Pending asynchronous saves finish even when the loop fails.
    batches.close()
    checkpointer.close()
    writer.flush()
  export.export_params(os.path.join(model_dir, 'params'), int(state.step), state.params,
                       model.config, {k: metadata[k] for k in ('seed', export.VOCABULARY_KEY)})
  return dict(last_logged, **last_eval, step=int(state.step))


def _log_step(step: int, step_metrics, progress: metrics.Progress, loop: _Loop, peak: float,
              skipped_updates: int, skipped_examples: Dict[str, int], writer) -> Dict[str, float]:
  values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
  rate = progress.steps_per_second(step)
  values.update(
      steps_per_s=rate, target_tokens_per_s=values.pop('num_tokens') * rate,
      mfu=loop.flops_per_step * rate / (peak * jax.device_count()),
      skipped_updates=skipped_updates)
  values.pop('nonfinite')
  values.update({f'skipped_examples/{reason}': n for reason, n in skipped_examples.items()})
  writer.write_scalars(step, values)
  progress.log(step, {k: values[k] for k in ('loss', 'accuracy', 'mfu')}, rate)
  return values


def main(argv=None) -> None:
  cli.parse_with_gin(cli.parser(__doc__), argv)
  multihost.initialize()
  result = train()
  print(json.dumps(result))


if __name__ == '__main__':
  cli.run(main)
