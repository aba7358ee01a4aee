"""The per-slice run presets (gin_configs/runs/parti_<size>_<slice>.gin) parse
as train.sh passes them, their mesh fills the slice they are named after, the
batch splits over its hosts, data shards and microbatches, and the planner's
figures pasted into each still hold."""
import re
from pathlib import Path

import gin
import pytest

import parti_jax.train as _registers_train  # pylint: disable=unused-import (binds `train`)
from parti_jax import gin_utils
from parti_jax.tools import memory_plan
from tests.conftest import REPO

RUNS = Path(REPO) / 'gin_configs' / 'runs'
PRESETS = sorted(p.stem for p in RUNS.glob('parti_*_v*.gin'))
# HBM per chip, GiB.
HBM_GIB = {'v4': 32, 'v5p': 95, 'v5litepod': 16, 'v6e': 32}


def slice_of(preset: str):
  """(model config, generation, chips, hosts) from a preset's name: v4-N and
  v5p-N count TensorCores (2 a chip, 4 chips a host); v5litepod-N and v6e-N
  count chips (8 on one host, else 4 a host)."""
  match = re.fullmatch(r'(parti_[0-9a-z]+)_(v4|v5p|v5litepod|v6e)_([0-9]+)', preset)
  assert match, f'{preset}: name it parti_<size>_<generation>_<N>'
  model, generation, size = match.group(1), match.group(2), int(match.group(3))
  if generation in ('v4', 'v5p'):
    chips = size // 2
    hosts = max(1, chips // 4)
  else:
    chips = size
    hosts = 1 if chips <= 8 else chips // 4
  return model, generation, chips, hosts


def load(preset: str):
  """Parses the preset with the data file and bindings train.sh adds."""
  gin_utils.parse([f'runs/{preset}.gin', 'data/pretokenized.gin'],
                  ['MODEL_DIR = "gs://bucket/run"', 'TOKENS_DIR = "gs://bucket/tokens"'])
  return (gin_utils.MeshConfig(), gin.query_parameter('%BATCH_SIZE'),
          gin.query_parameter('train.accumulate_steps'))


@pytest.fixture(autouse=True)
def clear_gin():
  yield
  gin.clear_config()


def test_there_are_presets_for_each_mesh_preset():
  assert len(PRESETS) >= 4
  presets = set()
  for preset in PRESETS:
    presets.add(load(preset)[0].preset)
  assert {'data_parallel', 'data_model', 'fsdp_model'} <= presets


@pytest.mark.parametrize('preset', PRESETS)
def test_preset_fits_its_slice(preset):
  model, _, chips, hosts = slice_of(preset)
  mesh, batch_size, accumulate = load(preset)
  sizes = (mesh.data, mesh.fsdp, mesh.model)
  assert all(size > 0 for size in sizes), f'{preset}: pin every mesh axis, got {sizes}'
  assert mesh.data * mesh.fsdp * mesh.model == chips, f'{preset}: {sizes} on {chips} chips'
  assert mesh.axis_sizes(chips) == sizes
  assert batch_size == 8192  # Parti's batch; the presets change only how it is split.
  assert batch_size % hosts == 0
  shards = mesh.data * mesh.fsdp
  assert batch_size % shards == 0
  # Microbatch i takes rows i, i + accumulate, ...: each device's rows stay
  # on it when its share divides by the number of microbatches.
  assert (batch_size // shards) % accumulate == 0
  # The preset's model is the one its name says.
  configured = gin_utils.PartiModel().config
  gin_utils.parse([f'models/{model}.gin'], [])
  assert configured == gin_utils.PartiModel().config


def pasted_figures(preset: str):
  """The planner's rows pasted into the preset's comment: {row: GiB}."""
  text = (RUNS / f'{preset}.gin').read_text()
  rows = re.findall(r'^#   ([a-z_ ]+?) +([0-9]+\.[0-9]{3})$', text, re.MULTILINE)
  return dict(rows)


@pytest.mark.slow
@pytest.mark.parametrize('preset', PRESETS)
def test_pasted_planner_figures_hold_and_fit_the_chip(preset):
  _, generation, chips, _ = slice_of(preset)
  mesh, batch_size, accumulate = load(preset)
  result = memory_plan.plan(gin_utils.PartiModel(), mesh, chips, batch_size // accumulate)
  computed = {}
  for row in memory_plan.format_plan(result).splitlines()[2:]:
    name, value = row.rsplit(None, 1)
    computed[name] = value
  pasted = pasted_figures(preset)
  assert len(pasted) == 7 and pasted == computed
  # The accumulated gradient sum is one more copy of the gradients.
  needed = (result['total_adafactor_bytes'] + result['per_device_bytes']['gradients']) / 2**30
  assert needed < HBM_GIB[generation], f'{preset}: {needed:.1f} GiB a chip'
