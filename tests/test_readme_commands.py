"""README.md's commands, run, so the README cannot rot.

Every fenced ```bash block of README.md is split into commands (lines ending
in `\\` are joined, `# comments` dropped, words split as a shell would) and:

- `python -m parti_jax.X ...` runs (the slow test below walks the README top
  to bottom in one temporary folder, so a command can use what an earlier one
  wrote), in a shortened form the block's markers give, with the interpreter
  running the tests in place of `python`; it must exit with status 0.
- `tpu_scripts/NAME.sh ...` runs with `--dry-run` (prints the gcloud commands,
  runs nothing; a `gcloud` that fails loudly comes first on PATH); status 0.
  These are fast: the fast test runs them.
- anything else never runs, and its block must be marked skip: `make test`
  would run this test again (and the whole suite), `make demo` takes minutes
  and tests/test_demo.py runs it (its smoke preset), `pip` would change the
  environment the tests run in.

A ```python block runs (as a script, after the earlier commands) only when
marked `run` or `given`; every ```python block must be marked one way or the
other. Blocks in other languages (error messages) are text.

Paths: `/tmp/X` becomes `<pytest tmp>/X` and `demo_out/X` becomes
`<pytest tmp>/demo_out/X` in every command and python block (plain text
substitution; the README keeps the paths a reader would type). The
placeholder bucket `gs://BUCKET/` becomes `gs://my-bucket/` (the scripts
refuse upper-case bucket names, as Cloud Storage does).

Markers: HTML comment lines (invisible on GitHub) directly above the opening
fence, one directive a line, several lines allowed:

  <!-- readme-test: skip (REASON) -->      the block never runs; REASON says why
  <!-- readme-test: ARGS -->               shell words appended to every python
                                           command of the block (later arguments
                                           win: gin bindings and argparse flags)
  <!-- readme-test: MODULE ARGS -->        the same, only for `python -m MODULE`
  <!-- readme-test: link PATH=TARGET -->   before the block, PATH is made a symlink
                                           to TARGET (both substituted as above):
                                           a command reads outputs that an earlier
                                           one wrote under another name
  <!-- readme-test: run -->                a ```python block runs
  <!-- readme-test: given CODE -->         a ```python block runs after the one
                                           line of python CODE (names that the
                                           README leaves to the reader)

The fast test checks the markers, that every bash block runs or is skipped
with a reason, that every `python -m parti_jax.X` the README names (also in
the prose) exists, and that every --flag of those commands is one the module's
argparse parser defines (read from its source, so no module is imported) and
every --gin_file exists.
"""
import ast
import dataclasses
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

from tests.conftest import REPO

README = Path(REPO) / 'README.md'
GIN_CONFIGS = Path(REPO) / 'gin_configs'

MARKER = re.compile(r'^<!--\s*readme-test:\s*(.*?)\s*-->\s*$')
OPEN_FENCE = re.compile(r'^\s*```(\w*)\s*$')
CLOSE_FENCE = re.compile(r'^\s*```\s*$')
MODULE = re.compile(r'parti_jax(?:\.\w+)+$')
# A path the reader would type, at the start of a word, a quote or a `=`.
READER_PATH = re.compile(r'(?<![\w./-])(/tmp/|demo_out/)')
PLACEHOLDER_BUCKET = re.compile(r'gs://BUCKET/')


