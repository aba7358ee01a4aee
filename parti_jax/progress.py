"""Progress bars for long loops outside training (sampling, evaluation)."""
import sys
from typing import Callable

import tqdm


def bar(description: str, unit: str = 'img') -> Callable[[int, int], None]:
  """An `on_progress(done, total)` callback that draws a bar on stderr,
  opened at the first call (best with done 0, before the work starts, so the
  rate is right) and closed when done reaches total."""
  state = {}

  def update(done: int, total: int) -> None:
    if 'bar' not in state:
      state['bar'] = tqdm.tqdm(total=total, desc=description, unit=unit, file=sys.stderr,
                               dynamic_ncols=True)
    state['bar'].update(done - state['bar'].n)
    if done >= total:
      state['bar'].close()
      del state['bar']

  return update
