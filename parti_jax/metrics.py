"""Training metrics: TensorBoard summaries (clu) on the primary process and a
compact progress line with an ETA in the log."""
import logging
import time
from typing import Mapping, Optional

from parti_jax import tf_setup  # pylint: disable=g-bad-import-order (before TensorFlow)

from clu import metric_writers  # pylint: disable=g-bad-import-order

log = logging.getLogger(__name__)


def create_writer(logdir: str, primary: bool) -> metric_writers.MetricWriter:
  """TensorBoard event files in `logdir` from process 0 only, so a pod writes
  one set of summaries; the other processes get a writer that drops them."""
  if not primary:
    return metric_writers.MultiWriter([])
  tf_setup.hide_accelerators_from_tensorflow()
  return metric_writers.AsyncWriter(metric_writers.SummaryWriter(logdir))


class Progress:
  """Logs 'step 500/3000 (17%) loss 0.0123 ... 2.9 steps/s, ETA 14m 20s'."""

  def __init__(self, total_steps: int, start_step: int):
    self.total_steps = total_steps
    self._last_step, self._last_time = start_step, time.time()

  def steps_per_second(self, step: int) -> Optional[float]:
    now = time.time()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    return rate

  def log(self, step: int, values: Mapping[str, float], rate: float) -> None:
    remaining = (self.total_steps - step) / max(rate, 1e-9)
    shown = '  '.join(f'{k} {v:.4g}' for k, v in values.items())
    log.info('step %d/%d (%d%%)  %s  %.2f steps/s, ETA %dm %02ds', step, self.total_steps,
             100 * step // self.total_steps, shown, rate, remaining // 60, remaining % 60)
