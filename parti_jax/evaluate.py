"""Evaluate a trained model: judged shapes accuracy (by guidance scale, single
sample and best of n), the tokenizer's reconstruction, and a Frechet distance.

  python -m parti_jax.evaluate --gin_file=eval/guidance_sweep.gin \\
      --gin.evaluate.checkpoint_dir="'/tmp/parti/params'" \\
      --gin.evaluate.tokenizer_dir="'/tmp/tok/checkpoints'" \\
      --gin.evaluate.out_dir="'/tmp/parti_eval'" --gin.evaluate.cfg_scales="(0, 1, 1.2, 2, 3, 5)"

Writes out_dir/summary.json, out_dir/summary.md (the tables), TensorBoard
summaries in out_dir (tagged by evaluation, at the model's step) and, with
save_images, every judged sample under out_dir/images/.
"""
import json
import logging
import os
from typing import Any, Dict, Optional, Sequence

import gin
import numpy as np

from parti_jax import checkpoints, cli, gin_utils, metrics, progress
from parti_jax.decoding import SamplingConfig
from parti_jax.errors import ConfigError
from parti_jax.eval import frechet, reconstruction, shapes_eval
from parti_jax.inference import Pipeline

log = logging.getLogger(__name__)
EVALUATIONS = ('shapes', 'reconstruction', 'frechet')
def feature_network(name: str, inception_weights: Optional[str]) -> frechet.FeatureNetwork:
  if name == 'inception':
    from parti_jax.eval import inception  # pylint: disable=import-outside-toplevel (large)
    if not inception_weights:
      raise ConfigError('the inception network needs evaluate.inception_weights: '
                        f'{inception.WEIGHTS_URL} converted by '
                        'python -m parti_jax.tools.convert_inception')
    return inception.InceptionV3Features.from_weights(inception_weights)
  if name == 'random_projection':
    return frechet.RandomProjectionNetwork()
  raise ConfigError(f"unknown frechet_network {name!r}; known: 'inception', "
                    "'random_projection'")


def shapes_table(results: Dict[str, Dict[str, Any]], n: int) -> str:
  """Markdown: full-prompt accuracy per guidance scale and prompt set, for
  one sample and for the best of n."""
  sets = list(next(iter(results.values())))
  head = '| cfg scale | ' + ' | '.join(f'{s} (1 of 1) | {s} (best of {n})' for s in sets) + ' |'
  lines = [head, '|' + ' --- |' * (1 + 2 * len(sets))]
  for scale, by_set in results.items():
    cells = [f"{by_set[s]['single']['full_accuracy']:.1%} | "
             f"{by_set[s]['best_of_n']['full_accuracy']:.1%}" for s in sets]
    lines.append(f'| {scale} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _flatten(prefix: str, value: Any, out: Dict[str, float]) -> Dict[str, float]:
  if isinstance(value, dict):
    for key, inner in value.items():
      _flatten(f'{prefix}/{key}' if prefix else str(key), inner, out)
  elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
    out[prefix] = float(value)
  return out


def model_step(checkpoint_dir: str) -> int:
  reader = checkpoints.Checkpointer(checkpoint_dir)
  step = reader.latest_step()
  reader.close()
  return int(step or 0)


@gin.configurable
def evaluate(checkpoint_dir: str = gin.REQUIRED, tokenizer_dir: str = gin.REQUIRED,
             out_dir: str = gin.REQUIRED, evaluations: Sequence[str] = EVALUATIONS,
             cfg_scales: Sequence[float] = (1.2,), num_samples: int = 8,
             prompts_per_set: int = 32, heldout: Sequence[str] = shapes_eval.DEMO_HELDOUT,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             batch_size: int = 64, reconstruction_examples: int = 512,
             frechet_network: str = 'random_projection',
             inception_weights: Optional[str] = None, save_images: bool = False
             ) -> Dict[str, Any]:
  """Runs the chosen evaluations; returns (and writes) the summary.

  `heldout` must name the combinations the model's training data held out
  (the demo's by default), so that the in-distribution prompts avoid them.
  """
  unknown = sorted(set(evaluations) - set(EVALUATIONS))
  if unknown:
    raise ConfigError(f'unknown evaluations {unknown}; known: {list(EVALUATIONS)}')
  pipeline = Pipeline.from_checkpoint(checkpoint_dir, tokenizer_dir, batch_size,
                                      gin_utils.MeshConfig())
  resolution = pipeline.tokenizer.config.image_size
  summary: Dict[str, Any] = {
      'checkpoint_dir': checkpoint_dir, 'tokenizer_dir': tokenizer_dir,
      'step': model_step(checkpoint_dir),
      'settings': dict(cfg_scales=list(cfg_scales), num_samples=num_samples,
                       prompts_per_set=prompts_per_set, heldout=list(heldout),
                       temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                       frechet_network=frechet_network)}
  generated = []
  if 'shapes' in evaluations:
    sets = shapes_eval.prompt_sets(prompts_per_set, heldout, resolution)
    summary['shapes'], summary['shapes_seconds'] = {}, {}
    for scale in cfg_scales:
      sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p,
                                cfg_scale=float(scale))
      result = shapes_eval.evaluate(pipeline, sets, num_samples, sampling, seed,
                                    progress.bar(f'cfg {scale}'))
      summary['shapes'][str(scale)] = result.summaries
      summary['shapes_seconds'][str(scale)] = result.seconds
      if save_images:
        shapes_eval.save_images(result.judged, os.path.join(out_dir, 'images', f'cfg{scale}'))
      if not generated:
        generated = [np.asarray(j.images[j.sample_indices.index(0)])
                     for judged in result.judged.values() for j in judged]
  if 'reconstruction' in evaluations:
    summary['reconstruction'] = reconstruction.reconstruction_metrics(
        pipeline.tokenizer, reconstruction.heldout_shapes(resolution, reconstruction_examples))
  if 'frechet' in evaluations:
    if not generated:
      raise ConfigError("the frechet evaluation compares the 'shapes' evaluation's samples "
                        'with real images: run both')
    network = feature_network(frechet_network, inception_weights)
    summary['frechet'] = frechet.compare(network, [np.stack(generated)],
                                         reconstruction.heldout_shapes(resolution, len(generated)))
  write_summary(summary, out_dir)
  return summary


def write_summary(summary: Dict[str, Any], out_dir: str) -> None:
  """summary.json, summary.md and TensorBoard scalars in out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  lines = [f"# Evaluation of {summary['checkpoint_dir']} (step {summary['step']})", '']
  if 'shapes' in summary:
    lines += ['## Shapes: full-prompt accuracy (the judge)', '',
              shapes_table(summary['shapes'], summary['settings']['num_samples']), '']
  for name in ('reconstruction', 'frechet'):
    if name in summary:
      lines += [f'## {name.capitalize()}', '', '| metric | value |', '| --- | --- |']
      lines += [f'| {k} | {v:.4g} |' if isinstance(v, float) else f'| {k} | {v} |'
                for k, v in summary[name].items()] + ['']
  with open(os.path.join(out_dir, 'summary.md'), 'w') as f:
    f.write('\n'.join(lines))
  writer = metrics.create_writer(out_dir, primary=True)
  writer.write_scalars(summary['step'], _flatten('', {k: v for k, v in summary.items()
                                                      if k in EVALUATIONS}, {}))
  writer.close()


def main(argv=None) -> None:
  cli.parse_with_gin(cli.parser(__doc__), argv)
  summary = evaluate()
  print(json.dumps(_flatten('', {k: v for k, v in summary.items() if k in EVALUATIONS}, {})))


if __name__ == '__main__':
  cli.run(main)
