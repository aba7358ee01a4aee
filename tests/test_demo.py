"""`make demo DEMO=smoke`: every stage end to end, then a second run that
resumes (finds every stage done). About 3 minutes on 2 cores: slow."""
import json

import numpy as np
import pytest
from PIL import Image

from parti_jax.eval import shapes_judge
from tests.conftest import run_module

KEYS = ('one_object_accuracy', 'two_object_accuracy', 'heldout_combo_accuracy',
        'tokenizer_psnr', 'minutes')


@pytest.mark.slow
def test_smoke_demo_runs_judges_and_resumes(tmp_path):
  out = tmp_path / 'demo_out'
  first = run_module('parti_jax.demo', '--preset=smoke', f'--out_dir={out}', timeout=900)
  assert first.returncode == 0, first.stderr[-3000:]
  metrics = json.loads((out / 'metrics.json').read_text())
  assert all(key in metrics for key in KEYS)
  assert json.loads(first.stdout.strip().splitlines()[-1]).keys() == set(KEYS)

  # The accuracies are the judge's verdicts on the images the demo kept.
  judged = json.loads((out / 'work' / 'smoke' / 'judge.json').read_text())
  for name, key in (('one_object', 'one_object_accuracy'),
                    ('two_object', 'two_object_accuracy'),
                    ('heldout_combo', 'heldout_combo_accuracy')):
    kept = [shapes_judge.judge(np.asarray(Image.open(out / 'images' / entry['files'][0])),
                               entry['prompt']) for entry in judged['prompts'][name]]
    assert metrics[key] == shapes_judge.summarize(kept)['full_accuracy']
  page = (out / 'index.html').read_text()
  assert page.count('<img ') == sum(len(e['files']) for p in judged['prompts'].values()
                                    for e in p)
  assert (out / 'grids' / 'two_object.png').exists()

  second = run_module('parti_jax.demo', '--preset=smoke', f'--out_dir={out}', timeout=300)
  assert second.returncode == 0, second.stderr[-3000:]
  for stage in ('tokenizer', 'tokens', 'parti', 'judge'):
    assert f'{stage}: done in an earlier run' in second.stdout
  again = json.loads((out / 'metrics.json').read_text())
  assert again['one_object_accuracy'] == metrics['one_object_accuracy']
