"""Gin wiring of the data pipeline: which task a job reads, from gin files.

  TASK = @data_task()
  data_task.name = 'my_photos'
  data_task.reader = @folder_reader()
  folder_reader.root = '/data/photos'

Kept apart from gin_utils because it imports TensorFlow, which jobs without
data (the memory planner) do without.
"""
from typing import Optional

import gin
import seqio

from parti_jax.data import tasks, vocab
from parti_jax.data.shapes import ShapesDataset
from parti_jax.errors import ConfigError

shapes_reader = gin.external_configurable(tasks.shapes_reader, 'shapes_reader')
folder_reader = gin.external_configurable(tasks.folder_reader, 'folder_reader')
tar_reader = gin.external_configurable(tasks.tar_reader, 'tar_reader')
tfrecord_reader = gin.external_configurable(tasks.tfrecord_reader, 'tfrecord_reader')
tfds_reader = gin.external_configurable(tasks.tfds_reader, 'tfds_reader')


@gin.configurable
def data_task(name: str = gin.REQUIRED, reader: tasks.Reader = gin.REQUIRED,
              validation_reader: Optional[tasks.Reader] = None,
              vocabulary: Optional[str] = None, image_size: int = 64, crop: str = 'center',
              resample: str = 'bicubic', max_text_length: int = 128,
              caption_dropout: float = 0.1, seed: int = 0) -> seqio.Task:
  """Registers the configured task. `vocabulary`: a SentencePiece model path,
  or None for seqio's byte vocabulary."""
  readers = {'train': reader}
  if validation_reader is not None:
    readers['validation'] = validation_reader
  return tasks.register(name, readers, vocab.load_vocabulary(vocabulary),
                        tasks.ImageOptions(size=image_size, crop=crop, resample=resample),
                        max_text_length, caption_dropout, seed)


@gin.configurable
def _configured_task(task: seqio.Task = gin.REQUIRED) -> seqio.Task:
  return task


def task_from_gin() -> seqio.Task:
  """The task the gin macro TASK names (set by the files in gin_configs/data/)."""
  try:
    gin.query_parameter('TASK/macro.value')
  except ValueError as e:
    raise ConfigError('no data task is configured: pass a gin file from gin_configs/data/ '
                      '(for example --gin_file=data/shapes.gin)') from e
  with gin.unlock_config():
    gin.parse_config('_configured_task.task = %TASK')
  return _configured_task()


__all__ = ['ShapesDataset', 'data_task', 'task_from_gin', 'folder_reader', 'shapes_reader', 'tar_reader',
           'tfds_reader', 'tfrecord_reader']
