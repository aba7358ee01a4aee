"""Joining the processes of a multi-host job (a TPU pod slice, or several
machines given a coordinator) before anything touches the devices.

  in gin:             initialize.coordinator_address = '10.0.0.2:8476'
                      initialize.num_processes = 4
                      initialize.process_id = 0
  or the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
  (read by jax itself), or nothing at all on a TPU pod, where jax finds its
  peers from the TPU metadata.
"""
import logging
import os
from typing import Optional

import gin
import jax

log = logging.getLogger(__name__)


def _on_multihost_tpu() -> bool:
  # Set on every worker of a Cloud TPU VM slice; one host lists one name.
  return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


@gin.configurable
def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Calls jax.distributed.initialize when this job spans several processes;
  a single-host job runs without it."""
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _on_multihost_tpu():
    jax.distributed.initialize()
  else:
    return
  log.info('process %d of %d; %d local and %d global devices', jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
