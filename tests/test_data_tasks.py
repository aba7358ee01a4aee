"""SeqIO tasks end to end: sources to model batches, sharding, resume, and
pre-tokenized shards against the on-the-fly path."""
import json
import os

import numpy as np
import pytest
import seqio
from PIL import Image

from parti_jax.data import pretokenize, tasks
from parti_jax.data.pipeline import ModelBatches
from parti_jax.data.shapes import ShapesDataset
from tests.conftest import run_module, write_random_tokenizer

SIZE = 32


def fake_tokenizer(images: np.ndarray) -> np.ndarray:
  """A deterministic stand-in for ImageTokenizer.encode: 4x4 mean-colour codes."""
  blocks = images.reshape(len(images), 4, SIZE // 4, 4, SIZE // 4, 3).mean(axis=(2, 4))
  return (blocks.sum(-1) // 3).astype(np.int32).reshape(len(images), 16) % 64


def write_folder(root, count: int) -> None:
  os.makedirs(root / 'images')
  with open(root / 'captions.jsonl', 'w') as f:
    for i in range(count):
      Image.fromarray(np.full((40, 50, 3), i * 20, np.uint8)).save(root / 'images' / f'{i}.png')
      f.write(json.dumps({'image': f'images/{i}.png', 'caption': f'picture number {i}'}) + '\n')
    f.write('{not json\n')
    f.write(json.dumps({'image': 'images/missing.png', 'caption': 'gone'}) + '\n')
    f.write(json.dumps({'image': 'images/0.png', 'caption': '   '}) + '\n')


def test_folder_task_features_and_counted_skips(tmp_path):
  write_folder(tmp_path, 5)
  task = tasks.register('test_folder', {'train': tasks.folder_reader(str(tmp_path))},
                        seqio.ByteVocabulary(), tasks.ImageOptions(size=SIZE),
                        max_text_length=8, caption_dropout=0.0)
  examples = list(tasks.examples(task).as_numpy_iterator())
  assert len(examples) == 5
  first = examples[0]
  assert first['image'].shape == (SIZE, SIZE, 3) and first['image'].dtype == np.uint8
  assert first['caption'] == b'picture number 0'
  assert first['text_tokens'].dtype == np.int32 and first['text_tokens'][-1] == 1
  assert len(first['text_tokens']) == 8  # Truncated to the text length, EOS kept.
  assert tasks.skip_counts('test_folder') == {'malformed_line': 1, 'missing_image': 1,
                                              'empty_caption': 1}


def test_shapes_task_shards_are_disjoint_and_cover():
  task = tasks.register('test_shapes', {'train': tasks.shapes_reader(
      ShapesDataset(resolution=SIZE))}, seqio.ByteVocabulary(), tasks.ImageOptions(size=SIZE),
                        max_text_length=32)
  ids = [[ex['id'] for ex in tasks.examples(task, shard_index=i, num_shards=2)
          .take(6).as_numpy_iterator()] for i in range(2)]
  assert not set(ids[0]) & set(ids[1])
  assert set(ids[0]) | set(ids[1]) == {f'shapes/0/{i}'.encode() for i in range(12)}


def test_caption_dropout_rate_and_unconditional_tokens():
  task = tasks.register('test_dropout', {'train': tasks.shapes_reader(
      ShapesDataset(resolution=16))}, seqio.ByteVocabulary(), tasks.ImageOptions(size=16),
                        max_text_length=32, caption_dropout=0.25, seed=3)
  dropped = [ex for ex in tasks.examples(task).take(800).as_numpy_iterator()]
  rate = np.mean([ex['caption_dropped'] for ex in dropped])
  # Binomial(800, 0.25): standard deviation 0.0153; allow 4 of them.
  assert abs(rate - 0.25) < 4 * 0.0153
  assert all(list(ex['text_tokens']) == [1] for ex in dropped if ex['caption_dropped'])


def make_batches(task, position=0, encode=fake_tokenizer):
  return ModelBatches(lambda: tasks.examples(task), batch_size=4, text_length=32, bos_id=64,
                      encode_images=encode, position=position)


def test_batches_resume_at_the_same_example():
  task = tasks.register('test_resume', {'train': tasks.shapes_reader(
      ShapesDataset(resolution=SIZE))}, seqio.ByteVocabulary(), tasks.ImageOptions(size=SIZE),
                        max_text_length=32)
  uninterrupted = make_batches(task)
  batches = [next(uninterrupted) for _ in range(3)]
  first = make_batches(task)
  next(first)
  resumed = make_batches(task, position=first.state()['position'])
  for expected in batches[1:]:
    actual = next(resumed)
    for name in expected:
      np.testing.assert_array_equal(actual[name], expected[name])
  batch = batches[0]
  assert batch['encoder_input_tokens'].shape == (4, 32)
  assert batch['decoder_input_tokens'].shape == (4, 16)
  np.testing.assert_array_equal(batch['decoder_input_tokens'][:, 0], 64)
  np.testing.assert_array_equal(batch['decoder_input_tokens'][:, 1:],
                                batch['decoder_target_tokens'][:, :-1])


def test_pretokenized_task_equals_on_the_fly(tmp_path):
  options = tasks.ImageOptions(size=SIZE)
  task = tasks.register('test_fly', {'train': tasks.shapes_reader(
      ShapesDataset(resolution=SIZE))}, seqio.ByteVocabulary(), options, max_text_length=32,
                        caption_dropout=0.3, seed=7)
  summary = pretokenize.write_shards(tasks.examples(task), fake_tokenizer, str(tmp_path), 8,
                                     batch_size=4, max_examples=20)
  assert summary == {'shards': 3, 'examples': 20}
  pre = tasks.register_pretokenized('test_pre', str(tmp_path), 16, seqio.ByteVocabulary(),
                                          max_text_length=32, caption_dropout=0.3, seed=7)
  fly_batches = make_batches(task)
  pre_batches = ModelBatches(lambda: tasks.examples(pre), batch_size=4, text_length=32,
                             bos_id=64)
  for _ in range(5):
    expected, actual = next(fly_batches), next(pre_batches)
    for name in expected:
      np.testing.assert_array_equal(actual[name], expected[name])


def test_pretokenize_resumes_and_never_trusts_partial_files(tmp_path):
  task = tasks.register('test_resume_pre', {'train': tasks.shapes_reader(
      ShapesDataset(resolution=SIZE))}, seqio.ByteVocabulary(), tasks.ImageOptions(size=SIZE),
                        max_text_length=32)
  pretokenize.write_shards(tasks.examples(task), fake_tokenizer, str(tmp_path), 8, 4, 16)
  first = (tmp_path / 'tokens-p000-00000.tfrecord').read_bytes()
  # A crash mid-shard leaves only a temporary file, which is not a shard.
  (tmp_path / 'tokens-p000-00001.tfrecord').unlink()
  (tmp_path / 'tokens-p000-00001.tfrecord.tmp-999').write_bytes(b'half')
  calls = []

  def counting(images):
    calls.append(len(images))
    return fake_tokenizer(images)

  summary = pretokenize.write_shards(tasks.examples(task), counting, str(tmp_path), 8, 4, 16)
  assert summary == {'shards': 2, 'examples': 16}
  assert sum(calls) == 8  # Only the missing shard was tokenized again.
  assert (tmp_path / 'tokens-p000-00000.tfrecord').read_bytes() == first


def test_missing_pretokenized_shards_are_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='no pre-tokenized shards'):
    tasks.register_pretokenized('test_none', str(tmp_path), 16, seqio.ByteVocabulary())


def test_pretokenize_command(tmp_path):
  """The CLI over a gin-configured folder task with a (random) tiny tokenizer."""
  write_random_tokenizer(tmp_path / 'tokenizer', SIZE, patch_size=8)
  write_folder(tmp_path / 'photos', 6)
  result = run_module('parti_jax.data.pretokenize', '--gin_file=data/folder.gin',
                      f'--gin.DATA_ROOT="{tmp_path / "photos"}"', f'--gin.data_task.image_size={SIZE}',
                      f'--tokenizer_dir={tmp_path / "tokenizer"}',
                      f'--output_dir={tmp_path / "tokens"}', '--examples_per_shard=4',
                      '--batch_size=2')
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary['shards'] == 2 and summary['examples'] == 6
  assert summary['skipped'] == {'malformed_line': 1, 'missing_image': 1, 'empty_caption': 1}
  missing = run_module('parti_jax.data.pretokenize', f'--tokenizer_dir={tmp_path}',
                       f'--output_dir={tmp_path / "x"}')
  assert missing.returncode == 2
  assert 'no data task is configured' in missing.stderr.strip().splitlines()[-1]


def test_tfds_task_reads_a_locally_built_dataset(tmp_path):
  """The tfds reader against a tiny COCO-shaped dataset built here (several
  captions per image become one example each); nothing is downloaded."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  images = [np.full((40, 48, 3), 50 * i, np.uint8) for i in range(3)]
  captions = [[f'image {i} caption {j}' for j in range(2)] for i in range(3)]
  data = tf.data.Dataset.from_tensor_slices({'image': np.stack(images),
                                             'captions': {'text': np.array(captions)}})
  tfds.dataset_builders.store_as_tfds_dataset(
      name='tiny_captions', version='1.0.0', data_dir=str(tmp_path),
      features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(40, 48, 3)),
          'captions': tfds.features.Sequence({'text': tfds.features.Text()})}),
      split_datasets={'train': data}, disable_shuffling=True)
  task = tasks.register('test_tfds', {'train': tasks.tfds_reader(
      'tiny_captions', 'train', data_dir=str(tmp_path))}, seqio.ByteVocabulary(),
                        tasks.ImageOptions(size=SIZE), caption_dropout=0.0)
  examples = list(tasks.examples(task).as_numpy_iterator())
  assert [ex['caption'].decode() for ex in examples] == [c for pair in captions for c in pair]
  assert all(ex['image'].shape == (SIZE, SIZE, 3) for ex in examples)
  assert examples[2]['image'].mean() == pytest.approx(50, abs=1)
  # Example ids come from the records, not from the host split, so caption
  # dropout and crops agree however many hosts read the dataset.
  halves = [list(tasks.examples(task, shard_index=i, num_shards=2).as_numpy_iterator())
            for i in range(2)]
  assert sorted(ex['id'] for half in halves for ex in half) == sorted(ex['id'] for ex in examples)
  missing = tasks.register('test_tfds_missing', {'train': tasks.tfds_reader(
      'tiny_captions', 'train', data_dir=str(tmp_path / 'nowhere'))}, seqio.ByteVocabulary())
  with pytest.raises(Exception, match='not prepared'):
    list(tasks.examples(missing).as_numpy_iterator())


def test_random_crops_are_deterministic_per_example(tmp_path):
  """Same crop for the same example on every run; different examples get
  different offsets (the images are identical horizontal ramps)."""
  ramp = np.tile(np.linspace(0, 255, 80).astype(np.uint8)[None, :, None], (40, 1, 3))
  with open(tmp_path / 'captions.jsonl', 'w') as f:
    for i in range(8):
      Image.fromarray(ramp).save(tmp_path / f'{i}.png')
      f.write(json.dumps({'image': f'{i}.png', 'caption': f'ramp {i}'}) + '\n')
  readers = {'train': tasks.folder_reader(str(tmp_path))}
  options = tasks.ImageOptions(size=SIZE, crop='random')
  runs = [[ex['image'] for ex in tasks.examples(tasks.register(
      f'test_crop_{i}', readers, seqio.ByteVocabulary(), options)).as_numpy_iterator()]
          for i in range(2)]
  for a, b in zip(*runs):
    np.testing.assert_array_equal(a, b)
  assert len({int(image[0, 0, 0]) for image in runs[0]}) > 1
