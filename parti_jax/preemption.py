"""Noticing preemption: a TPU VM (or a scheduler) sends SIGTERM, and the job
has a short grace period to save and leave.

One process: a SIGTERM handler sets a flag that the training loop reads after
each step. Several processes: each host gets its notice at a slightly
different step, and they must all save the same one; jax's preemption sync
service (started by jax.distributed.initialize, which catches SIGTERM itself)
agrees on that step, and `reached(step)` turns true on every host at it.
"""
import logging
import signal
import sys
import threading
from typing import Callable, NoReturn

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

# 128 + SIGTERM: the exit status of a job ended by SIGTERM, which schedulers
# (GKE, Slurm, our tpu_scripts/train.sh) read as "preempted, run me again".
EXIT_CODE = 143


class PreemptionWatch:
  """Use as a context manager around the training loop."""

  def __init__(self):
    self._notice = threading.Event()
    self._previous_handler = None

  def _use_jax_sync(self) -> bool:
    return jax.process_count() > 1

  def __enter__(self) -> 'PreemptionWatch':
    if not self._use_jax_sync():
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_signal)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def _on_signal(self, signum, frame) -> None:  # pylint: disable=unused-argument
    log.warning('received SIGTERM: saving a checkpoint after this step, then exiting')
    self._notice.set()

  def reached(self, step: int) -> bool:
    """Whether to save and stop now, after `step` (called after every step,
    on every host, with the same step)."""
    if self._use_jax_sync():
      return multihost_utils.reached_preemption_sync_point(step)
    return self._notice.is_set()


def save_and_exit(step: int, save: Callable[[int], None], checkpointer,
                  already_saved: bool) -> NoReturn:
  """Ends a preempted job: saves `step` with `save` unless the loop just did,
  waits until the checkpoint is on disk, and exits with EXIT_CODE."""
  if not already_saved:
    save(step)
  checkpointer.wait()
  log.warning('preempted: saved step %d to %s; exiting with status %d so the scheduler runs '
              'the job again', step, checkpointer.directory, EXIT_CODE)
  sys.exit(EXIT_CODE)
