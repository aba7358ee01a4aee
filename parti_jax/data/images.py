"""Image bytes from the user's files -> RGB uint8 arrays at the training size.

`decode_image` turns any image Pillow reads into uint8 [H, W, 3], or raises
`BadExample` with a stable reason, so the pipeline can skip and count it:
nothing bad becomes a black image; `image_array` does the same for sources
that give decoded pixels. `resize_and_crop` brings it to a square of
the training resolution; `maybe_flip` is the optional horizontal flip.
"""
import io
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

from parti_jax.data.errors import BadExample

# Pillow's own decompression-bomb limit: it refuses images above twice
# Image.MAX_IMAGE_PIXELS while reading the header. A larger max_pixels than
# this has no effect unless Image.MAX_IMAGE_PIXELS is raised too.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

RESAMPLING = {
    'bicubic': Image.Resampling.BICUBIC,
    'bilinear': Image.Resampling.BILINEAR,
    'lanczos': Image.Resampling.LANCZOS,
    'nearest': Image.Resampling.NEAREST,
    'box': Image.Resampling.BOX,
}
CROPS = ('center', 'random')

# Modes holding 16-bit samples: PNG and TIFF 16-bit greyscale open as 'I;16*',
# older Pillow versions open them as 32-bit 'I' with the same 0..65535 values.
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')
_ALPHA_MODES = ('RGBA', 'RGBa', 'LA', 'La', 'PA')
_WHITE = (255, 255, 255, 255)
# Shrinking first by an integer factor (Image.reduce) and then resampling the
# last step of at most this ratio is nearly indistinguishable from resampling
# all the way, and much faster for large photos.
_REDUCING_GAP = 3.0


