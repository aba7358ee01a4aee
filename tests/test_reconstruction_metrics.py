"""Reconstruction metrics against scikit-image and by hand."""
import numpy as np
import pytest

from parti_jax.eval import reconstruction

metrics = pytest.importorskip('skimage.metrics', reason='scikit-image is in the test extra')


def _pair(seed, shape=(3, 32, 40, 3)):
  rng = np.random.default_rng(seed)
  target = rng.random(shape)
  noisy = np.clip(target + rng.normal(0, 0.1, shape), 0, 1)
  return noisy, target


def test_psnr_matches_skimage():
  noisy, target = _pair(0)
  ours = reconstruction.psnr(noisy, target)
  theirs = [metrics.peak_signal_noise_ratio(t, n, data_range=1.0) for n, t in zip(noisy, target)]
  np.testing.assert_allclose(ours, theirs, rtol=1e-10)
  assert reconstruction.psnr(target, target)[0] == np.inf


def test_ssim_matches_skimage():
  noisy, target = _pair(1)
  ours = reconstruction.ssim(noisy, target)
  theirs = [metrics.structural_similarity(t, n, data_range=1.0, channel_axis=-1,
                                          gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False)
            for n, t in zip(noisy, target)]
  np.testing.assert_allclose(ours, theirs, rtol=1e-6)
  assert reconstruction.ssim(target[0], target[0]) == pytest.approx(1.0)


def test_uint8_and_float_agree():
  noisy, target = _pair(2)
  as_bytes = np.round(target * 255).astype(np.uint8)
  np.testing.assert_allclose(reconstruction.psnr(noisy, as_bytes),
                             reconstruction.psnr(noisy, as_bytes / 255.0))


def test_ssim_rejects_small_or_mismatched_images():
  with pytest.raises(ValueError, match='at least 11 pixels'):
    reconstruction.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match='shapes differ'):
    reconstruction.ssim(np.zeros((16, 16, 3)), np.zeros((16, 17, 3)))


def test_code_usage_by_hand():
  stats = reconstruction.code_usage(np.array([[0, 0, 1, 1]]), codebook_size=8)
  assert stats['codebook_usage'] == 2 / 8
  assert stats['perplexity'] == pytest.approx(2.0)


class _Rounding:
  """A stand-in tokenizer: codes are pixel values quantized to 4 levels."""
  codebook_size = 4

  def encode(self, images):
    return np.round(images[..., 0].reshape(len(images), -1) / 255 * 3).astype(np.int32)

  def decode(self, ids):
    grey = (ids / 3.0).reshape(len(ids), 16, 16, 1)
    return np.repeat(grey, 3, axis=-1)


def test_reconstruction_metrics_over_batches():
  rng = np.random.default_rng(3)
  grey = rng.integers(0, 256, (5, 16, 16, 1), np.uint8)
  images = np.repeat(grey, 3, axis=-1)
  batches = [images[:3], images[3:]]
  result = reconstruction.reconstruction_metrics(_Rounding(), batches)
  recon = _Rounding().decode(_Rounding().encode(images))
  assert result['examples'] == 5
  assert result['psnr'] == pytest.approx(np.mean(reconstruction.psnr(recon, images)))
  assert result['ssim'] == pytest.approx(np.mean(reconstruction.ssim(recon, images)))
  assert result['codebook_usage'] == 1.0
  with pytest.raises(ValueError, match='no images'):
    reconstruction.reconstruction_metrics(_Rounding(), [])
