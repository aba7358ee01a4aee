"""The encoder's special text ids and padding, in plain numpy.

Kept apart from features.py (TensorFlow) so that the sampler and the
benchmarks run where only JAX is installed, as on a bare accelerator VM.
"""
from typing import Sequence

import numpy as np

from parti_jax.errors import ConfigError

# The T5 / seqio special ids; vocab.py trains SentencePiece models with them.
PAD_ID = 0
EOS_ID = 1

# What the empty caption tokenizes to. Caption dropout at training time and the
# sampler's unconditional branch must both use exactly this.
EMPTY_CAPTION_TOKENS = (EOS_ID,)


def unconditional_text_tokens(max_length: int) -> np.ndarray:
  """The empty caption's encoder input, int32 [max_length]: [EOS, 0, 0, ...]."""
  check_length('max_length', max_length)
  return pad(EMPTY_CAPTION_TOKENS, max_length)


def pad(tokens: Sequence[int], length: int) -> np.ndarray:
  """int32 [length]: `tokens`, then PAD_ID."""
  if len(tokens) > length:
    raise ValueError(f'{len(tokens)} text tokens do not fit text_length={length}')
  padded = np.full([length], PAD_ID, np.int32)
  padded[:len(tokens)] = tokens
  return padded


def check_length(name: str, value: int) -> None:
  if not isinstance(value, (int, np.integer)) or value < 1:
    raise ConfigError(f'{name} must be a positive integer, got {value!r}')
