"""Readers of the user's image-caption pairs: an image folder, tar shards, TFRecords.

Each reader returns a generator of examples {'image': encoded image bytes,
'caption': the caption as stored (bytes or str), 'key': where it came from}.
Readers only read: images are decoded and captions validated later, so those
checks are the same for every source. Whatever a reader cannot read is skipped
and counted in the given SkipCounter with a reason from errors.REASONS; a
source with not one readable example ends in NoUsableExamples naming its
file(s). A missing folder file or a pattern matching nothing raises
FileNotFoundError when the reader is called, before any iteration.

All paths go through tf.io.gfile, so gs:// paths work like local ones. With
several processes (hosts), each reads a disjoint share: see shard_for_process.
"""
import collections
import dataclasses
import itertools
import json
import lzma
import os
import posixpath
import tarfile
import zlib
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

from parti_jax import tf_setup  # pylint: disable=g-bad-import-order (before TensorFlow)

from google.protobuf import message as protobuf_message  # pylint: disable=g-bad-import-order
import tensorflow as tf

from parti_jax.data.errors import BadExample, NoUsableExamples, SkipCounter, format_counts
from parti_jax.errors import ConfigError

Example = Dict[str, Any]
# A reader's candidates come in file order; each is either a BadExample to
# count or a row that a load function turns into an Example.
Candidate = Union[BadExample, Any]

CAPTION_FILES = ('captions.jsonl', 'captions.tsv')
TSV_HEADER = 'image\tcaption'
# Tar members are grouped by key, the member name up to the first dot of its
# base name (the webdataset convention): 0001.jpg and 0001.txt make a pair.
TAR_IMAGE_EXTENSIONS = frozenset({'jpg', 'jpeg', 'png', 'webp', 'bmp', 'gif', 'tif', 'tiff'})
TAR_CAPTION_EXTENSION = 'txt'

_UTF8_BOM = b'\xef\xbb\xbf'  # Written at the start of text files by some Windows editors.
_FILES_NAMED_IN_ERRORS = 3
# What tarfile raises on a corrupt or truncated shard, plain or compressed.
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


@dataclasses.dataclass(frozen=True)
class ProcessShare:
  """The files one process reads and, if by_example, which of their examples:
  those whose index (counted over all its files, in order) modulo
  process_count is process_index."""
  paths: Tuple[str, ...]
  process_index: int
  process_count: int
  by_example: bool

  def owns(self, index: int) -> bool:
    return not self.by_example or index % self.process_count == self.process_index

  def describe(self) -> str:
    """'' for a single process, else ' (process 1 of 4)'."""
    if self.process_count == 1:
      return ''
    return f' (process {self.process_index} of {self.process_count})'


def shard_for_process(paths: Sequence[str], process_index: int,
                      process_count: int) -> ProcessShare:
  """Splits files among processes so that their shares are disjoint and cover all.

  With at least as many files as processes, process p reads files p, p + n,
  ... of the sorted list, whole. With fewer, every process reads every file
  but keeps only the examples whose index modulo n is p. The order is
  deterministic either way.
  """
  if not 0 <= process_index < process_count:
    raise ConfigError(f'process_index must lie in [0, process_count), got {process_index} of '
                      f'{process_count}')
  paths = tuple(paths)
  if len(paths) >= process_count:
    return ProcessShare(paths[process_index::process_count], process_index, process_count,
                        by_example=False)
  return ProcessShare(paths, process_index, process_count, by_example=True)


def read_folder(root: str, counter: SkipCounter, captions_file: Optional[str] = None, *,
                process_index: int = 0, process_count: int = 1) -> Iterator[Example]:
  """Image files listed with their captions in a captions file in `root`.

  captions.jsonl: one JSON object a line, {"image": "<path relative to root>",
  "caption": "<text>"}. captions.tsv: the header line 'image<TAB>caption' (the
  columns in any order, more columns allowed), then one row a line; fields are
  split at tabs, with no quoting, so a caption cannot hold a tab or a newline.
  Blank lines are ignored. Skip reasons: 'malformed_line' (bad JSON, missing
  field, wrong number of fields), 'invalid_utf8' (a line or a TSV path that
  is not UTF-8), 'missing_image', 'unreadable_file'.

  Args:
    root: the image folder (local or gs://).
    counter: counts what is skipped.
    captions_file: a .jsonl or .tsv file name in `root`; by default whichever of
      CAPTION_FILES exists.
    process_index: this process's index; process_count: how many read the
      folder. Caption lines are shared among processes by line index.
  """
  captions_path = _captions_path(root, captions_file)
  share = shard_for_process([captions_path], process_index, process_count)
  if captions_path.endswith('.jsonl'):
    rows = _jsonl_rows(captions_path, root)
  else:
    rows = _tsv_rows(captions_path, root)
  return _serve(rows, _read_image_file, share, counter, captions_path)


