"""SeqIO tasks: image-caption pairs from any source, as Parti's inputs.

Every source (the built-in shapes, a folder with captions.jsonl/.tsv, tar
shards, TFRecords, a tfds dataset) becomes a seqio Task whose examples hold
  image            uint8 [S, S, 3]  decoded, resized and cropped
  caption          string           cleaned
  id               string           the example's key in its source
  text_tokens      int32 [<= L]     caption tokens ending in EOS, or the empty
                                    caption's when dropped for guidance
  caption_dropped  bool
Image tokens are added downstream: on the fly by the tokenizer, or read back
from a pre-tokenized task. Bad examples are skipped and counted per task
(`skip_counts`); a source with nothing usable ends in an error naming it.
"""
import dataclasses
import functools
import os
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np

from parti_jax import tf_setup  # pylint: disable=g-bad-import-order (before TensorFlow)

import seqio  # pylint: disable=g-bad-import-order
import tensorflow as tf  # pylint: disable=g-bad-import-order

from parti_jax.data import features, sources
from parti_jax.data.errors import BadExample, NoUsableExamples, SkipCounter, format_counts
from parti_jax.data.images import decode_image, image_array, resize_and_crop
from parti_jax.data.shapes import ShapesDataset
from parti_jax.data.text import clean_caption

# A reader yields raw records {'image': bytes or uint8 array, 'caption', 'key'}
# for one process: reader(counter, process_index, process_count).
Reader = Callable[[SkipCounter, int, int], Iterator[Dict[str, Any]]]

_SKIPS: Dict[str, SkipCounter] = {}


@dataclasses.dataclass(frozen=True)
class ImageOptions:
  """How decoded images become the model's square inputs."""
  size: int = 64
  crop: str = 'center'
  resample: str = 'bicubic'
  min_side: int = 8


def skip_counts(task_name: str) -> Dict[str, int]:
  """Examples this process skipped in `task_name`, by reason."""
  return _SKIPS[task_name].counts() if task_name in _SKIPS else {}


def prepared_examples(records: Iterator[Dict[str, Any]], options: ImageOptions,
                      counter: SkipCounter, seed: int, source: str) -> Iterator[Dict[str, Any]]:
  """Decodes, validates and crops raw records; skips and counts bad ones."""
  served = 0
  for record in records:
    key = record['key']
    try:
      caption = clean_caption(record['caption'], key)
      image = record['image']
      if isinstance(image, bytes):
        image = decode_image(image, key, min_side=options.min_side)
      else:
        image = image_array(image, key, min_side=options.min_side)
      # Random crops draw from the example's own key, like the caption dropout.
      rng = np.random.default_rng([seed, hash_key(key)]) if options.crop == 'random' else None
      image = resize_and_crop(image, options.size, options.crop, rng, options.resample)
    except BadExample as e:
      counter.skip(e)
      continue
    served += 1
    yield {'image': image, 'caption': caption, 'id': key}
  if not served:
    raise NoUsableExamples(f'{source}: no example survived decoding; skipped: '
                           f'{format_counts(counter.counts())}')


def hash_key(key: str) -> int:
  """A stable, non-negative 63-bit hash of an example key (Python's hash() is
  salted per run)."""
  return int(np.frombuffer(tf.strings.to_hash_bucket_fast([key], 2**63 - 1).numpy().tobytes(),
                           np.int64)[0])


def _signature(size: int) -> Dict[str, tf.TensorSpec]:
  return {'image': tf.TensorSpec([size, size, 3], tf.uint8),
          'caption': tf.TensorSpec([], tf.string), 'id': tf.TensorSpec([], tf.string)}


def reader_source(readers: Dict[str, Reader], options: ImageOptions, task_name: str,
                  seed: int) -> seqio.DataSource:
  """A seqio source over per-split readers; each host reads its shard."""

  def dataset_fn(split: str, shuffle_files: bool, seed_override: Optional[int] = None,
                 shard_info: Optional[seqio.ShardInfo] = None) -> tf.data.Dataset:
    del shuffle_files, seed_override  # Order is the source's, so iterators resume exactly.
    index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    counter = _SKIPS.setdefault(task_name, SkipCounter())

    def generate():
      yield from prepared_examples(readers[split](counter, index, count), options, counter,
                                   seed, f'{task_name}/{split}')

    return tf.data.Dataset.from_generator(generate, output_signature=_signature(options.size))

  return seqio.FunctionDataSource(dataset_fn, splits=tuple(readers))


def tokenize_captions(dataset: tf.data.Dataset, vocabulary: seqio.Vocabulary,
              max_length: int) -> tf.data.Dataset:
  return dataset.map(lambda ex: features.tokenize_text(ex, vocabulary, max_length),
                     num_parallel_calls=tf.data.AUTOTUNE)


def drop_captions(dataset: tf.data.Dataset, rate: float, seed: int) -> tf.data.Dataset:
  return dataset.map(lambda ex: features.drop_captions(ex, rate, seed, id_feature='id'))


