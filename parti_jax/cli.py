"""Command lines in the t5x style: repeatable --gin_file, --gin.NAME=VALUE
overrides and --gin_search_paths, with user errors reported as one line."""
import argparse
import logging
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from parti_jax import gin_utils
from parti_jax.errors import ConfigError, TrainingStopped


def parser(description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description=description,
      epilog='Gin overrides: --gin.NAME=VALUE, e.g. --gin.TransformerConfig.dtype="\'bfloat16\'"')
  p.add_argument('--gin_file', action='append', default=[],
                 help='gin config file; repeatable, later files override earlier ones')
  p.add_argument('--gin_search_paths', default='',
                 help='comma-separated folders to resolve --gin_file against')
  return p


def split_gin_bindings(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """Separates --gin.NAME=VALUE arguments (as gin bindings) from the rest."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith('--gin.'):
      name, sep, value = arg[len('--gin.'):].partition('=')
      if not sep:
        raise ConfigError(f'gin override {arg!r} needs the form --gin.NAME=VALUE')
      bindings.append(f'{name} = {value}')
    else:
      rest.append(arg)
  return rest, bindings


def parse_with_gin(p: argparse.ArgumentParser,
                   argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """Parses flags, then the gin files and overrides they name."""
  rest, bindings = split_gin_bindings(sys.argv[1:] if argv is None else argv)
  args = p.parse_args(rest)
  search = [s for s in args.gin_search_paths.split(',') if s]
  gin_utils.parse(args.gin_file, bindings, search)
  return args


def _show_progress_logs() -> None:
  """This package's INFO logs on stderr; libraries' chatter stays at WARNING."""
  # force: TensorFlow and absl may have installed root handlers at import.
  logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(message)s',
                      datefmt='%H:%M:%S', force=True)
  for name in ('parti_jax', '__main__'):  # __main__: the entry point run with -m.
    logging.getLogger(name).setLevel(logging.INFO)


def run(main: Callable[[Optional[Sequence[str]]], None],
        argv: Optional[Sequence[str]] = None) -> None:
  """Calls main; a configuration mistake ends in one line on stderr and exit
  status 2, a run that stopped itself in one line and status 1."""
  _show_progress_logs()
  try:
    main(argv)
  except (ConfigError, FileNotFoundError) as e:
    print(f'error: {gin_utils.one_line(e)}', file=sys.stderr)
    sys.exit(2)
  except TrainingStopped as e:
    print(f'stopped: {gin_utils.one_line(e)}', file=sys.stderr)
    sys.exit(1)
