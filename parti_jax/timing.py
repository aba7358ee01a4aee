"""Honest timing on a shared machine: medians, contention, and a measured peak.

Other processes on a 2-core machine can slow a run many times over, so each
repetition records how much CPU time the rest of the system took meanwhile
(from /proc/stat, minus this process's own time). Contended repetitions are
repeated and reported.
"""
import dataclasses
import os
import statistics
import time
from typing import Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def _system_busy_seconds() -> Optional[float]:
  """CPU seconds all processes have spent busy since boot; None off Linux."""
  try:
    with open('/proc/stat') as f:
      fields = f.readline().split()[1:]
  except OSError:
    return None
  ticks = [int(x) for x in fields]
  idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
  return (sum(ticks[:8]) - idle) / os.sysconf('SC_CLK_TCK')


def _own_cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


@dataclasses.dataclass
class Sample:
  seconds: float
  # Share of the machine's cores that other processes kept busy meanwhile.
  other_load: Optional[float]


def timed(fn: Callable[[], None]) -> Sample:
  busy0, own0, t0 = _system_busy_seconds(), _own_cpu_seconds(), time.perf_counter()
  fn()
  t1, own1, busy1 = time.perf_counter(), _own_cpu_seconds(), _system_busy_seconds()
  elapsed = t1 - t0
  other = None
  if busy0 is not None and elapsed > 0:
    other = max(0.0, (busy1 - busy0) - (own1 - own0)) / (elapsed * (os.cpu_count() or 1))
  return Sample(elapsed, other)


def measure(fn: Callable[[], None], repeats: int, contended_load: float = 0.2,
            max_extra: Optional[int] = None) -> dict:
  """Runs fn `repeats` times uncontended if possible; median and contention.

  A repetition during which other processes used more than `contended_load`
  of the machine is retried, up to `max_extra` extra runs (default: repeats).
  """
  max_extra = repeats if max_extra is None else max_extra
  clean: List[Sample] = []
  contended: List[Sample] = []
  while len(clean) < repeats and len(contended) <= max_extra:
    sample = timed(fn)
    if sample.other_load is not None and sample.other_load > contended_load:
      contended.append(sample)
    else:
      clean.append(sample)
  used = clean if clean else contended
  loads = [s.other_load for s in clean + contended if s.other_load is not None]
  return {
      'median_s': statistics.median(s.seconds for s in used),
      'min_s': min(s.seconds for s in used),
      'repeats': len(used),
      'contended_repeats': len(contended),
      'max_other_load': max(loads) if loads else None,
  }


def matmul_peak_flops(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of a jitted n x n matmul on the default device, accumulating in
  float32 as the model's matmuls do: the practical peak used as the
  denominator of model-FLOPs utilization on CPU."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
  f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  f(a, a).block_until_ready()
  result = measure(lambda: f(a, a).block_until_ready(), repeats)
  return 2.0 * n**3 / result['min_s']


# Dense bfloat16 peak FLOP/s per chip, from the vendors' datasheets.
_DATASHEET_BF16_PEAKS = (('TPU v4', 275e12), ('TPU v5p', 459e12), ('TPU v5 lite', 197e12),
                         ('TPU v6 lite', 918e12), ('H100', 989e12), ('H200', 989e12),
                         ('A100', 312e12))


def device_peak_flops(dtype) -> Tuple[float, str]:
  """(peak FLOP/s of one device for matmuls in `dtype`, where it came from):
  the datasheet for bfloat16 on known accelerators, otherwise a measured
  matmul (CPUs, float32)."""
  kind = jax.devices()[0].device_kind
  if jnp.dtype(dtype) == jnp.bfloat16:
    for name, peak in _DATASHEET_BF16_PEAKS:
      if name in kind:
        return peak, f'datasheet bf16 peak of {kind}'
  return matmul_peak_flops(dtype=dtype), f'measured matmul on {kind}'