def read_tar_shards(pattern: str, counter: SkipCounter, *, process_index: int = 0,
                    process_count: int = 1) -> Iterator[Example]:
  """Image-caption pairs from webdataset-style tar shards, as img2dataset writes them.

  Members NNNN.jpg (or .jpeg, .png, .webp, .bmp, .gif, .tif, .tiff) and
  NNNN.txt make a pair; other members, such as img2dataset's NNNN.json
  metadata, are ignored. Shards may be compressed (.tar.gz, ...). Skip
  reasons: 'missing_caption' (an image member without its .txt),
  'missing_image' (a .txt without its image), 'corrupt_shard' (a shard that
  cannot be read from some point on: the pairs before it are kept, the rest
  of the shard is skipped and counted once, so one bad shard does not stop a
  long run) and 'unreadable_file'.

  Args:
    pattern: glob of the shards, e.g. 'gs://bucket/data/*.tar'; matches are
      read in sorted order.
    counter: counts what is skipped.
    process_index, process_count: see shard_for_process.
  """
  share = shard_for_process(_matching_files(pattern), process_index, process_count)
  pairs = itertools.chain.from_iterable(_tar_pairs(path) for path in share.paths)
  return _serve(pairs, _already_loaded, share, counter, _describe_files(pattern, share.paths))


def read_tfrecords(pattern: str, counter: SkipCounter, image_key: str = 'image',
                   caption_key: str = 'caption', *, process_index: int = 0,
                   process_count: int = 1) -> Iterator[Example]:
  """Image-caption pairs from TFRecord files of tf.train.Example.

  Each Example holds the encoded image as one bytes value in feature
  `image_key` and the caption as one bytes value in `caption_key`. Skip
  reasons: 'missing_image' and 'missing_caption' (the feature is absent or
  empty), 'malformed_record' (not an Example, a feature of another type or
  with several values), 'corrupt_shard' (a file corrupt from some record on:
  the rest of it is skipped and counted once) and 'unreadable_file'.

  Args:
    pattern: glob of the files, read in sorted order.
    counter: counts what is skipped.
    image_key, caption_key: the features' names.
    process_index, process_count: see shard_for_process.
  """
  tf_setup.hide_accelerators_from_tensorflow()
  share = shard_for_process(_matching_files(pattern), process_index, process_count)
  records = itertools.chain.from_iterable(_tfrecord_records(path) for path in share.paths)

  def parse(row: Tuple[str, bytes]) -> Example:
    return _parse_example(row, image_key, caption_key)

  return _serve(records, parse, share, counter, _describe_files(pattern, share.paths))


def _serve(candidates: Iterable[Candidate], load: Callable[[Any], Example], share: ProcessShare,
           counter: SkipCounter, source: str) -> Iterator[Example]:
  """Loads and yields the candidates this process owns, skipping and counting
  the bad ones; ends in NoUsableExamples if it yielded none."""
  skipped: collections.Counter = collections.Counter()
  served = 0
  for index, candidate in enumerate(candidates):
    if not share.owns(index):
      continue
    try:
      if isinstance(candidate, BadExample):
        raise candidate
      example = load(candidate)
    except BadExample as e:
      counter.skip(e)
      skipped[e.reason] += 1
      continue
    served += 1
    yield example
  if not served:
    raise NoUsableExamples(f'{source}: not one usable example{share.describe()}; '
                           f'skipped: {format_counts(dict(skipped))}')


def _already_loaded(example: Example) -> Example:
  return example


def _matching_files(pattern: str) -> Tuple[str, ...]:
  try:
    paths = tf.io.gfile.glob(pattern)
  except tf.errors.NotFoundError:  # Some file systems raise for a missing folder.
    paths = []
  if not paths:
    raise FileNotFoundError(f'no file matches {pattern!r}')
  return tuple(sorted(paths))


