"""Parameters-only copies of a trained model, for inference.

A training checkpoint holds the optimizer state too (as large as the
parameters again, or twice); the export is the parameters alone plus the model
config, so `load_exported` needs no gin files:

  config, params = load_exported('runs/parti/params')
"""
import dataclasses
from typing import Any, Dict, Optional, Tuple

from jax.sharding import Mesh

from parti_jax import checkpoints, partitioning
from parti_jax.config import TransformerConfig
from parti_jax.models import PartiModel

PyTree = Any
MODEL_CONFIG_KEY = 'model_config'
# The text vocabulary the model was trained with (data.vocab.vocabulary_spec).
VOCABULARY_KEY = 'text_vocabulary'


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
  if step in exporter.all_steps():  # A finished run, relaunched: already written.
    exporter.close()
    return
  exporter.save(step, {'params': params},
                dict(extra_metadata or {}, **{MODEL_CONFIG_KEY: config_to_json(config)}))
  exporter.close()


def load_exported(directory: str, step: Optional[int] = None,
                  mesh: Optional[Mesh] = None,
                  rules: Optional[partitioning.Rules] = None) -> Tuple[TransformerConfig, PyTree]:
  """(config, params) of an export (or of a training checkpoint directory,
  which carries the same items), restored straight into their shards on
  `mesh` under `rules` (default: this process's first device)."""
  shardings_for_config = None
  if mesh is not None:
    shardings_for_config = lambda values: partitioning.shardings_from_logical(
        PartiModel(config_from_json(values)).param_logical_axes(), mesh, rules)
  values, params = checkpoints.restore_for_inference(
      directory, 'params', MODEL_CONFIG_KEY, 'Parti model',
      lambda values: PartiModel(config_from_json(values)).abstract_params(), step,
      shardings_for_config)
  return config_from_json(values), params
