"""Pre-tokenization: run the image tokenizer over a task once, so Parti
training reads token ids and never touches pixels.

  python -m parti_jax.data.pretokenize --gin_file=data/folder.gin \
      --gin.DATA_ROOT="'/data/photos'" --tokenizer_dir=/runs/tok/checkpoints \
      --output_dir=/data/photos_tokens

Shards are TFRecord files of tf.train.Example with 'image_tokens' (int64
[N]), 'caption' and 'id' (bytes), written to a temporary name and renamed when
complete: a shard file that exists is whole, and rerunning after a crash skips
the finished shards and rewrites only the rest. The caption is stored rather
than its tokens; reading it back tokenizes and drops captions exactly as the
on-the-fly path does (same vocabulary, same per-example dropout), so both paths
yield identical batches.
"""
import itertools
import json
import logging
import os
from typing import Callable, Dict, Optional

import numpy as np

from parti_jax import tf_setup  # pylint: disable=g-bad-import-order (before TensorFlow)

import tensorflow as tf  # pylint: disable=g-bad-import-order

import jax  # pylint: disable=g-bad-import-order

from parti_jax import cli, multihost
from parti_jax.data import configured, tasks
from parti_jax.tokenizer.api import ImageTokenizer

log = logging.getLogger(__name__)

# Each process writes its own shards: tokens-p<process>-<shard>.tfrecord.
SHARD_PATTERN = 'tokens-p{:03d}-{:05d}.tfrecord'
MANIFEST = 'manifest-p{:03d}.json'


def _serialize(image_tokens: np.ndarray, caption: bytes, key: bytes) -> bytes:
  feature = {
      'image_tokens': tf.train.Feature(int64_list=tf.train.Int64List(value=image_tokens)),
      'caption': tf.train.Feature(bytes_list=tf.train.BytesList(value=[caption])),
      'id': tf.train.Feature(bytes_list=tf.train.BytesList(value=[key])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(dataset: tf.data.Dataset, encode_images: Callable[[np.ndarray], np.ndarray],
                 output_dir: str, examples_per_shard: int, batch_size: int = 32,
                 max_examples: Optional[int] = None, process_index: int = 0) -> Dict[str, int]:
  """Writes the tokens of `dataset` (a task's examples, in order) as shards.

  Shard k holds examples [k * examples_per_shard, (k + 1) * examples_per_shard).
  One pass over the data: finished shards are read past, not tokenized again.
  Returns the number of shards and examples.
  """
  if examples_per_shard % batch_size:
    raise ValueError(f'examples_per_shard {examples_per_shard} must be a multiple of '
                     f'batch_size {batch_size}')
  tf.io.gfile.makedirs(output_dir)
  if max_examples is not None:
    dataset = dataset.take(max_examples)
  needed = dataset.map(lambda ex: {k: ex[k] for k in ('image', 'caption', 'id')})
  batches = needed.batch(batch_size).as_numpy_iterator()
  batches_per_shard = examples_per_shard // batch_size
  shard, total = 0, 0
  while True:
    # Streamed, a batch at a time: a shard of large images need not fit in memory.
    shard_batches = itertools.islice(batches, batches_per_shard)
    first = next(shard_batches, None)
    if first is None:
      break
    shard_batches = itertools.chain([first], shard_batches)
    path = os.path.join(output_dir, SHARD_PATTERN.format(process_index, shard))
    if tf.io.gfile.exists(path):
      count = sum(len(batch['id']) for batch in shard_batches)
      log.info('shard %d is complete, skipped', shard)
    else:
      count = _write_shard(shard_batches, encode_images, path)
      log.info('wrote shard %d: %d examples', shard, count)
    total += count
    shard += 1
  with tf.io.gfile.GFile(os.path.join(output_dir, MANIFEST.format(process_index)), 'w') as f:
    json.dump({'shards': shard, 'examples': total}, f)
  return {'shards': shard, 'examples': total}


def _write_shard(batches, encode_images, path: str) -> int:
  """Writes under a temporary name, renamed once complete: a shard file that
  exists is whole. Returns the number of examples written."""
  temporary = f'{path}.tmp-{os.getpid()}'
  count = 0
  with tf.io.TFRecordWriter(temporary) as writer:
    for batch in batches:
      tokens = np.asarray(encode_images(batch['image']))
      for row in range(len(tokens)):
        writer.write(_serialize(tokens[row], batch['caption'][row], batch['id'][row]))
      count += len(tokens)
  tf.io.gfile.rename(temporary, path, overwrite=True)
  return count


def main(argv=None) -> None:
  p = cli.parser(__doc__)
  p.add_argument('--tokenizer_dir', required=True, help='checkpoints of a trained tokenizer')
  p.add_argument('--output_dir', required=True)
  p.add_argument('--split', default='train')
  p.add_argument('--examples_per_shard', type=int, default=4096)
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--max_examples', type=int, default=None,
                 help='stop after this many per process (shapes is infinite)')
  args = cli.parse_with_gin(p, argv)
  multihost.initialize()  # Each process writes its own shards: it must know its index.
  task = configured.task_from_gin()
  tokenizer = ImageTokenizer.from_checkpoint(args.tokenizer_dir)
  examples = tasks.examples(task, args.split, jax.process_index(), jax.process_count())
  summary = write_shards(examples, tokenizer.encode, args.output_dir, args.examples_per_shard,
                         args.batch_size, args.max_examples, jax.process_index())
  print(json.dumps(dict(summary, output_dir=args.output_dir,
                        skipped=tasks.skip_counts(task.name))))


if __name__ == '__main__':
  cli.run(main)