@dataclasses.dataclass
class Block:
  language: str
  line: int  # of the opening fence, 1-based
  text: str
  skip: Optional[str] = None  # the reason
  run: bool = False  # python blocks
  given: str = ''  # python blocks
  args: List[Tuple[Optional[str], List[str]]] = dataclasses.field(default_factory=list)
  links: List[Tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Command:
  words: List[str]
  block: Block

  @property
  def kind(self) -> str:
    """'python' (python -m parti_jax.X), 'script' (tpu_scripts/*.sh) or 'other'."""
    if len(self.words) >= 3 and self.words[:2] == ['python', '-m'] and MODULE.match(
        self.words[2]):
      return 'python'
    if re.fullmatch(r'tpu_scripts/[\w-]+\.sh', self.words[0]):
      return 'script'
    return 'other'

  @property
  def module(self) -> str:
    return self.words[2]

  def text(self) -> str:
    return shlex.join(self.words)


def parse_marker(body: str, block: Block) -> None:
  """Adds one marker's directive to the block; ValueError when malformed."""
  if body.startswith('skip'):
    reason = re.fullmatch(r'skip\s*\((.*\S.*)\)', body)
    if not reason:
      raise ValueError(f'skip needs a reason in parentheses: {body!r}')
    block.skip = reason.group(1).strip()
  elif body == 'run':
    block.run = True
  elif body.startswith('given '):
    block.run, block.given = True, body[len('given '):].strip()
  elif body.startswith('link '):
    for word in shlex.split(body[len('link '):]):
      path, sep, target = word.partition('=')
      if not (sep and path and target):
        raise ValueError(f'link takes PATH=TARGET words: {body!r}')
      block.links.append((path, target))
  else:
    words = shlex.split(body)
    module = words.pop(0) if words and MODULE.match(words[0]) else None
    if not words or not words[0].startswith('-'):
      raise ValueError(f'unknown readme-test directive {body!r}')
    block.args.append((module, words))


def parse_readme(text: str) -> Tuple[List[Block], List[str]]:
  """The fenced blocks with their markers, and the problems found (markers
  that stand anywhere but directly above a fence, malformed markers)."""
  lines = text.splitlines()
  blocks, problems, pending = [], [], []
  i = 0
  while i < len(lines):
    line = lines[i]
    marker = MARKER.match(line.strip())
    if marker:
      pending.append((i + 1, marker.group(1)))
      i += 1
      continue
    fence = OPEN_FENCE.match(line)
    if fence:
      end = i + 1
      while end < len(lines) and not CLOSE_FENCE.match(lines[end]):
        end += 1
      block = Block(fence.group(1), i + 1, '\n'.join(lines[i + 1:end]))
      for number, body in pending:
        try:
          parse_marker(body, block)
        except ValueError as e:
          problems.append(f'README.md:{number}: {e}')
      pending = []
      blocks.append(block)
      i = end + 1
      continue
    if '<!-- readme-test' in line:
      problems.append(f'README.md:{i + 1}: a readme-test marker must be a line of its own: '
                      f'{line.strip()!r}')
    problems += [f'README.md:{number}: marker not directly above a code block'
                 for number, _ in pending]
    pending = []
    i += 1
  problems += [f'README.md:{number}: marker not directly above a code block'
               for number, _ in pending]
  return blocks, problems


def split_commands(block: Block) -> List[Command]:
  """Joins `\\` continuations, drops comments, splits words like a shell."""
  commands, current = [], ''
  for line in block.text.splitlines():
    if line.rstrip().endswith('\\'):
      current += line.rstrip()[:-1] + ' '
      continue
    words = shlex.split(current + line, comments=True)
    current = ''
    if words:
      commands.append(Command(words, block))
  if current.strip():
    commands.append(Command(shlex.split(current, comments=True), block))
  return commands


def readme() -> Tuple[List[Block], List[str]]:
  return parse_readme(README.read_text())


def bash_commands(blocks: List[Block]) -> List[Command]:
  return [c for b in blocks if b.language == 'bash' for c in split_commands(b)]


def shortened(command: Command) -> List[str]:
  """The command with its block's marker arguments appended."""
  extra = [w for module, words in command.block.args if module in (None, command.module)
           for w in words]
  return command.words + extra


def substitute(text: str, tmp: Path) -> str:
  text = PLACEHOLDER_BUCKET.sub('gs://my-bucket/', text)
  # One pass: the temporary folder's own path may start with /tmp/.
  return READER_PATH.sub(
      lambda m: f'{tmp}/' if m.group(1) == '/tmp/' else f'{tmp}/demo_out/', text)


def environment() -> Dict[str, str]:
  """This environment as a reader's shell has it: the repository importable,
  jax's real device count (conftest.py fakes 8 devices for the tests)."""
  env = dict(os.environ, PYTHONPATH=REPO)
  flags = env.get('XLA_FLAGS', '').replace('--xla_force_host_platform_device_count=8', '')
  env['XLA_FLAGS'] = flags.strip()
  if not env['XLA_FLAGS']:
    del env['XLA_FLAGS']
  return env


def tail(text: str, chars: int = 3000) -> str:
  return text if len(text) <= chars else '...' + text[-chars:]


# --- flags, read from the modules' source -----------------------------------


def _module_file(module: str) -> Optional[Path]:
  """The source file of a parti_jax module, from the repository's layout
  (nothing is imported)."""
  base = Path(REPO, *module.split('.'))
  for path in (base.with_suffix('.py'), base / '__init__.py'):
    if path.is_file():
      return path
  return None


def _add_argument_flags(tree: ast.AST) -> Set[str]:
  flags = set()
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == 'add_argument'):
      flags |= {a.value for a in node.args
                if isinstance(a, ast.Constant) and isinstance(a.value, str)
                and a.value.startswith('-')}
  return flags


