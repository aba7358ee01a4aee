"""Checkpointer details not covered by the training job's tests."""
import logging
import os

import numpy as np
import pytest

from parti_jax import checkpoints


def test_a_relative_directory_works(tmp_path, monkeypatch):
  """orbax only takes absolute paths; users type relative ones (the demo does)."""
  monkeypatch.chdir(tmp_path)
  writer = checkpoints.Checkpointer('runs/relative')
  writer.save(3, {'params': {'w': np.arange(4.0)}}, {'note': 'hi'})
  writer.close()
  reader = checkpoints.Checkpointer('runs/relative')
  assert reader.directory == str(tmp_path / 'runs' / 'relative')
  step, items, metadata = reader.restore_latest({'params': {'w': np.zeros(4)}})
  reader.close()
  assert step == 3 and metadata == {'note': 'hi'}
  np.testing.assert_array_equal(items['params']['w'], np.arange(4.0))


def test_exporting_a_step_again_is_a_no_op(tmp_path):
  """A finished training run relaunched (say after a lost connection) exports
  its final step again: that must neither fail nor change the export."""
  from parti_jax import export  # pylint: disable=import-outside-toplevel
  from tests.conftest import small_config  # pylint: disable=import-outside-toplevel
  cfg = small_config()
  export.export_params(str(tmp_path), 5, {'w': np.ones(3)}, cfg)
  export.export_params(str(tmp_path), 5, {'w': np.zeros(3)}, cfg)
  reader = checkpoints.Checkpointer(str(tmp_path))
  restored = reader.restore({'params': {'w': np.zeros(3)}})
  reader.close()
  np.testing.assert_array_equal(restored['params']['w'], np.ones(3))


def _truncate_largest_file(directory) -> None:
  files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)


def test_a_damaged_latest_step_is_skipped_then_replaced(tmp_path, caplog):
  """restore_latest warns and falls back past a truncated step; saving that
  step again replaces it; when every step is damaged, the error is raised.
  (tests/test_train.py runs the same through the training job, -m slow.)"""
  abstract = {'params': {'w': np.zeros(1000)}}
  writer = checkpoints.Checkpointer(str(tmp_path))
  for step in (1, 2):
    writer.save(step, {'params': {'w': np.full(1000, float(step))}}, {'step': step})
  writer.close()
  _truncate_largest_file(tmp_path / '2' / 'params')

  reader = checkpoints.Checkpointer(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    step, items, metadata = reader.restore_latest(abstract)
  assert step == 1 and metadata == {'step': 1}
  np.testing.assert_array_equal(items['params']['w'], np.full(1000, 1.0))
  assert f'checkpoint {tmp_path}/2 is damaged and is skipped' in caplog.text
  reader.save(2, {'params': {'w': np.full(1000, 7.0)}}, {'step': 2})
  reader.wait()
  step, items, _ = reader.restore_latest(abstract)
  assert step == 2
  np.testing.assert_array_equal(items['params']['w'], np.full(1000, 7.0))
  reader.close()

  for damaged in ('1', '2'):
    _truncate_largest_file(tmp_path / damaged / 'params')
  with pytest.raises(Exception):  # orbax's own read error, whichever it is.
    checkpoints.Checkpointer(str(tmp_path)).restore_latest(abstract)
