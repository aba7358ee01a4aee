"""Frechet distance, KID and their feature networks, against scipy and by hand."""
import jax
import numpy as np
import pytest
from scipy import linalg

from parti_jax.errors import ConfigError
from parti_jax.eval import frechet, inception
from parti_jax.tools import convert_inception


def _sample_statistics(seed, dim, n=200, shift=0.0):
  """Mean and covariance of n draws from a random correlated Gaussian."""
  rng = np.random.default_rng(seed)
  mixing = rng.standard_normal((dim, dim))
  samples = rng.standard_normal((n, dim)) @ mixing + shift
  return samples.mean(axis=0), np.cov(samples, rowvar=False)


@pytest.mark.parametrize('dim', [2, 16, 64])
def test_frechet_distance_matches_scipy_sqrtm(dim):
  mu1, sigma1 = _sample_statistics(0, dim)
  mu2, sigma2 = _sample_statistics(1, dim, shift=0.5)
  root = linalg.sqrtm(sigma1 @ sigma2).real
  expected = np.sum((mu1 - mu2)**2) + np.trace(sigma1 + sigma2 - 2 * root)
  assert frechet.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_closed_form_for_diagonal_covariances():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
  var1, var2 = rng.random(10) + 0.1, rng.random(10) + 0.1
  expected = np.sum((mu1 - mu2)**2) + np.sum((np.sqrt(var1) - np.sqrt(var2))**2)
  assert frechet.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(
      expected, rel=1e-10)


def test_frechet_distance_is_zero_for_the_same_gaussian_and_symmetric():
  mu1, sigma1 = _sample_statistics(3, 32)
  mu2, sigma2 = _sample_statistics(4, 32)
  assert frechet.frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0, abs=1e-8)
  assert frechet.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(
      frechet.frechet_distance(mu2, sigma2, mu1, sigma1), rel=1e-9)


def test_frechet_distance_rejects_bad_input():
  mu, sigma = _sample_statistics(5, 4)
  with pytest.raises(ValueError, match='different dimensions'):
    frechet.frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])
  with pytest.raises(ValueError, match='sigma2 must be 4x4'):
    frechet.frechet_distance(mu, sigma, mu, sigma[:3])
  with pytest.raises(ValueError, match='mu1 must be a vector'):
    frechet.frechet_distance(sigma, sigma, mu, sigma)
  bad = sigma.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match='sigma1 contains NaN'):
    frechet.frechet_distance(mu, bad, mu, sigma)


