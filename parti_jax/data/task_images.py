"""The images of a seqio task as batches for tokenizer training.

The tokenizer trains on pixels alone, from any task the data gin files define
(a folder of the user's photos, tar shards, TFRecords, tfds). Each process
reads its own shard in the source's order, so the batch of a step depends on
the step alone and a resumed run continues at the next example.
"""
from typing import Iterator

import jax
import numpy as np
import seqio

from parti_jax.data import tasks
from parti_jax.data.errors import PipelineError


class TaskImages:
  """The images of `split` of `task`, float32 in [0, 1]."""

  def __init__(self, task: seqio.Task, split: str = 'train'):
    if split not in task.splits:
      raise PipelineError(f'task {task.name} has no split {split!r} (it has '
                          f'{sorted(task.splits)})')
    self.task = task
    self.split = split

  def batches(self, first_example: int, batch_size: int) -> Iterator[np.ndarray]:
    """This process's batches of `batch_size` images, starting at its
    `first_example`-th example; the split repeats without end."""
    dataset = tasks.examples(self.task, self.split, jax.process_index(), jax.process_count())
    dataset = (dataset.repeat().skip(first_example).map(lambda ex: ex['image'])
               .batch(batch_size, drop_remainder=True).prefetch(2))
    for images in dataset.as_numpy_iterator():
      yield images.astype(np.float32) / 255.0

  def __repr__(self) -> str:
    return f'TaskImages({self.task.name!r}, {self.split!r})'
