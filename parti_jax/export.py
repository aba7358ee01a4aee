"""Parameters-only copies of a trained model, for inference.

A training checkpoint holds the optimizer state too (as large as the
parameters again, or twice); the export is the parameters alone plus the model
config, so `load_exported` needs no gin files:

  config, params = load_exported('runs/parti/params')
"""
import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax

from parti_jax import checkpoints
from parti_jax.config import TransformerConfig
from parti_jax.models import PartiModel

PyTree = Any
MODEL_CONFIG_KEY = 'model_config'


def config_to_json(config: TransformerConfig) -> Dict[str, Any]:
  return dataclasses.asdict(config)


def config_from_json(values: Dict[str, Any]) -> TransformerConfig:
  # JSON has no tuples; the config's sequences are tuples.
  return TransformerConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in values.items()})


def export_params(directory: str, step: int, params: PyTree, config: TransformerConfig,
                  extra_metadata: Optional[Dict[str, Any]] = None) -> None:
  """Writes `params` and the config as step `step` of `directory`."""
  exporter = checkpoints.Checkpointer(directory, max_to_keep=1)
  exporter.save(step, {'params': params},
                dict(extra_metadata or {}, **{MODEL_CONFIG_KEY: config_to_json(config)}))
  exporter.close()


def load_exported(directory: str, step: Optional[int] = None,
                  sharding: Optional[jax.sharding.Sharding] = None
                  ) -> Tuple[TransformerConfig, PyTree]:
  """(config, params) of an export (or of a training checkpoint directory,
  which carries the same items), on `sharding` (default: this process's
  first device)."""
  values, params = checkpoints.restore_for_inference(
      directory, 'params', MODEL_CONFIG_KEY, 'Parti model',
      lambda values: PartiModel(config_from_json(values)).abstract_params(), step, sharding)
  return config_from_json(values), params
