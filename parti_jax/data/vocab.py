"""Text vocabularies: train a SentencePiece model on captions; load one for the pipeline.

Parti (§2.2) tokenizes text with a 16,000-piece SentencePiece model.
`train_sentencepiece` trains one offline from captions, with the T5/seqio
special ids that features.py relies on (pad 0, EOS 1, unk 2, no BOS);
`load_vocabulary` returns the seqio vocabulary the pipeline tokenizes with, or
the byte vocabulary, which needs no file.

Command line:
  python -m parti_jax.data.vocab train --input=captions.txt --vocab_size=16000 \\
      --output=/path/prefix
writes /path/prefix.model and /path/prefix.vocab. The input is a text file with
one caption per line, a .jsonl file with one {"caption": ...} object per line,
or a .tsv file whose header line has a 'Prompt' or 'caption' column (such as
PartiPrompts.tsv). Unusable captions are skipped and counted.
"""
import argparse
import base64
import hashlib
import json
import os
import re
import tempfile
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

from parti_jax import tf_setup  # pylint: disable=g-bad-import-order (before TensorFlow)

import seqio
import sentencepiece
import tensorflow as tf

from parti_jax import cli
from parti_jax.data import sources
from parti_jax.data.errors import BadExample, NoUsableExamples, SkipCounter
from parti_jax.data.text_ids import EOS_ID, PAD_ID
from parti_jax.data.text import MAX_CAPTION_CHARS, clean_caption
from parti_jax.errors import ConfigError

UNK_ID = 2
MODEL_TYPES = ('unigram', 'bpe', 'word')
TRAIN_COMMAND = ('python -m parti_jax.data.vocab train --input=captions.txt '
                 '--vocab_size=16000 --output=/path/prefix')
# The trainer keeps its sample of sentences in memory; a few million captions
# give a stable 16k vocabulary.
MAX_TRAINING_SENTENCES = 5_000_000

# The trainer's limit is in bytes: a UTF-8 character takes up to 4.
_MAX_SENTENCE_BYTES = 4 * MAX_CAPTION_CHARS
_CAPTION_COLUMNS = ('prompt', 'caption')  # Matched case-insensitively, in this order.
_TOO_LARGE = re.compile(r'Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)')
_TOO_SMALL = re.compile(r'Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)')

# Extracts the raw caption from one line of a captions file; raises BadExample.
Extractor = Callable[[bytes, str], Union[bytes, str]]
NumberedLine = Tuple[int, bytes]


def train_sentencepiece(captions: Iterable[str], output_prefix: str, vocab_size: int = 16000,
                        character_coverage: float = 1.0,
                        max_sentences: int = MAX_TRAINING_SENTENCES,
                        model_type: str = 'unigram') -> str:
  """Trains a SentencePiece model; returns the path of the .model file.

  Writes output_prefix.model and output_prefix.vocab (local paths). The size
  is a hard limit: a corpus too small for it is an error rather than a
  silently smaller vocabulary.

  Args:
    captions: cleaned captions, one sentence each.
    output_prefix: path of the output files without their extensions.
    vocab_size: pieces in the vocabulary, special ones included; 0 with a
      word model: one piece for each distinct word of the captions.
    character_coverage: fraction of the corpus's characters that get their own
      piece; the rest map to unk. 1.0 suits English captions; lower it (e.g.
      0.9995) for corpora with many rare characters.
    max_sentences: the trainer samples at most this many captions.
    model_type: 'unigram' (Parti's, the default), 'bpe', or 'word': one piece
      per whitespace-separated word, for closed-vocabulary captions such as
      the synthetic shapes, whose few words a subword model would split.

  Raises:
    ConfigError: the corpus is too small for vocab_size, or has more distinct
      characters than vocab_size allows.
    NoUsableExamples: there are no captions.
  """
  if model_type not in MODEL_TYPES:
    raise ConfigError(f'model_type must be one of {MODEL_TYPES}, got {model_type!r}')
  if vocab_size == 0 and model_type == 'word':
    captions = list(captions)
    vocab_size = UNK_ID + 1 + len({word for caption in captions for word in caption.split()})
  if vocab_size <= UNK_ID + 1:
    raise ConfigError(f'vocab_size must exceed the {UNK_ID + 1} special pieces, got {vocab_size}')
  os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
  feed = _CaptionFeed(captions)
  try:
    with open(os.devnull, 'w', encoding='utf-8') as quiet:  # The trainer logs hundreds of lines.
      sentencepiece.SentencePieceTrainer.train(
          sentence_iterator=feed, model_prefix=output_prefix, vocab_size=vocab_size,
          model_type=model_type, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
          character_coverage=character_coverage, input_sentence_size=max_sentences,
          shuffle_input_sentence=True, max_sentence_length=_MAX_SENTENCE_BYTES,
          num_threads=os.cpu_count() or 1, logstream=quiet)
  except RuntimeError as e:
    raise _training_error(e, feed, vocab_size) from None
  return output_prefix + '.model'


