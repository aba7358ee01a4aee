"""Checkpointer details not covered by the training job's tests."""
import numpy as np

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
