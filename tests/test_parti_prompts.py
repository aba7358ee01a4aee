"""The PartiPrompts command: prompt selection, generation and the HTML report."""
import json
import os

import pytest

from parti_jax.errors import ConfigError
from parti_jax.eval import parti_prompts
from tests.conftest import write_random_model

SHARED_PROMPTS = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data',
                              'PartiPrompts.tsv')
ROWS = [('A red apple', 'Food & Beverage', 'Basic'),
        ('a dog <reading> a "book"', 'Animals', 'Imagination'),
        ('two cats', 'Animals', 'Quantity'),
        ('A bowl of soup', 'Food & Beverage', 'Quantity')]


@pytest.fixture
def tsv(tmp_path):
  path = tmp_path / 'prompts.tsv'
  lines = ['Prompt\tCategory\tChallenge\tNote'] + ['\t'.join(r) + '\t' for r in ROWS]
  path.write_text('\n'.join(lines + ['\t\t\t']) + '\n')  # A blank row is skipped.
  return path


def test_selection(tsv):
  prompts = parti_prompts.read_parti_prompts(str(tsv))
  assert [p.prompt for p in prompts] == [r[0] for r in ROWS]
  animals = parti_prompts.select(prompts, categories=['Animals'])
  assert [p.prompt for p in animals] == [ROWS[1][0], ROWS[2][0]]
  quantity = parti_prompts.select(prompts, challenges=['Quantity'], limit=1)
  assert [p.prompt for p in quantity] == ['two cats']
  with pytest.raises(ConfigError, match=r"categories: \['Animals', 'Food & Beverage'\]"):
    parti_prompts.select(prompts, categories=['Plants'])


def test_bad_files(tmp_path):
  with pytest.raises(ConfigError, match='PartiPrompts file not found'):
    parti_prompts.read_parti_prompts(str(tmp_path / 'missing.tsv'))
  no_challenge = tmp_path / 'other.tsv'
  no_challenge.write_text('Prompt\tCategory\nA red apple\tFood\n')
  with pytest.raises(ConfigError, match=r"lacks the column\(s\) \['Challenge'\]"):
    parti_prompts.read_parti_prompts(str(no_challenge))


def test_report(tsv, tmp_path):
  model = write_random_model(tmp_path / 'model')
  out = tmp_path / 'report'
  parti_prompts.main([f'--prompts={tsv}', '--category=Animals', '--category=Food & Beverage',
                      f'--checkpoint_dir={model / "model"}', f'--tokenizer_dir={model / "tokenizer"}',
                      '--num_samples=2', '--batch_size=4', f'--out_dir={out}'])
  results = json.loads((out / 'results.json').read_text())
  assert [g['prompt'] for g in results['generations']] == [r[0] for r in ROWS]
  assert results['generations'][1]['category'] == 'Animals'
  assert results['timings']['images_sampled'] == 8
  page = (out / 'index.html').read_text()
  for section in ('Category: Animals', 'Category: Food &amp; Beverage', 'Challenge: Basic',
                  'Challenge: Imagination', 'Challenge: Quantity'):
    assert f'<h2>{section}</h2>' in page
  assert 'a dog &lt;reading&gt; a &quot;book&quot;' in page  # Escaped.
  for generation in results['generations']:
    for name in generation['files']:
      assert (out / 'images' / name).exists()
      assert page.count(f'src="images/{name}"') == 2  # Its category's grid and its challenge's.


@pytest.mark.skipif(not os.path.exists(SHARED_PROMPTS), reason='../shared/data/PartiPrompts.tsv '
                    'is not here (it is not part of the repository)')
def test_reads_the_real_file():
  prompts = parti_prompts.read_parti_prompts(SHARED_PROMPTS)
  assert len(prompts) == 1632
  assert len({p.category for p in prompts}) == 12
  assert len({p.challenge for p in prompts}) == 11
  assert len(parti_prompts.select(prompts, challenges=['Properties & Positioning'])) == 35
