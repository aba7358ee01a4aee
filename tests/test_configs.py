"""The gin model configs have the paper's shapes and parameter counts."""
import math

import jax
import flax.linen as nn
import pytest

from parti_jax import flops, gin_utils
from parti_jax.models import PartiModel
from tests.conftest import small_config, token_batch


def configured_model(name: str) -> PartiModel:
  gin_utils.parse([f'models/{name}.gin'], [])
  return gin_utils.PartiModel()


def count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('name,expected', [
    ('parti_350m', 350e6), ('parti_750m', 750e6), ('parti_3b', 3.0e9), ('parti_20b', 20e9)])
def test_transformer_parameter_counts_match_table_1(name, expected):
  """Counted: every weight of the encoder and decoder layers (attention,
  cross-attention, MLP, layer norms) and the final norms; not counted: the
  token, position and logit embeddings, which depend on the vocabularies
  (they add 33M at 350M and 200M at 20B)."""
  params = nn.unbox(configured_model(name).abstract_variables())['params']
  blocks = sum(count(tree) for stack in ('encoder', 'decoder')
               for key, tree in params[stack].items() if key.startswith('layer_') or
               key == 'final_norm')
  assert abs(blocks / expected - 1) < 0.05, f'{name}: {blocks / 1e6:.1f}M'


def test_table_1_shapes():
  model = configured_model('parti_3b')
  cfg = model.config
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.emb_dim, cfg.mlp_dim,
          cfg.num_heads) == (12, 36, 2048, 8192, 32)
  assert (cfg.text_vocab_size, cfg.max_text_length, cfg.image_vocab_size,
          cfg.image_grid) == (16000, 128, 8192, (32, 32))
  assert cfg.dtype == 'bfloat16'


def test_tiny_config_runs():
  model = configured_model('parti_tiny')
  params = jax.jit(lambda key: nn.unbox(model.init_variables(key))['params'])(jax.random.key(0))
  loss, _ = jax.jit(model.loss_fn)(params, token_batch(model.config, 2))
  assert float(loss) > 0


def test_counted_flops_agree_with_xla():
  """Our model-FLOPs formula (matmuls only) is within 10% below XLA's own count
  of the compiled forward, which also counts elementwise work."""
  cfg = small_config(emb_dim=64, mlp_dim=256, image_vocab_size=128)
  model = PartiModel(cfg)
  params = nn.unbox(model.init_variables(jax.random.key(0)))['params']
  batch = token_batch(cfg, 4)
  xla = jax.jit(model.logits).lower(params, batch).compile().cost_analysis()['flops']
  ours = flops.forward_flops(cfg, 4, cfg.max_text_length, cfg.image_length)
  assert ours <= xla <= 1.1 * ours