class _CaptionFeed:
  """The trainer's sentence iterator: counts the captions and keeps any error
  raised while reading them, which the trainer would turn into a RuntimeError."""

  def __init__(self, captions: Iterable[str]):
    self._captions = iter(captions)
    self.count = 0
    self.error: Optional[Exception] = None

  def __iter__(self) -> '_CaptionFeed':
    return self

  def __next__(self) -> str:
    try:
      caption = next(self._captions)
    except StopIteration:
      raise
    except Exception as e:  # pylint: disable=broad-except (re-raised by train_sentencepiece)
      self.error = e
      raise
    self.count += 1
    return caption


def _training_error(error: RuntimeError, feed: _CaptionFeed, vocab_size: int) -> Exception:
  """The trainer's failure as an error that says what to change."""
  if feed.error is not None:
    return feed.error
  if feed.count == 0:
    return NoUsableExamples('no captions to train the SentencePiece model on')
  message = str(error)
  too_large = _TOO_LARGE.search(message)
  if too_large:
    return ConfigError(f'vocab_size {vocab_size} is too large for these {feed.count} captions: '
                       f'they support at most {too_large.group(2)} pieces; lower vocab_size '
                       'or train on more captions')
  too_small = _TOO_SMALL.search(message)
  if too_small:
    return ConfigError(f'vocab_size {vocab_size} is below the {too_small.group(2)} pieces the '
                       "captions' distinct characters need; raise vocab_size or lower "
                       'character_coverage (e.g. 0.9995)')
  return error


def load_vocabulary(spec: Union[None, str, Dict[str, str]]) -> seqio.Vocabulary:
  """The text vocabulary: None or 'byte' -> bytes (no file); a SentencePiece
  model file; or a vocabulary_spec as checkpoints record it.

  Raises:
    ConfigError: the model file is missing, unreadable, or has special ids
      other than pad 0 and EOS 1.
  """
  if spec is None or spec == 'byte':
    return seqio.ByteVocabulary()
  path = _embedded_model_file(spec) if isinstance(spec, dict) else spec
  if not tf.io.gfile.exists(path):
    raise ConfigError(f'SentencePiece model not found: {path}; train one with: {TRAIN_COMMAND} '
                      "(or use the byte vocabulary: 'byte')")
  vocabulary = seqio.SentencePieceVocabulary(path)
  try:
    model = vocabulary.tokenizer  # Loads the file now, so a bad one fails here.
  except Exception as e:  # pylint: disable=broad-except (protobuf and OS errors alike)
    raise ConfigError(f'{path} is not a readable SentencePiece model: {e}') from e
  if (model.pad_id(), model.eos_id()) != (PAD_ID, EOS_ID):
    raise ConfigError(f'{path} has pad id {model.pad_id()} and EOS id {model.eos_id()}; the '
                      f'pipeline needs {PAD_ID} and {EOS_ID}; train one with: {TRAIN_COMMAND}')
  return vocabulary


def read_captions(path: str, skips: SkipCounter) -> Iterator[str]:
  """The cleaned captions of a captions file (format from its extension).

  The file and, for a .tsv, its header are checked now, before iteration; an
  unusable line is counted in `skips` and left out.

  Raises:
    ConfigError: the file is missing, or a .tsv is empty or its header has no
      caption column.
  """
  if not tf.io.gfile.exists(path):
    raise ConfigError(f'captions file not found: {path}')
  lines = sources.text_lines(path)
  if path.endswith('.tsv'):
    header = next(lines, None)
    if header is None:
      raise NoUsableExamples(f'{path} is empty: expected a header line, then captions')
    return _cleaned(lines, path, _tsv_extractor(path, header[1]), skips)
  if path.endswith('.jsonl'):
    return _cleaned(lines, path, _json_caption, skips)
  return _cleaned(lines, path, _whole_line, skips)


def _cleaned(lines: Iterator[NumberedLine], path: str, extract: Extractor,
             skips: SkipCounter) -> Iterator[str]:
  for number, line in lines:
    key = f'{path}:{number}'
    try:
      yield clean_caption(extract(line, key), key)
    except BadExample as e:
      skips.skip(e)


def _whole_line(line: bytes, key: str) -> bytes:
  del key  # A plain line cannot be malformed.
  return line


