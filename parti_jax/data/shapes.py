"""The built-in synthetic compositional dataset "shapes".

Each example is a white image holding one or two coloured shapes, with a
caption naming them: "a small red circle to the left of a large blue square".
It is the project's embedded default dataset: the image tokenizer trains on its
images, the text-to-image model on its captions, and evaluation recovers the
objects from generated images by plain image processing. So every attribute is
drawn to be clearly recoverable: saturated colours far apart on white, two
clearly different sizes, and two-object scenes whose relation holds with a
margin.

An example is a pure function of (seed, index), so any index can be read
directly and in any order, as multi-host sharding and resumable iteration need.
Combinations of attributes can be held out of training to test compositional
generalization. Only numpy is needed.
"""
import argparse
import functools
import itertools
import os
import re
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

# Saturated colours far apart in RGB space (every pair over 100 apart) and far
# from the white background, so nearest-colour classification is robust.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    'red': (210, 20, 30),
    'green': (30, 165, 50),
    'blue': (25, 60, 230),
    'yellow': (245, 225, 20),
    'purple': (145, 30, 175),
    'orange': (250, 120, 0),
}
SHAPES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'diamond')
# Side of an object's bounding box, as a fraction of the image side.
SIZES: Dict[str, float] = {'small': 0.2, 'large': 0.38}
# How the subject (the first object) lies relative to the second object.
RELATIONS: Tuple[str, ...] = ('left of', 'right of', 'above', 'below')
SPLITS: Tuple[str, ...] = ('train', 'heldout', 'all')
BACKGROUND: Tuple[int, int, int] = (255, 255, 255)
# The smallest resolution at which two large objects fit with their margins.
MIN_RESOLUTION = 16

Object = Dict[str, Any]

_BORDER = 0.04  # Least space between an object and the image edge.
_GAP = 0.06  # Least space between the two objects, along the relation's axis.
_SUPERSAMPLE = 4
# Redraws are cheap (attributes only; rendering follows acceptance), so allow
# many: a split accepting 1 draw in 1000 still fails with probability e^-10.
_MAX_ATTEMPTS = 10_000
_RELATION_PHRASES = {'left of': 'to the left of', 'right of': 'to the right of',
                     'above': 'above', 'below': 'below'}
_KIND_OF_WORD = {**{word: 'size' for word in SIZES},
                 **{word: 'colour' for word in COLOURS},
                 **{word: 'shape' for word in SHAPES}}
_OBJECT_PATTERN = f"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
_CAPTION_RE = re.compile(
    f"{_OBJECT_PATTERN}(?: ({'|'.join(_RELATION_PHRASES.values())}) {_OBJECT_PATTERN})?")


def _pixels(fraction: float, resolution: int) -> int:
  return max(1, int(round(fraction * resolution)))


def side_pixels(size: str, resolution: int) -> int:
  """Side of the bounding box of an object of `size`, in pixels."""
  return _pixels(SIZES[size], resolution)


def _check_resolution(resolution: int) -> None:
  needed = (2 * side_pixels('large', resolution) + _pixels(_GAP, resolution)
            + 2 * _pixels(_BORDER, resolution))
  if resolution < MIN_RESOLUTION or needed > resolution:
    raise ValueError(f'resolution {resolution} is too small for two large objects side by side; '
                     f'use at least {MIN_RESOLUTION}')


def caption_for(objects: Sequence[Mapping[str, Any]], relation: Optional[str]) -> str:
  """The caption of a scene: 'a small red circle', or two objects and `relation`."""
  if len(objects) not in (1, 2) or (relation is None) != (len(objects) == 1):
    raise ValueError(f'a caption needs one object and no relation, or two objects and a '
                     f'relation; got {len(objects)} object(s) and relation {relation!r}')
  phrases = [f"a {obj['size']} {obj['colour']} {obj['shape']}" for obj in objects]
  if relation is None:
    return phrases[0]
  if relation not in _RELATION_PHRASES:
    raise ValueError(f'unknown relation {relation!r}; allowed: {RELATIONS}')
  return f'{phrases[0]} {_RELATION_PHRASES[relation]} {phrases[1]}'


