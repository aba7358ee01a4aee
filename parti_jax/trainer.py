"""Train state, optimizer, schedules and the jitted, sharded train step.

The step is the one function that benchmarks and training jobs share: it is
compiled once with in/out shardings from partitioning.py, so the same code runs
data parallel on a laptop and model parallel on a pod.
"""
from typing import Any, Dict, Mapping, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from parti_jax import partitioning
from parti_jax.errors import ConfigError
from parti_jax.models import PartiModel

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  opt_state: PyTree
  # Raw key data (uint32) of the run's dropout key; each step folds in its
  # number, so a resumed run draws the same masks as an uninterrupted one.
  rng: jax.Array


def state_items(state: TrainState) -> Dict[str, Any]:
  """The state as checkpoint items: each part apart, so inference reads
  'params' alone."""
  return {'params': state.params, 'opt_state': state.opt_state,
          'counters': {'step': state.step, 'rng': state.rng}}


def state_from_items(items: Dict[str, Any]) -> TrainState:
  return TrainState(step=items['counters']['step'], rng=items['counters']['rng'],
                    params=items['params'], opt_state=items['opt_state'])


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


def parti_schedule(peak: float, total_steps: int, warmup_fraction: float = 5_000 / 450_000,
                   decay_start_fraction: float = 85_000 / 450_000,
                   final_ratio: float = 0.025) -> optax.Schedule:
  """Parti's schedule stretched to a run of `total_steps`: at 450k steps the
  defaults give exactly the paper's 5k warm-up and decay from 85k."""
  warmup = round(total_steps * warmup_fraction)
  decay_start = max(warmup, round(total_steps * decay_start_fraction))
  return warmup_exponential_decay(peak, warmup, decay_start, max(total_steps, decay_start + 1),
                                  final_ratio)


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int,
                  final_ratio: float = 0.0) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup_steps, 1), total_steps,
                                            peak * final_ratio)


def adafactor(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9,
              weight_decay: float = 4.5e-2,
              min_dim_size_to_factor: int = 32) -> optax.GradientTransformation:
  """Adafactor as Parti uses it: factored second moments, update clipping at
  block RMS 1, momentum, and decoupled weight decay.

  The decay is scaled by the learning rate, as in AdamW:
    update = -lr * (momentum(clipped factored-RMS-scaled gradient) + wd * param).
  optax.adafactor adds `weight_decay_rate * param` after the learning rate, so
  Parti's 4.5e-2 would shrink every weight by 4.5% per step there.
  Attention kernels are 3-D (embed, heads, head_dim); factoring needs their
  two largest dimensions to reach `min_dim_size_to_factor`, which optax's
  default of 128 would miss for 64-wide heads, keeping a full-size second
  moment for half the weights.
  """
  return optax.chain(
      optax.scale_by_factored_rms(min_dim_size_to_factor=min_dim_size_to_factor),
      optax.clip_by_block_rms(1.0),
      optax.ema(momentum, debias=False),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate))


def make_optimizer(learning_rate: optax.ScalarOrSchedule, name: str = 'adafactor',
                   beta1: float = 0.9, weight_decay: float = 4.5e-2,
                   clip_grad_norm: Optional[float] = 4.0,
                   adam_beta2: float = 0.99,
                   min_dim_size_to_factor: int = 32) -> optax.GradientTransformation:
  """Parti's optimizer (Parti §3) by default: Adafactor with momentum 0.9,
  decoupled weight decay 4.5e-2 and gradient-norm clipping at 4.0.

  Adafactor's second-moment decay follows optax's schedule (1 - t^-0.8), not
  the constant 0.96 the paper quotes. AdamW's decay is also scaled by the
  learning rate.
  """
  if name == 'adafactor':
    core = adafactor(learning_rate, beta1, weight_decay, min_dim_size_to_factor)
  elif name == 'adamw':
    core = optax.adamw(learning_rate, b1=beta1, b2=adam_beta2, weight_decay=weight_decay)
  else:
    raise ConfigError(f"unknown optimizer {name!r}; choose 'adafactor' or 'adamw'")
  if clip_grad_norm:
    return optax.chain(optax.clip_by_global_norm(clip_grad_norm), core)
  return core


