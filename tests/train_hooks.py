"""Gin hooks that tests inject into `python -m parti_jax.train` runs (through a
gin file with `import tests.train_hooks`), to interrupt a run at an exact step."""
import os
import signal

import gin


@gin.configurable
def send_signal_at(params, step: int, writer, at_step: int = gin.REQUIRED,  # pylint: disable=unused-argument
                   signal_name: str = 'SIGTERM') -> None:
  """A `train.sample_fn` that sends this process `signal_name` after step `at_step`."""
  if step == at_step:
    os.kill(os.getpid(), getattr(signal, signal_name))
