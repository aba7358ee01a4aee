"""The user's data sources: an image folder (.jsonl, .tsv), tar shards and TFRecords.

Every bad input is skipped and counted with its reason while the good examples
around it come through; a source with nothing usable, or no files, fails with
an error naming them; processes read disjoint shares that cover the data.
"""
import io
import json
import logging
import tarfile

import pytest
import tensorflow as tf
from PIL import Image

from parti_jax.data import images, sources
from parti_jax.data.errors import BadExample, NoUsableExamples, SkipCounter
from parti_jax.errors import ConfigError
from tests.test_data_images import bilevel_png, encode, noise_jpeg

RED, BLUE = (220, 20, 20), (20, 20, 220)


def png(colour=RED, size=(16, 16)) -> bytes:
  return encode(Image.new('RGB', size, colour))


def bad_image_files() -> dict:
  """File name -> contents and the reason decoding it must give."""
  jpeg = noise_jpeg()
  return {'empty.jpg': (b'', 'empty_file'),
          'truncated.jpg': (jpeg[:len(jpeg) // 2], 'undecodable_image'),
          'text.jpg': (b'a caption, not a picture', 'undecodable_image'),
          'dot.png': (png(size=(1, 1)), 'image_too_small'),
          'huge.png': (bilevel_png(20000, 20000), 'image_too_large')}


def decoded(examples, counter: SkipCounter) -> list:
  """What the pipeline does after a source: decode, skipping and counting."""
  kept = []
  for example in examples:
    try:
      kept.append({**example, 'pixels': images.decode_image(example['image'], example['key'])})
    except BadExample as e:
      counter.skip(e)
  return kept


def write_folder(root, captions_name: str, lines: list, files: dict) -> None:
  root.mkdir(exist_ok=True)
  for name, data in files.items():
    (root / name).write_bytes(data)
  (root / captions_name).write_text('\n'.join(lines) + '\n')


def jsonl(image: str, caption: str) -> str:
  return json.dumps({'image': image, 'caption': caption})


# Skip counting.


def test_skip_counter_counts_merges_and_logs_only_the_first_few(caplog):
  counter = SkipCounter(log_first=2)
  with caplog.at_level(logging.WARNING, logger='parti_jax.data.errors'):
    for index in range(5):
      counter.skip(BadExample('empty_file', f'img{index}.jpg', 'the image file is empty'))
    counter.skip(BadExample('missing_image', 'x.png', 'not found'))
  assert counter.counts() == {'empty_file': 5, 'missing_image': 1} and counter.total == 6
  messages = [record.getMessage() for record in caplog.records]
  assert len(messages) == 3 and 'img0.jpg' in messages[0]
  assert 'counted, not logged' in messages[1]
  other = SkipCounter()
  other.skip(BadExample('missing_image', 'y.png', 'not found'))
  counter.merge(other)
  assert counter.counts() == {'empty_file': 5, 'missing_image': 2}
  assert counter.summary() == 'empty_file 5, missing_image 2'


def test_bad_example_reasons_are_a_fixed_set():
  with pytest.raises(ValueError, match='unknown skip reason'):
    BadExample('kinda_bad', 'x.jpg', 'hmm')


# The folder source.


def test_folder_jsonl_skips_and_counts_every_bad_input(tmp_path):
  root = tmp_path / 'photos'
  bad = bad_image_files()
  files = {'good1.png': png(RED), 'good2.png': png(BLUE),
           **{name: data for name, (data, _) in bad.items()}}
  lines = [jsonl('good1.png', 'a red square'),
           jsonl('empty.jpg', 'empty'),
           '{"image": "good1.png", "caption": ',  # Cut-off JSON.
           json.dumps({'image': 'good1.png'}),  # No caption.
           jsonl('not_there.png', 'missing'),
           '',
           jsonl('truncated.jpg', 'truncated'), jsonl('text.jpg', 'text'),
           jsonl('dot.png', 'dot'), jsonl('huge.png', 'huge'),
           jsonl('good2.png', 'a blue square')]
  write_folder(root, 'captions.jsonl', lines, files)
  counter = SkipCounter()
  kept = decoded(sources.read_folder(str(root), counter), counter)
  assert [e['caption'] for e in kept] == ['a red square', 'a blue square']
  assert kept[0]['key'] == str(root / 'good1.png')
  assert (kept[1]['pixels'] == BLUE).all()
  assert counter.counts() == {'empty_file': 1, 'image_too_large': 1, 'image_too_small': 1,
                              'malformed_line': 2, 'missing_image': 1, 'undecodable_image': 2}


def test_folder_keys_name_the_captions_line(tmp_path, caplog):
  root = tmp_path / 'photos'
  write_folder(root, 'captions.jsonl', [jsonl('a.png', 'ok'), 'not json', jsonl('b.png', 'x')],
               {'a.png': png()})
  counter = SkipCounter()
  with caplog.at_level(logging.WARNING):
    assert len(list(sources.read_folder(str(root), counter))) == 1
  logged = caplog.text
  assert f'{root / "captions.jsonl"}:2' in logged and 'malformed_line' in logged
  assert f'{root / "b.png"}' in logged and 'captions.jsonl:3' in logged


def test_folder_tsv_reads_rows_and_counts_bad_ones(tmp_path):
  root = tmp_path / 'photos'
  lines = ['caption\tsource\timage',  # Columns in any order, extra columns allowed.
           'a red square\tcamera\tred.png',
           'too\tfew',
           'a missing picture\tcamera\tgone.png',
           'a blue square\tcamera\tsub/blue.png']
  (root / 'sub').mkdir(parents=True)
  write_folder(root, 'captions.tsv', lines, {'red.png': png(RED), 'sub/blue.png': png(BLUE)})
  counter = SkipCounter()
  examples = list(sources.read_folder(str(root), counter))
  assert [e['caption'] for e in examples] == [b'a red square', b'a blue square']
  assert examples[1]['image'] == png(BLUE)
  assert counter.counts() == {'malformed_line': 1, 'missing_image': 1}


def test_tsv_without_its_header_names_the_file(tmp_path):
  root = tmp_path / 'photos'
  write_folder(root, 'captions.tsv', ['red.png\ta red square'], {'red.png': png()})
  with pytest.raises(ConfigError, match=r'captions\.tsv.*header'):
    list(sources.read_folder(str(root), SkipCounter()))


def test_missing_captions_file_names_the_path_and_both_names(tmp_path):
  with pytest.raises(FileNotFoundError) as caught:
    sources.read_folder(str(tmp_path / 'photos'), SkipCounter())
  message = str(caught.value)
  assert str(tmp_path / 'photos' / 'captions.jsonl') in message and 'captions.tsv' in message
  with pytest.raises(FileNotFoundError, match='mine.tsv'):
    sources.read_folder(str(tmp_path), SkipCounter(), captions_file='mine.tsv')


def test_folder_with_both_captions_files_asks_to_choose(tmp_path):
  write_folder(tmp_path, 'captions.jsonl', [jsonl('a.png', 'jsonl')], {'a.png': png()})
  write_folder(tmp_path, 'captions.tsv', ['image\tcaption', 'a.png\ttsv'], {})
  with pytest.raises(ConfigError, match='captions_file'):
    sources.read_folder(str(tmp_path), SkipCounter())
  chosen = sources.read_folder(str(tmp_path), SkipCounter(), captions_file='captions.tsv')
  assert [e['caption'] for e in chosen] == [b'tsv']


def test_folder_with_only_bad_lines_names_the_file_and_the_skips(tmp_path):
  root = tmp_path / 'photos'
  write_folder(root, 'captions.jsonl', ['{oops', json.dumps([1, 2]), jsonl('gone.png', 'x')], {})
  with pytest.raises(NoUsableExamples) as caught:
    list(sources.read_folder(str(root), SkipCounter()))
  message = str(caught.value)
  assert str(root / 'captions.jsonl') in message
  assert 'malformed_line 2, missing_image 1' in message


def test_captions_are_passed_on_unvalidated(tmp_path):
  write_folder(tmp_path, 'captions.jsonl', [jsonl('a.png', '')], {'a.png': png()})
  assert [e['caption'] for e in sources.read_folder(str(tmp_path), SkipCounter())] == ['']


# Tar shards.


def write_tar(path, members: list) -> None:
  """members: (name, bytes) in order; a name ending in '/' is a directory."""
  with tarfile.open(path, 'w') as tar:
    for name, data in members:
      info = tarfile.TarInfo(name.rstrip('/'))
      if name.endswith('/'):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
      else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_tar_shards_pair_members_and_count_orphans(tmp_path):
  write_tar(tmp_path / 'shard-00001.tar', [
      ('0003.jpg', noise_jpeg(16)),  # No caption.
      ('0004.png', png(BLUE)), ('0004.json', b'{}'), ('0004.txt', b'a blue square'),
      ('extra/', b''), ('README', b'not a member of any pair')])
  write_tar(tmp_path / 'shard-00000.tar', [
      ('0000.jpg', noise_jpeg(16)), ('0000.txt', b'noise'), ('0000.json', b'{"w": 16}'),
      ('0001.txt', b'a red square'), ('0001.png', png(RED)),
      ('0002.txt', b'no picture')])  # No image.
  counter = SkipCounter()
  examples = list(sources.read_tar_shards(str(tmp_path / 'shard-*.tar'), counter))
  assert [e['caption'] for e in examples] == [b'noise', b'a red square', b'a blue square']
  assert examples[1]['image'] == png(RED)
  assert examples[2]['key'] == f'{tmp_path / "shard-00001.tar"}:0004'
  assert counter.counts() == {'missing_caption': 1, 'missing_image': 1}


def test_bad_images_in_a_tar_are_skipped_by_decoding(tmp_path):
  members = [('good.png', png(RED)), ('good.txt', b'red')]
  for name, (data, _) in bad_image_files().items():
    stem, extension = name.split('.')
    members += [(name, data), (f'{stem}.txt', extension.encode())]
  write_tar(tmp_path / 'data.tar', members)
  counter = SkipCounter()
  kept = decoded(sources.read_tar_shards(str(tmp_path / 'data.tar'), counter), counter)
  assert [e['caption'] for e in kept] == [b'red']
  # The empty member is a member like any other; it fails at decoding.
  assert counter.counts() == {'empty_file': 1, 'image_too_large': 1, 'image_too_small': 1,
                              'undecodable_image': 2}


def test_corrupt_tar_shard_is_skipped_and_counted(tmp_path):
  write_tar(tmp_path / 'a.tar', [('0000.png', png()), ('0000.txt', b'before the cut'),
                                 ('0001.jpg', noise_jpeg(64)), ('0001.txt', b'cut off')])
  whole = (tmp_path / 'a.tar').read_bytes()
  (tmp_path / 'a.tar').write_bytes(whole[:2048 + len(png()) + 1536])  # Inside 0001.jpg.
  (tmp_path / 'b.tar').write_bytes(b'\x00garbage' * 100)
  write_tar(tmp_path / 'c.tar', [('0000.png', png()), ('0000.txt', b'after')])
  counter = SkipCounter()
  examples = list(sources.read_tar_shards(str(tmp_path / '*.tar'), counter))
  assert [e['caption'] for e in examples] == [b'before the cut', b'after']
  assert counter.counts() == {'corrupt_shard': 2}


def test_tar_shards_with_only_orphans_name_the_shards(tmp_path):
  write_tar(tmp_path / 'only.tar', [('0000.txt', b'a caption'), ('0001.png', png())])
  with pytest.raises(NoUsableExamples, match=r'only\.tar.*missing_caption 1, missing_image 1'):
    list(sources.read_tar_shards(str(tmp_path / '*.tar'), SkipCounter()))


@pytest.mark.parametrize('reader', [sources.read_tar_shards, sources.read_tfrecords])
def test_pattern_matching_nothing_names_the_pattern(tmp_path, reader):
  pattern = str(tmp_path / 'nowhere' / '*.data')
  with pytest.raises(FileNotFoundError, match='nowhere'):
    reader(pattern, SkipCounter())


# TFRecords.


def tf_example(**features) -> bytes:
  def feature(value):
    if isinstance(value, int):
      return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    values = value if isinstance(value, list) else [value]
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
  proto = tf.train.Example(features=tf.train.Features(
      feature={name: feature(value) for name, value in features.items()}))
  return proto.SerializeToString()


def write_tfrecord(path, records: list) -> None:
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)


def test_tfrecords_skip_records_missing_a_feature(tmp_path, caplog):
  write_tfrecord(tmp_path / 'part-1.tfrecord', [
      tf_example(jpg=png(BLUE), txt=b'a blue square'),
      tf_example(jpg=png(), txt=[b'one', b'two'])])  # Two captions: ambiguous.
  write_tfrecord(tmp_path / 'part-0.tfrecord', [
      tf_example(jpg=png(RED), txt=b'a red square'),
      tf_example(jpg=png(RED)),  # No caption.
      tf_example(txt=b'no image'),
      tf_example(jpg=png(RED), txt=3),  # The caption is a number.
      b'\xff\xff not an Example'])
  counter = SkipCounter()
  with caplog.at_level(logging.WARNING):
    examples = list(sources.read_tfrecords(str(tmp_path / '*.tfrecord'), counter,
                                           image_key='jpg', caption_key='txt'))
  assert [e['caption'] for e in examples] == [b'a red square', b'a blue square']
  assert examples[1]['image'] == png(BLUE)
  assert examples[0]['key'] == f'{tmp_path / "part-0.tfrecord"}#0'
  assert counter.counts() == {'malformed_record': 3, 'missing_caption': 1, 'missing_image': 1}
  assert "no 'txt' feature" in caplog.text and 'part-0.tfrecord#1' in caplog.text


def test_default_feature_names_and_a_corrupt_file(tmp_path):
  write_tfrecord(tmp_path / 'a.tfrecord', [tf_example(image=png(), caption=b'first')] * 3)
  whole = (tmp_path / 'a.tfrecord').read_bytes()
  (tmp_path / 'a.tfrecord').write_bytes(whole[:len(whole) - 10])  # The last record cut.
  counter = SkipCounter()
  examples = list(sources.read_tfrecords(str(tmp_path / '*.tfrecord'), counter))
  assert [e['caption'] for e in examples] == [b'first', b'first']
  assert counter.counts() == {'corrupt_shard': 1}


def test_tfrecords_with_nothing_usable_name_the_files(tmp_path):
  write_tfrecord(tmp_path / 'x.tfrecord', [tf_example(image=png())])
  with pytest.raises(NoUsableExamples, match=r'x\.tfrecord.*missing_caption 1'):
    list(sources.read_tfrecords(str(tmp_path / '*.tfrecord'), SkipCounter()))


# Sharding among processes.


def test_shard_for_process_splits_by_file_or_by_example():
  paths = [f'f{index}' for index in range(5)]
  shares = [sources.shard_for_process(paths, index, 2) for index in range(2)]
  assert [share.paths for share in shares] == [('f0', 'f2', 'f4'), ('f1', 'f3')]
  assert all(share.owns(index) for share in shares for index in range(10))
  few = [sources.shard_for_process(paths[:1], index, 2) for index in range(2)]
  assert all(share.paths == ('f0',) for share in few)
  assert [[i for i in range(6) if share.owns(i)] for share in few] == [[0, 2, 4], [1, 3, 5]]
  with pytest.raises(ConfigError, match='process_index'):
    sources.shard_for_process(paths, 2, 2)


def read_in_processes(read, count: int = 2):
  """Keys each process reads, and the skips each counts."""
  keys, skips = [], SkipCounter()
  for index in range(count):
    counter = SkipCounter()
    keys.append([e['key'] for e in read(counter, process_index=index, process_count=count)])
    skips.merge(counter)
  return keys, skips.counts()


def assert_disjoint_cover(per_process: list, everything: list) -> None:
  assert all(per_process)
  assert sorted(sum(per_process, [])) == sorted(everything)
  assert len(set(per_process[0]) & set(per_process[1])) == 0
  for keys in per_process:  # Each process keeps the source's order.
    assert keys == [key for key in everything if key in keys]


def test_two_processes_read_disjoint_covering_tfrecords(tmp_path):
  # One file, two processes: split by record, bad records counted once.
  write_tfrecord(tmp_path / 'one.tfrecord', [tf_example(image=png(), caption=b'%d' % index)
                                             if index != 3 else tf_example(image=png())
                                             for index in range(7)])

  def read(counter, **share):
    return sources.read_tfrecords(str(tmp_path / '*.tfrecord'), counter, **share)

  everything = [e['key'] for e in read(SkipCounter())]
  per_process, skips = read_in_processes(read)
  assert_disjoint_cover(per_process, everything)
  assert skips == {'missing_caption': 1}


def test_two_processes_read_disjoint_covering_tar_shards(tmp_path):
  for shard in range(3):  # Three shards, two processes: split by shard.
    write_tar(tmp_path / f'{shard}.tar', [(f'{i}.png', png()) for i in range(2)] +
              [(f'{i}.txt', b'caption') for i in range(2)])

  def read(counter, **share):
    return sources.read_tar_shards(str(tmp_path / '*.tar'), counter, **share)

  everything = [e['key'] for e in read(SkipCounter())]
  per_process, _ = read_in_processes(read)
  assert_disjoint_cover(per_process, everything)
  assert {key.split(':')[0] for key in per_process[1]} == {str(tmp_path / '1.tar')}


def test_two_processes_read_disjoint_covering_folder_lines(tmp_path):
  files = {f'{index}.png': png() for index in range(5)}
  lines = [jsonl(name, 'caption') for name in files] + [jsonl('gone.png', 'x'), '{bad']
  write_folder(tmp_path, 'captions.jsonl', lines, files)

  def read(counter, **share):
    return sources.read_folder(str(tmp_path), counter, **share)

  everything = [e['key'] for e in read(SkipCounter())]
  per_process, skips = read_in_processes(read)
  assert_disjoint_cover(per_process, everything)
  assert skips == {'malformed_line': 1, 'missing_image': 1}
