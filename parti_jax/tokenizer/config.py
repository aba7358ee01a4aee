"""Shape of the ViT-VQGAN image tokenizer (ViT-VQGAN §3, Table 2; Parti §2.1)."""
import dataclasses

import jax.numpy as jnp

from parti_jax.errors import ConfigError

# How the decoder's patches become pixels.
#   'logit_laplace': ViT-VQGAN's head, 6 channels (per-channel mean logits and
#     log-scales); the image is the sigmoid-mapped mean and the logit-Laplace
#     loss applies.
#   'linear': Parti's head, 3 raw channels used as RGB in [0, 1], no sigmoid and
#     no logit-Laplace loss.
OUTPUT_HEADS = ('logit_laplace', 'linear')


@dataclasses.dataclass(frozen=True)
class VitVqganConfig:
  """Defaults are ViT-VQGAN-Small at 256x256."""
  image_size: int = 256
  patch_size: int = 8
  encoder_layers: int = 8
  encoder_dim: int = 512
  encoder_heads: int = 8
  encoder_mlp_dim: int = 2048
  decoder_layers: int = 8
  decoder_dim: int = 512
  decoder_heads: int = 8
  decoder_mlp_dim: int = 2048
  codebook_size: int = 8192
  # Factorized codes: nearest-neighbour lookup in this low-dimensional space.
  lookup_dim: int = 32
  commitment_beta: float = 0.25
  output_head: str = 'logit_laplace'
  dropout_rate: float = 0.0
  dtype: str = 'float32'
  remat_policy: str = 'none'

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ConfigError(f'image_size {self.image_size} is not a multiple of patch_size '
                        f'{self.patch_size}')
    if self.output_head not in OUTPUT_HEADS:
      raise ConfigError(f'output_head must be one of {OUTPUT_HEADS}, got {self.output_head!r}')
    for side in ('encoder', 'decoder'):
      dim, heads = getattr(self, f'{side}_dim'), getattr(self, f'{side}_heads')
      if dim % heads:
        raise ConfigError(f'{side}_dim {dim} is not divisible by {side}_heads {heads}')
    if self.dtype not in ('float32', 'bfloat16'):
      raise ConfigError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

  @property
  def grid_size(self) -> int:
    """Tokens per image side."""
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    return self.grid_size**2

  @property
  def output_channels(self) -> int:
    return 6 if self.output_head == 'logit_laplace' else 3

  @property
  def compute_dtype(self):
    return jnp.bfloat16 if self.dtype == 'bfloat16' else jnp.float32
