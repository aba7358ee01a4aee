"""Text to images with a trained model and tokenizer: the API that notebooks
and `python -m parti_jax.generate` use.

  pipeline = Pipeline.from_checkpoint('runs/parti/params', 'runs/tok/checkpoints')
  images = pipeline('a small red circle above a large blue square', num_samples=4, seed=0)

Sample j of any prompt draws from fold_in(key(seed), j), so a prompt and seed
give the same images alone or among other prompts. Reranking (Parti §2.4:
sample many, keep the best by an image-text score) takes any scorer
(uint8 images [N, H, W, 3], prompts [N]) -> scores [N], higher is better.
"""
import dataclasses
import logging
from typing import Callable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from parti_jax import checkpoints, export, partitioning
from parti_jax.config import TransformerConfig
from parti_jax.data import features, text_ids, vocab
from parti_jax.decoding import SamplingConfig, Sampler
from parti_jax.errors import ConfigError
from parti_jax.models import PartiModel
from parti_jax.tokenizer.api import ImageTokenizer

log = logging.getLogger(__name__)
Scorer = Callable[[np.ndarray, Sequence[str]], np.ndarray]
Progress = Callable[[int, int], None]


@dataclasses.dataclass
class Generation:
  """The kept samples of one prompt, best first when reranked."""
  prompt: str
  images: List[Image.Image]
  sample_indices: List[int]
  tokens: np.ndarray  # int32 [kept, image_length]
  scores: Optional[List[float]] = None
  prompt_truncated: bool = False


class Pipeline:
  """Prompts -> text tokens -> sampled image tokens -> pixels."""

  def __init__(self, config: TransformerConfig, params, tokenizer: ImageTokenizer,
               vocabulary, batch_size: int = 16,
               mesh_config: Optional[partitioning.MeshConfig] = None):
    if tokenizer.config.codebook_size != config.image_vocab_size:
      raise ConfigError(f'the tokenizer has {tokenizer.config.codebook_size} codes but the model '
                        f'samples from {config.image_vocab_size}')
    if tokenizer.config.num_tokens != config.image_length:
      raise ConfigError(f'the tokenizer makes {tokenizer.config.num_tokens} tokens per image but '
                        f'the model samples {config.image_length}')
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.vocabulary = vocabulary
    self.batch_size = batch_size
    mesh_config = mesh_config or partitioning.MeshConfig()
    self.sampler = Sampler(PartiModel(config), mesh_config.make_mesh(), mesh_config.rules)
    self._empty = text_ids.unconditional_text_tokens(config.max_text_length)

  @classmethod
  def from_checkpoint(cls, checkpoint_dir: str, tokenizer_dir: str, batch_size: int = 16,
                      mesh_config: Optional[partitioning.MeshConfig] = None,
                      dtype: Optional[str] = None,
                      decode_cache_dtype: Optional[str] = None) -> 'Pipeline':
    """A model export (MODEL_DIR/params) or training checkpoints
    (MODEL_DIR/checkpoints), and a tokenizer's checkpoints. The parameters
    are restored straight into their shards on the mesh.

    dtype, decode_cache_dtype: sample with these numerics instead of the
    checkpoint's (TransformerConfig); parameters stay float32 either way.
    """
    mesh_config = mesh_config or partitioning.MeshConfig()
    config, params = export.load_exported(checkpoint_dir, mesh=mesh_config.make_mesh(),
                                          rules=mesh_config.rules)
    numerics = dict(dtype=dtype, decode_cache_dtype=decode_cache_dtype)
    config = dataclasses.replace(config, **{k: v for k, v in numerics.items() if v is not None})
    reader = checkpoints.Checkpointer(checkpoint_dir)
    spec = reader.metadata().get(export.VOCABULARY_KEY)
    reader.close()
    return cls(config, params, ImageTokenizer.from_checkpoint(tokenizer_dir),
               vocab.load_vocabulary(spec), batch_size, mesh_config)

  def __call__(self, prompt: str, num_samples: int = 4, seed: int = 0,
               keep: Optional[int] = None, scorer: Optional[Scorer] = None,
               **sampling) -> List[Image.Image]:
    """The kept images of one prompt; `sampling`: SamplingConfig's fields."""
    return self.generate([prompt], num_samples, SamplingConfig(**sampling), seed, keep,
                         scorer)[0].images

  def generate(self, prompts: Sequence[str], num_samples: int = 4,
               sampling: SamplingConfig = SamplingConfig(), seed: int = 0,
               keep: Optional[int] = None, scorer: Optional[Scorer] = None,
               on_progress: Optional[Progress] = None) -> List[Generation]:
    """Samples `num_samples` images per prompt, keeps `keep` of them (the
    best by `scorer`; all when keep is None). `on_progress(done, total)`
    hears of each sampled batch, in images."""
    if not prompts:
      raise ConfigError('no prompts to generate from')
    keep = num_samples if keep is None else keep
    if not 1 <= keep <= num_samples:
      raise ConfigError(f'keep must lie in 1..num_samples ({num_samples}), got {keep}')
    if keep < num_samples and scorer is None:
      raise ConfigError(f'keeping {keep} of {num_samples} samples needs a scorer to rank them')
    if hasattr(scorer, 'check_prompts'):  # Fail before sampling, not after.
      scorer.check_prompts(prompts)
    texts, cut = zip(*(features.prompt_tokens(p, self.vocabulary, self.config.max_text_length)
                       for p in prompts))
    for prompt, was_cut in zip(prompts, cut):
      if was_cut:
        log.warning('prompt cut to %d text tokens: %.60s...', self.config.max_text_length,
                    prompt)
    rows = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    tokens = self._sample_rows(np.stack(texts), rows, sampling, seed, on_progress)
    images = np.asarray(self.tokenizer.decode(tokens))
    pixels = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    results = []
    for p, prompt in enumerate(prompts):
      mine = slice(p * num_samples, (p + 1) * num_samples)
      order, scores = list(range(num_samples)), None
      if scorer is not None:
        all_scores = np.asarray(scorer(pixels[mine], [prompt] * num_samples), np.float64)
        order = [int(i) for i in np.argsort(-all_scores, kind='stable')[:keep]]
        scores = [float(all_scores[i]) for i in order]
      results.append(Generation(
          prompt=prompt, images=[Image.fromarray(pixels[mine][i]) for i in order],
          sample_indices=order, tokens=tokens[mine][order], scores=scores,
          prompt_truncated=cut[p]))
    return results

  def _sample_rows(self, texts: np.ndarray, rows, sampling: SamplingConfig, seed: int,
                   on_progress: Optional[Progress]) -> np.ndarray:
    """Image tokens for each (prompt index, sample index) row, in batches of
    batch_size rows (the last one padded, so one compiled shape serves all)."""
    base = jax.random.key(seed)
    out = []
    if on_progress is not None:
      on_progress(0, len(rows))
    for start in range(0, len(rows), self.batch_size):
      chunk = rows[start:start + self.batch_size]
      padded = chunk + [chunk[-1]] * (self.batch_size - len(chunk))
      text = texts[[p for p, _ in padded]]
      # One dispatch, not one per row: a queue of small computations ahead of
      # a sampler split over several CPU devices can stall XLA's runtime.
      keys = jax.vmap(jax.random.fold_in, (None, 0))(base, jnp.asarray([s for _, s in padded]))
      sampled = self.sampler(self.params, text, keys, sampling, self._empty)
      out.append(np.asarray(sampled)[:len(chunk)])
      if on_progress is not None:
        on_progress(start + len(chunk), len(rows))
    return np.concatenate(out)
