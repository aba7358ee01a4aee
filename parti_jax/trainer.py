"""Train state, optimizer, schedules and the jitted, sharded train step.

The step is the one function that benchmarks and training jobs share: it is
compiled once with in/out shardings from partitioning.py, so the same code runs
data parallel on a laptop and model parallel on a pod.
"""
import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from parti_jax import partitioning
from parti_jax.errors import ConfigError
from parti_jax.models import PartiModel

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  opt_state: PyTree


def warmup_exponential_decay(peak: float, warmup_steps: int, decay_start: int, decay_end: int,
                             final_ratio: float) -> optax.Schedule:
  """Linear warm-up to `peak`, constant, then exponential decay to
  peak * final_ratio at `decay_end` (Parti §3: 5k warm-up, decay from 85k to
  0.025 at 450k)."""
  if not 0 <= warmup_steps <= decay_start < decay_end:
    raise ConfigError('schedule needs 0 <= warmup_steps <= decay_start < decay_end, got '
                      f'{warmup_steps}, {decay_start}, {decay_end}')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, (step + 1) / max(warmup_steps, 1))
    progress = jnp.clip((step - decay_start) / (decay_end - decay_start), 0.0, 1.0)
    return peak * warm * final_ratio**progress

  return schedule


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int,
                  final_ratio: float = 0.0) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup_steps, 1), total_steps,
                                            peak * final_ratio)


def make_optimizer(learning_rate: optax.ScalarOrSchedule, name: str = 'adafactor',
                   beta1: float = 0.9, weight_decay: float = 4.5e-2,
                   clip_grad_norm: Optional[float] = 4.0,
                   adam_beta2: float = 0.99,
                   min_dim_size_to_factor: int = 32) -> optax.GradientTransformation:
  """Parti's optimizer (Parti §3) by default: Adafactor with momentum 0.9,
  decoupled weight decay 4.5e-2 and gradient-norm clipping at 4.0.

  Adafactor's second-moment decay follows optax's schedule (1 - t^-0.8), not
  the constant 0.96 the paper quotes. Attention kernels are 3-D
  (embed, heads, head_dim); factoring needs their two largest dimensions to
  reach `min_dim_size_to_factor`, which optax's default of 128 would miss for
  64-wide heads, keeping a full-size second moment for half the weights.
  """
  if name == 'adafactor':
    core = optax.adafactor(learning_rate, momentum=beta1, weight_decay_rate=weight_decay,
                           multiply_by_parameter_scale=False,
                           min_dim_size_to_factor=min_dim_size_to_factor)
  elif name == 'adamw':
    core = optax.adamw(learning_rate, b1=beta1, b2=adam_beta2, weight_decay=weight_decay)
  else:
    raise ConfigError(f"unknown optimizer {name!r}; choose 'adafactor' or 'adamw'")
  if clip_grad_norm:
    return optax.chain(optax.clip_by_global_norm(clip_grad_norm), core)
  return core


class Trainer:
  """Owns the model, optimizer and mesh; compiles init and train steps."""

  def __init__(self, model: PartiModel, optimizer: optax.GradientTransformation, mesh: Mesh,
               rules: partitioning.Rules,
               learning_rate: Optional[optax.Schedule] = None, seed: int = 0):
    self.model = model
    self.optimizer = optimizer
    self.mesh = mesh
    self.rules = rules
    self.learning_rate = learning_rate
    self.seed = seed
    self.state_shardings = self._state_shardings()
    self._init = jax.jit(self._init_state, out_shardings=self.state_shardings)
    self._step = jax.jit(self._train_step, in_shardings=(self.state_shardings, None),
                         out_shardings=(self.state_shardings, None), donate_argnums=(0,))

  def _abstract_state(self) -> TrainState:
    return jax.eval_shape(self._init_state)

  def _state_shardings(self) -> TrainState:
    abstract = self._abstract_state()
    param_specs = self.model.param_logical_axes()
    opt_specs = partitioning.optimizer_state_logical_axes(abstract.opt_state, abstract.params,
                                                          param_specs)
    logical = TrainState(step=PartitionSpec(), params=param_specs, opt_state=opt_specs)
    return partitioning.shardings_from_logical(logical, self.mesh, self.rules)

  def _init_state(self) -> TrainState:
    variables = self.model.init_variables(jax.random.key(self.seed))
    params = nn.unbox(variables)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params))

  def init_state(self) -> TrainState:
    """Parameters initialized from the seed, created directly in their shards."""
    with partitioning.activate(self.mesh, self.rules):
      return self._init()

  def dropout_rng(self, step: jax.Array) -> Optional[jax.Array]:
    if not self.model.config.dropout_rate:
      return None
    # Derived from the seed and the step alone, so a resumed run draws the same masks.
    return jax.random.fold_in(jax.random.key(self.seed + 1), step)

  def _train_step(self, state: TrainState,
                  batch: Mapping[str, jax.Array]) -> Tuple[TrainState, Dict[str, jax.Array]]:
    grad_fn = jax.value_and_grad(self.model.loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch, self.dropout_rng(state.step))
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads))
    if self.learning_rate is not None:
      metrics['learning_rate'] = self.learning_rate(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def train_step(self, state: TrainState,
                 batch: Mapping[str, jax.Array]) -> Tuple[TrainState, Dict[str, jax.Array]]:
    """One forward + backward + optimizer update; `state` is donated."""
    with partitioning.activate(self.mesh, self.rules):
      return self._step(state, batch)

  def lower_train_step(self, batch_shapes: Mapping[str, jax.ShapeDtypeStruct]):
    with partitioning.activate(self.mesh, self.rules):
      return self._step.lower(self._abstract_state(), batch_shapes)