def _describe_files(pattern: str, paths: Sequence[str]) -> str:
  """"'data/*.tar' (12 files: data/a.tar, data/b.tar, data/c.tar, ...)"."""
  shown = ', '.join(paths[:_FILES_NAMED_IN_ERRORS])
  more = ', ...' if len(paths) > _FILES_NAMED_IN_ERRORS else ''
  return f'{pattern!r} ({len(paths)} file(s): {shown}{more})'


# The folder source.


def _captions_path(root: str, captions_file: Optional[str]) -> str:
  """The captions file of the folder `root`; raises if there is none."""
  accepted = ' or '.join(CAPTION_FILES)
  if captions_file is not None:
    if not captions_file.endswith(('.jsonl', '.tsv')):
      raise ConfigError(f'captions file {captions_file!r} must end in .jsonl or .tsv')
    path = os.path.join(root, captions_file)
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f'captions file not found: {path} (the folder source reads '
                              f'{accepted})')
    return path
  found = [os.path.join(root, name) for name in CAPTION_FILES
           if tf.io.gfile.exists(os.path.join(root, name))]
  if not found:
    raise FileNotFoundError(f'no captions file in image folder {root}: expected '
                            f'{os.path.join(root, CAPTION_FILES[0])} or {CAPTION_FILES[1]}')
  if len(found) > 1:
    raise ConfigError(f'image folder {root} has both {accepted}; pass captions_file to choose')
  return found[0]


