"""The Colab inference notebook, notebooks/parti_inference.ipynb.

The fast tests read it: valid nbformat, no stored outputs, a papermill-style
`parameters` cell with Colab form fields, and an install cell that installs
nothing when parti_jax is importable. The full run executes it top to bottom
in a fresh ipykernel (this venv's python, the repository on PYTHONPATH) on a
tiny random model, with the settings injected the way papermill does it.
"""
import ast
import json
import os
import re
import subprocess
import sys
import time

import pytest

nbformat = pytest.importorskip('nbformat', reason='the notebook tests need nbformat')

# pylint: disable-next=wrong-import-position
from tests.conftest import REPO, small_config, write_random_tokenizer

NOTEBOOK = os.path.join(REPO, 'notebooks', 'parti_inference.ipynb')
PARAMETERS = ('CHECKPOINT_DIR', 'TOKENIZER_DIR', 'PROMPTS', 'NUM_SAMPLES', 'CFG_SCALE',
              'TEMPERATURE', 'TOP_K', 'TOP_P', 'SEED', 'OUT_DIR', 'BATCH_SIZE')
SLIDERS = ('NUM_SAMPLES', 'CFG_SCALE', 'TEMPERATURE', 'TOP_K', 'TOP_P', 'SEED')
KERNEL = 'parti-jax-test'
SHAPES_PROMPT = 'a small red circle above a large blue square'


def read_notebook():
  return nbformat.read(NOTEBOOK, as_version=4)


def tagged(nb, tag: str) -> int:
  """The index of the one cell tagged `tag`."""
  found = [i for i, cell in enumerate(nb.cells) if tag in cell.metadata.get('tags', [])]
  assert len(found) == 1, f'{len(found)} cells tagged {tag!r}'
  return found[0]


def inject_parameters(nb, **values):
  """Papermill's injection: a code cell tagged `injected-parameters` that
  assigns `values` (as Python literals), right after the `parameters` cell so
  it overrides the defaults; it replaces an earlier injected cell."""
  nb = nbformat.from_dict(json.loads(json.dumps(nb)))  # A copy.
  nb.cells = [c for c in nb.cells if 'injected-parameters' not in c.metadata.get('tags', [])]
  source = '# Parameters\n' + ''.join(f'{name} = {value!r}\n' for name, value in values.items())
  cell = nbformat.v4.new_code_cell(source, id='injected-parameters')
  cell.metadata['tags'] = ['injected-parameters']
  nb.cells.insert(tagged(nb, 'parameters') + 1, cell)
  return nb


def assignments(source: str) -> dict:
  """NAME -> literal value of a cell made only of `NAME = literal` lines."""
  values = {}
  for node in ast.parse(source).body:
    assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
    values[node.targets[0].id] = ast.literal_eval(node.value)
  return values


def test_the_notebook_is_valid_and_saved_without_outputs():
  nb = read_notebook()
  nbformat.validate(nb)
  assert nb.cells[0].cell_type == 'markdown' and nb.cells[0].source.startswith('# ')
  assert nb.metadata.kernelspec.name == 'python3'
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None, cell.id
      compile(cell.source, cell.id, 'exec')  # No IPython magics: it runs as plain Python too.


def test_the_parameters_cell_holds_the_settings_as_colab_form_fields():
  nb = read_notebook()
  index = tagged(nb, 'parameters')
  assert index < [i for i, c in enumerate(nb.cells)
                 if c.cell_type == 'code' and 'Pipeline.from_checkpoint' in c.source][0]
  source = nb.cells[index].source
  values = assignments(source)
  assert set(PARAMETERS) <= set(values)
  assert values['CHECKPOINT_DIR'] == 'demo_out/work/default/parti/params'
  assert values['TOKENIZER_DIR'] == 'demo_out/work/default/tokenizer/checkpoints'
  lines = {line.split(' = ')[0]: line for line in source.splitlines()}
  assert '# @param {type:"string"}' in lines['PROMPTS']
  for name in SLIDERS:
    form = re.search(r'# @param \{type:"slider", min:([-\d.]+), max:([-\d.]+), step:([\d.]+)\}$',
                     lines[name])
    assert form, lines[name]
    low, high, step = map(float, form.groups())
    assert low <= values[name] <= high and step > 0, lines[name]
  # The CLI's defaults, so the notebook and `python -m parti_jax.generate` agree.
  assert (values['CFG_SCALE'], values['TEMPERATURE'], values['TOP_K'], values['TOP_P']) == (
      1.2, 1.0, 0, 1.0)


