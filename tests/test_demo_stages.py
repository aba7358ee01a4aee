"""The demo's command stages, without running them: what reaches each
subprocess (fast; tests/test_demo.py runs the whole demo, slowly)."""
import subprocess
import sys

import gin
import pytest

from parti_jax import cli, demo, gin_utils
# The entry points the stages run: importing them registers their configurables with gin.
from parti_jax import train  # noqa: F401
from parti_jax.data import pretokenize  # noqa: F401
from parti_jax.tokenizer import train as tokenizer_train  # noqa: F401


@pytest.fixture
def launched(monkeypatch):
  """The (argv, env) of every subprocess the demo starts; each succeeds."""
  calls = []

  def run(argv, env, check):
    calls.append((argv, env))
    return subprocess.CompletedProcess(argv, 0)

  monkeypatch.setattr(demo.subprocess, 'run', run)
  return calls


def test_training_stages_run_with_the_malloc_settings(tmp_path, launched, monkeypatch, capsys):
  for name in demo.TRAINING_MALLOC_ENV:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('PARTI_DEMO_TEST_MARKER', 'kept')
  stages = demo.Demo('smoke', str(tmp_path))
  stages.run_command_stage('tokens', 2)

  assert [argv[1:] for argv, _ in launched] == stages.commands()['tokens']
  assert all(argv[0] == sys.executable for argv, _ in launched)
  for _, env in launched:
    assert {k: env[k] for k in demo.TRAINING_MALLOC_ENV} == demo.TRAINING_MALLOC_ENV
    assert env['PARTI_DEMO_TEST_MARKER'] == 'kept'  # The rest of the environment passes on.
  # The printed commands carry the settings, so a user can rerun them as they ran.
  shown = [line for line in capsys.readouterr().out.splitlines() if 'tokens:' in line]
  assert len(shown) == len(launched)
  assert all('MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 ' in line for line in shown)
  assert stages.done('tokens')


def test_settings_already_in_the_environment_are_kept(tmp_path, launched, monkeypatch, capsys):
  for name in demo.TRAINING_MALLOC_ENV:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('MALLOC_ARENA_MAX', '4')
  demo.Demo('smoke', str(tmp_path)).run_command_stage('parti', 3)
  (_, env), = launched
  assert env['MALLOC_ARENA_MAX'] == '4'
  assert env['MALLOC_MMAP_MAX_'] == '0'
  out = capsys.readouterr().out
  assert 'MALLOC_ARENA_MAX' not in out and 'MALLOC_MMAP_MAX_=0 ' in out


def test_a_failing_stage_is_not_marked_done(tmp_path, monkeypatch):
  monkeypatch.setattr(demo.subprocess, 'run',
                      lambda argv, env, check: subprocess.CompletedProcess(argv, 2))
  stages = demo.Demo('smoke', str(tmp_path))
  with pytest.raises(demo.ConfigError, match="stage 'tokenizer' failed .exit status 2"):
    stages.run_command_stage('tokenizer', 1)
  assert not stages.done('tokenizer')


def _configured(argv, *names):
  """The named gin configurables as the command `argv` would build them."""
  rest, bindings = cli.split_gin_bindings(argv)
  gin_utils.parse([a.split('=', 1)[1] for a in rest if a.startswith('--gin_file=')], bindings)
  try:
    return [getattr(gin_utils, name)() for name in names]
  finally:
    gin.clear_config()


@pytest.mark.parametrize('preset', sorted(demo.PRESETS))
def test_every_stage_sees_the_same_image_size(tmp_path, preset):
  commands = demo.Demo(preset, str(tmp_path)).commands()
  resolution = demo.PRESETS[preset].resolution
  tokenizer, shapes = _configured(commands['tokenizer'][0], 'VitVqganConfig', 'ShapesDataset')
  assert tokenizer.image_size == shapes.resolution == resolution
  for argv in commands['tokens'][2:]:  # Pre-tokenizing renders scenes for the tokenizer.
    parti, shapes = _configured(argv, 'TransformerConfig', 'ShapesDataset')
    assert shapes.resolution == resolution
    assert parti.image_length == tokenizer.num_tokens
  parti, = _configured(commands['parti'][0], 'TransformerConfig')  # From the tokens alone.
  assert parti.image_length == tokenizer.num_tokens