def test_streaming_statistics_match_numpy():
  rng = np.random.default_rng(6)
  # Far from zero, where summing raw outer products would lose digits.
  batches = [1000 + rng.standard_normal((n, 8)) for n in (0, 7, 1, 12)]
  statistics = frechet.FeatureStatistics(keep=10)
  for batch in batches:
    statistics.update(batch)
  everything = np.concatenate(batches)
  assert statistics.count == 20
  np.testing.assert_allclose(statistics.mean, everything.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(statistics.covariance, np.cov(everything, rowvar=False),
                             rtol=1e-9, atol=1e-12)
  np.testing.assert_array_equal(statistics.features, everything[:10])
  with pytest.raises(ValueError, match='3 dimensions, earlier batches had 8'):
    statistics.update(np.zeros((2, 3)))
  with pytest.raises(ValueError, match='at least 2'):
    single = frechet.FeatureStatistics()
    single.update(np.zeros((1, 3)))
    _ = single.covariance


def _naive_unbiased_mmd2(x, y):
  dim = x.shape[1]

  def k(a, b):
    return (np.dot(a, b) / dim + 1)**3

  m = len(x)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / m**2


def test_kid_with_one_full_subset_is_the_exact_unbiased_mmd():
  rng = np.random.default_rng(7)
  x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.3
  mean, std = frechet.kernel_inception_distance(x, y, num_subsets=1, subset_size=12)
  assert mean == pytest.approx(_naive_unbiased_mmd2(x, y), rel=1e-10)
  assert std == 0
  # Larger subsets than the smaller set are capped at its size.
  capped, _ = frechet.kernel_inception_distance(x, y[:6], num_subsets=1, subset_size=100)
  assert np.isfinite(capped)


def test_kid_tells_shifted_distributions_apart():
  rng = np.random.default_rng(8)
  a, b = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
  same, same_std = frechet.kernel_inception_distance(a, b, num_subsets=20, subset_size=200)
  shifted, _ = frechet.kernel_inception_distance(a, b + 1.0, num_subsets=20, subset_size=200)
  assert abs(same) < 3 * same_std + 1e-3
  assert shifted > 0.5 and shifted > 20 * abs(same)


def test_kid_rejects_too_few_examples():
  with pytest.raises(ValueError, match='at least 2 examples per set, features2 has 1'):
    frechet.kernel_inception_distance(np.zeros((5, 3)), np.zeros((1, 3)))
  with pytest.raises(ValueError, match='feature dimensions differ'):
    frechet.kernel_inception_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def _image_batches(seed, brightness=0, count=3, size=24):
  rng = np.random.default_rng(seed)
  return [np.clip(rng.integers(0, 200, (8, size, size, 3)) + brightness, 0, 255).astype(np.uint8)
          for _ in range(count)]


def test_random_projection_network_is_deterministic_and_reads_uint8_or_float():
  network = frechet.RandomProjectionNetwork(dim=32, resolution=8, seed=3)
  images = _image_batches(0)[0]
  features = network(images)
  assert features.shape == (8, 32)
  assert network.name == 'random_projection_32_8px_seed3'
  np.testing.assert_allclose(frechet.RandomProjectionNetwork(32, 8, 3)(images / 255.0), features,
                             rtol=1e-5, atol=1e-5)


def test_compare_names_the_network_in_its_keys():
  network = frechet.RandomProjectionNetwork()
  result = frechet.compare(network, _image_batches(0), _image_batches(1, brightness=60),
                           kid_subset_size=10, kid_subsets=5)
  name = network.name
  assert set(result) == {f'fd_{name}', f'kid_{name}', f'kid_std_{name}',
                         'frechet_distance_network', 'examples_a', 'examples_b',
                         'kid_examples_a', 'kid_examples_b'}
  assert result['frechet_distance_network'] == name
  assert result['examples_a'] == result['examples_b'] == 24
  assert result[f'fd_{name}'] > 0 and result[f'kid_{name}'] > 0
  same = frechet.compare(network, _image_batches(0), _image_batches(0), kid=False)
  assert same[f'fd_{name}'] == pytest.approx(0, abs=1e-9)
  assert f'kid_{name}' not in same


def test_compare_says_fid_only_for_the_inception_network():
  class FakeInception:
    name = frechet.INCEPTION_NETWORK
    _projection = frechet.RandomProjectionNetwork()

    def __call__(self, images):
      return self._projection(images)

  result = frechet.compare(FakeInception(), _image_batches(0), _image_batches(1),
                           kid_subset_size=10, kid_subsets=2)
  assert {'fid', 'kid', 'kid_std'} <= set(result)
  assert result['frechet_distance_network'] == 'inception_v3_pool3'
  assert frechet.metric_key('fd', 'random_projection_64_16px_seed0') != 'fid'


def _torch_bilinear(image, out_height, out_width):
  """PyTorch's F.interpolate(mode='bilinear', align_corners=False), written out:
  half-pixel source coordinates, clamped at 0, two taps per axis."""
  def taps(out_size, in_size):
    source = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0)
    low = np.floor(source).astype(int)
    return low, np.minimum(low + 1, in_size - 1), source - low

  rows_low, rows_high, row_weight = taps(out_height, image.shape[0])
  cols_low, cols_high, col_weight = taps(out_width, image.shape[1])
  rows = (image[rows_low] * (1 - row_weight)[:, None, None] +
          image[rows_high] * row_weight[:, None, None])
  return (rows[:, cols_low] * (1 - col_weight)[None, :, None] +
          rows[:, cols_high] * col_weight[None, :, None])


