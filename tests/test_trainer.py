"""Schedules and optimizer settings against their formulas; training lowers the loss."""
import jax
import numpy as np
import pytest

from parti_jax import partitioning
from parti_jax.demo import synthetic_token_batches
from parti_jax.errors import ConfigError
from parti_jax.models import PartiModel
from parti_jax.trainer import Trainer, make_optimizer, warmup_exponential_decay
from tests.conftest import small_config


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