def split_microbatches(x: jax.Array, count: int) -> jax.Array:
  """[B, ...] -> [count, B / count, ...]; microbatch i takes rows i, i + count,
  ..., so each device's rows stay on that device when (B / devices) % count == 0."""
  rows = x.shape[0]
  if rows % count:
    raise ConfigError(f'batch of {rows} does not split into {count} microbatches')
  x = jnp.swapaxes(x.reshape(rows // count, count, *x.shape[1:]), 0, 1)
  return nn.with_logical_constraint(x, (None, 'batch') + (None,) * (x.ndim - 2))


def _token_weighted_sum(metrics: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
  """Per-token means times the token count, so microbatches add up exactly."""
  tokens = metrics['num_tokens']
  return {k: v if k == 'num_tokens' else v * tokens for k, v in metrics.items()}


class Trainer:
  """Owns the model, optimizer and mesh; compiles init and train steps.

  `accumulate_steps` > 1 splits each batch into that many microbatches and
  sums their gradients (weighted by target tokens, so the update equals the
  full batch's) before one optimizer update: the batch of a larger slice on a
  smaller one. Evaluation splits batches the same way, so a batch that trains
  also evaluates. An update whose loss or gradient is not finite is never
  applied: the state keeps its values (the step counter still advances, so
  the data moves on) and the step's metrics say `nonfinite` = 1; what happens
  next is the caller's policy (train.py stops or skips).
  """

  def __init__(self, model: PartiModel, optimizer: optax.GradientTransformation, mesh: Mesh,
               rules: partitioning.Rules,
               learning_rate: Optional[optax.Schedule] = None, seed: int = 0,
               accumulate_steps: int = 1):
    if accumulate_steps < 1:
      raise ConfigError(f'accumulate_steps must be at least 1, got {accumulate_steps}')
    self.accumulate_steps = accumulate_steps
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
    self._eval = jax.jit(self._eval_metrics, in_shardings=(self.state_shardings.params, None))

  def abstract_state(self) -> TrainState:
    return jax.eval_shape(self._init_state)

  def _state_shardings(self) -> TrainState:
    abstract = self.abstract_state()
    param_specs = self.model.param_logical_axes()
    opt_specs = partitioning.optimizer_state_logical_axes(abstract.opt_state, abstract.params,
                                                          param_specs)
    logical = TrainState(step=PartitionSpec(), params=param_specs, opt_state=opt_specs,
                         rng=PartitionSpec())
    return partitioning.shardings_from_logical(logical, self.mesh, self.rules)

  def _init_state(self) -> TrainState:
    variables = self.model.init_variables(jax.random.key(self.seed))
    params = nn.unbox(variables)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params),
                      rng=jax.random.key_data(jax.random.key(self.seed + 1)))

  def init_state(self) -> TrainState:
    """Parameters initialized from the seed, created directly in their shards."""
    with partitioning.activate(self.mesh, self.rules):
      return self._init()

  def dropout_rng(self, state: TrainState) -> Optional[jax.Array]:
    if not self.model.config.dropout_rate:
      return None
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def _sum_over_microbatches(self, fn, batch: Mapping[str, jax.Array],
                             rng: Optional[jax.Array]) -> Tuple[PyTree, Dict[str, jax.Array]]:
    """`fn(microbatch, rng) -> (tree, metrics)`, both per-token means, over the
    batch's `accumulate_steps` microbatches, one at a time (a lax.scan), so
    only a microbatch's activations are live; returns the token-weighted means
    over the whole batch, which equal one call on the whole batch."""
    if self.accumulate_steps == 1:
      return fn(batch, rng)
    microbatches = {k: split_microbatches(v, self.accumulate_steps) for k, v in batch.items()}

    def add_microbatch(totals, inputs):
      index, microbatch = inputs
      micro_rng = None if rng is None else jax.random.fold_in(rng, index)
      tree, metrics = fn(microbatch, micro_rng)
      tokens = metrics['num_tokens']
      weighted = (jax.tree.map(lambda x: x * tokens, tree), _token_weighted_sum(metrics))
      return jax.tree.map(jnp.add, totals, weighted), None

    first = {k: v[0] for k, v in microbatches.items()}
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32),
                         jax.eval_shape(fn, first, rng))
    (tree, sums), _ = jax.lax.scan(add_microbatch, zeros,
                                   (jnp.arange(self.accumulate_steps), microbatches))
    tokens = jnp.maximum(sums['num_tokens'], 1.0)
    metrics = {k: v if k == 'num_tokens' else v / tokens for k, v in sums.items()}
    return jax.tree.map(lambda x: x / tokens, tree), metrics

  def _gradients(self, params: PyTree, batch: Mapping[str, jax.Array],
                 rng: Optional[jax.Array]) -> Tuple[PyTree, Dict[str, jax.Array]]:
    grad_fn = jax.grad(self.model.loss_fn, has_aux=True)
    return self._sum_over_microbatches(lambda b, r: grad_fn(params, b, r), batch, rng)

  def _eval_metrics(self, params: PyTree, batch: Mapping[str, jax.Array]) -> Dict[str, jax.Array]:
    metrics_only = lambda b, _: ((), self.model.loss_fn(params, b)[1])
    return self._sum_over_microbatches(metrics_only, batch, None)[1]

  def _train_step(self, state: TrainState,
                  batch: Mapping[str, jax.Array]) -> Tuple[TrainState, Dict[str, jax.Array]]:
    grads, metrics = self._gradients(state.params, batch, self.dropout_rng(state))
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(grad_norm)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params = keep_if_finite(optax.apply_updates(state.params, updates), state.params)
    opt_state = keep_if_finite(opt_state, state.opt_state)
    metrics = dict(metrics, grad_norm=grad_norm, nonfinite=1.0 - finite.astype(jnp.float32))
    if self.learning_rate is not None:
      metrics['learning_rate'] = self.learning_rate(state.step)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def train_step(self, state: TrainState,
                 batch: Mapping[str, jax.Array]) -> Tuple[TrainState, Dict[str, jax.Array]]:
    """One forward + backward + optimizer update; `state` is donated."""
    with partitioning.activate(self.mesh, self.rules):
      return self._step(state, batch)

  def eval_step(self, params: PyTree, batch: Mapping[str, jax.Array]) -> Dict[str, jax.Array]:
    """The loss metrics of a batch, without dropout or an update, in
    `accumulate_steps` microbatches as training splits it."""
    with partitioning.activate(self.mesh, self.rules):
      return self._eval(params, batch)

  def lower_train_step(self, batch_shapes: Mapping[str, jax.ShapeDtypeStruct]):
    with partitioning.activate(self.mesh, self.rules):
      return self._step.lower(self.abstract_state(), batch_shapes)
