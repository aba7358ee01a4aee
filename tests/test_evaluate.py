"""The evaluate command and the demo's report, on a random model (plumbing and
bookkeeping; the judge's own accuracy is tested in test_shapes_judge.py)."""
import glob
import json

import numpy as np
import pytest
from PIL import Image

from parti_jax import evaluate
from parti_jax.errors import ConfigError
from parti_jax.eval import shapes_eval, shapes_judge
from tests.conftest import write_random_model


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  return write_random_model(tmp_path_factory.mktemp('evaluate'))


def test_summary_files_and_numbers_come_from_the_judge(model, tmp_path):
  out = tmp_path / 'eval'
  summary = evaluate.evaluate(
      checkpoint_dir=str(model / 'model'), tokenizer_dir=str(model / 'tokenizer'),
      out_dir=str(out), cfg_scales=(0, 1.2), num_samples=2, prompts_per_set=2, batch_size=8,
      reconstruction_examples=8, save_images=True)
  assert set(summary['shapes']) == {'0', '1.2'}
  assert set(summary['shapes']['1.2']) == {'one_object', 'two_object', 'heldout_combo'}
  # Re-judge the saved samples: the best of each prompt must give the summary's figure.
  prompts = shapes_eval.prompt_sets(2, summary['settings']['heldout'], resolution=16)
  for name, texts in prompts.items():
    best = []
    for index, text in enumerate(texts):
      files = glob.glob(str(out / 'images' / 'cfg1.2' / name / f'p{index:03d}_s*.png'))
      assert len(files) == 2
      best.append(max((shapes_judge.judge(np.asarray(Image.open(f)), text) for f in files),
                      key=lambda judgement: judgement.score))
    expected = shapes_judge.summarize(best)['full_accuracy']
    assert summary['shapes']['1.2'][name]['best_of_n']['full_accuracy'] == expected
  assert summary['reconstruction']['examples'] == 8
  assert summary['frechet']['frechet_distance_network'].startswith('random_projection')
  assert 'fid' not in summary['frechet']  # Not Inception features: not called FID.
  assert json.loads((out / 'summary.json').read_text())['step'] == 7
  table = (out / 'summary.md').read_text()
  assert '| cfg scale | one_object (1 of 1) | one_object (best of 2) |' in table
  assert table.count('\n| 0 |') == 1 and table.count('\n| 1.2 |') == 1
  assert glob.glob(str(out / 'events.out.tfevents.*'))


def test_bad_settings(model, tmp_path):
  paths = dict(checkpoint_dir=str(model / 'model'), tokenizer_dir=str(model / 'tokenizer'),
               out_dir=str(tmp_path))
  with pytest.raises(ConfigError, match=r"unknown evaluations \['fidd'\]"):
    evaluate.evaluate(**paths, evaluations=('fidd',))
  with pytest.raises(ConfigError, match="compares the 'shapes' evaluation's samples"):
    evaluate.evaluate(**paths, evaluations=('frechet',))
  with pytest.raises(ConfigError, match='needs evaluate.inception_weights'):
    evaluate.feature_network('inception', None)
