"""The shapes judge: reads the objects in a picture and scores it against its prompt.

Plain image processing, no learned model, so its verdicts need no trust in a
second network. For an image of the shapes dataset (parti_jax/data/shapes.py)
it finds each object and reads:

  colour    the palette colour nearest the object's solid pixels;
  shape     the dataset's shape whose drawn silhouette, fitted to the object's
            bounding box, overlaps the object best (intersection over union);
  size      the dataset size nearest the object's bounding-box side;
  position  the object's centre, for the prompt's relation.

`judge` then scores a picture against its prompt in the manner of GenEval:
per attribute (count, colour, shape, size, relation) and whole (every
attribute right). On rendered dataset images the judge recovers the truth
(tests/test_shapes_judge.py checks at least 99% on unseen seeds), so what it
says of generated images measures the generator.
"""
import dataclasses
import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from parti_jax.data import shapes
from parti_jax.errors import ConfigError

# A pixel is an object's when it lies at least this far from white in its
# darkest channel: half of the palette's weakest contrast (purple's and
# green's 225), so the mask is where an object covers about half the pixel or
# more, as in the silhouettes the shape is compared with.
_FOREGROUND_CONTRAST = 112
# Pixels at least this far from white are solid (anti-aliasing does not mix
# them much with the background): the object's colour is read from them.
_SOLID_CONTRAST = 180
# Blobs smaller than this fraction of the smallest object (a small triangle,
# half its box) are specks, not objects.
_MIN_OBJECT_FRACTION = 0.3
_PALETTE_NAMES = tuple(shapes.COLOURS)
_PALETTE = np.array([shapes.COLOURS[name] for name in _PALETTE_NAMES], np.float32)
_CHECKS = ('count', 'colour', 'shape', 'size', 'relation')


@dataclasses.dataclass(frozen=True)
class Detection:
  """An object found in an image; positions in pixels, (x, y) from top-left."""
  colour: str
  shape: str
  size: str
  centre: Tuple[float, float]
  bbox: Tuple[int, int, int, int]  # left, top, right, bottom (exclusive).
  area: int
  shape_iou: float  # How well the best silhouette fits: 1 is exact.

  def attributes(self) -> Dict[str, str]:
    return dict(colour=self.colour, shape=self.shape, size=self.size)


@dataclasses.dataclass(frozen=True)
class Judgement:
  """A picture scored against its prompt.

  Attribute fields are the fraction of the prompt's objects that the matched
  detection gets right; `relation` is None for one-object prompts.
  """
  prompt: str
  num_objects: int  # In the prompt.
  count: bool
  colour: float
  shape: float
  size: float
  relation: Optional[bool]
  detections: Tuple[Detection, ...]

  @property
  def correct(self) -> bool:
    """Every attribute right: the full-prompt accuracy's test."""
    return self.score == 1.0

  @property
  def score(self) -> float:
    """The fraction of checks passed, in [0, 1]: a graded score for reranking."""
    checks = [float(self.count), self.colour, self.shape, self.size]
    if self.relation is not None:
      checks.append(float(self.relation))
    return float(np.mean(checks))


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'expected an RGB image [height, width, 3], got shape {image.shape}')
  if image.dtype != np.uint8:  # Floats in [0, 1], as the tokenizer decodes them.
    image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
  return image


def _silhouette(shape: str, side: int) -> np.ndarray:
  return shapes.shape_coverage(shape, side) >= 0.5


def _read_shape(mask: np.ndarray) -> Tuple[str, float]:
  """The shape whose silhouette in the mask's square box overlaps it best."""
  height, width = mask.shape
  side = max(height, width)
  box = np.zeros((side, side), bool)  # The object centred in a square box.
  top, left = (side - height) // 2, (side - width) // 2
  box[top:top + height, left:left + width] = mask
  ious = {}
  for shape in shapes.SHAPES:
    silhouette = _silhouette(shape, side)
    ious[shape] = (box & silhouette).sum() / max((box | silhouette).sum(), 1)
  best = max(ious, key=ious.get)
  return best, float(ious[best])


def _read_size(side: int, resolution: int) -> str:
  """The dataset size nearest in ratio to a bounding-box side."""
  fraction = side / resolution
  return min(shapes.SIZES, key=lambda name: abs(np.log(fraction / shapes.SIZES[name])))


def _read_colour(pixels: np.ndarray) -> str:
  """The palette colour nearest the median of the pixels."""
  median = np.median(pixels.astype(np.float32), axis=0)
  return _PALETTE_NAMES[int(np.argmin(((_PALETTE - median)**2).sum(axis=1)))]


