"""Captions and the text vocabulary: cleaning, SentencePiece training and
loading, the train command."""
import os
import random
from typing import List

import pytest
import sentencepiece

from parti_jax.data import vocab
from parti_jax.data.errors import BadExample, NoUsableExamples, SkipCounter
from parti_jax.data.text import clean_caption
from parti_jax.errors import ConfigError
from tests.conftest import run_module

KEY = 'shard-00003.tar:000042'
ADJECTIVES = ('red green blue yellow purple small large tiny huge shiny wooden metal old young '
              'happy sleepy striped fluffy').split()
NOUNS = ('circle square triangle diamond dog cat horse tree house river mountain car robot panda '
         'wizard book street lamp').split()
RELATIONS = ('on under near beside behind above below inside').split()


def _captions(count: int = 300, seed: int = 0) -> List[str]:
  rng = random.Random(seed)
  return [f'a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(RELATIONS)} the '
          f'{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}' for _ in range(count)]


def test_a_normal_caption_is_kept_with_its_whitespace_collapsed():
  assert clean_caption(b'  A red\tcircle\n on  a\r\n table ', KEY) == 'A red circle on a table'
  assert clean_caption('caf\u00e9 \u2615\u00a0at noon', KEY) == 'caf\u00e9 \u2615 at noon'


@pytest.mark.parametrize('raw,reason', [
    (b'', 'empty_caption'),
    (' \t\n\u00a0\r\n ', 'empty_caption'),
    (b'word ' * 20_000, 'caption_too_long'),  # 100 KB of scraped page text.
    (b'\xff\xfe caption', 'invalid_utf8'),
])
def test_an_unusable_caption_is_a_bad_example_naming_its_key(raw, reason):
  with pytest.raises(BadExample) as info:
    clean_caption(raw, KEY)
  assert info.value.reason == reason
  assert KEY in str(info.value)


def test_the_length_limit_counts_characters_after_normalization():
  assert clean_caption('\u00e9' * 2048, KEY) == '\u00e9' * 2048  # 4096 bytes, 2048 characters.
  assert clean_caption('a   ' * 10, KEY, max_chars=19) == ' '.join('a' * 10)
  with pytest.raises(BadExample, match='20 characters, more than 19'):
    clean_caption('b' * 20, KEY, max_chars=19)


@pytest.fixture(scope='module')
def trained_model(tmp_path_factory) -> str:
  prefix = tmp_path_factory.mktemp('vocab') / 'captions'
  return vocab.train_sentencepiece(_captions(), str(prefix), vocab_size=64)


def test_training_writes_a_model_with_the_t5_special_ids(trained_model):
  assert trained_model.endswith('.model') and os.path.exists(trained_model)
  assert os.path.exists(trained_model[:-len('.model')] + '.vocab')
  vocabulary = vocab.load_vocabulary(trained_model)
  assert vocabulary.vocab_size == 64
  assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
  model = vocabulary.tokenizer
  assert model.bos_id() == -1
  assert [model.id_to_piece(i) for i in range(3)] == ['<pad>', '</s>', '<unk>']


def test_captions_round_trip_through_the_loaded_vocabulary(trained_model):
  vocabulary = vocab.load_vocabulary(trained_model)
  for caption in _captions(20, seed=1):
    ids = vocabulary.encode(caption)
    assert min(ids) > vocab.UNK_ID  # Every character is covered; no special ids inside.
    assert vocabulary.decode(ids) == caption
    tf_ids = vocabulary.encode_tf(caption)
    assert tf_ids.numpy().tolist() == ids
    assert vocabulary.decode_tf(tf_ids).numpy().decode() == caption


def test_a_word_model_gives_each_word_one_piece(tmp_path):
  words = set(ADJECTIVES + NOUNS + RELATIONS + ['a', 'the'])
  model = vocab.train_sentencepiece(_captions(), str(tmp_path / 'words'), model_type='word',
                                    vocab_size=0)  # 0: as many pieces as distinct words.
  vocabulary = vocab.load_vocabulary(model)
  assert vocabulary.vocab_size == 3 + len(words)
  for caption in _captions(20, seed=1):
    ids = vocabulary.encode(caption)
    assert len(ids) == len(caption.split()) and min(ids) > vocab.UNK_ID
    assert vocabulary.decode(ids) == caption
  with pytest.raises(ConfigError, match='model_type'):
    vocab.train_sentencepiece(_captions(), str(tmp_path / 'm'), model_type='chars')


def test_the_recorded_vocabulary_loads_without_its_file(trained_model, tmp_path):
  """Checkpoints carry the model itself: sampling elsewhere (another folder,
  machine or Colab) tokenizes as training did."""
  moved = tmp_path / 'moved.model'
  moved.write_bytes(open(trained_model, 'rb').read())
  spec = vocab.vocabulary_spec(vocab.load_vocabulary(str(moved)))
  assert spec['file'] == str(moved)
  moved.unlink()
  caption = _captions(1, seed=2)[0]
  assert (vocab.load_vocabulary(spec).encode(caption) ==
          vocab.load_vocabulary(trained_model).encode(caption))
  assert vocab.vocabulary_spec(vocab.load_vocabulary(None)) is None


def test_the_byte_vocabulary_needs_no_file():
  for name in (None, 'byte'):
    vocabulary = vocab.load_vocabulary(name)
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.vocab_size) == (0, 1, 259)


