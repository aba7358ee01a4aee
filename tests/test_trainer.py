"""Schedules and optimizer settings against their formulas; training lowers the loss."""
import jax
import numpy as np
import optax
import pytest

from parti_jax import partitioning
from parti_jax.errors import ConfigError
from parti_jax.models import PartiModel
from parti_jax.trainer import Trainer, make_optimizer, warmup_exponential_decay
from tests.conftest import small_config, token_batch


def test_parti_schedule_matches_the_paper():
  """Parti §3: 4.5e-5, 5k warm-up, exponential decay from 85k to 0.025x at 450k."""
  schedule = warmup_exponential_decay(4.5e-5, 5000, 85000, 450000, 0.025)
  np.testing.assert_allclose(schedule(2499), 4.5e-5 * 2500 / 5000, rtol=1e-6)
  np.testing.assert_allclose(schedule(5000), 4.5e-5, rtol=1e-6)
  np.testing.assert_allclose(schedule(85000), 4.5e-5, rtol=1e-6)
  mid = 85000 + (450000 - 85000) // 2
  np.testing.assert_allclose(schedule(mid), 4.5e-5 * 0.025**0.5, rtol=1e-5)
  np.testing.assert_allclose(schedule(450000), 4.5e-5 * 0.025, rtol=1e-5)
  np.testing.assert_allclose(schedule(900000), 4.5e-5 * 0.025, rtol=1e-5)
  with pytest.raises(ConfigError):
    warmup_exponential_decay(1.0, 10, 5, 20, 0.1)


def test_gradient_clipping_caps_the_update():
  """With a global-norm clip of 4.0 a huge gradient moves AdamW like a unit one."""
  params = {'w': np.ones(3, np.float32)}
  opt = make_optimizer(0.1, name='adamw', weight_decay=0.0, clip_grad_norm=4.0)
  small, _ = opt.update({'w': np.full(3, 1.0, np.float32)}, opt.init(params), params)
  huge, _ = opt.update({'w': np.full(3, 1e6, np.float32)}, opt.init(params), params)
  np.testing.assert_allclose(small['w'], huge['w'], rtol=1e-4)
  with pytest.raises(ConfigError, match='unknown optimizer'):
    make_optimizer(0.1, name='sgd')


def synthetic_token_batches(cfg, batch_size: int, seed: int = 0):
  """A task the model can only learn through the encoder, cross-attention and
  the causal decoder together: each caption is a few random text ids, its image
  one run of a fixed codebook id per text id, in raster order."""
  rng = np.random.default_rng(seed)
  codebook_of = np.random.default_rng(1234).integers(0, cfg.image_vocab_size,
                                                     cfg.text_vocab_size)
  while True:
    text = np.zeros((batch_size, cfg.max_text_length), np.int32)
    image = np.zeros((batch_size, cfg.image_length), np.int32)
    for row in range(batch_size):
      words = rng.integers(2, cfg.text_vocab_size, rng.integers(1, 5))
      text[row, :len(words)] = words
      text[row, len(words)] = 1  # EOS
      for word, run in zip(words, np.array_split(np.arange(cfg.image_length), len(words))):
        image[row, run] = codebook_of[word]
    inputs = np.concatenate([np.full((batch_size, 1), cfg.bos_id, np.int32), image[:, :-1]], 1)
    yield dict(encoder_input_tokens=text, decoder_input_tokens=inputs,
               decoder_target_tokens=image,
               decoder_loss_weights=np.ones(image.shape, np.float32))


@pytest.mark.parametrize('optimizer', ['adafactor', 'adamw'])
def test_training_lowers_the_loss(optimizer):
  cfg = small_config(max_text_length=8, image_grid=(4, 4))
  config = partitioning.MeshConfig(data=1)
  mesh = config.make_mesh(jax.devices()[:1])
  trainer = Trainer(PartiModel(cfg), make_optimizer(3e-3, name=optimizer, weight_decay=0.0),
                    mesh, config.rules)
  state = trainer.init_state()
  batches = synthetic_token_batches(cfg, 16)
  losses = []
  for _ in range(60):
    batch = partitioning.host_to_global_batch(next(batches), mesh, config.rules)
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics['loss']))
  assert int(state.step) == 60
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def _one_device_trainer(cfg, **kwargs):
  """Plain SGD, so parameters after one step compare gradients directly (Adam's
  first step divides out their magnitude, amplifying rounding)."""
  config = partitioning.MeshConfig(data=1)
  mesh = config.make_mesh(jax.devices()[:1])
  trainer = Trainer(PartiModel(cfg), optax.sgd(1.0), mesh, config.rules, **kwargs)
  return trainer, mesh, config.rules


