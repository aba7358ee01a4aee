"""Errors a user can cause through configuration, reported as one line."""


class ConfigError(ValueError):
  """A configuration value is wrong; the message says which and what is allowed."""


class TrainingStopped(RuntimeError):
  """A run stopped itself (for example on a non-finite loss); the message says
  where it stopped and what was saved."""
