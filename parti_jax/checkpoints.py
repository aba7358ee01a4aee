"""Checkpoints with orbax: train state plus JSON metadata, asynchronous saves,
restore onto any mesh, and a fallback past damaged checkpoints.

A checkpoint is a step directory holding named pytree items (for example
'params' and 'opt_state'; each array is restored directly into the sharding the
caller asks for, so a checkpoint written on 8 devices restores on 1) and a JSON
item for everything that is not an array: the data iterator's position, the
config, counters. Any subset of the items can be restored, so inference reads
the parameters alone.

Orbax writes each step to a temporary directory and renames it when complete,
so an interrupted write never shows up as a step. A finished step can still be
damaged afterwards (a truncated file, a disk error); `restore_latest` then
warns and falls back to the step before it rather than losing the run. The
damaged step stays on disk (a read error may be passing) until the resumed run
saves that step again and replaces it.
"""
import functools
import logging
import os
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from parti_jax.errors import ConfigError

log = logging.getLogger(__name__)
PyTree = Any
METADATA = 'metadata'


def abstract_like(state: PyTree, shardings: PyTree) -> PyTree:
  """ShapeDtypeStructs of `state` carrying the target `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                      shardings)


@functools.cache  # A process-wide registration, made once.
def _write_replicated_arrays_whole() -> None:
  """In a single process, one writer saves every array whole.

  Orbax's default (replica-parallel) splits each replicated array into one
  slice per device, so that many hosts share the write. In one process that
  buys nothing, and each slice is an eager JAX op compiled on first use: the
  first save of a model on 8 devices blocked for about 6 s instead of under
  1 s. Several processes keep orbax's default.
  """
  if jax.process_count() == 1:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class Checkpointer:
  """Keeps the last `max_to_keep` steps, and every step that is a multiple of
  `keep_every` for good (for evaluating a run's history later)."""

  def __init__(self, directory: str, max_to_keep: Optional[int] = 3,
               keep_every: Optional[int] = None, asynchronous: bool = True):
    # orbax refuses relative paths (deep inside a save); a user's may be one.
    self.directory = directory if '://' in directory else os.path.abspath(directory)
    self._damaged = set()
    _write_replicated_arrays_whole()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_every,
                                             enable_async_checkpointing=asynchronous))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return self._manager.all_steps()

  def save(self, step: int, items: Dict[str, PyTree], metadata: Optional[Dict[str, Any]] = None,
           force: bool = True) -> bool:
    """Starts saving the named pytrees at `step` and returns at once; the
    arrays are copied first, so training may go on (and donate them)."""
    if step in self._damaged:
      self._manager.delete(step)
      self._damaged.discard(step)
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

  def restore_latest(self, abstract_items: Dict[str, PyTree]
                     ) -> Optional[Tuple[int, Dict[str, PyTree], Dict[str, Any]]]:
    """(step, items, metadata) of the newest step that restores, or None when
    there is no checkpoint. A step that fails to restore is skipped with a
    warning; if every step fails, the last error is raised."""
    steps = sorted(self.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      try:
        return step, self.restore(abstract_items, step), self.metadata(step)
      except Exception as e:  # pylint: disable=broad-except (any damage means: try older)
        if i == len(steps) - 1:
          raise
        self._damaged.add(step)
        log.warning('checkpoint %s/%d is damaged and is skipped (%s: %s); trying step %d',
                    self.directory, step, type(e).__name__, str(e).splitlines()[0][:200],
                    steps[i + 1])
    return None

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


def restore_for_inference(directory: str, item: str, config_key: str, kind: str,
                          abstract_for_config: Callable[[Dict[str, Any]], PyTree],
                          step: Optional[int] = None,
                          shardings_for_config: Optional[Callable[[Dict[str, Any]], PyTree]]
                          = None) -> Tuple[Dict[str, Any], PyTree]:
  """(config JSON, `item`) of a checkpoint that stores its model config in
  metadata[config_key]; `abstract_for_config` gives the item's shapes from
  that config, `shardings_for_config` where its arrays go (default: all on
  this process's first device). `kind` names the model in errors
  ('tokenizer', 'Parti model')."""
  checkpointer = Checkpointer(directory)
  try:
    if checkpointer.latest_step() is None:
      raise ConfigError(f'no {kind} checkpoint in {directory}')
    metadata = checkpointer.metadata(step)
    if config_key not in metadata:
      raise ConfigError(f'{directory} is not a {kind} checkpoint (no {config_key})')
    config = metadata[config_key]
    abstract = abstract_for_config(config)
    if shardings_for_config is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: device, abstract)
    else:
      shardings = shardings_for_config(config)
    return config, checkpointer.restore({item: abstract_like(abstract, shardings)}, step)[item]
  finally:
    checkpointer.close()
