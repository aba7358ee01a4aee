"""Gin wiring for the entry points: what is configurable, and config parsing.

The network and model modules do not import gin; this module registers them,
so `PartiModel.config = @TransformerConfig()` works in gin files.
"""
import logging
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import gin
from etils import epath

from parti_jax import partitioning, trainer
from parti_jax.config import TransformerConfig
from parti_jax.data.shapes import ShapesDataset
from parti_jax.errors import ConfigError
from parti_jax.models import PartiModel
from parti_jax.tokenizer import config as tokenizer_config
from parti_jax.tokenizer import discriminator as tokenizer_discriminator
from parti_jax.tokenizer import trainer as tokenizer_trainer

# The repository's gin_configs/, searched after the user's paths.
DEFAULT_SEARCH_PATH = Path(__file__).resolve().parent.parent / 'gin_configs'

TransformerConfig = gin.external_configurable(TransformerConfig, 'TransformerConfig')
PartiModel = gin.external_configurable(PartiModel, 'PartiModel')
MeshConfig = gin.external_configurable(partitioning.MeshConfig, 'MeshConfig')
make_optimizer = gin.external_configurable(trainer.make_optimizer, 'make_optimizer')
warmup_exponential_decay = gin.external_configurable(trainer.warmup_exponential_decay,
                                                     'warmup_exponential_decay')
parti_schedule = gin.external_configurable(trainer.parti_schedule, 'parti_schedule')
warmup_cosine = gin.external_configurable(trainer.warmup_cosine, 'warmup_cosine')
ShapesDataset = gin.external_configurable(ShapesDataset, 'ShapesDataset')
VitVqganConfig = gin.external_configurable(tokenizer_config.VitVqganConfig, 'VitVqganConfig')
Discriminator = gin.external_configurable(tokenizer_discriminator.Discriminator, 'Discriminator')
LossWeights = gin.external_configurable(tokenizer_trainer.LossWeights, 'LossWeights')


def _resolve(path: str, search_paths: Sequence[Path]) -> str:
  if os.path.isabs(path) or os.path.exists(path):
    if not os.path.exists(path):
      raise ConfigError(f'gin file not found: {path}')
    return path
  for root in search_paths:
    candidate = Path(root) / path
    if candidate.exists():
      return str(candidate)
  raise ConfigError(f'gin file not found: {path} (searched ., ' +
                    ', '.join(str(p) for p in search_paths) + ')')


class _DropGinProbeErrors(logging.Filter):
  """gin logs 'Path not found' for every search-path prefix it probes while
  resolving an include, even when a later prefix has the file."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith('Path not found:')


def one_line(error: BaseException) -> str:
  """The first line of an error message; gin appends its context below it."""
  text = str(error).strip() or type(error).__name__
  return text.splitlines()[0]


def parse(gin_files: Iterable[str], bindings: Iterable[str],
          search_paths: Optional[Sequence[str]] = None) -> None:
  """Parses gin files (resolved against the search paths) then bindings.

  Any problem is raised as a ConfigError naming the file or binding.
  """
  roots: List[Path] = [Path(p) for p in (search_paths or [])] + [DEFAULT_SEARCH_PATH]
  for root in roots:
    gin.add_config_file_search_path(str(root))
  gin.clear_config()
  probe_filter = _DropGinProbeErrors()
  logging.getLogger().addFilter(probe_filter)
  try:
    _parse_resolved(gin_files, bindings, roots)
  finally:
    logging.getLogger().removeFilter(probe_filter)


def _parse_resolved(gin_files: Iterable[str], bindings: Iterable[str],
                    roots: Sequence[Path]) -> None:
  for path in gin_files:
    resolved = _resolve(path, roots)
    try:
      gin.parse_config_file(resolved)
    except Exception as e:  # gin raises ValueError, SyntaxError, TokenError, ...
      raise ConfigError(f'in gin file {path}: {one_line(e)}') from e
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise ConfigError(f'in gin binding {binding!r}: {one_line(e)}') from e


def write_operative_config(model_dir: str) -> None:
  """MODEL_DIR/config.gin: every binding the run used, local or on gs://."""
  directory = epath.Path(model_dir)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / 'config.gin').write_text(gin.operative_config_str())