def decode_image(data: bytes, key: str, min_side: int = 8,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Decodes an encoded image to uint8 [H, W, 3], upright as its EXIF says.

  Args:
    data: the encoded file (JPEG, PNG, WebP, GIF's first frame, TIFF, ...).
    key: names the example in errors, e.g. its file path.
    min_side: images with a shorter side than this are refused.
    max_pixels: images with more pixels than this are refused from the header,
      before their pixels are decoded.

  Raises:
    BadExample: reason 'empty_file', 'undecodable_image', 'unsupported_mode',
      'image_too_small' or 'image_too_large'.
  """
  if min_side < 1 or max_pixels < 1:
    raise ValueError(f'min_side and max_pixels must be positive, got {min_side}, {max_pixels}')
  if not data:
    raise BadExample('empty_file', key, 'the image file is empty (0 bytes)')
  try:
    # Image.open reads only the header; the pixels are decoded by load().
    with Image.open(io.BytesIO(data)) as image:
      _check_size(image.size, key, min_side, max_pixels)
      image.load()
      return _to_rgb_array(ImageOps.exif_transpose(image), key)
  except Image.DecompressionBombError as e:
    raise BadExample('image_too_large', key, str(e)) from e
  except BadExample:
    raise
  # Pillow's format plugins raise many exception types on corrupt data
  # (OSError, SyntaxError, struct.error, IndexError, ...); each means this one
  # file is unreadable, never that the pipeline should stop.
  except Exception as e:  # pylint: disable=broad-except
    raise BadExample('undecodable_image', key, f'cannot decode the image: {e}') from e


def image_array(pixels, key: str, min_side: int = 8) -> np.ndarray:
  """Decoded pixels from a source that gives arrays (tfds, the shapes) as RGB
  uint8 [H, W, 3], treated like decoded files: grey ([H, W] or [H, W, 1]) is
  repeated, RGBA composited on white.

  Raises:
    BadExample: reason 'unsupported_mode' (not uint8, or not 1, 3 or 4
      channels) or 'image_too_small'.
  """
  pixels = np.asarray(pixels)
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4):
    raise BadExample('unsupported_mode', key, f'an image array of {pixels.dtype} '
                     f'{list(pixels.shape)}; expected uint8 [H, W] or [H, W, 1, 3 or 4]')
  _check_size(pixels.shape[1::-1], key, min_side, DEFAULT_MAX_PIXELS)
  if pixels.shape[-1] == 1:
    return np.repeat(pixels, 3, axis=-1)
  if pixels.shape[-1] == 4:
    return np.array(_composite_on_white(Image.fromarray(pixels, 'RGBA')).convert('RGB'))
  return pixels


def _check_size(size, key: str, min_side: int, max_pixels: int) -> None:
  width, height = size
  if width * height > max_pixels:
    raise BadExample('image_too_large', key, f'image of {width}x{height} pixels is over the '
                     f'limit of {max_pixels} pixels')
  if min(width, height) < min_side:
    raise BadExample('image_too_small', key, f'image of {width}x{height} pixels has a side '
                     f'under {min_side}')


def _to_rgb_array(image: Image.Image, key: str) -> np.ndarray:
  if image.mode in _SIXTEEN_BIT_MODES:
    return _sixteen_bit_to_rgb(image)
  if image.mode == 'F':
    raise BadExample('unsupported_mode', key, "floating-point pixels (mode 'F') have no "
                     'standard range to map to 8 bits')
  if image.mode in _ALPHA_MODES or 'transparency' in image.info:
    image = _composite_on_white(image.convert('RGBA'))
  try:
    return np.array(image.convert('RGB'), dtype=np.uint8)
  except ValueError as e:
    raise BadExample('unsupported_mode', key,
                     f'Pillow cannot convert mode {image.mode!r} to RGB: {e}') from e


def _sixteen_bit_to_rgb(image: Image.Image) -> np.ndarray:
  """Scales 0..65535 to 0..255 (65535 -> 255, 32768 -> 128); Pillow's own
  conversion clips instead, turning most of the range white."""
  samples = np.clip(np.asarray(image).astype(np.float64), 0, 65535)
  grey = np.round(samples * (255 / 65535)).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
  """Transparent pixels become white, not the arbitrary (often black) colour
  stored under them: transparent images such as logos and product photos are
  made to be seen on a white page, and their captions describe them so."""
  return Image.alpha_composite(Image.new('RGBA', rgba.size, _WHITE), rgba)


def resize_and_crop(image: np.ndarray, size: int, crop: str = 'center',
                    rng: Optional[np.random.Generator] = None,
                    resample: str = 'bicubic') -> np.ndarray:
  """Resizes the short side to `size`, keeping the aspect ratio, then crops
  the long side to `size`: uint8 [size, size, 3].

  Args:
    image: uint8 [H, W, 3].
    size: side of the square result.
    crop: 'center' keeps the middle of the long side; 'random' a position drawn
      from `rng`.
    rng: required for the random crop.
    resample: Pillow filter, one of RESAMPLING.
  """
  if crop not in CROPS:
    raise ValueError(f'unknown crop {crop!r}; allowed: {CROPS}')
  if resample not in RESAMPLING:
    raise ValueError(f'unknown resample {resample!r}; allowed: {tuple(RESAMPLING)}')
  if crop == 'random' and rng is None:
    raise ValueError("crop='random' needs an rng")
  if size < 1:
    raise ValueError(f'size must be positive, got {size}')
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f'expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}')
  resized = _resize_short_side(image, size, RESAMPLING[resample])
  top = _crop_start(resized.shape[0] - size, crop, rng)
  left = _crop_start(resized.shape[1] - size, crop, rng)
  return np.ascontiguousarray(resized[top:top + size, left:left + size])


def _resize_short_side(image: np.ndarray, size: int, resample: int) -> np.ndarray:
  height, width = image.shape[:2]
  scale = size / min(height, width)
  # max(): rounding must not take the long side under `size`.
  new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
  if (new_width, new_height) == (width, height):
    return image
  resized = Image.fromarray(image).resize((new_width, new_height), resample=resample,
                                          reducing_gap=_REDUCING_GAP)
  return np.asarray(resized)


def _crop_start(excess: int, crop: str, rng: Optional[np.random.Generator]) -> int:
  if crop == 'center':
    return excess // 2
  return int(rng.integers(0, excess + 1))


def maybe_flip(image: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
  """Flips the image left-right with `probability`.

  Off (probability 0) by default in this project: a flip makes captions such
  as "a red circle to the left of a blue square" false. Turn it on only for
  data whose captions never mention left or right.
  """
  if not 0 <= probability <= 1:
    raise ValueError(f'flip probability must lie in [0, 1], got {probability}')
  # Always draw, so the rng's later draws do not depend on the probability.
  if rng.random() < probability:
    return np.ascontiguousarray(image[:, ::-1])
  return image
