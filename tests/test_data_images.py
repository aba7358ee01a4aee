"""Image decoding: bad files refused with their reason, every pixel format to RGB,
EXIF orientation, resize-and-crop and the optional flip."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from parti_jax.data import images
from parti_jax.data.errors import BadExample


def encode(image: Image.Image, fmt: str = 'PNG', **options) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt, **options)
  return buffer.getvalue()


def noise_jpeg(size: int = 64, seed: int = 0) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
  return encode(Image.fromarray(pixels), 'JPEG', quality=90)


def bilevel_png(width: int, height: int) -> bytes:
  """A valid all-black 1-bit PNG of any size, compressed row by row so that the
  whole image is never in memory: 20000x20000 takes about 50 KB."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

  header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale.
  row = bytes(1 + (width + 7) // 8)  # Filter type 0, then all bits 0.
  compressor = zlib.compressobj(9)
  pixels = b''.join(compressor.compress(row) for _ in range(height)) + compressor.flush()
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', pixels)
          + chunk(b'IEND', b''))


def refusal(data: bytes, **options) -> BadExample:
  with pytest.raises(BadExample) as caught:
    images.decode_image(data, 'some/file.jpg', **options)
  assert 'some/file.jpg' in str(caught.value)
  return caught.value


def test_rgb_png_decodes_exactly():
  pixels = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
  decoded = images.decode_image(encode(Image.fromarray(pixels)), 'a.png')
  assert decoded.dtype == np.uint8 and decoded.shape == (12, 16, 3)
  np.testing.assert_array_equal(decoded, pixels)


def test_zero_bytes_is_an_empty_file():
  assert refusal(b'').reason == 'empty_file'


