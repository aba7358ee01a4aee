"""VGG16 perceptual loss: weight files, torchvision conversion, loss properties."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parti_jax.errors import ConfigError
from parti_jax.tokenizer import perceptual

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Threefry's random-bit kernels take seconds each to compile on CPU; rbg's do not.
RBG_KEY = jax.random.key(0, impl='rbg')


def _flatten(params):
  return {f'{layer}/{kind}': np.asarray(value)
          for layer, kinds in params.items() for kind, value in kinds.items()}


@pytest.fixture(scope='module')
def random_params():
  images = jnp.zeros((1, 32, 32, 3))
  return nn.unbox(jax.jit(perceptual.VGG16Features().init)(RBG_KEY, images))['params']


@pytest.fixture(scope='module')
def npz_path(random_params, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('vgg') / 'vgg16.npz')
  np.savez(path, **_flatten(random_params))
  return path


@pytest.fixture(scope='module')
def loss_fn():
  return jax.jit(perceptual.perceptual_loss)


def _images(seed, batch=2):
  return np.random.default_rng(seed).random((batch, 32, 32, 3)).astype(np.float32)


def test_npz_round_trip(random_params, npz_path):
  loaded = perceptual.load_vgg16_params(npz_path)
  expected = _flatten(random_params)
  flat = _flatten(loaded)
  assert sorted(flat) == sorted(expected) == sorted(perceptual.expected_npz_shapes())
  for key, value in expected.items():
    np.testing.assert_array_equal(flat[key], value)


def test_features_are_the_five_relu_layers(random_params):
  features = perceptual.VGG16Features().apply({'params': random_params}, _images(0))
  assert [f.shape for f in features] == [(2, 32, 32, 64), (2, 16, 16, 128), (2, 8, 8, 256),
                                         (2, 4, 4, 512), (2, 2, 2, 512)]


def test_loss_is_zero_for_identical_images_positive_and_symmetric(npz_path, loss_fn):
  params = perceptual.load_vgg16_params(npz_path)
  x, y = _images(1), _images(2)
  assert loss_fn(params, x, x) == 0.0
  xy, yx = loss_fn(params, x, y), loss_fn(params, y, x)
  assert xy.shape == () and xy > 0
  np.testing.assert_allclose(xy, yx, rtol=1e-6)


def test_loss_gradient_is_finite(npz_path):
  params = perceptual.load_vgg16_params(npz_path)
  grad = jax.jit(jax.grad(perceptual.perceptual_loss, argnums=1))(params, _images(3, 1),
                                                                   _images(4, 1))
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_missing_file_names_it_and_how_to_make_it(tmp_path):
  path = str(tmp_path / 'absent.npz')
  with pytest.raises(ConfigError, match='absent.npz.*perceptual convert --torch_checkpoint'):
    perceptual.load_vgg16_params(path)


def test_missing_or_misshapen_key_is_named(random_params, tmp_path):
  flat = _flatten(random_params)
  missing = dict(flat)
  del missing['conv3_2/bias']
  np.savez(tmp_path / 'missing.npz', **missing)
  with pytest.raises(ConfigError, match="missing.npz.*lacks key 'conv3_2/bias'"):
    perceptual.load_vgg16_params(str(tmp_path / 'missing.npz'))

  flat['conv1_2/kernel'] = flat['conv1_2/kernel'][:, :, :, :32]
  np.savez(tmp_path / 'misshapen.npz', **flat)
  with pytest.raises(ConfigError, match="misshapen.npz.*'conv1_2/kernel' has shape"):
    perceptual.load_vgg16_params(str(tmp_path / 'misshapen.npz'))


def test_convert_torchvision_state_dict(tmp_path):
  rng = np.random.default_rng(5)
  state_dict = {'classifier.6.bias': np.zeros(1000, np.float32)}  # Ignored.
  for index, shape in zip(perceptual.TORCHVISION_CONV_INDICES,
                          perceptual.conv_shapes().values()):
    height, width, channels_in, channels_out = shape
    state_dict[f'features.{index}.weight'] = rng.standard_normal(
        (channels_out, channels_in, height, width), np.float32)
    state_dict[f'features.{index}.bias'] = rng.standard_normal(channels_out, np.float32)

  flat = perceptual.convert_torchvision_vgg16(state_dict)
  # features.2 is conv1_2; OIHW [o, i, h, w] lands at HWIO [h, w, i, o].
  np.testing.assert_array_equal(flat['conv1_2/kernel'][2, 0, 5, 7],
                                state_dict['features.2.weight'][7, 5, 2, 0])
  np.testing.assert_array_equal(flat['conv5_3/bias'], state_dict['features.28.bias'])
  np.savez(tmp_path / 'vgg16.npz', **flat)
  params = perceptual.load_vgg16_params(str(tmp_path / 'vgg16.npz'))
  assert params['conv4_1']['kernel'].shape == (3, 3, 256, 512)


def test_convert_rejects_a_state_dict_that_is_not_vgg16():
  with pytest.raises(ConfigError, match='features.0.weight'):
    perceptual.convert_torchvision_vgg16({'features.1.weight': np.zeros((64, 3, 3, 3))})


def test_convert_command_without_torch_says_how_to_install_it(tmp_path):
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
    pytest.skip('torch is installed')
  except ImportError:
    pass
  result = subprocess.run(
      [sys.executable, '-m', 'parti_jax.tokenizer.perceptual', 'convert',
       f'--torch_checkpoint={tmp_path}/vgg16.pth', f'--output={tmp_path}/vgg16.npz'],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      'error: converting VGG16 weights needs PyTorch (only this step does): pip install torch']
