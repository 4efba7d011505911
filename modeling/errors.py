"""Errors raised for unusable model sources."""


class ModelSourceError(ValueError):
  """A model source (checkpoint dir, config, vocab) cannot be turned into a model.

  The message names the offending file and what is wrong with it, e.g. a missing
  file, a tensor whose shape disagrees with the config, or a vocab whose size
  differs from the embedding table.
  """
