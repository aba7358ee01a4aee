"""Errors a user can cause through configuration, reported as one line."""


class ConfigError(ValueError):
  """A configuration value is wrong; the message says which and what is allowed."""
