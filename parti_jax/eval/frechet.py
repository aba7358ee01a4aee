"""How far generated images lie from real ones as distributions: the Frechet
distance between Gaussians fitted to network features, and the kernel
distance (KID), over any feature network.

A distance means something only together with the network whose features it
compares, so `compare` names the network in its keys:

  network 'inception_v3_pool3'   'fid', 'kid', 'kid_std': the standard FID
                                 and KID (inception.InceptionV3Features with
                                 the FID weights);
  any other network NAME         'fd_NAME', 'kid_NAME', 'kid_std_NAME'.

Either way 'frechet_distance_network' holds the network's name, and
'examples_a' / 'examples_b' the image counts (with 'kid_examples_a' /
'kid_examples_b', the counts KID drew from). Only numbers under the same key
are comparable.

Frechet distance: Heusel et al. 2017, ||mu1 - mu2||^2 + Tr(S1 + S2 -
2 (S1 S2)^(1/2)). KID: Binkowski et al. 2018, the unbiased squared MMD with
the kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets.
"""
from typing import Dict, Iterable, Protocol, Tuple

import jax
import numpy as np

from parti_jax.eval.reconstruction import to_unit_float

INCEPTION_NETWORK = 'inception_v3_pool3'


class FeatureNetwork(Protocol):
  """Maps images to one feature vector each.

  Attributes:
    name: says which network with which weights and input size, so that
      distances from different networks are never confused.
  """
  name: str

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] (or floats in [0, 1]) images -> features [N, D]."""


class FeatureStatistics:
  """Count, mean and covariance of features seen a batch at a time, in float64;
  optionally the first `keep` features themselves (for KID).

  Sums are taken about the first batch's mean, not zero: the covariance is
  the same, and subtracting two large nearly equal sums loses less precision.
  """

  def __init__(self, keep: int = 0):
    self.keep = keep
    self.count = 0
    self._shift = None
    self._sum = None
    self._outer = None
    self._kept = []

  def update(self, features: np.ndarray) -> None:
    """Adds a batch of features [N, D]."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
      raise ValueError(f'features must be [N, D], got shape {features.shape}')
    if not np.all(np.isfinite(features)):
      raise ValueError('features contain NaN or infinity')
    if not len(features):
      return
    if self._shift is None:
      dim = features.shape[1]
      self._shift = features.mean(axis=0)
      self._sum, self._outer = np.zeros(dim), np.zeros((dim, dim))
    elif features.shape[1] != len(self._shift):
      raise ValueError(f'features have {features.shape[1]} dimensions, earlier batches had '
                       f'{len(self._shift)}')
    centred = features - self._shift
    self._sum += centred.sum(axis=0)
    self._outer += centred.T @ centred
    self.count += len(features)
    room = self.keep - sum(len(f) for f in self._kept)
    if room > 0:
      self._kept.append(features[:room])

  def _require(self, minimum: int) -> None:
    if self.count < minimum:
      raise ValueError(f'need at least {minimum} feature vectors, have {self.count}')

  @property
  def mean(self) -> np.ndarray:
    self._require(1)
    return self._shift + self._sum / self.count

  @property
  def covariance(self) -> np.ndarray:
    """Unbiased (divides by count - 1), as numpy.cov."""
    self._require(2)
    centred_mean = self._sum / self.count
    return (self._outer - self.count * np.outer(centred_mean, centred_mean)) / (self.count - 1)

  @property
  def features(self) -> np.ndarray:
    """The kept features [min(count, keep), D]."""
    self._require(1)
    return np.concatenate(self._kept) if self._kept else np.zeros((0, len(self._shift)))


def _check_finite(name: str, value: np.ndarray) -> None:
  if not np.all(np.isfinite(value)):
    raise ValueError(f'{name} contains NaN or infinity')