def test_the_notebook_names_the_versions_setup_py_pins():
  with open(os.path.join(REPO, 'setup.py'), encoding='utf-8') as f:
    setup = f.read()
  nb = read_notebook()
  install = nb.cells[tagged(nb, 'install')].source
  pinned = ast.literal_eval(re.search(r'^PINNED = (\{.*?\})$', install, re.M | re.S).group(1))
  jax_pin = re.search(r"^JAX = '([^']+)'", setup, re.M)
  checked = 0
  for package, version in pinned.items():
    found = re.search(rf"'{package}==([\w.]+)'", setup)
    expected = found.group(1) if found else (
        jax_pin.group(1) if package in ('jax', 'jaxlib') and jax_pin else None)
    if expected is not None:
      assert version == expected, (package, version, expected)
      assert version in nb.cells[tagged(nb, 'install') - 1].source  # The markdown says so.
      checked += 1
  assert checked >= 4


class _NoPip:
  """Stands in for subprocess.run: records the command instead of running pip."""

  def __init__(self):
    self.commands = []

  def __call__(self, command, **kwargs):
    self.commands.append(command)
    return subprocess.CompletedProcess(command, 0)


def run_install_cell(monkeypatch, cwd, importable: bool, **overrides):
  """Executes the install cell in `cwd` with `overrides` of its assignments,
  parti_jax importable or not; returns the pip commands it would run and the
  cell's namespace."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  nb = read_notebook()
  source = nb.cells[tagged(nb, 'install')].source
  for name, value in overrides.items():
    source, count = re.subn(rf'^{name} = .*$', f'{name} = {value!r}', source, flags=re.M)
    assert count == 1, name
  pip = _NoPip()
  monkeypatch.setattr(subprocess, 'run', pip)
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: (
      real_find_spec(name, *a) if importable or name != 'parti_jax' else None))
  monkeypatch.setattr(sys, 'path', list(sys.path))
  monkeypatch.chdir(cwd)
  namespace = {'__name__': '__main__'}
  exec(compile(source, 'install', 'exec'), namespace)  # pylint: disable=exec-used
  return pip.commands, namespace


def test_the_install_cell_installs_nothing_when_parti_jax_is_importable(monkeypatch, tmp_path,
                                                                        capsys):
  commands, _ = run_install_cell(monkeypatch, tmp_path, importable=True)
  assert commands == [] and 'parti_jax is already importable' in capsys.readouterr().out


def test_the_install_cell_uses_the_checkout_it_lies_in(monkeypatch, tmp_path, capsys):
  (tmp_path / 'parti_jax').mkdir()
  (tmp_path / 'parti_jax' / '__init__.py').write_text('')
  (tmp_path / 'setup.py').write_text('')
  (tmp_path / 'notebooks').mkdir()
  commands, namespace = run_install_cell(monkeypatch, tmp_path / 'notebooks', importable=False)
  assert commands == [] and sys.path[0] == str(tmp_path) == namespace['CHECKOUT']
  assert f'using the checkout at {tmp_path}' in capsys.readouterr().out
  assert namespace['find_checkout'](str(tmp_path.parent)) is None


def test_the_install_cell_installs_the_pinned_tag(monkeypatch, tmp_path):
  with pytest.raises(ValueError, match='REPO_URL is still the placeholder'):
    run_install_cell(monkeypatch, tmp_path, importable=False)
  with pytest.raises(ModuleNotFoundError, match='INSTALL is False'):
    run_install_cell(monkeypatch, tmp_path, importable=False, INSTALL=False)
  commands, namespace = run_install_cell(
      monkeypatch, tmp_path, importable=False, REPO_URL='https://github.com/example/parti_jax',
      ACCELERATOR='gpu')
  assert commands == [[sys.executable, '-m', 'pip', 'install', '-q',
                       f'parti-jax[gpu] @ git+https://github.com/example/parti_jax@'
                       f'{namespace["REF"]}']]
  assert namespace['pip_requirement']('cpu').startswith('parti-jax @ git+')


def test_injected_parameters_follow_the_parameters_cell():
  nb = read_notebook()
  index = tagged(nb, 'parameters')
  once = inject_parameters(nb, SEED=3, PROMPTS='a cat')
  twice = inject_parameters(once, SEED=4)
  assert len(twice.cells) == len(nb.cells) + 1
  injected = twice.cells[index + 1]
  assert injected.metadata.tags == ['injected-parameters']
  assert assignments(injected.source) == {'SEED': 4}
  nbformat.validate(twice)


# The full run.

def cell_execution_error():
  """nbclient's error for a failing cell (nbclient is imported only where the
  notebook runs, so the tests above need nbformat alone)."""
  from nbclient.exceptions import CellExecutionError  # pylint: disable=import-outside-toplevel
  return CellExecutionError


def skip_unless_a_kernel_can_run():
  pytest.importorskip('nbclient', reason='running the notebook needs nbclient')
  pytest.importorskip('ipykernel', reason='running the notebook needs ipykernel')


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """A random model export and tokenizer, as tests/test_generate.py builds them."""
  skip_unless_a_kernel_can_run()
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from parti_jax import export  # pylint: disable=import-outside-toplevel
  from parti_jax.models import PartiModel  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp('notebook')
  write_random_tokenizer(root / 'tokenizer', image_size=16, patch_size=4, codebook_size=64)
  cfg = small_config(text_vocab_size=300)  # The byte vocabulary: 259 ids.
  params = nn.unbox(PartiModel(cfg).init_variables(jax.random.key(0)))['params']
  export.export_params(str(root / 'model'), 1, params, cfg, {export.VOCABULARY_KEY: None})
  return root


@pytest.fixture
def kernel(tmp_path, monkeypatch):
  """A kernel spec, found through JUPYTER_PATH, that starts ipykernel with this
  python, the repository importable and JAX on one CPU device."""
  skip_unless_a_kernel_can_run()
  spec = tmp_path / 'jupyter' / 'kernels' / KERNEL
  spec.mkdir(parents=True)
  env = dict(PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])),
             JAX_PLATFORMS='cpu', XLA_FLAGS='', IPYTHONDIR=str(tmp_path / 'ipython'),
             TF_CPP_MIN_LOG_LEVEL='2')
  (spec / 'kernel.json').write_text(json.dumps(dict(
      argv=[sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      display_name='parti_jax tests', language='python', env=env)))
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  return KERNEL


def execute(nb, kernel_name: str, cwd) -> None:
  """Runs `nb` top to bottom in `cwd`, filling in its outputs; raises
  CellExecutionError at the first cell that fails."""
  import nbclient  # pylint: disable=import-outside-toplevel
  client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=300,
                                   resources={'metadata': {'path': str(cwd)}})
  client.execute()


def test_the_notebook_runs_on_cpu_and_saves_its_images(checkpoints, kernel, tmp_path):
  out = tmp_path / 'samples'
  nb = inject_parameters(
      read_notebook(), CHECKPOINT_DIR=str(checkpoints / 'model'),
      TOKENIZER_DIR=str(checkpoints / 'tokenizer'), PROMPTS=f'{SHAPES_PROMPT} | a cat',
      NUM_SAMPLES=2, SEED=3, TOP_K=10_000, BATCH_SIZE=4, OUT_DIR=str(out))
  start = time.time()
  execute(nb, kernel, tmp_path)
  print(f'notebook ran in {time.time() - start:.1f} s')
  outputs = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert 'skipping the install' in text and '1 cpu device(s)' in text
  assert 'using all of them' in text  # TOP_K above the 64 codes.
  assert "not reranked: the shapes_judge scorer reads only shapes prompts, not 'a cat'" in text
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 3  # Two grids, and the shapes prompt's again when reranked.
  record = json.loads((out / 'generations.json').read_text())
  assert record['settings']['prompts'] == [SHAPES_PROMPT, 'a cat']
  assert record['settings']['top_k'] == 0 and record['settings']['seed'] == 3
  assert record['settings']['scorer'] == 'shapes_judge'
  shapes, cat = record['generations']
  assert sorted(shapes['sample_indices']) == [0, 1] and cat['sample_indices'] == [0, 1]
  assert shapes['scores'] == sorted(shapes['scores'], reverse=True) and cat['scores'] is None
  for generation in record['generations']:
    for name in generation['files']:
      assert (out / name).read_bytes().startswith(b'\x89PNG')
  assert (out / 'p0000_grid.png').exists() and (out / 'p0001_grid.png').exists()


def test_a_missing_checkpoint_stops_the_notebook_with_a_plain_message(checkpoints, kernel,
                                                                      tmp_path):
  missing = tmp_path / 'no_such_model'
  nb = inject_parameters(read_notebook(), CHECKPOINT_DIR=str(missing),
                         TOKENIZER_DIR=str(checkpoints / 'tokenizer'),
                         OUT_DIR=str(tmp_path / 'samples'))
  with pytest.raises(cell_execution_error()) as raised:
    execute(nb, kernel, tmp_path)
  error = raised.value
  assert error.ename == 'CheckpointNotFound'
  assert error.evalue.startswith(f"checkpoint directory not found: CHECKPOINT_DIR = '{missing}'. ")
  assert 'TOKENIZER_DIR =' not in error.evalue and 'make demo' in error.evalue
  # The settings cell's check stops the run before anything loads (or creates the directory).
  assert 'from parti_jax' not in error.args[0].split('------------------')[1]
  assert not missing.exists() and not (tmp_path / 'samples').exists()


def test_a_model_dir_instead_of_its_export_is_reported_with_a_hint(checkpoints, kernel,
                                                                    tmp_path):
  run = tmp_path / 'run'  # MODEL_DIR: the export lies in MODEL_DIR/params.
  run.mkdir()
  (run / 'params').symlink_to(checkpoints / 'model')
  nb = inject_parameters(read_notebook(), CHECKPOINT_DIR=str(run),
                         TOKENIZER_DIR=str(checkpoints / 'tokenizer'))
  with pytest.raises(cell_execution_error()) as raised:
    execute(nb, kernel, tmp_path)
  assert raised.value.ename == 'ConfigError'
  assert raised.value.evalue == (f'could not load the model: no Parti model checkpoint in {run} '
                                 f"(did you mean CHECKPOINT_DIR = '{run / 'params'}'?)")