def register(name: str, readers: Dict[str, Reader], vocabulary: seqio.Vocabulary,
             options: ImageOptions = ImageOptions(), max_text_length: int = 128,
             caption_dropout: float = 0.1, seed: int = 0) -> seqio.Task:
  """Registers (or replaces) the task `name` over `readers` (split -> reader)."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=reader_source(readers, options, name, seed),
      output_features={
          'text_tokens': seqio.Feature(vocabulary, add_eos=False),
          'image': seqio.ContinuousFeature(dtype=tf.uint8, rank=3),
      },
      preprocessors=[
          functools.partial(tokenize_captions, vocabulary=vocabulary, max_length=max_text_length),
          functools.partial(drop_captions, rate=caption_dropout, seed=seed),
      ],
      shuffle_buffer_size=None)


# Readers of each source, for `register`.

def shapes_reader(dataset: ShapesDataset) -> Reader:
  """The built-in shapes, already rendered; examples are split among hosts by index."""

  def read(counter: SkipCounter, index: int, count: int):
    del counter  # Rendered examples are never bad.
    for example in dataset.iterate(start=index, step=count):
      yield {'image': example['image'], 'caption': example['caption'],
             'key': f'shapes/{dataset.seed}/{example["index"]}'}

  return read


def folder_reader(root: str, captions_file: Optional[str] = None) -> Reader:
  return lambda counter, index, count: sources.read_folder(
      root, counter, captions_file, process_index=index, process_count=count)


def tar_reader(pattern: str) -> Reader:
  return lambda counter, index, count: sources.read_tar_shards(
      pattern, counter, process_index=index, process_count=count)


def tfrecord_reader(pattern: str, image_key: str = 'image', caption_key: str = 'caption') -> Reader:
  return lambda counter, index, count: sources.read_tfrecords(
      pattern, counter, image_key, caption_key, process_index=index, process_count=count)


def tfds_reader(name: str, split: str, image_key: str = 'image',
                caption_key: str = 'captions/text', data_dir: Optional[str] = None) -> Reader:
  """A tfds image-caption dataset, e.g. coco_captions. Nothing is downloaded:
  the dataset must already be prepared in `data_dir`. A caption feature that
  holds several captions (COCO has five) gives one example per caption."""

  def read(counter: SkipCounter, index: int, count: int):
    del counter
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    try:
      # tfds_id names an example by its file and record, so its key (which
      # seeds caption dropout and random crops) is the same whatever the
      # number of hosts.
      dataset = tfds.load(name, split=split, data_dir=data_dir, download=False,
                          read_config=tfds.ReadConfig(add_tfds_id=True))
    except Exception as e:  # tfds raises several types for a missing dataset.
      raise NoUsableExamples(f'tfds dataset {name!r} split {split!r} is not prepared in '
                             f'{data_dir or "the default tfds data_dir"} (nothing is '
                             f'downloaded): {e}') from e
    for example in tfds.as_numpy(dataset.shard(count, index)):
      captions = _nested(example, caption_key)
      captions = captions if isinstance(captions, (list, np.ndarray)) else [captions]
      image = np.asarray(_nested(example, image_key))
      example_id = example['tfds_id'].decode()
      for i, caption in enumerate(captions):
        yield {'image': image, 'caption': caption, 'key': f'{name}/{example_id}/{i}'}

  return read


def _nested(example: Dict[str, Any], path: str) -> Any:
  for part in path.split('/'):
    example = example[part]
  return example


def examples(task: seqio.Task, split: str = 'train', shard_index: int = 0,
             num_shards: int = 1) -> tf.data.Dataset:
  """The task's examples for one host, in the source's order."""
  return task.get_dataset(split=split, shuffle=False, num_epochs=1, trim_output_features=False,
                          shard_info=seqio.ShardInfo(shard_index, num_shards))


def _shard_pattern(directory: str) -> str:
  # pretokenize.py names its shards tokens-pPPP-SSSSS.tfrecord.
  pattern = os.path.join(directory, 'tokens-*.tfrecord')
  if not tf.io.gfile.glob(pattern):
    raise FileNotFoundError(f'no pre-tokenized shards match {pattern}; run '
                            'python -m parti_jax.data.pretokenize first')
  return pattern


def register_pretokenized(name: str, output_dir: str, num_tokens: int,
                          vocabulary: seqio.Vocabulary, max_text_length: int = 128,
                          caption_dropout: float = 0.1, seed: int = 0,
                          validation_dir: Optional[str] = None) -> seqio.Task:
  """A task over the shards in `output_dir` (and, as its 'validation' split,
  `validation_dir`), with the on-the-fly task's text processing; its examples
  carry 'image_tokens' instead of 'image'."""
  splits = {'train': _shard_pattern(output_dir)}
  if validation_dir:
    splits['validation'] = _shard_pattern(validation_dir)
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.TFExampleDataSource(splits, feature_description={
          'image_tokens': tf.io.FixedLenFeature([num_tokens], tf.int64),
          'caption': tf.io.FixedLenFeature([], tf.string),
          'id': tf.io.FixedLenFeature([], tf.string)}),
      output_features={'text_tokens': seqio.Feature(vocabulary, add_eos=False),
                       'image_tokens': seqio.Feature(seqio.PassThroughVocabulary(1),
                                                     add_eos=False)},
      preprocessors=[
          _cast_tokens,
          functools.partial(tokenize_captions, vocabulary=vocabulary,
                            max_length=max_text_length),
          functools.partial(drop_captions, rate=caption_dropout, seed=seed),
      ],
      shuffle_buffer_size=None)


def _cast_tokens(dataset: tf.data.Dataset) -> tf.data.Dataset:
  return dataset.map(lambda ex: dict(ex, image_tokens=tf.cast(ex['image_tokens'], tf.int32)))