def _check_gaussian(name: str, mu: np.ndarray, sigma: np.ndarray) -> None:
  if mu.ndim != 1:
    raise ValueError(f'mu{name} must be a vector, got shape {mu.shape}')
  if sigma.shape != (len(mu), len(mu)):
    raise ValueError(f'sigma{name} must be {len(mu)}x{len(mu)} to match mu{name}, got shape '
                     f'{sigma.shape}')
  _check_finite(f'mu{name}', mu)
  _check_finite(f'sigma{name}', sigma)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Square root of a symmetric positive semi-definite matrix."""
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """Frechet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

  Tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of
  S1^(1/2) S2 S1^(1/2), a symmetric matrix with the same eigenvalues as
  S1 S2: symmetric eigensolvers stay real and accurate where a general
  matrix square root (scipy.linalg.sqrtm) can turn complex on near-singular
  covariances.

  Raises:
    ValueError: shapes that do not match, or NaN or infinite values.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  _check_gaussian('1', mu1, sigma1)
  _check_gaussian('2', mu2, sigma2)
  if mu1.shape != mu2.shape:
    raise ValueError(f'the Gaussians have different dimensions: {len(mu1)} and {len(mu2)}')
  # Covariances are symmetric; rounding in their estimates may not quite be.
  sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
  root1 = _psd_sqrt(sigma1)
  product = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
  trace_root = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
  distance = np.sum((mu1 - mu2)**2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root
  # Rounding can take a zero distance a hair below zero.
  return float(max(distance, 0.0))


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased squared MMD of two equal-sized samples, cubic polynomial kernel."""
  m, dim = x.shape

  def kernel(a, b):
    return (a @ b.T / dim + 1)**3

  k_xx, k_yy = kernel(x, x), kernel(y, y)
  within = ((k_xx.sum() - np.trace(k_xx)) + (k_yy.sum() - np.trace(k_yy))) / (m * (m - 1))
  return float(within - 2 * kernel(x, y).mean())


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray,
                              num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> Tuple[float, float]:
  """Mean and standard deviation of the unbiased squared MMD over random
  subsets (drawn without replacement) of two feature sets [N, D].

  subset_size is capped at the smaller set's size; with one subset that size
  of two equal-sized sets, the result is their exact unbiased MMD^2.

  Raises:
    ValueError: a set with fewer than 2 examples, feature dimensions that
      differ, or NaN or infinite features.
  """
  features1, features2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  for name, features in (('features1', features1), ('features2', features2)):
    if features.ndim != 2:
      raise ValueError(f'{name} must be [N, D], got shape {features.shape}')
    if len(features) < 2:
      raise ValueError(f'KID needs at least 2 examples per set, {name} has {len(features)}')
    _check_finite(name, features)
  if features1.shape[1] != features2.shape[1]:
    raise ValueError(f'feature dimensions differ: {features1.shape[1]} and {features2.shape[1]}')
  size = min(subset_size, len(features1), len(features2))
  rng = np.random.default_rng(seed)
  estimates = [
      _unbiased_mmd2(features1[rng.choice(len(features1), size, replace=False)],
                     features2[rng.choice(len(features2), size, replace=False)])
      for _ in range(num_subsets)]
  return float(np.mean(estimates)), float(np.std(estimates))


def metric_key(metric: str, network_name: str) -> str:
  """The result key of a metric ('fd', 'kid', 'kid_std') measured with a
  network: the plain FID/KID names only for the Inception FID network."""
  if network_name == INCEPTION_NETWORK:
    return 'fid' if metric == 'fd' else metric
  return f'{metric}_{network_name}'


def feature_statistics(network: FeatureNetwork, image_batches: Iterable[np.ndarray],
                       keep: int = 0) -> FeatureStatistics:
  """Statistics of the network's features over batches of images."""
  statistics = FeatureStatistics(keep=keep)
  for images in image_batches:
    statistics.update(network(images))
  return statistics


def compare(features_fn: FeatureNetwork, images_a_batches: Iterable[np.ndarray],
            images_b_batches: Iterable[np.ndarray], kid: bool = True,
            kid_max_examples: int = 10000, kid_subsets: int = 100,
            kid_subset_size: int = 1000) -> Dict[str, object]:
  """Frechet distance (and KID) between two sets of images, under keys that
  name the network (see the module docstring).

  Args:
    features_fn: the feature network.
    images_a_batches, images_b_batches: iterables of uint8 [N, H, W, 3] (or
      [0, 1] float) batches, e.g. real and generated images.
    kid: also measure KID, from the first `kid_max_examples` images of each
      set (their features are held in memory; shuffle the sets if their order
      is not random).
  """
  keep = kid_max_examples if kid else 0
  stats_a = feature_statistics(features_fn, images_a_batches, keep)
  stats_b = feature_statistics(features_fn, images_b_batches, keep)
  name = features_fn.name
  result = {
      metric_key('fd', name): frechet_distance(stats_a.mean, stats_a.covariance, stats_b.mean,
                                               stats_b.covariance),
      'frechet_distance_network': name,
      'examples_a': stats_a.count, 'examples_b': stats_b.count}
  if kid:
    mean, std = kernel_inception_distance(stats_a.features, stats_b.features, kid_subsets,
                                          kid_subset_size)
    result.update({metric_key('kid', name): mean, metric_key('kid_std', name): std,
                   'kid_examples_a': len(stats_a.features),
                   'kid_examples_b': len(stats_b.features)})
  return result


class RandomProjectionNetwork:
  """Features with no weights to download: each image shrunk to
  resolution x resolution pixels and projected onto `dim` fixed random
  directions (Gaussian, drawn from `seed`).

  Its distances are NOT FID and say nothing on the FID scale: they are
  comparable only with each other, from a network of the same name. Cheap
  enough for tests and quick looks at any image size.
  """

  def __init__(self, dim: int = 64, resolution: int = 16, seed: int = 0):
    self.resolution = resolution
    self.name = f'random_projection_{dim}_{resolution}px_seed{seed}'
    inputs = resolution * resolution * 3
    self._projection = (np.random.default_rng(seed).standard_normal((inputs, dim)) /
                        np.sqrt(inputs))

  def __call__(self, images: np.ndarray) -> np.ndarray:
    images = to_unit_float(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected RGB images [N, H, W, 3], got shape {images.shape}')
    shape = (len(images), self.resolution, self.resolution, 3)
    # Antialiased, so that shrinking averages pixels rather than skipping them.
    small = np.asarray(jax.image.resize(images.astype(np.float32), shape, 'linear',
                                        antialias=True), np.float64)
    return (small.reshape(len(images), -1) - 0.5) @ self._projection
