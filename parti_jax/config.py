"""Shape and numerics of the Parti encoder-decoder (Parti §2.2, Table 1).

A plain dataclass so the network modules stay free of gin; gin_utils.py
makes it configurable for the entry points.
"""
import dataclasses
from typing import Optional, Sequence, Tuple

import jax.numpy as jnp

from parti_jax.errors import ConfigError

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# Embedding tables are padded to a multiple of this so that their vocab axis
# can be split over any power-of-two model-parallel mesh axis up to 128.
VOCAB_PAD_MULTIPLE = 128


def round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters of the encoder-decoder; defaults are Parti-350M."""
  text_vocab_size: int = 16000
  # Size of the image tokenizer's codebook; the decoder also embeds one BOS id.
  image_vocab_size: int = 8192
  max_text_length: int = 128
  # Height and width of the image-token grid (a 256x256 image with 8x8
  # patches gives 32x32 tokens).
  image_grid: Tuple[int, int] = (32, 32)
  emb_dim: int = 1024
  num_heads: int = 16
  # Defaults to emb_dim // num_heads.
  head_dim: Optional[int] = None
  mlp_dim: int = 4096
  num_encoder_layers: int = 12
  num_decoder_layers: int = 12
  # ('gelu',) is a plain two-matrix MLP as in Parti's parameter counts;
  # ('gelu', 'linear') is the gated variant of T5 v1.1.
  mlp_activations: Sequence[str] = ('gelu',)
  dropout_rate: float = 0.1
  # Matmul dtype; parameters, layer norms, softmax and logits stay float32.
  dtype: str = 'float32'
  # Dtype of the self-attention keys and values kept while sampling; None: the
  # matmul dtype. 'float32' with a bfloat16 model suits XLA's CPU backend,
  # which rewrites a bfloat16 cache whole, through float32, at every step
  # (bench-s decode on a 2-core CPU: 5.8 s per batch instead of 7.8 s);
  # accelerators update a bfloat16 cache in place and read half the bytes.
  decode_cache_dtype: Optional[str] = None
  # The decoder's causal self-attention is computed in this many blocks of
  # queries, each reading the keys up to its end, so that (n - 1) / 2n of the
  # masked work is skipped (3/8 at 4); 1 computes the whole [length, length]
  # square. The result is the same up to rounding.
  causal_query_blocks: int = 4
  # 'none' keeps every activation for the backward pass; 'full' recomputes
  # each layer (less memory, about a third more compute).
  remat_policy: str = 'none'

  def __post_init__(self):
    if self.dtype not in _DTYPES:
      raise ConfigError(f'dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}')
    if self.decode_cache_dtype not in (None, *_DTYPES):
      raise ConfigError(f'decode_cache_dtype must be None or one of {sorted(_DTYPES)}, got '
                        f'{self.decode_cache_dtype!r}')
    if self.remat_policy not in ('none', 'full'):
      raise ConfigError(f"remat_policy must be 'none' or 'full', got {self.remat_policy!r}")
    if self.causal_query_blocks < 1:
      raise ConfigError(f'causal_query_blocks must be at least 1, got {self.causal_query_blocks}')
    if self.head_dim is None and self.emb_dim % self.num_heads:
      raise ConfigError(f'emb_dim {self.emb_dim} is not divisible by num_heads {self.num_heads}')

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def cache_dtype(self):
    return _DTYPES[self.decode_cache_dtype or self.dtype]

  @property
  def attention_head_dim(self) -> int:
    return self.head_dim or self.emb_dim // self.num_heads

  @property
  def image_length(self) -> int:
    return self.image_grid[0] * self.image_grid[1]

  @property
  def bos_id(self) -> int:
    """Decoder input id that starts every image sequence."""
    return self.image_vocab_size

  @property
  def text_embedding_rows(self) -> int:
    return round_up(self.text_vocab_size, VOCAB_PAD_MULTIPLE)

  @property
  def image_embedding_rows(self) -> int:
    return round_up(self.image_vocab_size + 1, VOCAB_PAD_MULTIPLE)
