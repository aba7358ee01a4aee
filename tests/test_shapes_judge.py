"""The shapes judge against rendered scenes whose truth is known."""
import math

import numpy as np
import pytest

from parti_jax.data import shapes
from parti_jax.data.shapes import ShapesDataset
from parti_jax.eval import shapes_judge

# Seeds no training config uses (train 0, eval 1), as the issue asks: held out.
UNSEEN_SEED = 777


def _truth(example):
  return sorted((o['colour'], o['shape'], o['size']) for o in example['objects'])


@pytest.mark.parametrize('resolution,count', [(64, 500), (48, 200), (128, 200)])
def test_recovers_rendered_scenes(resolution, count):
  dataset = ShapesDataset(seed=UNSEEN_SEED, resolution=resolution, split='all')
  recovered = 0
  for example in dataset.take(0, count):
    judgement = shapes_judge.judge(example['image'], example['caption'])
    found = sorted((d.colour, d.shape, d.size) for d in judgement.detections)
    recovered += found == _truth(example) and judgement.correct
  assert recovered / count >= 0.99


def _with(example, **changes):
  """The example's objects with the first object's attributes changed."""
  objects = [dict(obj) for obj in example['objects']]
  objects[0].update(changes)
  return objects


def _other(values, current):
  return next(value for value in values if value != current)


def test_wrong_attributes_are_caught_one_at_a_time():
  for example in ShapesDataset(seed=UNSEEN_SEED, two_object_prob=1.0).take(0, 40):
    first = example['objects'][0]
    for kind, values in (('colour', shapes.COLOURS), ('shape', shapes.SHAPES),
                         ('size', shapes.SIZES)):
      objects = _with(example, **{kind: _other(tuple(values), first[kind])})
      judgement = shapes_judge.judge(example['image'],
                                     shapes.caption_for(objects, example['relation']))
      assert not judgement.correct
      assert getattr(judgement, kind) == 0.5  # The other object is still right.
      assert judgement.count and judgement.relation
    opposite = {'left of': 'right of', 'right of': 'left of', 'above': 'below',
                'below': 'above'}[example['relation']]
    flipped = shapes_judge.judge(example['image'],
                                 shapes.caption_for(example['objects'], opposite))
    assert flipped.relation is False and not flipped.correct
    assert (flipped.colour, flipped.shape, flipped.size) == (1.0, 1.0, 1.0)


def test_counts_missing_and_extra_objects():
  two = next(e for e in ShapesDataset(seed=UNSEEN_SEED, two_object_prob=1.0).take(0, 1))
  one_prompt = shapes.caption_for(two['objects'][:1], None)
  extra = shapes_judge.judge(two['image'], one_prompt)
  assert not extra.count and not extra.correct
  assert extra.colour == extra.shape == extra.size == 1.0  # The named object is there.

  blank = np.full_like(two['image'], 255)
  empty = shapes_judge.judge(blank, two['caption'])
  assert empty.detections == () and not empty.count and empty.relation is False
  assert empty.score == 0.0


def test_float_images_read_like_uint8():
  example = ShapesDataset(seed=UNSEEN_SEED).example(3)
  as_float = example['image'].astype(np.float32) / 255
  assert (shapes_judge.judge(as_float, example['caption'])
          == shapes_judge.judge(example['image'], example['caption']))


def test_specks_and_noise_are_not_objects():
  example = ShapesDataset(seed=UNSEEN_SEED, two_object_prob=0.0).example(0)
  image = example['image'].copy()
  free = np.argwhere(image.min(axis=-1) == 255)
  for y, x in free[np.random.default_rng(0).choice(len(free), 30, replace=False)]:
    image[y, x] = shapes.COLOURS['blue']  # Single-pixel specks.
  judgement = shapes_judge.judge(image, example['caption'])
  assert judgement.correct and len(judgement.detections) == 1


def test_summary_counts_by_number_of_objects():
  examples = ShapesDataset(seed=UNSEEN_SEED).take(0, 20)
  right = [shapes_judge.judge(e['image'], e['caption']) for e in examples]
  blank = np.full_like(examples[0]['image'], 255)
  wrong = [shapes_judge.judge(blank, e['caption']) for e in examples[:5]]
  summary = shapes_judge.summarize(right + wrong)
  assert summary['num_images'] == 25
  assert summary['full_accuracy'] == pytest.approx(20 / 25)
  ones = sum(j.num_objects == 1 for j in right + wrong)
  ones_right = sum(j.num_objects == 1 for j in right)
  assert summary['num_one_object'] == ones
  assert summary['one_object_accuracy'] == pytest.approx(ones_right / ones)
  only_one = shapes_judge.summarize([j for j in right if j.num_objects == 1])
  assert math.isnan(only_one['two_object_accuracy'])
  assert math.isnan(only_one['relation_accuracy'])


def test_scorer_ranks_the_right_picture_first():
  a, b = ShapesDataset(seed=UNSEEN_SEED, two_object_prob=0.0).take(0, 2)
  scorer = shapes_judge.ShapesJudgeScorer()
  scores = scorer(np.stack([b['image'], a['image']]), [a['caption']] * 2)
  assert scores[1] == 1.0 and scores[0] < 1.0
  with pytest.raises(ValueError, match='2 images for 1 prompts'):
    scorer(np.stack([a['image'], b['image']]), [a['caption']])


def test_bad_input():
  image = ShapesDataset(seed=UNSEEN_SEED).example(0)['image']
  with pytest.raises(ValueError, match='not a shapes caption'):
    shapes_judge.judge(image, 'a photograph of a dog')
  with pytest.raises(ValueError, match=r'\[height, width, 3\]'):
    shapes_judge.judge(image[..., 0], 'a small red circle')
