"""The inference pipeline and the generate command, on a random model and
tokenizer small enough to sample in seconds."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from parti_jax.decoding import SamplingConfig
from parti_jax.errors import ConfigError
from parti_jax.eval import shapes_judge
from parti_jax.generate import main as generate_main, read_prompts
from parti_jax.inference import Pipeline
from tests.conftest import run_module, write_random_model, write_random_tokenizer


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  root = write_random_model(tmp_path_factory.mktemp('generate'))
  write_random_tokenizer(root / 'tokenizer_128', image_size=16, patch_size=4, codebook_size=128)
  return root


@pytest.fixture(scope='module')
def pipeline(dirs):
  return Pipeline.from_checkpoint(str(dirs / 'model'), str(dirs / 'tokenizer'), batch_size=4)


def test_same_prompt_and_seed_alone_or_in_a_batch(pipeline):
  sampling = SamplingConfig(temperature=1.0)
  together = pipeline.generate(['a red circle', 'a blue square'], 3, sampling, seed=5)
  alone = pipeline.generate(['a blue square'], 3, sampling, seed=5)
  np.testing.assert_array_equal(together[1].tokens, alone[0].tokens)
  assert not np.array_equal(together[0].tokens, together[1].tokens)
  images = pipeline('a blue square', num_samples=3, seed=5)
  assert len(images) == 3 and images[0].size == (16, 16)
  np.testing.assert_array_equal(np.asarray(images[2]), np.asarray(alone[0].images[2]))


def test_reranking_keeps_the_best(pipeline):
  brightness = lambda images, prompts: images.reshape(len(images), -1).mean(axis=1)
  kept = pipeline.generate(['a red circle'], 6, seed=1, keep=2, scorer=brightness)[0]
  every = pipeline.generate(['a red circle'], 6, seed=1)[0]
  all_scores = [np.asarray(image).mean() for image in every.images]
  assert kept.sample_indices == list(np.argsort(all_scores)[::-1][:2])
  assert kept.scores == sorted(kept.scores, reverse=True)
  with pytest.raises(ConfigError, match='needs a scorer'):
    pipeline.generate(['a red circle'], 6, keep=2)


def test_bad_input(pipeline, dirs, caplog):
  with pytest.raises(ConfigError, match='no prompts'):
    pipeline.generate([])
  long = pipeline.generate(['x' * 50], 1)[0]
  assert long.prompt_truncated and 'prompt cut to 8 text tokens' in caplog.text
  with pytest.raises(ConfigError, match='tokenizer has 128 codes'):
    Pipeline.from_checkpoint(str(dirs / 'model'), str(dirs / 'tokenizer_128'))
  with pytest.raises(ConfigError, match='no Parti model checkpoint'):
    Pipeline.from_checkpoint(str(dirs / 'nothing'), str(dirs / 'tokenizer'))


def generate(dirs, out_dir, *extra):
  result = run_module('parti_jax.generate', f'--checkpoint_dir={dirs / "model"}',
                      f'--tokenizer_dir={dirs / "tokenizer"}', f'--out_dir={out_dir}',
                      '--num_samples=2', '--seed=3', '--batch_size=4', *extra)
  return result


def test_sampling_numerics_are_chosen_at_load(dirs, pipeline):
  fast = Pipeline.from_checkpoint(str(dirs / 'model'), str(dirs / 'tokenizer'), batch_size=4,
                                  dtype='bfloat16', decode_cache_dtype='float32')
  config = fast.sampler.model.config
  assert (config.dtype, config.decode_cache_dtype) == ('bfloat16', 'float32')
  assert pipeline.sampler.model.config.dtype == 'float32'
  tokens = fast.generate(['a red circle'], 2, seed=0)[0].tokens
  assert tokens.shape == (2, config.image_length)
  assert tokens.min() >= 0 and tokens.max() < config.image_vocab_size


def test_the_command_writes_images_and_cfg_scale_reaches_the_logits(dirs, tmp_path):
  """With --cfg_scale=0 only the empty caption counts: two prompts sample the
  same tokens. With 1 they differ."""
  prompts = ('--prompt=a small red circle', '--prompt=a large blue square above a small green diamond')
  tokens = {}
  # Scale 0 samples with the CPU's fastest numerics, scale 1 reranks with the
  # shapes judge.
  numerics = ('--dtype=bfloat16', '--cache_dtype=float32')
  for scale, extra in (('0', numerics), ('1', ('--scorer=shapes_judge',))):
    out = tmp_path / f'scale{scale}'
    result = generate(dirs, out, f'--cfg_scale={scale}', *prompts, *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / 'generations.json').read_text())
    assert record['settings']['cfg_scale'] == float(scale)
    rerank = '--scorer=shapes_judge' in extra
    tokens[scale] = [g['tokens'] for g in record['generations']]
    for g in record['generations']:
      assert all((out / name).exists() for name in g['files'])
      if rerank:  # Best first, each score the judge's verdict on its image.
        judged = [shapes_judge.judge(np.asarray(Image.open(out / name)), g['prompt']).score
                  for name in g['files']]
        assert g['scores'] == judged == sorted(judged, reverse=True)
    assert (out / 'p0001_grid.png').exists()
  assert tokens['0'][0] == tokens['0'][1]
  assert sorted(tokens['1'][0]) != sorted(tokens['1'][1])


def test_the_command_reads_parti_prompts_and_refuses_bad_input(dirs, tmp_path):
  tsv = tmp_path / 'prompts.tsv'
  tsv.write_text('Prompt\tCategory\tChallenge\nA red apple\tFood\tBasic\n\t\t\n')
  result = generate(dirs, tmp_path / 'out', f'--prompts_file={tsv}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout.strip().splitlines()[-1])['images'] == 2
  # The command's errors, in-process: cli.run, which every command shares,
  # turns a ConfigError into one line and status 2 (tests/test_cli.py).
  empty = tmp_path / 'empty.txt'
  empty.write_text('\n  \n')
  common = [f'--checkpoint_dir={dirs / "model"}', f'--tokenizer_dir={dirs / "tokenizer"}',
            f'--out_dir={tmp_path / "bad"}', '--num_samples=2', '--batch_size=4']
  with pytest.raises(ConfigError, match=f'^{re.escape(str(empty))} holds no prompts$'):
    generate_main([*common, f'--prompts_file={empty}'])
  with pytest.raises(ConfigError, match='prompts file not found'):
    read_prompts(str(tmp_path / 'missing.txt'))
  with pytest.raises(ConfigError, match="the shapes_judge scorer reads only shapes prompts, "
                                        "not 'A red apple'"):
    generate_main([*common, f'--prompts_file={tsv}', '--scorer=shapes_judge'])
  quoted = tmp_path / 'quoted.tsv'  # Quotes are part of prompts, never TSV syntax.
  quoted.write_text('Prompt\tCategory\n"A sign that says ""hi""\tWriting\nA "red apple\tFood\n'
                    'A dog\tAnimals\n')
  assert read_prompts(str(quoted)) == ['"A sign that says ""hi""', 'A "red apple', 'A dog']
  no_column = tmp_path / 'other.tsv'
  no_column.write_text('Text\tCategory\nA red apple\tFood\n')
  with pytest.raises(ConfigError, match='no Prompt column'):
    read_prompts(str(no_column))
