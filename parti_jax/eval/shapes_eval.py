"""Judged generation on shapes prompts: how often the model draws what it is told.

Prompts come from the shapes dataset on a seed training never saw, in three
sets: one object, two objects with a relation, and scenes with an attribute
combination held out of training (compositional generalization). Each prompt
gets `num_samples` samples; the judge scores them all, and the results say
how accurate a single sample is and how accurate the best of them is (Parti's
reranking, here with the judge as the scorer, so best-of-n is an upper bound on
what a learned reranker could pick).
"""
import dataclasses
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

from parti_jax.data.shapes import ShapesDataset
from parti_jax.decoding import SamplingConfig
from parti_jax.eval import shapes_judge

# Held out of the demo's training data; every word still appears in training.
DEMO_HELDOUT = ('red triangle', 'blue circle', 'large yellow square', 'small purple diamond')
# Seed for evaluation prompts: training uses 0, training-time evaluation 1;
# the demo's sampling settings were chosen on seed 2's prompts, so its figures
# come from prompts that choice never saw.
PROMPT_SEED = 3


def distinct_captions(dataset: ShapesDataset, count: int, max_draws: int = 100_000) -> List[str]:
  """The first `count` different captions of `dataset`, in index order."""
  seen: Dict[str, None] = {}
  for index in range(max_draws):
    seen.setdefault(dataset.example(index)['caption'], None)
    if len(seen) == count:
      return list(seen)
  raise ValueError(f'only {len(seen)} distinct captions in {max_draws} examples, '
                   f'{count} wanted')


def prompt_sets(count: int, heldout: Sequence[str] = (), resolution: int = 64,
                seed: int = PROMPT_SEED) -> Dict[str, List[str]]:
  """`count` prompts per set: 'one_object', 'two_object' (in-distribution: no
  held-out combination) and, when there are held-out combinations,
  'heldout_combo' (each scene shows at least one)."""
  def dataset(two_object_prob, split):
    return ShapesDataset(seed=seed, resolution=resolution, two_object_prob=two_object_prob,
                         heldout=heldout, split=split)

  in_distribution = 'train' if heldout else 'all'
  sets = {'one_object': dataset(0.0, in_distribution),
          'two_object': dataset(1.0, in_distribution)}
  if heldout:
    sets['heldout_combo'] = dataset(0.5, 'heldout')
  return {name: distinct_captions(dataset, count) for name, dataset in sets.items()}


@dataclasses.dataclass
class JudgedPrompt:
  """Every sample of one prompt, judged; `order` ranks them best first."""
  prompt: str
  images: list  # PIL images, best first.
  judgements: List[shapes_judge.Judgement]  # Best first.
  sample_indices: List[int]  # Each image's sample number; 0 is the unreranked draw.

  @property
  def first_sample(self) -> shapes_judge.Judgement:
    return self.judgements[self.sample_indices.index(0)]

  @property
  def best(self) -> shapes_judge.Judgement:
    return self.judgements[0]


def generate_and_judge(pipeline, prompts: Sequence[str], num_samples: int,
                       sampling: SamplingConfig, seed: int = 0,
                       on_progress: Optional[Callable[[int, int], None]] = None
                       ) -> List[JudgedPrompt]:
  """Samples every prompt `num_samples` times and judges each sample."""
  generations = pipeline.generate(prompts, num_samples, sampling, seed,
                                  scorer=shapes_judge.ShapesJudgeScorer(),
                                  on_progress=on_progress)
  judged = []
  for generation in generations:
    judgements = [shapes_judge.judge(image, generation.prompt) for image in generation.images]
    judged.append(JudgedPrompt(generation.prompt, generation.images, judgements,
                               generation.sample_indices))
  return judged


def accuracy_summary(judged: Sequence[JudgedPrompt]) -> Dict[str, Dict[str, float]]:
  """The judge's summary of the first sample of each prompt ('single') and of
  the best of all its samples ('best_of_n')."""
  return {'single': shapes_judge.summarize([j.first_sample for j in judged]),
          'best_of_n': shapes_judge.summarize([j.best for j in judged])}


@dataclasses.dataclass
class Evaluation:
  judged: Dict[str, List[JudgedPrompt]]  # By prompt set.
  summaries: Dict[str, Dict[str, Dict[str, float]]]  # By prompt set, then single/best_of_n.
  seconds: float


def evaluate(pipeline, sets: Dict[str, List[str]], num_samples: int,
             sampling: SamplingConfig, seed: int = 0,
             on_progress: Optional[Callable[[int, int], None]] = None) -> Evaluation:
  """Judged generations and accuracy summaries for each prompt set."""
  start = time.perf_counter()
  judged = {name: generate_and_judge(pipeline, prompts, num_samples, sampling, seed,
                                     on_progress)
            for name, prompts in sets.items()}
  return Evaluation(judged, {name: accuracy_summary(j) for name, j in judged.items()},
                    time.perf_counter() - start)


def save_images(judged: Dict[str, List[JudgedPrompt]], directory: str) -> Dict[str, List[List[str]]]:
  """Writes every sample as directory/SET/pPPP_sSS.png (SS: its sample number);
  returns the files of each prompt, best first, relative to `directory`."""
  files = {}
  for name, prompts in judged.items():
    os.makedirs(os.path.join(directory, name), exist_ok=True)
    files[name] = []
    for p_index, prompt in enumerate(prompts):
      names = [os.path.join(name, f'p{p_index:03d}_s{sample:02d}.png')
               for sample in prompt.sample_indices]
      for image, file in zip(prompt.images, names):
        image.save(os.path.join(directory, file))
      files[name].append(names)
  return files