def test_a_missing_model_file_says_how_to_train_one(tmp_path):
  path = str(tmp_path / 'no_such.model')
  with pytest.raises(ConfigError) as info:
    vocab.load_vocabulary(path)
  assert path in str(info.value)
  assert 'python -m parti_jax.data.vocab train --input=' in str(info.value)


def test_an_unreadable_model_or_one_with_other_special_ids_is_refused(tmp_path):
  garbage = tmp_path / 'garbage.model'
  garbage.write_bytes(b'not a model')
  with pytest.raises(ConfigError, match='not a readable SentencePiece model'):
    vocab.load_vocabulary(str(garbage))
  # SentencePiece's own defaults: unk 0, BOS 1, EOS 2.
  with open(os.devnull, 'w', encoding='utf-8') as quiet:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_captions(100)), model_prefix=str(tmp_path / 'default_ids'),
        vocab_size=40, logstream=quiet)
  with pytest.raises(ConfigError, match='pad id -1 and EOS id 2'):
    vocab.load_vocabulary(str(tmp_path / 'default_ids.model'))


def test_a_corpus_too_small_for_the_vocabulary_size_states_the_limit(tmp_path):
  with pytest.raises(ConfigError, match=r'vocab_size 5000 is too large .* at most \d+ pieces'):
    vocab.train_sentencepiece(_captions(50), str(tmp_path / 'm'), vocab_size=5000)
  with pytest.raises(NoUsableExamples):
    vocab.train_sentencepiece([], str(tmp_path / 'm'), vocab_size=64)


def test_an_error_while_reading_captions_reaches_the_caller_unchanged(tmp_path):
  def failing_captions():
    yield from _captions(10)
    raise OSError('disk went away')
  with pytest.raises(OSError, match='disk went away'):
    vocab.train_sentencepiece(failing_captions(), str(tmp_path / 'm'), vocab_size=64)


def test_captions_files_are_read_by_format_and_bad_lines_counted(tmp_path):
  jsonl = tmp_path / 'captions.jsonl'
  jsonl.write_bytes(b'{"caption": "a red  dog"}\n\n{"image": "x.png"}\nnot json\n'
                    b'{"caption": ""}\n{"caption": "a \\u00e9t\\u00e9 sky"}\n')
  skips = SkipCounter()
  assert list(vocab.read_captions(str(jsonl), skips)) == ['a red dog', 'a \u00e9t\u00e9 sky']
  assert skips.counts() == {'empty_caption': 1, 'malformed_line': 2}

  tsv = tmp_path / 'prompts.tsv'
  tsv.write_bytes(b'\xef\xbb\xbfCategory\tPrompt\n'
                  b'Animals\t"G I G G L E" painted on a wall\nAbstract\n'
                  b'Abstract\t\xff\xfe bond\nArt\tbond\n')
  skips = SkipCounter()
  assert list(vocab.read_captions(str(tsv), skips)) == [
      '"G I G G L E" painted on a wall', 'bond']  # Quotes are part of the prompt.
  assert skips.counts() == {'invalid_utf8': 1, 'malformed_line': 1}

  no_column = tmp_path / 'table.tsv'
  no_column.write_text('id\ttext\n1\ta cat\n')
  with pytest.raises(ConfigError, match=r"no 'Prompt' or 'caption' column; its columns are "
                     r"\['id', 'text'\]"):
    vocab.read_captions(str(no_column), SkipCounter())
  with pytest.raises(ConfigError, match='captions file not found'):
    vocab.read_captions(str(tmp_path / 'absent.txt'), SkipCounter())


def test_the_train_command_on_a_text_file(tmp_path):
  captions = tmp_path / 'captions.txt'
  captions.write_text('\n'.join(_captions()) + '\n\n' + 'word ' * 20_000 + '\n')
  output = tmp_path / 'out' / 'text'
  result = run_module('parti_jax.data.vocab', 'train', f'--input={captions}', '--vocab_size=64',
                      f'--output={output}', timeout=120)
  assert result.returncode == 0, result.stderr
  assert f'wrote {output}.model and {output}.vocab: 64 pieces' in result.stdout
  assert 'caption_too_long 1' in result.stdout
  assert vocab.load_vocabulary(f'{output}.model').vocab_size == 64


def test_the_train_command_on_a_tsv_with_a_prompt_column(tmp_path):
  prompts = tmp_path / 'prompts.tsv'
  prompts.write_text('Prompt\tCategory\tChallenge\tNote\n'
                     + ''.join(f'{caption}\tAnimals\tBasic\t\n' for caption in _captions()))
  output = tmp_path / 'prompts'
  result = run_module('parti_jax.data.vocab', 'train', f'--input={prompts}', '--vocab_size=60',
                      f'--output={output}', timeout=120)
  assert result.returncode == 0, result.stderr
  assert '60 pieces' in result.stdout and 'skipped captions: none' in result.stdout
  vocabulary = vocab.load_vocabulary(f'{output}.model')
  caption = _captions(1, seed=2)[0]
  assert vocabulary.decode(vocabulary.encode(caption)) == caption


def test_bad_arguments_end_in_one_error_line(tmp_path):
  result = run_module('parti_jax.data.vocab', 'train', f'--input={tmp_path}/c.txt',
                      '--vocab_size=many', f'--output={tmp_path}/m', timeout=120)
  assert result.returncode == 2
  # Lines before it, if any, are TensorFlow's start-up messages, not a traceback.
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: argument --vocab_size: invalid int value: 'many'")