def parse_caption(caption: str) -> Dict[str, Any]:
  """Inverts `caption_for`: {'objects': [{'size', 'colour', 'shape'}, ...], 'relation'}."""
  match = _CAPTION_RE.fullmatch(caption)
  if match is None:
    raise ValueError(f'not a shapes caption: {caption!r}')
  size, colour, shape, phrase, *second = match.groups()
  objects = [dict(size=size, colour=colour, shape=shape)]
  if phrase is None:
    return {'objects': objects, 'relation': None}
  objects.append(dict(zip(('size', 'colour', 'shape'), second)))
  relation = next(rel for rel, text in _RELATION_PHRASES.items() if text == phrase)
  return {'objects': objects, 'relation': relation}


def parse_heldout(combination: str) -> Dict[str, str]:
  """'small red triangle' -> {'size': 'small', 'colour': 'red', 'shape': 'triangle'}.

  Any of the three attributes may be left out: 'red triangle' and 'triangle'
  name every object with those attribute values.
  """
  words = combination.split()
  if not words:
    raise ValueError('empty held-out combination')
  pattern = {}
  for word in words:
    if word not in _KIND_OF_WORD:
      raise ValueError(f'unknown word {word!r} in held-out combination {combination!r}; '
                       f'allowed words: sizes {tuple(SIZES)}, colours {tuple(COLOURS)}, '
                       f'shapes {SHAPES}')
    kind = _KIND_OF_WORD[word]
    if kind in pattern:
      raise ValueError(f'held-out combination {combination!r} names more than one {kind}')
    pattern[kind] = word
  return pattern


def _matches(obj: Mapping[str, Any], pattern: Mapping[str, str]) -> bool:
  return all(obj[kind] == value for kind, value in pattern.items())


