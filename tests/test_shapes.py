"""The synthetic shapes dataset: determinism, rendering, layout, captions, held-out splits."""
import itertools
import math

import numpy as np
import pytest

from parti_jax.data import shapes

WHITE = np.array(shapes.BACKGROUND)
# 4x4 supersampling quantizes an edge pixel's coverage to 1/16 and uint8 rounding
# adds under 1/400 a pixel; over a 49-pixel shape these errors measure under 0.6%
# of the box (most for the diamond, whose edges pass through sample points). 3%
# leaves room yet is far below 0.21, the least gap between two shapes' areas.
AREA_TOLERANCE = 0.03


def _attributes(obj):
  return {key: obj[key] for key in ('size', 'colour', 'shape')}


def _has(example, colour=None, shape=None, size=None):
  wanted = dict(colour=colour, shape=shape, size=size)
  return any(all(value is None or obj[key] == value for key, value in wanted.items())
             for obj in example['objects'])


def test_example_is_a_pure_function_of_seed_and_index():
  first = shapes.ShapesDataset(seed=3).example(7)
  dataset = shapes.ShapesDataset(seed=3)
  dataset.take(0, 5)  # Reading other indices first must not change index 7.
  again = dataset.example(7)
  assert again['image'].tobytes() == first['image'].tobytes()
  assert again['caption'] == first['caption'] and again['index'] == 7
  assert dataset.example(8)['image'].tobytes() != first['image'].tobytes()
  assert shapes.ShapesDataset(seed=4).example(7)['image'].tobytes() != first['image'].tobytes()


def test_iteration_visits_indices_in_order():
  dataset = shapes.ShapesDataset(resolution=32)
  assert [ex['index'] for ex in itertools.islice(iter(dataset), 3)] == [0, 1, 2]
  strided = list(itertools.islice(dataset.iterate(start=1, step=3), 2))
  assert [ex['caption'] for ex in strided] == [dataset.example(i)['caption'] for i in (1, 4)]


@pytest.mark.parametrize('resolution', [32, 64, 128])
def test_image_dtype_shape_and_boxes_inside(resolution):
  for ex in shapes.ShapesDataset(resolution=resolution).take(0, 20):
    assert ex['image'].dtype == np.uint8
    assert ex['image'].shape == (resolution, resolution, 3)
    for obj in ex['objects']:
      x0, y0, x1, y1 = obj['bbox']
      side = shapes.side_pixels(obj['size'], resolution)
      assert 0 <= x0 and 0 <= y0 and x1 <= resolution and y1 <= resolution
      assert x1 - x0 == side and y1 - y0 == side
      assert obj['centre'] == ((x0 + x1) / 2, (y0 + y1) / 2)


def test_palette_is_far_apart_and_far_from_white():
  colours = list(shapes.COLOURS.values()) + [shapes.BACKGROUND]
  for a, b in itertools.combinations(colours, 2):
    assert np.linalg.norm(np.subtract(a, b)) > 100, (a, b)


def test_objects_show_their_colour_on_white():
  for ex in shapes.ShapesDataset(seed=1).take(0, 60):
    image = ex['image'].astype(np.int32)
    outside = np.ones(image.shape[:2], bool)
    for obj in ex['objects']:
      x0, y0, x1, y1 = obj['bbox']
      outside[y0:y1, x0:x1] = False
      box = image[y0:y1, x0:x1]
      near = np.linalg.norm(box - np.array(shapes.COLOURS[obj['colour']]), axis=-1) <= 3
      # The least solid fill, a small triangle or diamond at 64 pixels, has
      # over a third of its box exactly coloured, anti-aliased edges aside.
      assert near.mean() > 0.2, (ex['caption'], obj)
    assert (image[outside] == WHITE).all(), ex['caption']


@pytest.mark.parametrize('shape,area', [('circle', math.pi / 4), ('square', 1.0),
                                        ('triangle', 0.5), ('diamond', 0.5)])
