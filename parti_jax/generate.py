"""Generate images from prompts with a trained model and tokenizer.

  python -m parti_jax.generate --checkpoint_dir=/tmp/parti/params \
      --tokenizer_dir=/tmp/tok/checkpoints --prompt="a small red circle" \
      --num_samples=8 --cfg_scale=1.2 --seed=0 --out_dir=/tmp/samples

Prompts come from --prompt (repeatable) or --prompts_file: a text file of one
prompt a line, or a TSV with a 'Prompt' column (PartiPrompts.tsv). Writes
out_dir/pPPPP_sSS.png for each kept sample, out_dir/pPPPP_grid.png per prompt,
and out_dir/generations.json with every setting, the prompts, the files, the
sampled token ids and (when reranked) the scores. --scorer names the reranker
(`shapes_judge` for shapes prompts): with --keep it keeps the best samples.
"""
import argparse
import csv
import json
import os
from typing import List

from PIL import Image

from parti_jax import cli, gin_utils, progress
from parti_jax.decoding import SamplingConfig
from parti_jax.errors import ConfigError
from parti_jax.eval import scorers
from parti_jax.inference import Generation, Pipeline



def read_prompts(path: str) -> List[str]:
  """One prompt a line, or a TSV's 'Prompt' column."""
  if not os.path.exists(path):
    raise ConfigError(f'prompts file not found: {path}')
  with open(path, newline='', encoding='utf-8') as f:
    if path.endswith('.tsv'):
      reader = csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE)
      if 'Prompt' not in (reader.fieldnames or []):
        raise ConfigError(f'{path} has no Prompt column (columns: {reader.fieldnames})')
      prompts = [row['Prompt'].strip() for row in reader]
    else:
      prompts = [line.strip() for line in f]
  prompts = [p for p in prompts if p]
  if not prompts:
    raise ConfigError(f'{path} holds no prompts')
  return prompts


def grid(images: List[Image.Image], columns: int = 4) -> Image.Image:
  """The images side by side in rows of up to `columns`."""
  columns = min(len(images), columns)
  rows = -(-len(images) // columns)
  width, height = images[0].size
  canvas = Image.new('RGB', (columns * width, rows * height), 'white')
  for i, image in enumerate(images):
    canvas.paste(image, ((i % columns) * width, (i // columns) * height))
  return canvas


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
  """The flags of sampling, reranking and output that every generating command shares."""
  p.add_argument('--checkpoint_dir', required=True,
                 help='MODEL_DIR/params (the export) or MODEL_DIR/checkpoints')
  p.add_argument('--tokenizer_dir', required=True, help='the image tokenizer\'s checkpoints')
  p.add_argument('--num_samples', type=int, default=4, help='samples per prompt')
  p.add_argument('--keep', type=int, default=None,
                 help='samples kept per prompt (the best by the scorer); default: all')
  p.add_argument('--scorer', default=None, choices=scorers.names(),
                 help='reranks each prompt\'s samples, best first; needed by --keep')
  p.add_argument('--cfg_scale', type=float, default=1.2)
  p.add_argument('--temperature', type=float, default=1.0)
  p.add_argument('--top_k', type=int, default=0)
  p.add_argument('--top_p', type=float, default=1.0)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--batch_size', type=int, default=16, help='rows sampled at once')
  p.add_argument('--dtype', choices=['float32', 'bfloat16'], default=None,
                 help='matmul dtype while sampling (default: the checkpoint\'s)')
  p.add_argument('--cache_dtype', choices=['float32', 'bfloat16'], default=None,
                 help='dtype of the self-attention cache (default: the matmul dtype); on '
                 'CPUs --dtype=bfloat16 --cache_dtype=float32 samples fastest')
  p.add_argument('--out_dir', required=True)


def generate_from_flags(args: argparse.Namespace, prompts: List[str]) -> List[Generation]:
  """Loads the model the flags name and samples the prompts as they say."""
  sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            cfg_scale=args.cfg_scale)
  pipeline = Pipeline.from_checkpoint(args.checkpoint_dir, args.tokenizer_dir,
                                      batch_size=args.batch_size,
                                      mesh_config=gin_utils.MeshConfig(), dtype=args.dtype,
                                      decode_cache_dtype=args.cache_dtype)
  return pipeline.generate(
      prompts, args.num_samples, sampling, args.seed, args.keep,
      scorer=scorers.make_scorer(args.scorer) if args.scorer else None,
      on_progress=progress.bar(f'{len(prompts)} prompts'))


def save_generations(generations: List[Generation], out_dir: str) -> List[dict]:
  """Writes pPPPP_sSS.png per kept sample and pPPPP_grid.png per prompt into
  out_dir; returns a record per prompt (files relative to out_dir)."""
  os.makedirs(out_dir, exist_ok=True)
  records = []
  for p_index, generation in enumerate(generations):
    files = []
    for image, sample in zip(generation.images, generation.sample_indices):
      files.append(f'p{p_index:04d}_s{sample:02d}.png')
      image.save(os.path.join(out_dir, files[-1]))
    grid(generation.images).save(os.path.join(out_dir, f'p{p_index:04d}_grid.png'))
    records.append(dict(prompt=generation.prompt, files=files,
                        sample_indices=generation.sample_indices,
                        scores=generation.scores, prompt_truncated=generation.prompt_truncated,
                        tokens=generation.tokens.tolist()))
  return records


def main(argv=None) -> None:
  p = cli.parser(__doc__)
  p.add_argument('--prompt', action='append', default=[])
  p.add_argument('--prompts_file', default=None)
  add_sampling_flags(p)
  args = cli.parse_with_gin(p, argv)
  prompts = list(args.prompt) + (read_prompts(args.prompts_file) if args.prompts_file else [])
  if not prompts:
    raise ConfigError('no prompts: pass --prompt="..." or --prompts_file=...')
  generations = generate_from_flags(args, prompts)
  records = save_generations(generations, args.out_dir)
  settings = {k: v for k, v in vars(args).items() if k not in ('prompt', 'gin_file')}
  with open(os.path.join(args.out_dir, 'generations.json'), 'w') as f:
    json.dump(dict(settings=settings, generations=records), f, indent=1)
  print(json.dumps(dict(out_dir=args.out_dir, prompts=len(prompts),
                        images=sum(len(r['files']) for r in records))))


if __name__ == '__main__':
  cli.run(main)
