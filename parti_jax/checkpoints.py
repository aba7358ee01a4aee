"""Checkpoints with orbax: train state plus JSON metadata, asynchronous saves,
and restore onto any mesh.

A checkpoint is a step directory holding named pytree items (for example
'params' and 'opt_state'; each array is restored directly into the sharding the
caller asks for, so a checkpoint written on 8 devices restores on 1) and a JSON
item for everything that is not an array: the data iterator's position, the
config, counters. Any subset of the items can be restored, so inference reads
the parameters alone. Orbax writes each step to a
temporary directory and renames it when complete, so a step directory that
exists is a finished one.
"""
import logging
from typing import Any, Dict, Optional

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
PyTree = Any
METADATA = 'metadata'


def abstract_like(state: PyTree, shardings: PyTree) -> PyTree:
  """ShapeDtypeStructs of `state` carrying the target `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                      shardings)


class Checkpointer:
  """Saves every `save_interval_steps`, keeps the last `max_to_keep`."""

  def __init__(self, directory: str, max_to_keep: Optional[int] = 3,
               save_interval_steps: int = 1, asynchronous: bool = True):
    self.directory = directory
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             save_interval_steps=save_interval_steps,
                                             enable_async_checkpointing=asynchronous))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return self._manager.all_steps()

  def save(self, step: int, items: Dict[str, PyTree], metadata: Optional[Dict[str, Any]] = None,
           force: bool = False) -> bool:
    """Starts saving the named pytrees if `step` is due (or `force`); returns
    whether it did."""
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    args[METADATA] = ocp.args.JsonSave(metadata or {})
    return self._manager.save(step, args=ocp.args.Composite(**args), force=force)

  def metadata(self, step: Optional[int] = None) -> Dict[str, Any]:
    step = self._step_or_latest(step)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{METADATA: ocp.args.JsonRestore()}))
    return dict(restored[METADATA] or {})

  def restore(self, abstract_items: Dict[str, PyTree],
              step: Optional[int] = None) -> Dict[str, PyTree]:
    """Restores the named items of `step` (default: the latest) into the shapes
    and shardings of `abstract_items` (see abstract_like)."""
    step = self._step_or_latest(step)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}))
    log.info('restored %s of step %d from %s', sorted(abstract_items), step, self.directory)
    return {name: restored[name] for name in abstract_items}

  def _step_or_latest(self, step: Optional[int]) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    return step

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
