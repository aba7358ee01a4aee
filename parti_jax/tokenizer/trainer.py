"""Training of the ViT-VQGAN tokenizer: generator and discriminator steps.

The generator loss is ViT-VQGAN's (§3.3):
  vq * L_VQ + l2 * L_2 + logit_laplace * L_logit-Laplace
  + perceptual * L_perceptual (VGG16) + adversarial * L_adversarial,
with the paper's weights as defaults. Once `adversarial_start_step` is reached,
each step also updates the discriminator with the logistic loss and an R1
penalty on real images. Both updates run in one jitted, sharded function; the
two phases (with and without the adversarial terms) compile separately, so the
discriminator costs nothing before it starts.
"""
import dataclasses
import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from parti_jax import partitioning
from parti_jax.errors import ConfigError
from parti_jax.tokenizer import losses, perceptual
from parti_jax.tokenizer.discriminator import Discriminator
from parti_jax.tokenizer.model import VitVqgan
from parti_jax.tokenizer.quantizer import restart_dead_codes

log = logging.getLogger(__name__)
PyTree = Any
Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the generator's terms (ViT-VQGAN §3.3 defaults) and of R1."""
  vq: float = 1.0
  l2: float = 1.0
  logit_laplace: float = 0.1
  perceptual: float = 0.1
  adversarial: float = 0.1
  # R1 penalty gamma; the discriminator loss adds gamma / 2 * E||grad D(real)||^2.
  r1_gamma: float = 10.0
  adversarial_start_step: int = 0


@flax.struct.dataclass
class TokenizerState:
  step: Array
  generator: PyTree
  discriminator: PyTree
  generator_opt: PyTree
  discriminator_opt: PyTree
  # Steps since each code was last chosen (for restarting unused codes).
  steps_unused: Array


def psnr(recon: Array, target: Array) -> Array:
  """Mean over images of 10 log10(1 / MSE), reconstructions clipped to [0, 1]."""
  mse = jnp.mean(jnp.square(jnp.clip(recon, 0.0, 1.0) - target), axis=(1, 2, 3))
  return jnp.mean(10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10)))


def freeze(optimizer: optax.GradientTransformation,
           frozen: Sequence[str]) -> optax.GradientTransformation:
  """Zero updates (and no optimizer state) for the named top-level modules,
  e.g. ('encoder', 'quantizer') for Parti's decoder fine-tuning."""
  if not frozen:
    return optimizer

  def label_module(name, tree):
    label = 'frozen' if name in frozen else 'train'
    return jax.tree.map(lambda _: label, tree)

  def labels(params):
    unknown = set(frozen) - set(params)
    if unknown:
      raise ConfigError(f'cannot freeze unknown modules {sorted(unknown)}; the generator has '
                        f'{sorted(params)}')
    return {name: label_module(name, tree) for name, tree in params.items()}

  return optax.multi_transform({'train': optimizer, 'frozen': optax.set_to_zero()}, labels)