def _function(module: str, name: str) -> Optional[ast.AST]:
  path = _module_file(module)
  if path is None:
    return None
  tree = ast.parse(path.read_text())
  return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _imported(tree: ast.Module) -> Tuple[Dict[str, Tuple[str, str]], Dict[str, str]]:
  """parti_jax functions imported by name, and parti_jax modules by local name."""
  functions, modules = {}, {}
  for node in tree.body:
    if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('parti_jax'):
      for alias in node.names:
        local = alias.asname or alias.name
        if _module_file(f'{node.module}.{alias.name}') is not None:
          modules[local] = f'{node.module}.{alias.name}'
        else:
          functions[local] = (node.module, alias.name)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith('parti_jax.') and alias.asname:
          modules[alias.asname] = alias.name
  return functions, modules


FLAG_CACHE: Dict[str, Set[str]] = {}


def module_flags(module: str) -> Set[str]:
  """The flags of the module's argparse parser: its own add_argument calls and
  those in the parti_jax functions it calls (cli.parser,
  generate.add_sampling_flags)."""
  if module not in FLAG_CACHE:
    tree = ast.parse(_module_file(module).read_text())
    flags = _add_argument_flags(tree)
    functions, modules = _imported(tree)
    for node in ast.walk(tree):
      if not isinstance(node, ast.Call):
        continue
      target = None
      if isinstance(node.func, ast.Name) and node.func.id in functions:
        target = functions[node.func.id]
      elif (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
            and node.func.value.id in modules):
        target = (modules[node.func.value.id], node.func.attr)
      if target:
        definition = _function(*target)
        if definition is not None:
          flags |= _add_argument_flags(definition)
    FLAG_CACHE[module] = flags
  return FLAG_CACHE[module]


def gin_file_exists(name: str) -> bool:
  return any((base / name).is_file() for base in (Path(REPO), GIN_CONFIGS))


def command_problems(words: List[str], where: str) -> List[str]:
  """A python -m parti_jax.X command's missing module, unknown flags, missing gin files."""
  module = words[2]
  if importlib.util.find_spec(module) is None:
    return [f'{where}: no module {module}']
  problems = []
  flags = module_flags(module)
  for word in words[3:]:
    if not word.startswith('--') or word.startswith('--gin.'):
      continue
    flag, _, value = word.partition('=')
    if flags and flag not in flags:
      problems.append(f'{where}: {module} has no flag {flag} (it has {sorted(flags)})')
    if flag == '--gin_file' and not gin_file_exists(value):
      problems.append(f'{where}: no gin file {value}')
  return problems


def prose_commands(text: str) -> List[List[str]]:
  """`python -m parti_jax...` in the README's inline code (outside the blocks;
  a span may wrap over lines)."""
  prose = re.sub(r'^\s*```.*?^\s*```\s*$', '', text, flags=re.S | re.M)
  spans = re.findall(r'`([^`]+)`', prose)
  return [shlex.split(span) for span in spans
          if re.match(r'python\s+-m\s+parti_jax\.', span)]


# --- the fast checks --------------------------------------------------------