def test_truncated_jpeg_is_refused_not_padded_with_grey():
  whole = noise_jpeg()
  assert images.decode_image(whole, 'whole.jpg').shape == (64, 64, 3)
  assert refusal(whole[:len(whole) // 2]).reason == 'undecodable_image'


def test_text_named_jpg_is_undecodable():
  assert refusal(b'this is a caption, not a picture\n').reason == 'undecodable_image'


def test_images_under_the_minimum_side_are_too_small():
  assert refusal(encode(Image.new('RGB', (1, 1)))).reason == 'image_too_small'
  assert refusal(encode(Image.new('RGB', (7, 30)))).reason == 'image_too_small'
  assert images.decode_image(encode(Image.new('RGB', (8, 30))), 'ok.png').shape == (30, 8, 3)
  assert images.decode_image(encode(Image.new('RGB', (2, 2))), 'ok.png', min_side=2).size == 12


def test_huge_png_is_refused_before_its_pixels_are_decoded(monkeypatch):
  # Decoding would raise here, and decode_image would then report
  # 'undecodable_image' instead of 'image_too_large'.
  def no_decoding(self):
    raise AssertionError('pixels decoded')
  monkeypatch.setattr(PngImagePlugin.PngImageFile, 'load', no_decoding)
  huge = bilevel_png(20000, 20000)
  assert len(huge) < 1_000_000
  error = refusal(huge)  # Past Pillow's own limit: its DecompressionBombError.
  assert error.reason == 'image_too_large'
  error = refusal(bilevel_png(2000, 1000), max_pixels=1_000_000)  # Past only ours.
  assert error.reason == 'image_too_large' and '2000x1000' in str(error)


def test_bilevel_image_becomes_black_and_white():
  assert not images.decode_image(bilevel_png(10, 9), 'black.png').any()
  bilevel = Image.new('1', (8, 8), 0)
  bilevel.putpixel((3, 2), 1)
  decoded = images.decode_image(encode(bilevel), 'bits.png')
  assert decoded[2, 3].tolist() == [255, 255, 255] and decoded.sum() == 3 * 255


def test_grayscale_becomes_equal_rgb():
  decoded = images.decode_image(encode(Image.new('L', (8, 8), 77)), 'grey.png')
  assert decoded.shape == (8, 8, 3) and (decoded == 77).all()


def test_palette_image_takes_its_palette_colours():
  palette = Image.new('P', (8, 8), 1)
  palette.putpalette([0, 0, 0, 200, 30, 10])
  decoded = images.decode_image(encode(palette), 'palette.png')
  assert (decoded == [200, 30, 10]).all()


def test_transparent_palette_entry_becomes_white():
  palette = Image.new('P', (8, 8), 0)
  palette.putpalette([0, 0, 0, 200, 30, 10])
  palette.putpixel((5, 5), 1)
  decoded = images.decode_image(encode(palette, transparency=0), 'logo.png')
  assert decoded[0, 0].tolist() == [255, 255, 255]
  assert decoded[5, 5].tolist() == [200, 30, 10]


def test_rgba_is_composited_onto_white():
  rgba = np.zeros((8, 8, 4), np.uint8)  # Transparent black.
  rgba[0, 0] = [250, 0, 0, 255]
  rgba[0, 1] = [250, 0, 0, 128]
  decoded = images.decode_image(encode(Image.fromarray(rgba, 'RGBA')), 'logo.png')
  assert decoded[5, 5].tolist() == [255, 255, 255]
  assert decoded[0, 0].tolist() == [250, 0, 0]
  np.testing.assert_allclose(decoded[0, 1], [252, 127, 127], atol=2)


def test_grey_with_alpha_is_composited_onto_white():
  grey_alpha = Image.new('LA', (8, 8), (40, 0))
  grey_alpha.putpixel((1, 1), (40, 255))
  decoded = images.decode_image(encode(grey_alpha), 'la.png')
  assert decoded[0, 0].tolist() == [255, 255, 255] and decoded[1, 1].tolist() == [40, 40, 40]


def test_cmyk_becomes_rgb():
  cmyk = Image.new('CMYK', (8, 8), (0, 255, 255, 0))
  cmyk.putpixel((0, 0), (0, 0, 0, 255))
  decoded = images.decode_image(encode(cmyk, 'TIFF'), 'print.tif')
  assert decoded[4, 4].tolist() == [255, 0, 0] and decoded[0, 0].tolist() == [0, 0, 0]


def test_sixteen_bit_is_scaled_not_clipped():
  values = np.tile(np.array([0, 257, 32768, 65535], np.uint16), (8, 2))
  sixteen = Image.fromarray(values)
  assert sixteen.mode.startswith('I;16')
  decoded = images.decode_image(encode(sixteen), 'depth.png')
  assert decoded[0, :4, 0].tolist() == [0, 1, 128, 255]
  assert (decoded[..., 0] == decoded[..., 2]).all()


def test_32_bit_integer_tiff_is_read_as_sixteen_bit_samples():
  values = np.tile(np.array([0, 32768, 65535, 70000], np.int32), (8, 2))
  decoded = images.decode_image(encode(Image.fromarray(values), 'TIFF'), 'depth.tif')
  assert decoded[0, :4, 1].tolist() == [0, 128, 255, 255]


def test_float_image_is_an_unsupported_mode():
  floats = Image.fromarray(np.full((8, 8), 0.5, np.float32))
  assert refusal(encode(floats, 'TIFF')).reason == 'unsupported_mode'


def test_exif_orientation_is_applied():
  wide = Image.new('RGB', (16, 8), (0, 0, 255))
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotated: shown 90 degrees clockwise.
  decoded = images.decode_image(encode(wide, 'JPEG', exif=exif), 'phone.jpg')
  assert decoded.shape == (16, 8, 3)


def thirds(height: int, width: int) -> np.ndarray:
  """Red first quarter, green middle half, blue last quarter along the width."""
  image = np.zeros((height, width, 3), np.uint8)
  image[:, :width // 4] = [255, 0, 0]
  image[:, width // 4:width - width // 4] = [0, 255, 0]
  image[:, width - width // 4:] = [0, 0, 255]
  return image


@pytest.mark.parametrize('resample', sorted(images.RESAMPLING))
@pytest.mark.parametrize('height,width', [(30, 50), (50, 30), (8, 12), (16, 16), (300, 17)])
def test_resize_and_crop_gives_the_square_size(height, width, resample):
  image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
  result = images.resize_and_crop(image, 16, resample=resample)
  assert result.shape == (16, 16, 3) and result.dtype == np.uint8


def test_center_crop_keeps_the_middle_of_landscape_and_portrait():
  landscape = thirds(20, 40)  # -> 10x20, then the middle 10 columns: all green.
  assert (images.resize_and_crop(landscape, 10, resample='nearest') == [0, 255, 0]).all()
  portrait = landscape.transpose(1, 0, 2)
  assert (images.resize_and_crop(portrait, 10, resample='nearest') == [0, 255, 0]).all()


def test_resize_keeps_the_aspect_ratio():
  # A 40x20 picture of a centred square: after resizing the short side to 10
  # and cropping, the square must still be square.
  image = np.zeros((20, 40, 3), np.uint8)
  image[5:15, 15:25] = 255
  result = images.resize_and_crop(image, 10, resample='nearest')
  rows, cols = np.nonzero(result[..., 0])
  assert rows.max() - rows.min() == cols.max() - cols.min() == 4


def test_random_crop_is_deterministic_for_a_seeded_rng():
  image = np.random.default_rng(2).integers(0, 256, (16, 64, 3), dtype=np.uint8)

  def crop(seed):
    return images.resize_and_crop(image, 16, crop='random', rng=np.random.default_rng(seed))

  np.testing.assert_array_equal(crop(7), crop(7))
  distinct = {crop(seed).tobytes() for seed in range(10)}
  assert len(distinct) > 1
  # Every random crop is a window of the resized image.
  assert all(any(np.array_equal(crop(seed), image[:, left:left + 16]) for left in range(49))
             for seed in range(3))


def test_resize_and_crop_rejects_unknown_options():
  image = np.zeros((8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match="'center', 'random'"):
    images.resize_and_crop(image, 4, crop='middle')
  with pytest.raises(ValueError, match='bicubic.*lanczos'):
    images.resize_and_crop(image, 4, resample='cubic')
  with pytest.raises(ValueError, match='rng'):
    images.resize_and_crop(image, 4, crop='random')
  with pytest.raises(ValueError, match=r'uint8 \[H, W, 3\]'):
    images.resize_and_crop(np.zeros((8, 8), np.uint8), 4)


def test_flip_happens_with_its_probability_only():
  image = thirds(4, 8)
  flipped = images.maybe_flip(image, np.random.default_rng(0), 1.0)
  np.testing.assert_array_equal(flipped, image[:, ::-1])
  np.testing.assert_array_equal(images.maybe_flip(image, np.random.default_rng(0), 0.0), image)
  rng = np.random.default_rng(3)
  flips = sum(images.maybe_flip(image, rng, 0.5)[0, 0, 2] == 255 for _ in range(200))
  assert 60 < flips < 140
  with pytest.raises(ValueError, match='probability'):
    images.maybe_flip(image, rng, 1.5)


def test_decoded_arrays_become_rgb_like_decoded_files():
  """Sources that give pixels (tfds) get the same treatment as files: grey
  repeated, RGBA on white, wrong types refused with their shape."""
  grey = np.arange(100, dtype=np.uint8).reshape(10, 10)
  for pixels in (grey, grey[..., None]):
    out = images.image_array(pixels, 'k')
    assert out.shape == (10, 10, 3) and (out == grey[..., None]).all()
  rgba = np.zeros((10, 10, 4), np.uint8)
  rgba[:5, :, :] = (200, 0, 0, 255)  # Top half opaque red, bottom transparent black.
  out = images.image_array(rgba, 'k')
  assert (out[:5] == (200, 0, 0)).all() and (out[5:] == 255).all()
  rgb = np.full((10, 12, 3), 7, np.uint8)
  np.testing.assert_array_equal(images.image_array(rgb, 'k'), rgb)
  for bad in (np.zeros((10, 10, 2), np.uint8), np.zeros((10, 10, 3), np.float32),
              np.zeros((2, 10, 10, 3), np.uint8)):
    with pytest.raises(BadExample, match=r'image array .*expected uint8') as caught:
      images.image_array(bad, 'some/key')
    assert caught.value.reason == 'unsupported_mode' and 'some/key' in str(caught.value)
  with pytest.raises(BadExample) as caught:
    images.image_array(np.zeros((4, 40, 3), np.uint8), 'k', min_side=8)
  assert caught.value.reason == 'image_too_small'