def _same_colour_and_shape(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
  return a['colour'] == b['colour'] and a['shape'] == b['shape']


def _pick(rng: np.random.Generator, values: Sequence[str]) -> str:
  return values[int(rng.integers(len(values)))]


def _draw_object(rng: np.random.Generator) -> Object:
  return dict(size=_pick(rng, tuple(SIZES)), colour=_pick(rng, tuple(COLOURS)),
              shape=_pick(rng, SHAPES))


def _draw_attributes(rng: np.random.Generator,
                     two_object_prob: float) -> Tuple[List[Object], Optional[str]]:
  """Objects (subject first) and relation of a scene, not yet placed."""
  subject = _draw_object(rng)
  if rng.random() >= two_object_prob:
    return [subject], None
  other = _draw_object(rng)
  # Two objects must differ in colour or shape for the caption to tell them apart.
  while _same_colour_and_shape(subject, other):
    other = _draw_object(rng)
  return [subject, other], _pick(rng, RELATIONS)


def _start_anywhere(rng: np.random.Generator, side: int, resolution: int) -> int:
  border = _pixels(_BORDER, resolution)
  return int(rng.integers(border, resolution - border - side + 1))


def _starts_in_order(rng: np.random.Generator, sides: Tuple[int, int],
                     resolution: int) -> Tuple[int, int]:
  """Starts of two spans of lengths `sides`, the first before the second with
  at least the scene gap between them, both within the image borders."""
  border, gap = _pixels(_BORDER, resolution), _pixels(_GAP, resolution)
  slack = resolution - 2 * border - gap - sum(sides)
  # Two random cuts share the slack between before, between and after, with no
  # preference among the three (so neither object hugs an edge on average).
  cut_a, cut_b = sorted(int(cut) for cut in rng.integers(0, slack + 1, 2))
  first = border + cut_a
  return first, first + sides[0] + gap + cut_b - cut_a


def _corners(rng: np.random.Generator, sides: Sequence[int], relation: Optional[str],
             resolution: int) -> List[Tuple[int, int]]:
  """Top-left corners (x, y) of the objects' bounding boxes."""
  if relation is None:
    return [(_start_anywhere(rng, sides[0], resolution),
             _start_anywhere(rng, sides[0], resolution))]
  # Along the relation's axis the boxes are separated; across it they may vary.
  across = [_start_anywhere(rng, side, resolution) for side in sides]
  subject_first = relation in ('left of', 'above')
  order = (0, 1) if subject_first else (1, 0)
  along = [0, 0]
  along[order[0]], along[order[1]] = _starts_in_order(
      rng, (sides[order[0]], sides[order[1]]), resolution)
  if relation in ('left of', 'right of'):
    return list(zip(along, across))
  return list(zip(across, along))


def _placed(obj: Object, corner: Tuple[int, int], side: int) -> Object:
  """`obj` with its centre (x, y) and bounding box (left, top, right, bottom),
  in pixels, right and bottom exclusive."""
  x0, y0 = corner
  return {**obj, 'centre': (x0 + side / 2, y0 + side / 2),
          'bbox': (x0, y0, x0 + side, y0 + side)}


@functools.lru_cache(maxsize=None)
def shape_coverage(shape: str, side: int) -> np.ndarray:
  """Fraction of each pixel of a side x side box that `shape` covers."""
  n = side * _SUPERSAMPLE
  # Subpixel sample centres, in box coordinates scaled to [0, 1].
  coords = (np.arange(n) + 0.5) / n
  u, v = coords[None, :], coords[:, None]  # u runs right, v runs down.
  if shape == 'circle':
    inside = (u - 0.5)**2 + (v - 0.5)**2 <= 0.25
  elif shape == 'square':
    inside = np.ones((n, n), bool)
  elif shape == 'triangle':
    inside = np.abs(u - 0.5) <= v / 2  # Apex at the top centre, base along the bottom.
  elif shape == 'diamond':
    # The square turned 45 degrees, inscribed so that every shape fills one box.
    inside = np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5
  else:
    raise ValueError(f'unknown shape {shape!r}; allowed: {SHAPES}')
  coverage = inside.reshape(side, _SUPERSAMPLE, side, _SUPERSAMPLE).mean(axis=(1, 3))
  coverage.setflags(write=False)  # Shared through the cache.
  return coverage


def render_scene(objects: Sequence[Mapping[str, Any]], resolution: int) -> np.ndarray:
  """Draws placed objects on white, anti-aliased: uint8 [resolution, resolution, 3]."""
  image = np.full((resolution, resolution, 3), BACKGROUND, np.float32)
  for obj in objects:
    x0, y0, x1, y1 = obj['bbox']
    alpha = shape_coverage(obj['shape'], x1 - x0)[..., None]
    region = image[y0:y1, x0:x1]
    region[...] = region * (1 - alpha) + np.asarray(COLOURS[obj['colour']], np.float32) * alpha
  return np.round(image).astype(np.uint8)


class ShapesDataset:
  """Deterministic, randomly accessible shapes examples.

  Each example is a dict: 'image' (uint8 [H, W, 3]), 'caption', 'objects' (in
  caption order, each with size, colour, shape, centre and bbox), 'relation'
  (None or one of RELATIONS) and 'index'.

  `heldout` names attribute combinations such as 'red triangle'. The 'train'
  split never shows an object matching one; 'heldout' only shows scenes with at
  least one; 'all' ignores them. Rejected draws are redrawn from a sub-seed, so
  `example(index)` stays a pure function of (seed, index).
  """

  def __init__(self, seed: int = 0, resolution: int = 64, two_object_prob: float = 0.5,
               heldout: Sequence[str] = (), split: str = 'train'):
    if seed < 0:
      raise ValueError(f'seed must be non-negative, got {seed}')
    _check_resolution(resolution)
    if not 0 <= two_object_prob <= 1:
      raise ValueError(f'two_object_prob must lie in [0, 1], got {two_object_prob}')
    if split not in SPLITS:
      raise ValueError(f'unknown split {split!r}; allowed: {SPLITS}')
    # One string is one combination, not a sequence of one-letter words.
    self.heldout = (heldout,) if isinstance(heldout, str) else tuple(heldout)
    self.seed, self.resolution, self.split = seed, resolution, split
    self.two_object_prob = two_object_prob
    self._patterns = [parse_heldout(combination) for combination in self.heldout]
    self._check_split_possible()

  def _accepts(self, objects: Sequence[Object]) -> bool:
    if self.split == 'all':
      return True
    hit = any(_matches(obj, p) for obj in objects for p in self._patterns)
    return hit if self.split == 'heldout' else not hit

  def _check_split_possible(self) -> None:
    """Raises if the held-out set leaves this split no scene to draw."""
    objects = [dict(size=size, colour=colour, shape=shape)
               for size, colour, shape in itertools.product(SIZES, COLOURS, SHAPES)]
    can_one = any(self._accepts([obj]) for obj in objects)
    can_two = any(self._accepts([a, b]) for a, b in itertools.product(objects, objects)
                  if not _same_colour_and_shape(a, b))
    if not ((self.two_object_prob < 1 and can_one) or (self.two_object_prob > 0 and can_two)):
      raise ValueError(f'held-out combinations {self.heldout} leave split {self.split!r} no '
                       f'possible scene (two_object_prob={self.two_object_prob})')

  def _accepted_attributes(self, index: int) -> Tuple[np.random.Generator, List[Object],
                                                      Optional[str]]:
    """The first draw for `index` that this split accepts, and its generator,
    which goes on to place the objects."""
    for attempt in range(_MAX_ATTEMPTS):
      rng = np.random.default_rng([self.seed, index, attempt])
      objects, relation = _draw_attributes(rng, self.two_object_prob)
      if self._accepts(objects):
        return rng, objects, relation
    raise RuntimeError(f'no {self.split!r} scene for index {index} in {_MAX_ATTEMPTS} draws: '
                       f'held-out combinations {self.heldout} leave too few')

  def example(self, index: int) -> Dict[str, Any]:
    """The example at `index`, a pure function of (seed, index)."""
    if index < 0:
      raise ValueError(f'index must be non-negative, got {index}')
    rng, objects, relation = self._accepted_attributes(index)
    sides = [side_pixels(obj['size'], self.resolution) for obj in objects]
    corners = _corners(rng, sides, relation, self.resolution)
    placed = [_placed(obj, corner, side) for obj, corner, side in zip(objects, corners, sides)]
    return {'image': render_scene(placed, self.resolution),
            'caption': caption_for(placed, relation),
            'objects': placed, 'relation': relation, 'index': index}

  def caption(self, index: int) -> str:
    """The caption of example `index`, without rendering its image."""
    _, objects, relation = self._accepted_attributes(index)
    return caption_for(objects, relation)

  def iterate(self, start: int = 0, step: int = 1) -> Iterator[Dict[str, Any]]:
    """Examples start, start + step, ... forever; e.g. host h of n uses (h, n)."""
    for index in itertools.count(start, step):
      yield self.example(index)

  def __iter__(self) -> Iterator[Dict[str, Any]]:
    return self.iterate()

  def take(self, start: int, count: int) -> List[Dict[str, Any]]:
    """Examples start to start + count - 1."""
    return [self.example(index) for index in range(start, start + count)]


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Writes the captions of examples 0..count-1, one a line: the corpus for a
  text vocabulary of the shapes (python -m parti_jax.data.vocab train)."""
  p = argparse.ArgumentParser(prog='python -m parti_jax.data.shapes', description=main.__doc__)
  p.add_argument('--output', required=True, help='text file to write')
  p.add_argument('--count', type=int, default=16384)
  p.add_argument('--seed', type=int, default=0, help='the training data use seed 0')
  p.add_argument('--heldout', action='append', default=[],
                 help="a held-out combination such as 'red triangle'; repeatable")
  p.add_argument('--two_object_prob', type=float, default=0.5)
  args = p.parse_args(argv)
  try:
    data = ShapesDataset(seed=args.seed, two_object_prob=args.two_object_prob,
                         heldout=args.heldout)
  except ValueError as e:  # An unknown held-out word, a probability out of range.
    p.error(str(e))
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, 'w', encoding='utf-8') as f:
    f.writelines(data.caption(index) + '\n' for index in range(args.count))
  print(f'wrote {args.count} captions to {args.output}')


if __name__ == '__main__':
  main()
