"""Crops of real photographs for measuring the image tokenizer: scikit-image's
sample photographs, cut into random square crops and written as folders that
data/folder.gin reads (PNG files and captions.jsonl).

  python -m parti_jax.tools.photo_crops --output_dir=/tmp/photos --size=64
  python -m parti_jax.tokenizer.train --gin_file=tokenizer/vit_vqgan_tiny.gin \
      --gin_file=data/folder.gin --gin.DATA_ROOT="'/tmp/photos/train'" \
      --gin.VALIDATION_ROOT="'/tmp/photos/held_out'" --gin.MODEL_DIR="'/tmp/tok_photos'"

The held-out crops come from photographs the training crops never touch.
Needs scikit-image (pip install -e '.[photos]'); its photographs ship inside
the package, so nothing is downloaded.
"""
import argparse
import json
import os
from typing import Dict, Sequence

import numpy as np
from PIL import Image

from parti_jax.errors import ConfigError

# scikit-image's natural photographs (its synthetic images left out; 'cat' is
# 'chelsea' again).
TRAIN_PHOTOS = ('camera', 'chelsea', 'rocket', 'retina', 'clock', 'moon', 'page', 'brick',
                'gravel', 'text', 'cell', 'microaneurysms')
HELD_OUT_PHOTOS = ('astronaut', 'coffee', 'coins', 'grass')


def load_photographs(names: Sequence[str]) -> Dict[str, np.ndarray]:
  """name -> uint8 RGB [H, W, 3] (grayscale photographs repeated over RGB)."""
  try:
    from skimage import data  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConfigError("scikit-image is not installed: pip install -e '.[photos]'") from e
  photos = {}
  for name in names:
    image = np.asarray(getattr(data, name)())
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    photos[name] = image[..., :3].astype(np.uint8)
  return photos


def write_crops(photos: Dict[str, np.ndarray], output_dir: str, size: int,
                crops_per_photo: int, seed: int) -> int:
  """Writes `crops_per_photo` random size x size crops of each photograph to
  output_dir with a captions.jsonl naming the photograph; returns the count."""
  rng = np.random.default_rng(seed)
  os.makedirs(output_dir, exist_ok=True)
  count = 0
  with open(os.path.join(output_dir, 'captions.jsonl'), 'w') as captions:
    for name, photo in sorted(photos.items()):
      height, width = photo.shape[:2]
      if min(height, width) < size:
        raise ConfigError(f'photograph {name} ({height}x{width}) is smaller than {size}')
      for i in range(crops_per_photo):
        top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
        file_name = f'{name}_{i:04d}.png'
        Image.fromarray(photo[top:top + size, left:left + size]).save(
            os.path.join(output_dir, file_name))
        captions.write(json.dumps({'image': file_name, 'caption': f'a crop of {name}'}) + '\n')
        count += 1
  return count


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--output_dir', required=True)
  p.add_argument('--size', type=int, default=64)
  p.add_argument('--train_crops_per_photo', type=int, default=500)
  p.add_argument('--held_out_crops_per_photo', type=int, default=128)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  counts = {
      split: write_crops(load_photographs(names), os.path.join(args.output_dir, split),
                         args.size, per_photo, args.seed + i)
      for i, (split, names, per_photo) in enumerate([
          ('train', TRAIN_PHOTOS, args.train_crops_per_photo),
          ('held_out', HELD_OUT_PHOTOS, args.held_out_crops_per_photo)])}
  print(json.dumps(dict(counts, output_dir=args.output_dir)))


if __name__ == '__main__':
  main()