class TokenizerTrainer:
  """Owns the networks, optimizers and mesh; compiles the training step."""

  def __init__(self, model: VitVqgan, discriminator: Discriminator,
               generator_optimizer: optax.GradientTransformation,
               discriminator_optimizer: optax.GradientTransformation, mesh: Mesh,
               rules: partitioning.Rules, weights: LossWeights = LossWeights(),
               vgg_params: Optional[perceptual.Params] = None, frozen: Sequence[str] = (),
               restart_unused_after: int = 0, seed: int = 0):
    if restart_unused_after and 'quantizer' in frozen:
      raise ConfigError('restarting unused codes changes the codebook, which is frozen')
    if weights.perceptual and vgg_params is None:
      log.warning('*** NO VGG16 WEIGHTS: the perceptual loss (weight %s) is OFF. Pass a '
                      'converted VGG16 file (see parti_jax/tokenizer/perceptual.py) to train '
                      'with the paper\'s full loss. ***', weights.perceptual)
      weights = dataclasses.replace(weights, perceptual=0.0)
    self.model = model
    self.discriminator = discriminator
    self.weights = weights
    self.vgg_params = vgg_params
    self.generator_optimizer = freeze(generator_optimizer, frozen)
    self.discriminator_optimizer = discriminator_optimizer
    self.restart_unused_after = restart_unused_after
    self.mesh = mesh
    self.rules = rules
    self.seed = seed
    self.state_shardings = self._state_shardings()
    self._init = jax.jit(self._init_state, out_shardings=self.state_shardings)
    self._steps = {
        adversarial: jax.jit(lambda s, x, v, a=adversarial: self._train_step(s, x, v, a),
                             in_shardings=(self.state_shardings, None, None),
                             out_shardings=(self.state_shardings, None), donate_argnums=(0,))
        for adversarial in (False, True)
    }
    self._eval = jax.jit(self._eval_step)

  # Initialization and shardings.

  def _image_shape(self, batch: int) -> Tuple[int, ...]:
    size = self.model.config.image_size
    return (batch, size, size, 3)

  def _init_variables(self) -> Tuple[PyTree, PyTree]:
    """Boxed (logically annotated) generator and discriminator variables."""
    g_key, d_key = jax.random.split(jax.random.key(self.seed))
    generator = self.model.init(g_key, jnp.zeros(self._image_shape(1)))
    discriminator = self.discriminator.init(
        d_key, jnp.zeros(self._image_shape(self.discriminator.mbstd_group_size)))
    return generator, discriminator

  def _init_state(self) -> TokenizerState:
    generator, discriminator = nn.unbox(self._init_variables())
    generator, discriminator = generator['params'], discriminator['params']
    return TokenizerState(
        step=jnp.zeros((), jnp.int32), generator=generator, discriminator=discriminator,
        generator_opt=self.generator_optimizer.init(generator),
        discriminator_opt=self.discriminator_optimizer.init(discriminator),
        steps_unused=jnp.zeros((self.model.config.codebook_size,), jnp.int32))

  def abstract_state(self) -> TokenizerState:
    """Shapes and dtypes of the state, allocating nothing."""
    return jax.eval_shape(self._init_state)

  def _state_shardings(self) -> TokenizerState:
    abstract = self.abstract_state()
    generator, discriminator = jax.eval_shape(self._init_variables)
    g_specs = nn.get_partition_spec(generator)['params']
    d_specs = nn.get_partition_spec(discriminator)['params']
    logical = TokenizerState(
        step=PartitionSpec(), generator=g_specs, discriminator=d_specs,
        generator_opt=partitioning.optimizer_state_logical_axes(abstract.generator_opt,
                                                                abstract.generator, g_specs),
        discriminator_opt=partitioning.optimizer_state_logical_axes(
            abstract.discriminator_opt, abstract.discriminator, d_specs),
        steps_unused=PartitionSpec())
    return partitioning.shardings_from_logical(logical, self.mesh, self.rules)

  def init_state(self, pretrained: Optional[Dict[str, PyTree]] = None) -> TokenizerState:
    """A fresh state; `pretrained` replaces whole generator modules (for
    example {'encoder': ..., 'quantizer': ...} from a stage-1 tokenizer)."""
    with partitioning.activate(self.mesh, self.rules):
      state = self._init()
    if pretrained:
      generator = dict(state.generator)
      for name, tree in pretrained.items():
        target = self.state_shardings.generator[name]
        generator[name] = jax.tree.map(jax.device_put, tree, target)
      state = state.replace(generator=generator)
    return state

  # The step.

  def _generator_loss(self, generator: PyTree, discriminator: PyTree, vgg: Optional[PyTree],
                      images: Array, adversarial: bool):
    outputs, indices, aux = self.model.apply({'params': generator}, images)
    recon = outputs['image']
    w = self.weights
    terms = {'vq': aux['vq_loss'], 'l2': losses.l2_loss(recon, images)}
    if 'mu_logits' in outputs and w.logit_laplace:
      terms['logit_laplace'] = losses.logit_laplace_loss(outputs['mu_logits'],
                                                         outputs['log_scale'], images)
    if vgg is not None and w.perceptual:
      terms['perceptual'] = perceptual.perceptual_loss(vgg, recon, images)
    if adversarial:
      fake_logits = self.discriminator.apply({'params': discriminator}, recon)
      terms['adversarial'] = losses.generator_loss_nonsaturating(fake_logits)
    total = sum(getattr(w, name) * value for name, value in terms.items())
    metrics = {f'loss/{name}': value for name, value in terms.items()}
    metrics.update(generator_loss=total, psnr=psnr(recon, images),
                   codebook_usage=aux['codebook_usage'], perplexity=aux['perplexity'])
    return total, (metrics, recon, indices, aux['latents'])

  def _discriminator_loss(self, discriminator: PyTree, real: Array, fake: Array):
    def logits(x):
      return self.discriminator.apply({'params': discriminator}, x)

    loss = losses.discriminator_loss(logits(real), logits(fake))
    r1 = losses.r1_penalty(logits, real)
    return loss + 0.5 * self.weights.r1_gamma * r1, {'loss/discriminator': loss, 'r1': r1}

  def _train_step(self, state: TokenizerState, images: Array, vgg: Optional[PyTree],
                  adversarial: bool) -> Tuple[TokenizerState, Dict[str, Array]]:
    grad_fn = jax.value_and_grad(self._generator_loss, has_aux=True)
    (_, (metrics, recon, indices, latents)), grads = grad_fn(
        state.generator, state.discriminator, vgg, images, adversarial)
    updates, generator_opt = self.generator_optimizer.update(grads, state.generator_opt,
                                                             state.generator)
    generator = optax.apply_updates(state.generator, updates)
    metrics['generator_grad_norm'] = optax.global_norm(grads)

    discriminator, discriminator_opt = state.discriminator, state.discriminator_opt
    if adversarial:
      (_, d_metrics), d_grads = jax.value_and_grad(self._discriminator_loss, has_aux=True)(
          discriminator, images, jax.lax.stop_gradient(recon))
      d_updates, discriminator_opt = self.discriminator_optimizer.update(
          d_grads, discriminator_opt, discriminator)
      discriminator = optax.apply_updates(discriminator, d_updates)
      metrics.update(d_metrics)

    steps_unused = state.steps_unused
    if self.restart_unused_after:
      rng = jax.random.fold_in(jax.random.key(self.seed + 1), state.step)
      quantizer = dict(generator['quantizer'])
      quantizer['codebook'], steps_unused, restarted = restart_dead_codes(
          quantizer['codebook'], steps_unused, indices, latents, rng, self.restart_unused_after)
      generator = dict(generator, quantizer=quantizer)
      metrics['restarted_codes'] = restarted

    new_state = TokenizerState(step=state.step + 1, generator=generator,
                               discriminator=discriminator, generator_opt=generator_opt,
                               discriminator_opt=discriminator_opt, steps_unused=steps_unused)
    return new_state, metrics

  def train_step(self, state: TokenizerState,
                 images: Array) -> Tuple[TokenizerState, Dict[str, Array]]:
    """One update of the generator (and, once started, the discriminator).
    `state` is donated; `images` is a global batch (partitioning.host_to_global_batch)."""
    adversarial = bool(self.weights.adversarial) and (
        int(state.step) >= self.weights.adversarial_start_step)
    with partitioning.activate(self.mesh, self.rules):
      return self._steps[adversarial](state, images, self.vgg_params)

  # Evaluation.

  def _eval_step(self, generator: PyTree, images: Array) -> Dict[str, Array]:
    outputs, indices, _ = self.model.apply({'params': generator}, images)
    recon = outputs['image']
    return {'psnr': psnr(recon, images), 'l2': losses.l2_loss(recon, images),
            'indices': indices, 'reconstructions': jnp.clip(recon, 0.0, 1.0)}

  def evaluate(self, generator: PyTree, images: Array) -> Dict[str, Array]:
    """PSNR, L2, the codes (for usage over a whole dataset) and the clipped
    reconstructions of a batch."""
    with partitioning.activate(self.mesh, self.rules):
      return self._eval(generator, images)
