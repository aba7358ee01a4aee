"""Caption cleaning: raw caption bytes or text -> one normalized line, or a skip.

Every data source (image folders, TFRecords, caption files) passes its captions
through `clean_caption` before tokenization, so a broken caption becomes a
counted `BadExample` skip with a reason, never a crash or a silent garbage
token sequence.
"""
from typing import Union

from parti_jax.data.errors import BadExample

# Over five times the longest PartiPrompts prompt (389 characters), yet far
# below the scraped page text that web datasets sometimes carry as a caption.
MAX_CAPTION_CHARS = 2048


def _decode(raw: Union[bytes, str], key: str) -> str:
  """`raw` as text; bytes must be valid UTF-8."""
  if isinstance(raw, str):
    return raw
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise BadExample('invalid_utf8', key,
                     f'caption is not valid UTF-8 (byte {e.start}: {e.reason})') from e


def clean_caption(raw: Union[bytes, str], key: str, max_chars: int = MAX_CAPTION_CHARS) -> str:
  """The caption as one line with single spaces, or BadExample if unusable.

  Whitespace (newlines, tabs, runs of spaces) is collapsed to single spaces and
  stripped from both ends.

  A caption longer than `max_chars` characters is skipped rather than
  truncated: such "captions" are scraped page text (menus, article bodies, alt
  text dumps), not descriptions of the image, and their first 128 tokens would
  teach the model a wrong pairing. Normal captions are cut to the model's text
  length later, at tokenization.

  Args:
    raw: the caption as stored: UTF-8 bytes or text.
    key: names the example (file, line, record key) in error messages.
    max_chars: the longest caption kept, in characters after normalization.

  Returns:
    The normalized caption.

  Raises:
    BadExample: reason 'invalid_utf8', 'empty_caption' or 'caption_too_long'.
  """
  caption = ' '.join(_decode(raw, key).split())
  if not caption:
    raise BadExample('empty_caption', key, 'caption is empty')
  if len(caption) > max_chars:
    raise BadExample('caption_too_long', key,
                     f'caption has {len(caption)} characters, more than {max_chars}')
  return caption