def text_lines(path: str) -> Iterator[Tuple[int, bytes]]:
  """(line number, line without its line ending) for each non-blank line."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    for number, line in enumerate(f, start=1):
      if number == 1:
        line = line.removeprefix(_UTF8_BOM)
      line = line.rstrip(b'\r\n')
      if line.strip():
        yield number, line


def _jsonl_rows(path: str, root: str) -> Iterator[Candidate]:
  for number, line in text_lines(path):
    yield _jsonl_row(line, f'{path}:{number}', root)


def _jsonl_row(line: bytes, line_key: str, root: str) -> Candidate:
  """(line key, image path, caption) of one captions.jsonl line, or why not."""
  try:
    record = json.loads(line.decode('utf-8'))
  except UnicodeDecodeError:
    return BadExample('invalid_utf8', line_key, 'the line is not valid UTF-8')
  except json.JSONDecodeError as e:
    return BadExample('malformed_line', line_key, f'not a JSON object: {e}')
  if (not isinstance(record, dict) or not isinstance(record.get('image'), str)
      or not record['image'] or not isinstance(record.get('caption'), str)):
    return BadExample('malformed_line', line_key, 'expected {"image": "<relative path>", '
                      f'"caption": "<text>"}}, got {_shortened(line)}')
  return line_key, os.path.join(root, record['image']), record['caption']


def _tsv_rows(path: str, root: str) -> Iterator[Candidate]:
  lines = text_lines(path)
  header = next(lines, None)
  if header is None:
    return  # An empty file: _serve reports that nothing was usable.
  columns = header[1].split(b'\t')
  if b'image' not in columns or b'caption' not in columns:
    raise ConfigError(f'{path}: the first line must be the header {TSV_HEADER!r} (the column '
                      f'names separated by a tab), got {_shortened(header[1])}')
  for number, line in lines:
    yield _tsv_row(line, columns, f'{path}:{number}', root)


def _tsv_row(line: bytes, columns: Sequence[bytes], line_key: str, root: str) -> Candidate:
  """(line key, image path, caption) of one captions.tsv row, or why not."""
  fields = line.split(b'\t')
  if len(fields) != len(columns):
    return BadExample('malformed_line', line_key, f'expected {len(columns)} tab-separated '
                      f'fields as in the header, got {len(fields)}: {_shortened(line)}')
  row = dict(zip(columns, fields))
  try:
    image = row[b'image'].decode('utf-8')
  except UnicodeDecodeError:
    return BadExample('invalid_utf8', line_key, 'the image path is not valid UTF-8')
  if not image:
    return BadExample('malformed_line', line_key, 'the image path is empty')
  return line_key, os.path.join(root, image), row[b'caption']


def _shortened(line: bytes, limit: int = 80) -> str:
  text = line.decode('utf-8', errors='replace')
  return repr(text if len(text) <= limit else text[:limit] + '...')


def _read_image_file(row: Tuple[str, str, Any]) -> Example:
  line_key, path, caption = row
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      image = f.read()
  except tf.errors.NotFoundError as e:
    raise BadExample('missing_image', path, f'image file not found (named on {line_key})') from e
  except tf.errors.OpError as e:
    raise BadExample('unreadable_file', path,
                     f'cannot read the image file (named on {line_key}): {e.message}') from e
  return {'image': image, 'caption': caption, 'key': path}


# The tar source.


def _tar_pairs(path: str) -> Iterator[Candidate]:
  """Examples of one shard, then its members that lack a partner.

  Streams the shard, so only the pairs not yet complete are held in memory
  (one at a time in a well-formed shard). A second image or caption for a key
  whose pair is incomplete leaves the first one without a partner.
  """
  pending: Dict[str, Dict[str, bytes]] = {}
  try:
    with tf.io.gfile.GFile(path, 'rb') as f, tarfile.open(fileobj=f, mode='r|*') as tar:
      for member in tar:
        kind, key = _member_kind(member)
        if kind is None:
          continue
        data = tar.extractfile(member).read()
        if kind in pending.get(key, {}):
          yield _unpaired(path, key, pending.pop(key))
        group = pending.setdefault(key, {})
        group[kind] = data
        if len(group) == 2:
          del pending[key]
          yield {'image': group['image'], 'caption': group['caption'], 'key': f'{path}:{key}'}
  except _TAR_ERRORS as e:
    # Members cut off by the corruption are not counted one by one.
    yield BadExample('corrupt_shard', path, f'corrupt tar shard, the rest of it is skipped: {e}')
    return
  except tf.errors.OpError as e:
    yield BadExample('unreadable_file', path, f'cannot read the tar shard: {e.message}')
    return
  for key, group in pending.items():
    yield _unpaired(path, key, group)


def _member_kind(member: tarfile.TarInfo) -> Tuple[Optional[str], str]:
  """('image' | 'caption' | None, key) of a tar member; None for members to ignore."""
  if not member.isfile():
    return None, ''
  directory, name = posixpath.split(member.name)
  stem, dot, extension = name.partition('.')
  if not stem or not dot:
    return None, ''
  extension = extension.lower()
  if extension in TAR_IMAGE_EXTENSIONS:
    return 'image', posixpath.join(directory, stem)
  if extension == TAR_CAPTION_EXTENSION:
    return 'caption', posixpath.join(directory, stem)
  return None, ''


def _unpaired(path: str, key: str, group: Dict[str, bytes]) -> BadExample:
  if 'image' in group:
    return BadExample('missing_caption', f'{path}:{key}',
                      f'image member has no {key}.{TAR_CAPTION_EXTENSION} beside it')
  return BadExample('missing_image', f'{path}:{key}',
                    f'{key}.{TAR_CAPTION_EXTENSION} has no image member beside it')


# The TFRecord source.


def _tfrecord_records(path: str) -> Iterator[Candidate]:
  """(key, serialized record) of each record of one file."""
  read = 0
  try:
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      yield f'{path}#{read}', record
      read += 1
  except tf.errors.DataLossError as e:
    yield BadExample('corrupt_shard', path, f'corrupt TFRecord file after {read} record(s), '
                     f'the rest of it is skipped: {e.message}')
  except tf.errors.OpError as e:
    yield BadExample('unreadable_file', path, f'cannot read the TFRecord file: {e.message}')


def _parse_example(row: Tuple[str, bytes], image_key: str, caption_key: str) -> Example:
  key, record = row
  try:
    example = tf.train.Example.FromString(record)
  except protobuf_message.DecodeError as e:
    raise BadExample('malformed_record', key, f'not a tf.train.Example: {e}') from e
  return {'image': _single_bytes(example, image_key, 'missing_image', key),
          'caption': _single_bytes(example, caption_key, 'missing_caption', key),
          'key': key}


def _single_bytes(example: tf.train.Example, name: str, missing_reason: str, key: str) -> bytes:
  """The one bytes value of feature `name`."""
  features = example.features.feature
  # Test membership first: indexing a protobuf map inserts missing keys.
  if name not in features or features[name].WhichOneof('kind') is None:
    raise BadExample(missing_reason, key, f'no {name!r} feature (features: {sorted(features)})')
  kind = features[name].WhichOneof('kind')
  if kind != 'bytes_list':
    raise BadExample('malformed_record', key, f'feature {name!r} holds a {kind}, expected a '
                     'bytes_list')
  values = features[name].bytes_list.value
  if not values:
    raise BadExample(missing_reason, key, f'feature {name!r} is empty')
  if len(values) > 1:
    raise BadExample('malformed_record', key, f'feature {name!r} holds {len(values)} values, '
                     'expected 1')
  return values[0]