def test_shape_fills_its_expected_area(shape, area):
  side = shapes.side_pixels('large', 128)
  obj = dict(size='large', colour='blue', shape=shape, bbox=(10, 20, 10 + side, 20 + side))
  image = shapes.render_scene([obj], 128).astype(np.float64)
  # Blue differs most from white in red: the coverage of a pixel follows from it.
  coverage = (255 - image[20:20 + side, 10:10 + side, 0]) / (255 - shapes.COLOURS['blue'][0])
  assert abs(coverage.mean() - area) < AREA_TOLERANCE
  widths = coverage.sum(axis=1)
  if shape == 'triangle':  # Points up: narrow on top, wide at the bottom.
    assert widths[:side // 4].mean() < 0.5 * widths[-side // 4:].mean()
  if shape == 'diamond':  # Widest across the middle.
    assert widths[side // 2] > 2 * max(widths[side // 8], widths[-side // 8])


def test_two_objects_are_apart_distinct_and_obey_their_relation():
  seen = set()
  for ex in shapes.ShapesDataset(seed=2, resolution=32, two_object_prob=1.0).take(0, 300):
    a, b = ex['objects']
    seen.add(ex['relation'])
    assert (a['colour'], a['shape']) != (b['colour'], b['shape'])
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a['bbox'], b['bbox']
    # Strict inequalities: at least one white row or column between the boxes.
    separated = {'left of': ax1 < bx0 and a['centre'][0] < b['centre'][0],
                 'right of': bx1 < ax0 and a['centre'][0] > b['centre'][0],
                 'above': ay1 < by0 and a['centre'][1] < b['centre'][1],
                 'below': by1 < ay0 and a['centre'][1] > b['centre'][1]}
    assert separated[ex['relation']], ex
  assert seen == set(shapes.RELATIONS)


def test_caption_round_trips_through_parse_caption():
  for ex in shapes.ShapesDataset(seed=5, resolution=16).take(0, 300):
    parsed = shapes.parse_caption(ex['caption'])
    assert parsed['relation'] == ex['relation']
    assert parsed['objects'] == [_attributes(obj) for obj in ex['objects']]
    assert shapes.caption_for(parsed['objects'], parsed['relation']) == ex['caption']


@pytest.mark.parametrize('caption', [
    '', 'a red circle', 'a small red circle.', 'A small red circle', 'a small pink circle',
    'a small red circle near a large blue square', 'a small red circle to the left of'])
def test_parse_caption_rejects_other_text(caption):
  with pytest.raises(ValueError, match='not a shapes caption'):
    shapes.parse_caption(caption)


def test_caption_for_checks_objects_against_relation():
  obj = dict(size='small', colour='red', shape='circle')
  assert shapes.caption_for([obj], None) == 'a small red circle'
  assert shapes.caption_for([obj, obj], 'right of') == (
      'a small red circle to the right of a small red circle')
  with pytest.raises(ValueError):
    shapes.caption_for([obj], 'above')
  with pytest.raises(ValueError):
    shapes.caption_for([obj, obj], None)


@pytest.mark.parametrize('prob', [0.0, 0.2, 0.5, 1.0])
def test_two_object_fraction_follows_probability(prob):
  n = 400
  examples = shapes.ShapesDataset(seed=6, resolution=16, two_object_prob=prob).take(0, n)
  fraction = np.mean([len(ex['objects']) == 2 for ex in examples])
  # Binomial(n, prob): a correct sampler lands within 4 standard deviations
  # with probability 1 - 6e-5, so this holds for almost any seed; 0 and 1 are exact.
  assert abs(fraction - prob) <= 4 * math.sqrt(prob * (1 - prob) / n)


def test_heldout_combination_kept_out_of_train_and_only_in_heldout():
  train = shapes.ShapesDataset(seed=7, resolution=16, heldout=('red triangle',)).take(0, 500)
  assert not any(_has(ex, colour='red', shape='triangle') for ex in train)
  # Only the combination is held out, not its parts.
  assert any(_has(ex, colour='red') for ex in train)
  assert any(_has(ex, shape='triangle') for ex in train)
  heldout = shapes.ShapesDataset(seed=7, resolution=16, heldout=('red triangle',),
                                 split='heldout').take(0, 100)
  assert all(_has(ex, colour='red', shape='triangle') for ex in heldout)
  everything = shapes.ShapesDataset(seed=7, resolution=16, split='all',
                                    heldout=('red triangle',)).take(0, 500)
  assert any(_has(ex, colour='red', shape='triangle') for ex in everything)


def test_heldout_accepts_one_attribute_or_all_three():
  no_triangles = shapes.ShapesDataset(seed=8, resolution=16, heldout='triangle').take(0, 200)
  assert not any(_has(ex, shape='triangle') for ex in no_triangles)
  train = shapes.ShapesDataset(seed=8, resolution=16, heldout=('small red triangle',))
  examples = train.take(0, 500)
  assert not any(_has(ex, 'red', 'triangle', 'small') for ex in examples)
  assert any(_has(ex, 'red', 'triangle', 'large') for ex in examples)
  heldout = shapes.ShapesDataset(seed=8, resolution=16, heldout=('small red triangle',),
                                 split='heldout').take(0, 50)
  assert all(_has(ex, 'red', 'triangle', 'small') for ex in heldout)


def test_unknown_heldout_word_is_named():
  with pytest.raises(ValueError, match=r"unknown word 'reed'.*allowed words.*'red'"):
    shapes.ShapesDataset(heldout=('reed triangle',))
  with pytest.raises(ValueError, match='more than one colour'):
    shapes.ShapesDataset(heldout=('red blue triangle',))


def test_heldout_leaving_no_scene_is_an_error():
  with pytest.raises(ValueError, match='no possible scene'):
    shapes.ShapesDataset(heldout=('small', 'large'))
  with pytest.raises(ValueError, match='no possible scene'):
    shapes.ShapesDataset(split='heldout')
  # Only red circles remain: one object is possible, two distinct ones are not.
  only_red_circles = [c for c in shapes.COLOURS if c != 'red'] + [
      s for s in shapes.SHAPES if s != 'circle']
  shapes.ShapesDataset(heldout=only_red_circles, two_object_prob=0.5)
  with pytest.raises(ValueError, match='no possible scene'):
    shapes.ShapesDataset(heldout=only_red_circles, two_object_prob=1.0)


@pytest.mark.parametrize('kwargs', [dict(resolution=8), dict(split='test'),
                                    dict(two_object_prob=1.5), dict(seed=-1)])
def test_bad_arguments_raise(kwargs):
  with pytest.raises(ValueError):
    shapes.ShapesDataset(**kwargs)


def test_captions_command_writes_the_training_captions(tmp_path, capsys):
  """The vocabulary corpus: the same captions the dataset's examples carry."""
  out = tmp_path / 'new_folder' / 'captions.txt'
  shapes.main([f'--output={out}', '--count=50', '--heldout=red triangle',
               '--heldout=blue'])
  data = shapes.ShapesDataset(seed=0, heldout=('red triangle', 'blue'))
  assert out.read_text().splitlines() == [data.example(i)['caption'] for i in range(50)]
  assert 'wrote 50 captions' in capsys.readouterr().out
  with pytest.raises(SystemExit):
    shapes.main([f'--output={out}', '--heldout=blue hexagon'])
  assert "unknown word 'hexagon'" in capsys.readouterr().err