def test_markers_commands_and_substitutions(tmp_path):
  """The parser itself, on a small README."""
  text = '\n'.join([
      '<!-- readme-test: --gin.STEPS=2 -->',
      '<!-- readme-test: parti_jax.bench --steps=1 -->',
      '```bash',
      'python -m parti_jax.train --gin.MODEL_DIR="\'/tmp/run\'" \\',
      '    --gin.STEPS=100   # ten minutes',
      '# a comment line',
      'python -m parti_jax.bench tokenizer --checkpoint_dir=demo_out/tok',
      'make demo',
      '```',
      '<!-- readme-test: skip (needs /data) -->',
      '```python',
      "print('/tmp/x')",
      '```',
      '<!-- readme-test: link demo_out/a=/tmp/b -->',
      '',
      '```bash',
      'tpu_scripts/train.sh --model_dir=gs://BUCKET/run',
      '```',
      '<!-- readme-test: skip -->',
      '```bash',
      '```',
  ])
  blocks, problems = parse_readme(text)
  assert problems == ['README.md:14: marker not directly above a code block',
                      "README.md:19: skip needs a reason in parentheses: 'skip'"]
  assert [(b.language, b.line, b.skip) for b in blocks] == [
      ('bash', 3, None), ('python', 11, 'needs /data'), ('bash', 16, None), ('bash', 20, None)]
  train, bench, make = split_commands(blocks[0])
  assert (train.kind, bench.kind, make.kind) == ('python', 'python', 'other')
  assert shortened(train) == ['python', '-m', 'parti_jax.train', "--gin.MODEL_DIR='/tmp/run'",
                              '--gin.STEPS=100', '--gin.STEPS=2']
  assert shortened(bench)[-2:] == ['--gin.STEPS=2', '--steps=1']
  assert substitute(shortened(train)[3], tmp_path) == f"--gin.MODEL_DIR='{tmp_path}/run'"
  assert substitute(bench.words[-1], tmp_path) == f'--checkpoint_dir={tmp_path}/demo_out/tok'
  [script] = split_commands(blocks[2])
  assert script.kind == 'script' and not blocks[2].links
  assert substitute(script.words[1], tmp_path) == '--model_dir=gs://my-bucket/run'
  assert command_problems(['python', '-m', 'parti_jax.generate', '--num_sample=2',
                           '--gin_file=models/parti_tiny.gin'], 'x') == [
      'x: parti_jax.generate has no flag --num_sample (it has '
      f"{sorted(module_flags('parti_jax.generate'))})"]
  assert command_problems(['python', '-m', 'parti_jax.train', '--gin_file=models/nope.gin'],
                          'x') == ['x: no gin file models/nope.gin']
  assert command_problems(['python', '-m', 'parti_jax.nope'], 'x') == ['x: no module parti_jax.nope']


def test_readme_markers_and_blocks_are_covered():
  blocks, problems = readme()
  for block in blocks:
    where = f'README.md:{block.line}'
    if block.language == 'python':
      if block.skip is None and not block.run:
        problems.append(f'{where}: a python block needs `run`, `given CODE` or `skip (REASON)`')
    elif block.language == 'bash':
      if block.run:
        problems.append(f'{where}: `run` and `given` are for python blocks')
      commands = split_commands(block)
      if not commands:
        problems.append(f'{where}: a bash block without commands')
      if block.skip is None:
        for command in commands:
          if command.kind == 'other':
            problems.append(f'{where}: the test cannot run {command.text()!r}: '
                            'mark the block skip (REASON)')
      modules = {c.module for c in commands if c.kind == 'python'}
      for module, _ in block.args:
        if module is not None and module not in modules:
          problems.append(f'{where}: marker arguments for {module}, which the block does not run')
    elif block.skip is not None or block.run or block.args or block.links:
      problems.append(f'{where}: a marker on a {block.language or "plain"} block, which never runs')
    if block.skip is not None and (block.run or block.args or block.links):
      problems.append(f'{where}: a skipped block with other directives')
  assert not problems, '\n'.join(problems)
  runnable = [b for b in blocks if b.language in ('bash', 'python') and b.skip is None]
  assert runnable, 'no README block runs'