@pytest.mark.parametrize('in_size,out_size', [(8, 13), (37, 299), (20, 7)])
def test_jax_bilinear_resize_matches_pytorch_interpolate(in_size, out_size):
  image = np.random.default_rng(9).random((in_size, in_size, 3)).astype(np.float32)
  ours = jax.image.resize(image, (out_size, out_size, 3), 'bilinear', antialias=False)
  np.testing.assert_allclose(np.asarray(ours), _torch_bilinear(image, out_size, out_size),
                             atol=1e-5)


def test_missing_inception_weights_say_where_and_how():
  with pytest.raises(FileNotFoundError) as error:
    inception.InceptionV3Features.from_weights('/no/such/inception_fid.npz')
  message = str(error.value)
  assert '/no/such/inception_fid.npz' in message
  assert 'parti_jax.tools.convert_inception' in message and 'pt_inception-2015-12-05' in message


def test_random_inception_gives_2048_features_for_any_image_size():
  network = inception.InceptionV3Features(inception.random_variables(0), 'inception_random',
                                          input_size=inception.MIN_INPUT_SIZE, batch_size=2)
  images = np.random.default_rng(10).integers(0, 256, (3, 32, 40, 3), dtype=np.uint8)
  features = network(images)
  assert features.shape == (3, 2048) and np.all(np.isfinite(features))
  np.testing.assert_allclose(network(images[1:2]), features[1:2], rtol=1e-4, atol=1e-5)
  with pytest.raises(ConfigError, match='at least 75'):
    inception.InceptionV3Features(inception.random_variables(0), 'tiny', input_size=64)


def test_inception_loads_converted_weights_at_fid_size(tmp_path):
  variables = inception.random_variables(1)
  path = str(tmp_path / 'inception.npz')
  np.savez(path, **inception.flatten_variables(variables))
  network = inception.InceptionV3Features.from_weights(path, batch_size=1)
  assert network.name == 'inception_v3_pool3'
  features = network(np.full((1, 16, 16, 3), 128, np.uint8))
  assert features.shape == (1, 2048)
  smaller = inception.InceptionV3Features.from_weights(path, input_size=128)
  assert smaller.name == 'inception_v3_pool3_128px'


def _torch_layout(flat):
  """A pytorch-fid-style state dict made from Flax variables by the reverse
  mapping, with the entries the conversion must skip."""
  field = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
  state = {'fc.weight': np.zeros((1008, 2048)), 'fc.bias': np.zeros(1008)}
  for name, value in flat.items():
    _, *path, leaf = name.split('/')
    if leaf == 'kernel':
      state['.'.join(path[:-1] + ['conv', 'weight'])] = value.transpose(3, 2, 0, 1)
    else:
      state['.'.join(path[:-1] + ['bn', field[leaf]])] = value
      state['.'.join(path[:-1] + ['bn', 'num_batches_tracked'])] = np.array(0)
  return state


def test_conversion_maps_the_torch_state_dict_onto_the_flax_tree():
  rng = np.random.default_rng(11)
  shapes = inception.variable_shapes()
  flat = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
  state = _torch_layout(flat)
  assert state['Mixed_7c.branch3x3_2a.conv.weight'].shape == (384, 384, 1, 3)
  converted = convert_inception.convert_state_dict(state)
  tree = inception.unflatten_variables(converted)
  expected = jax.eval_shape(inception.InceptionV3().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 75, 75, 3), np.float32))
  assert jax.tree.structure(tree) == jax.tree.structure(expected)
  assert jax.tree.map(np.shape, tree) == jax.tree.map(lambda leaf: leaf.shape, expected)
  for name, value in flat.items():
    np.testing.assert_array_equal(converted[name], value)


def test_conversion_rejects_other_networks():
  flat = {name: np.zeros(shape, np.float32)
          for name, shape in inception.variable_shapes().items()}
  state = _torch_layout(flat)
  with pytest.raises(ConfigError, match='unexpected entry AuxLogits.fc.weight'):
    convert_inception.convert_state_dict(dict(state, **{'AuxLogits.fc.weight': np.zeros(3)}))
  del state['Mixed_5b.branch_pool.bn.running_var']
  with pytest.raises(ConfigError, match='missing batch_stats/Mixed_5b/branch_pool/bn/var'):
    convert_inception.convert_state_dict(state)
