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
from parti_jax.data.task_images import TaskImages
from parti_jax.data.shapes import ShapesDataset
from parti_jax.errors import ConfigError

shapes_reader = gin.external_configurable(tasks.shapes_reader, 'shapes_reader')
folder_reader = gin.external_configurable(tasks.folder_reader, 'folder_reader')
tar_reader = gin.external_configurable(tasks.tar_reader, 'tar_reader')
tfrecord_reader = gin.external_configurable(tasks.tfrecord_reader, 'tfrecord_reader')
tfds_reader = gin.external_configurable(tasks.tfds_reader, 'tfds_reader')
# The images of a task, for tokenizer training: TRAIN_IMAGES = @train/task_images().
task_images = gin.external_configurable(TaskImages, 'task_images')


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
def pretokenized_task(name: str = 'pretokenized', directory: str = gin.REQUIRED,
                      num_tokens: int = gin.REQUIRED, validation_directory: Optional[str] = None,
                      vocabulary: Optional[str] = None, max_text_length: int = 128,
                      caption_dropout: float = 0.1, seed: int = 0) -> seqio.Task:
  """Registers a task over the shards `python -m parti_jax.data.pretokenize`
  wrote; the text settings must match the task that was pre-tokenized."""
  return tasks.register_pretokenized(
      name, directory, num_tokens, vocab.load_vocabulary(vocabulary), max_text_length,
      caption_dropout, seed, validation_dir=validation_directory)


@gin.configurable
def _configured_task(task: seqio.Task = gin.REQUIRED) -> seqio.Task:
  return task


def _bind_to_model(name: str, value: int, model_field: str) -> None:
  """Binds a task setting that must equal the model's, unless the gin files
  set it, in which case the two must agree."""
  try:
    bound = gin.query_parameter(name)
  except ValueError:  # Not bound: follow the model.
    with gin.unlock_config():
      gin.bind_parameter(name, value)
    return
  if bound != value:
    raise ConfigError(f'{name} = {bound} but the model has {model_field} = {value}; make them '
                      'equal')


def task_from_gin(text_length: Optional[int] = None,
                  image_tokens: Optional[int] = None) -> seqio.Task:
  """The task the gin macro TASK names (set by the files in gin_configs/data/).
  Given the model's text length and image token count, the task follows them:
  captions are cut to `text_length` tokens, pre-tokenized shards must hold
  `image_tokens` per image."""
  try:
    gin.query_parameter('TASK/macro.value')
  except ValueError as e:
    raise ConfigError('no data task is configured: pass a gin file from gin_configs/data/ '
                      '(for example --gin_file=data/shapes.gin)') from e
  if text_length is not None:
    for name in ('data_task.max_text_length', 'pretokenized_task.max_text_length'):
      _bind_to_model(name, text_length, 'max_text_length')
  if image_tokens is not None:
    _bind_to_model('pretokenized_task.num_tokens', image_tokens, 'image_length')
  with gin.unlock_config():
    gin.parse_config('_configured_task.task = %TASK')
  return _configured_task()


__all__ = ['ShapesDataset', 'data_task', 'folder_reader', 'pretokenized_task', 'shapes_reader',
           'tar_reader', 'task_from_gin', 'task_images', 'tfds_reader', 'tfrecord_reader']
