"""How faithfully the image tokenizer reconstructs images: PSNR, SSIM, and how
it uses its codebook (usage, perplexity), over a whole dataset.

PSNR and SSIM follow the usual definitions (SSIM: Wang et al. 2004 with an
11x11 Gaussian window of sigma 1.5, averaged over channels), checked against
scikit-image in the tests. Images are floats in [0, 1] or uint8.
"""
from typing import Dict, Iterable

import numpy as np
from scipy import ndimage

from parti_jax.data.shapes import ShapesDataset

# Real images for reconstruction and Frechet distance: a seed neither training
# (0), training-time evaluation (1) nor the evaluation prompts (2, 3) use.
HELDOUT_SHAPES_SEED = 12345
_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # Window radius 5: 11x11.
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def to_unit_float(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] or float [0, 1] images -> float64 in [0, 1]."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float64) / 255.0
  return images.astype(np.float64)


def psnr(reconstructions: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Peak signal-to-noise ratio in dB of each image [..., H, W, C] (peak 1);
  identical images get +inf."""
  recon, target = to_unit_float(reconstructions), to_unit_float(targets)
  mse = np.mean((recon - target)**2, axis=(-3, -2, -1))
  with np.errstate(divide='ignore'):
    return 10 * np.log10(1.0 / mse)


def _ssim_one(a: np.ndarray, b: np.ndarray) -> float:
  """SSIM of one [H, W, C] pair in [0, 1], averaged over channels."""
  def blur(x):
    return ndimage.gaussian_filter(x, _SSIM_SIGMA, truncate=_SSIM_TRUNCATE, mode='reflect')

  radius = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)
  if min(a.shape[:2]) < 2 * radius + 1:
    raise ValueError(f'SSIM needs images of at least {2 * radius + 1} pixels a side, '
                     f'got {a.shape[:2]}')
  c1, c2 = (_SSIM_K1)**2, (_SSIM_K2)**2
  values = []
  for channel in range(a.shape[-1]):
    x, y = a[..., channel], b[..., channel]
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    # Border pixels see the reflected image through the window: left out.
    values.append(ssim_map[radius:-radius, radius:-radius].mean())
  return float(np.mean(values))


def ssim(reconstructions: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Structural similarity of each image pair [N, H, W, C] (or one [H, W, C])."""
  recon, target = to_unit_float(reconstructions), to_unit_float(targets)
  if recon.shape != target.shape:
    raise ValueError(f'shapes differ: {recon.shape} and {target.shape}')
  if recon.ndim == 3:
    return np.asarray(_ssim_one(recon, target))
  return np.array([_ssim_one(r, t) for r, t in zip(recon, target)])


def code_usage(codes: np.ndarray, codebook_size: int) -> Dict[str, float]:
  """Share of the codebook used at least once, and the perplexity (exp of the
  entropy) of the code histogram."""
  counts = np.bincount(np.asarray(codes).reshape(-1), minlength=codebook_size)
  probs = counts[counts > 0] / counts.sum()
  return {'codebook_usage': float(np.mean(counts > 0)),
          'perplexity': float(np.exp(-np.sum(probs * np.log(probs))))}


def reconstruction_metrics(tokenizer, image_batches: Iterable[np.ndarray]) -> Dict[str, float]:
  """Mean PSNR and SSIM of the tokenizer's reconstructions, with its codebook
  usage and perplexity over every code it chose, for batches of uint8 images.

  Args:
    tokenizer: has encode(images) -> ids, decode(ids) -> [0, 1] images and
      codebook_size (tokenizer.api.ImageTokenizer).
    image_batches: uint8 [N, H, W, 3] arrays.
  """
  psnrs, ssims, codes = [], [], []
  for images in image_batches:
    ids = np.asarray(tokenizer.encode(images))
    recon = np.asarray(tokenizer.decode(ids))
    psnrs.append(psnr(recon, images))
    ssims.append(ssim(recon, images))
    codes.append(ids)
  if not codes:
    raise ValueError('no images to measure reconstruction on')
  return {'psnr': float(np.mean(np.concatenate(psnrs))),
          'ssim': float(np.mean(np.concatenate(ssims))),
          **code_usage(np.concatenate(codes), tokenizer.codebook_size),
          'examples': int(sum(len(c) for c in codes))}


def heldout_shapes(resolution: int, count: int, batch: int = 64) -> Iterable[np.ndarray]:
  """Batches of uint8 shapes images that no run trains on."""
  data = ShapesDataset(seed=HELDOUT_SHAPES_SEED, resolution=resolution, split='all')
  for start in range(0, count, batch):
    yield np.stack([data.example(i)['image'] for i in range(start, min(start + batch, count))])