def _json_caption(line: bytes, key: str) -> str:
  try:
    record = json.loads(line.decode('utf-8'))
  except UnicodeDecodeError as e:
    raise BadExample('invalid_utf8', key, 'the line is not valid UTF-8') from e
  except json.JSONDecodeError as e:
    raise BadExample('malformed_line', key, f'not a JSON object: {e}') from e
  if not isinstance(record, dict) or not isinstance(record.get('caption'), str):
    raise BadExample('malformed_line', key, 'expected an object with a "caption" string')
  return record['caption']


def _tsv_extractor(path: str, header: bytes) -> Extractor:
  """Reads the caption column that the header names.

  Tab-separated values have no quoting (a field cannot hold a tab), so quotes
  are kept as written: PartiPrompts has prompts that start with a quote.
  """
  names = header.decode('utf-8', 'replace').split('\t')
  columns = [name.strip().lower() for name in names]
  found = [name for name in _CAPTION_COLUMNS if name in columns]
  if not found:
    raise ConfigError(f"{path}: the header line has no 'Prompt' or 'caption' column; its "
                      f'columns are {names}')
  index = columns.index(found[0])

  def extract(line: bytes, key: str) -> bytes:
    fields = line.split(b'\t')
    if index >= len(fields):
      raise BadExample('malformed_line', key, f'{len(fields)} tab-separated fields, but the '
                       f'caption is in column {index + 1}')
    return fields[index]
  return extract


class _OneLineParser(argparse.ArgumentParser):
  """Reports bad arguments as one line (through cli.run), not usage text."""

  def error(self, message: str):
    raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
  p = _OneLineParser(prog='python -m parti_jax.data.vocab',
                     description='Train a SentencePiece text vocabulary on captions.')
  commands = p.add_subparsers(dest='command', required=True)
  train = commands.add_parser('train', help='train a SentencePiece model')
  train.add_argument('--input', required=True,
                     help='captions: a text file (one a line), .jsonl ({"caption": ...} a '
                     "line) or .tsv (a header with a 'Prompt' or 'caption' column)")
  train.add_argument('--output', required=True,
                     help='output path prefix: writes PREFIX.model and PREFIX.vocab')
  train.add_argument('--vocab_size', type=int, default=16000,
                     help='pieces, special ones included (0 with --model_type=word: one per '
                     'distinct word)')
  train.add_argument('--character_coverage', type=float, default=1.0,
                     help='fraction of characters given their own piece; rarer ones map to unk')
  train.add_argument('--model_type', choices=MODEL_TYPES, default='unigram',
                     help="'word' gives each word one piece (closed-vocabulary captions)")
  return p


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = _parser().parse_args(argv)
  skips = SkipCounter()
  try:
    model = train_sentencepiece(read_captions(args.input, skips), args.output, args.vocab_size,
                                args.character_coverage, model_type=args.model_type)
  except NoUsableExamples as e:
    raise NoUsableExamples(f'{args.input}: no usable captions (skipped: {skips.summary()})') from e
  print(f'wrote {model} and {args.output}.vocab: {load_vocabulary(model).vocab_size} pieces; '
        f'skipped captions: {skips.summary()}')



def vocabulary_spec(vocabulary: seqio.Vocabulary) -> Optional[Dict[str, str]]:
  """What load_vocabulary needs to load `vocabulary` again, anywhere: None for
  the byte vocabulary; for SentencePiece the model itself (base64; a few
  hundred KB at 16k pieces) and the file it came from. Stored with
  checkpoints, so sampling tokenizes prompts as training did even where that
  file is not, or not at the same relative path (Colab, another machine)."""
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return None
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return {'file': vocabulary.sentencepiece_model_file,
            'sentencepiece_model': base64.b64encode(vocabulary.sp_model).decode('ascii')}
  raise ConfigError(f'cannot record a {type(vocabulary).__name__} with the checkpoint')


def _embedded_model_file(spec: Dict[str, str]) -> str:
  """A local file holding the model of a vocabulary_spec, written once per
  model (named by its hash) under the temporary directory."""
  model = base64.b64decode(spec['sentencepiece_model'])
  folder = os.path.join(tempfile.gettempdir(), 'parti_jax_vocabularies')
  path = os.path.join(folder, hashlib.sha256(model).hexdigest()[:24] + '.model')
  if not os.path.exists(path):
    os.makedirs(folder, exist_ok=True)
    partial = f'{path}.{os.getpid()}.tmp'
    with open(partial, 'wb') as f:
      f.write(model)
    os.replace(partial, path)  # Atomic: readers never see half a file.
  return path


if __name__ == '__main__':
  cli.run(main)