def test_gradient_accumulation_equals_the_full_batch():
  """Four microbatches of 2 give the update and the evaluation of one batch of
  8, with uneven token counts (some loss weights zero) weighted exactly."""
  cfg = small_config()
  batch = token_batch(cfg, 8, seed=3)
  batch['decoder_loss_weights'][1, :5] = 0.0
  batch['decoder_loss_weights'][[3, 7], :] = 0.0  # Microbatch 3 (rows 3, 7) has no tokens.
  results = []
  for steps in (1, 4):
    trainer, mesh, rules = _one_device_trainer(cfg, accumulate_steps=steps)
    state = trainer.init_state()
    global_batch = partitioning.host_to_global_batch(batch, mesh, rules)
    evaluated = jax.device_get(trainer.eval_step(state.params, global_batch))
    state, metrics = trainer.train_step(state, global_batch)
    results.append((jax.device_get(state.params), jax.device_get(metrics), evaluated))
  (full_params, full, full_eval), (acc_params, acc, acc_eval) = results
  for key in ('loss', 'accuracy', 'num_tokens', 'grad_norm'):
    np.testing.assert_allclose(acc[key], full[key], rtol=1e-5, err_msg=key)
  for key in ('loss', 'cross_entropy', 'accuracy', 'num_tokens'):
    np.testing.assert_allclose(acc_eval[key], full_eval[key], rtol=1e-5, err_msg=key)
  # The evaluation is of the parameters before the update: the step's own loss.
  np.testing.assert_allclose(full_eval['loss'], full['loss'], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               acc_params, full_params)


def test_accumulation_refuses_an_uneven_split():
  cfg = small_config()
  trainer, mesh, rules = _one_device_trainer(cfg, accumulate_steps=3)
  with pytest.raises(ConfigError, match='does not split into 3 microbatches'):
    trainer.train_step(trainer.init_state(),
                       partitioning.host_to_global_batch(token_batch(cfg, 8), mesh, rules))


def test_a_nonfinite_update_is_never_applied():
  cfg = small_config()
  trainer, mesh, rules = _one_device_trainer(cfg)
  state = trainer.init_state()
  poisoned = jax.tree.map(np.array, jax.device_get(state))
  poisoned.params['decoder']['logits']['kernel'][0, 0] = np.nan
  state = jax.device_put(poisoned, trainer.state_shardings)
  batch = partitioning.host_to_global_batch(token_batch(cfg, 4), mesh, rules)
  state, metrics = trainer.train_step(state, batch)
  assert float(metrics['nonfinite']) == 1.0
  assert int(state.step) == 1
  after = jax.device_get(state)
  jax.tree.map(np.testing.assert_array_equal, after.params, poisoned.params)
  jax.tree.map(np.testing.assert_array_equal, after.opt_state, poisoned.opt_state)


def test_parti_schedule_at_450k_steps_is_the_papers():
  from parti_jax.trainer import parti_schedule  # pylint: disable=import-outside-toplevel
  stretched = parti_schedule(4.5e-5, 450_000)
  paper = warmup_exponential_decay(4.5e-5, 5000, 85000, 450000, 0.025)
  for step in (0, 2499, 5000, 85000, 200000, 450000):
    np.testing.assert_allclose(stretched(step), paper(step), rtol=1e-6)
  short = parti_schedule(1e-3, 900)  # 10 warm-up steps, decay from step 170.
  np.testing.assert_allclose(short(9), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(short(170), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(short(900), 2.5e-5, rtol=1e-5)


@pytest.mark.parametrize('name', ['adafactor', 'adamw'])
def test_weight_decay_is_scaled_by_the_learning_rate(name):
  """With a zero gradient, one step shrinks each weight by lr * wd, not wd."""
  params = {'w': np.full((64, 64), 2.0, np.float32)}
  opt = make_optimizer(1e-2, name=name, weight_decay=0.5, clip_grad_norm=None)
  updates, _ = opt.update({'w': np.zeros((64, 64), np.float32)}, opt.init(params), params)
  np.testing.assert_allclose(updates['w'], -1e-2 * 0.5 * 2.0, rtol=1e-5)
