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
