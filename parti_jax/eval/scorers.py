"""Image-text scorers for reranking, by name (`generate --scorer=NAME`).

A scorer maps (uint8 images [N, H, W, 3], prompts [N]) to scores [N], higher
is better (inference.Scorer). The contrastive image-text reranker with real
weights registers here when it lands; its constructor will take its weights
file the way `make_scorer` passes options.
"""
from typing import Callable, Dict

from parti_jax.errors import ConfigError
from parti_jax.eval.shapes_judge import ShapesJudgeScorer

_SCORERS: Dict[str, Callable[[], Callable]] = {
    ShapesJudgeScorer.name: ShapesJudgeScorer,
}


def names():
  return sorted(_SCORERS)


def make_scorer(name: str):
  """The scorer called `name`; ConfigError naming the known ones otherwise."""
  if name not in _SCORERS:
    raise ConfigError(f'unknown scorer {name!r}; known: {names()}')
  return _SCORERS[name]()