def detect_objects(image: np.ndarray) -> List[Detection]:
  """The objects in an image (uint8 or [0, 1] floats, [H, W, 3], on white),
  largest first."""
  image = _as_uint8_rgb(image)
  resolution = min(image.shape[:2])
  contrast = 255 - image.min(axis=-1).astype(np.int32)
  labels, _ = ndimage.label(contrast >= _FOREGROUND_CONTRAST)
  smallest = shapes.side_pixels('small', resolution)**2 / 2
  detections = []
  for index, window in enumerate(ndimage.find_objects(labels), start=1):
    mask = labels[window] == index
    area = int(mask.sum())
    if area < _MIN_OBJECT_FRACTION * smallest:
      continue
    rows, cols = window
    pixels = image[window][mask]
    solid = pixels[contrast[window][mask] >= _SOLID_CONTRAST]
    shape, iou = _read_shape(mask)
    detections.append(Detection(
        colour=_read_colour(solid if len(solid) else pixels), shape=shape,
        size=_read_size(max(mask.shape), resolution),
        centre=((cols.start + cols.stop) / 2, (rows.start + rows.stop) / 2),
        bbox=(cols.start, rows.start, cols.stop, rows.stop), area=area, shape_iou=iou))
  return sorted(detections, key=lambda d: -d.area)


def relation_holds(subject: Detection, other: Detection, relation: str) -> bool:
  """Whether `subject` lies `relation` `other`, by their centres."""
  (sx, sy), (ox, oy) = subject.centre, other.centre
  holds = {'left of': sx < ox, 'right of': sx > ox, 'above': sy < oy, 'below': sy > oy}
  if relation not in holds:
    raise ValueError(f'unknown relation {relation!r}; allowed: {shapes.RELATIONS}')
  return holds[relation]


def _agreement(wanted: Dict[str, str], found: Optional[Detection]) -> int:
  if found is None:
    return 0
  return sum(found.attributes()[kind] == value for kind, value in wanted.items())


def _match(wanted: Sequence[Dict[str, str]],
           found: Sequence[Detection]) -> Tuple[Optional[Detection], ...]:
  """The detection for each wanted object (None where there are too few) that
  agrees with the prompt on the most attributes; ties go to larger objects."""
  padded = list(found) + [None] * len(wanted)
  best, best_agreement = None, -1
  for choice in itertools.permutations(padded, len(wanted)):
    agreement = sum(_agreement(w, f) for w, f in zip(wanted, choice))
    if agreement > best_agreement:
      best, best_agreement = choice, agreement
  return tuple(best)


def judge(image: np.ndarray, prompt: str) -> Judgement:
  """Scores an image against a shapes prompt ('a small red circle above ...').

  Raises:
    ValueError: the prompt is not a shapes caption.
  """
  parsed = shapes.parse_caption(prompt)
  wanted = parsed['objects']
  found = detect_objects(image)
  matched = _match(wanted, found)

  def fraction_right(kind: str) -> float:
    return float(np.mean([f is not None and f.attributes()[kind] == w[kind]
                          for w, f in zip(wanted, matched)]))

  relation = None
  if parsed['relation'] is not None:
    subject, other = matched
    relation = (subject is not None and other is not None
                and relation_holds(subject, other, parsed['relation']))
  return Judgement(prompt=prompt, num_objects=len(wanted), count=len(found) == len(wanted),
                   colour=fraction_right('colour'), shape=fraction_right('shape'),
                   size=fraction_right('size'), relation=relation, detections=tuple(found))


def summarize(judgements: Sequence[Judgement]) -> Dict[str, float]:
  """Accuracies over judged images: per attribute, full-prompt overall and by
  number of objects (NaN where a group is empty), and the image counts."""
  def mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float('nan')

  one = [j for j in judgements if j.num_objects == 1]
  two = [j for j in judgements if j.num_objects == 2]
  summary = {f'{check}_accuracy': mean(getattr(j, check) for j in judgements
                                       if getattr(j, check) is not None)
             for check in _CHECKS}
  summary.update(
      full_accuracy=mean(j.correct for j in judgements),
      one_object_accuracy=mean(j.correct for j in one),
      two_object_accuracy=mean(j.correct for j in two),
      mean_score=mean(j.score for j in judgements),
      num_images=len(judgements), num_one_object=len(one), num_two_object=len(two))
  return summary


class ShapesJudgeScorer:
  """The reranking scorer for shapes prompts: (images, prompts) -> the fraction
  of the judge's checks each image passes (inference.Scorer)."""
  name = 'shapes_judge'

  def check_prompts(self, prompts: Sequence[str]) -> None:
    """Raises ConfigError on a prompt the judge cannot read, before sampling."""
    for prompt in prompts:
      try:
        shapes.parse_caption(prompt)
      except ValueError:
        raise ConfigError(f'the {self.name} scorer reads only shapes prompts, not '
                          f'{prompt!r}') from None

  def __call__(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    if len(images) != len(prompts):
      raise ValueError(f'{len(images)} images for {len(prompts)} prompts')
    return np.array([judge(image, prompt).score for image, prompt in zip(images, prompts)])
