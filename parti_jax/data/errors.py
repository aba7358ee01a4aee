"""Bad examples in the user's data: skipped, counted by reason, never fatal alone.

A decoder, validator or reader raises `BadExample` for one unusable example;
the pipeline hands it to a `SkipCounter`, which counts it by its reason and
logs the first few of each reason. Only when a source yields nothing usable at
all does the pipeline stop, with `NoUsableExamples` naming the file(s).
"""
import collections
import logging
import threading
from typing import Dict

from parti_jax.errors import ConfigError

log = logging.getLogger(__name__)

# Every reason an example can be skipped for, and when. The names are stable:
# logs, skip-count summaries and tests refer to them.
REASONS: Dict[str, str] = {
    'empty_file': 'the image is zero bytes long',
    'undecodable_image': 'Pillow cannot read the image: not an image, truncated or corrupt',
    'unsupported_mode': 'the image decodes but its pixel format has no standard RGB meaning',
    'image_too_small': 'a side of the image is shorter than the minimum',
    'image_too_large': 'the image has more pixels than the maximum (known from its header)',
    'missing_image': 'the image named by a caption is absent (file, tar member or feature)',
    'missing_caption': 'an image has no caption (tar member or feature)',
    'unreadable_file': 'a file exists but reading it failed (permissions, I/O error)',
    'empty_caption': 'the caption is empty or only whitespace',
    'caption_too_long': 'the caption is longer than the maximum',
    'invalid_utf8': 'the caption (or its line in a captions file) is not valid UTF-8',
    'malformed_line': 'a line of a captions file cannot be parsed or lacks a field',
    'malformed_record': 'a TFRecord record is not a tf.train.Example or a feature has the '
                        'wrong type',
    'corrupt_shard': 'a tar or TFRecord file is corrupt from some point on; its rest is '
                     'skipped',
}


class BadExample(Exception):
  """One unusable example: `reason` (a key of REASONS) and the file or key it came from."""

  def __init__(self, reason: str, key: str, detail: str):
    if reason not in REASONS:
      raise ValueError(f'unknown skip reason {reason!r}; known reasons: {sorted(REASONS)}')
    super().__init__(f'{key}: {detail}')
    self.reason, self.key, self.detail = reason, key, detail


class NoUsableExamples(ConfigError):
  """A source yielded not one usable example; the message names its file(s) and
  the skip counts. A ConfigError, so entry points report it as one line."""


class SkipCounter:
  """Counts skipped examples by reason; logs the first `log_first` of each reason.

  Plain Python, for the generators that feed tf.data. A lock guards the counts
  because tf.data may run several such generators on different threads.
  """

  def __init__(self, log_first: int = 5):
    if log_first < 0:
      raise ValueError(f'log_first must be non-negative, got {log_first}')
    self.log_first = log_first
    self._counts: collections.Counter = collections.Counter()
    self._lock = threading.Lock()

  def skip(self, error: BadExample) -> None:
    """Counts `error`; logs it while its reason has been seen at most log_first times."""
    with self._lock:
      self._counts[error.reason] += 1
      seen = self._counts[error.reason]
    if seen > self.log_first:
      return
    quiet_from_now = (f'; further {error.reason!r} skips are counted, not logged'
                      if seen == self.log_first else '')
    log.warning('skipped example (%s): %s%s', error.reason, error, quiet_from_now)

  def counts(self) -> Dict[str, int]:
    """Skips so far by reason, reasons in alphabetical order."""
    with self._lock:
      return dict(sorted(self._counts.items()))

  @property
  def total(self) -> int:
    with self._lock:
      return sum(self._counts.values())

  def merge(self, other: 'SkipCounter') -> None:
    """Adds `other`'s counts to these (without logging them again)."""
    other_counts = other.counts()
    with self._lock:
      self._counts.update(other_counts)

  def summary(self) -> str:
    """'missing_image 2, undecodable_image 1', or 'none'."""
    return format_counts(self.counts())


def format_counts(counts: Dict[str, int]) -> str:
  """{'missing_image': 2} -> 'missing_image 2'; {} -> 'none'."""
  return ', '.join(f'{reason} {count}' for reason, count in sorted(counts.items())) or 'none'


class PipelineError(RuntimeError):
  """The input pipeline failed (TensorFlow's message, without its frames)."""
