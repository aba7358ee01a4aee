"""PartiPrompts: images for the benchmark's prompts, and a static HTML report.

  python -m parti_jax.eval.parti_prompts --prompts=PartiPrompts.tsv \\
      --checkpoint_dir=/tmp/parti/params --tokenizer_dir=/tmp/tok/checkpoints \\
      --category=Animals --challenge=Basic --limit=64 --num_samples=4 --out_dir=/tmp/pp

PartiPrompts.tsv (github.com/google-research/parti) has the columns Prompt,
Category, Challenge and Note; --category and --challenge (repeatable) choose
prompts, --limit keeps the first N chosen. Writes out_dir/images/ (the
generate command's files), out_dir/index.html (a grid per category and per
challenge, with every setting and the timings) and out_dir/results.json.
"""
import collections
import csv
import dataclasses
import json
import os
import time
from typing import Dict, List, Optional, Sequence

import jax

from parti_jax import cli
from parti_jax.errors import ConfigError
from parti_jax.eval import html_report
from parti_jax.generate import add_sampling_flags, generate_from_flags, save_generations

COLUMNS = ('Prompt', 'Category', 'Challenge')


@dataclasses.dataclass(frozen=True)
class PartiPrompt:
  prompt: str
  category: str
  challenge: str
  note: str = ''


def read_parti_prompts(path: str) -> List[PartiPrompt]:
  """The rows of a PartiPrompts TSV with a prompt; ConfigError if the file or
  a column is missing."""
  if not os.path.exists(path):
    raise ConfigError(f'PartiPrompts file not found: {path} (download PartiPrompts.tsv from '
                      'https://github.com/google-research/parti)')
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise ConfigError(f'{path} lacks the column(s) {missing}; it has {reader.fieldnames}')
    rows = [PartiPrompt(row['Prompt'].strip(), (row['Category'] or '').strip(),
                        (row['Challenge'] or '').strip(), (row.get('Note') or '').strip())
            for row in reader]
  return [row for row in rows if row.prompt]


def select(prompts: Sequence[PartiPrompt], categories: Sequence[str] = (),
           challenges: Sequence[str] = (), limit: Optional[int] = None) -> List[PartiPrompt]:
  """Prompts in any of `categories` and any of `challenges` (empty: all), the
  first `limit` of them; ConfigError naming the known values if none is left."""
  chosen = [p for p in prompts
            if (not categories or p.category in categories)
            and (not challenges or p.challenge in challenges)]
  if limit is not None:
    chosen = chosen[:limit]
  if not chosen:
    known_categories = sorted({p.category for p in prompts})
    known_challenges = sorted({p.challenge for p in prompts})
    raise ConfigError(f'no prompt matches categories {list(categories)} and challenges '
                      f'{list(challenges)}; categories: {known_categories}; challenges: '
                      f'{known_challenges}')
  return chosen


def _sections(chosen: Sequence[PartiPrompt], records: Sequence[dict]) -> List[html_report.Section]:
  """A section per category, then one per challenge; each prompt a row."""
  sections = []
  for field, heading in (('category', 'Category'), ('challenge', 'Challenge')):
    groups: Dict[str, List[html_report.Row]] = collections.defaultdict(list)
    for prompt, record in zip(chosen, records):
      other = prompt.challenge if field == 'category' else prompt.category
      images = [html_report.Image(os.path.join('images', name),
                                  '' if record['scores'] is None else f'{score:.3g}')
                for name, score in zip(record['files'],
                                       record['scores'] or [None] * len(record['files']))]
      groups[getattr(prompt, field)].append(html_report.Row(f'{prompt.prompt} ({other})', images))
    sections += [html_report.Section(f'{heading}: {name}', rows)
                 for name, rows in sorted(groups.items())]
  return sections


def main(argv=None) -> None:
  p = cli.parser(__doc__)
  p.add_argument('--prompts', required=True, help='PartiPrompts.tsv')
  p.add_argument('--category', action='append', default=[])
  p.add_argument('--challenge', action='append', default=[])
  p.add_argument('--limit', type=int, default=None, help='keep the first N chosen prompts')
  add_sampling_flags(p)
  args = cli.parse_with_gin(p, argv)
  chosen = select(read_parti_prompts(args.prompts), args.category, args.challenge, args.limit)
  start = time.perf_counter()
  generations = generate_from_flags(args, [c.prompt for c in chosen])
  seconds = time.perf_counter() - start
  records = save_generations(generations, os.path.join(args.out_dir, 'images'))
  images = sum(len(r['files']) for r in records)
  timings = {'seconds': round(seconds, 2), 'prompts': len(chosen),
             'images_sampled': len(chosen) * args.num_samples,
             'seconds_per_sampled_image': round(seconds / (len(chosen) * args.num_samples), 4),
             'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}'}
  settings = {k: v for k, v in vars(args).items() if k != 'gin_file'}
  html_report.write_page(os.path.join(args.out_dir, 'index.html'), 'PartiPrompts',
                         _sections(chosen, records), settings, {'Timings': [timings]})
  for prompt, record in zip(chosen, records):
    record.update(category=prompt.category, challenge=prompt.challenge, note=prompt.note)
  with open(os.path.join(args.out_dir, 'results.json'), 'w') as f:
    json.dump(dict(settings=settings, timings=timings, generations=records), f, indent=1)
  print(json.dumps(dict(out_dir=args.out_dir, prompts=len(chosen), images=images,
                        seconds=timings['seconds'])))


if __name__ == '__main__':
  cli.run(main)