def test_readme_modules_and_flags_exist():
  blocks, _ = readme()
  problems, seen = [], 0
  for command in bash_commands(blocks):
    if command.kind == 'python':
      seen += 1
      problems += command_problems(shortened(command), f'README.md:{command.block.line}')
    elif command.kind == 'script':
      script = Path(REPO) / command.words[0]
      if not os.access(script, os.X_OK):
        problems.append(f'README.md:{command.block.line}: {command.words[0]} is not an '
                        'executable script')
      for word in command.words:
        if word.startswith('--gin_file=') and not gin_file_exists(word.partition('=')[2]):
          problems.append(f'README.md:{command.block.line}: no gin file {word}')
  text = README.read_text()
  for words in prose_commands(text):
    seen += 1
    problems += command_problems(words, f'README.md (inline) {shlex.join(words)!r}')
  # Any other mention, e.g. a command cut by a line break outside code.
  for module in set(re.findall(r'python\s+-m\s+(parti_jax(?:\.\w+)+)', text)):
    if importlib.util.find_spec(module) is None:
      problems.append(f'README.md: no module {module}')
  assert seen, 'the README shows no python -m parti_jax command'
  assert not problems, '\n'.join(problems)


@pytest.fixture
def no_real_gcloud(tmp_path):
  """A folder whose `gcloud` fails loudly, for the PATH of the scripts."""
  folder = tmp_path / 'guard'
  folder.mkdir()
  (folder / 'gcloud').write_text('#!/bin/sh\necho "a test reached gcloud $*" >&2\nexit 99\n')
  (folder / 'gcloud').chmod(0o755)
  return folder


def test_readme_tpu_script_commands_dry_run(no_real_gcloud, tmp_path):
  blocks, _ = readme()
  env = {k: v for k, v in environment().items() if k != 'GCLOUD'}
  env['PATH'] = f"{no_real_gcloud}:{env['PATH']}"
  env['TMPDIR'] = str(tmp_path)
  failures, ran = [], 0
  for command in bash_commands(blocks):
    if command.kind != 'script' or command.block.skip is not None:
      continue
    argv = [substitute(w, tmp_path) for w in command.words]
    argv = [str(Path(REPO) / argv[0]), '--dry-run', *argv[1:]]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    ran += 1
    if result.returncode != 0 or not result.stdout.startswith(('+ ', '# ')):
      failures.append(f'README.md:{command.block.line}: {command.text()}\n'
                      f'exit status {result.returncode}, stdout:\n{tail(result.stdout)}\n'
                      f'stderr:\n{tail(result.stderr)}')
  assert not failures, '\n\n'.join(failures)
  assert ran, 'the README shows no tpu_scripts command'


# --- the walk-through -------------------------------------------------------


@pytest.mark.slow
def test_readme_walk_through(tmp_path):
  """Every python command and runnable python block of the README, in order,
  shortened, in one folder (commands read what earlier ones wrote).

  A failing command is reported with its stderr's tail; the walk goes on, so
  one run shows every broken command (those after a failure may fail because
  of it)."""
  blocks, problems = readme()
  assert not problems, '\n'.join(problems)
  env = environment()
  work = tmp_path / 'work'  # the commands' current folder
  work.mkdir()
  failures, timings = [], []
  for block in blocks:
    if block.skip is not None or block.language not in ('bash', 'python'):
      continue
    if block.language == 'python' and not block.run:
      continue
    for path, target in block.links:
      link = Path(substitute(path, tmp_path))
      link.parent.mkdir(parents=True, exist_ok=True)
      link.symlink_to(substitute(target, tmp_path), target_is_directory=True)
    if block.language == 'python':
      script = tmp_path / f'readme_block_{block.line}.py'
      script.write_text(substitute(f'{block.given}\n{block.text}\n', tmp_path))
      runs = [(f'python block at README.md:{block.line}', [sys.executable, str(script)])]
    else:
      runs = []
      for command in split_commands(block):
        if command.kind == 'python':
          words = [substitute(w, tmp_path) for w in shortened(command)]
          runs.append((f'README.md:{block.line}: {command.text()}',
                       [sys.executable, *words[1:]]))
        elif command.kind == 'other':
          failures.append(f'README.md:{block.line}: cannot run {command.text()!r}')
    for name, argv in runs:
      start = time.perf_counter()
      result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                              timeout=900)
      seconds = time.perf_counter() - start
      timings.append(f'{seconds:7.1f} s  {name[:150]}')
      if result.returncode != 0:
        failures.append(f'{name}\nran: {shlex.join(argv)}\nexit status {result.returncode}, '
                        f'stderr:\n{tail(result.stderr)}')
  print('\n'.join(timings))
  assert timings, 'no README command ran'
  assert not failures, '\n\n'.join(failures)
