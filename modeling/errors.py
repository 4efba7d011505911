"""Errors raised for unusable model sources."""


class ModelSourceError(ValueError):
  """A model source (checkpoint dir, config, vocab) cannot be turned into a model.

  The message names the offending file and what is wrong with it, e.g. a missing
  file, a tensor whose shape disagrees with the config, or a vocab whose size
  differs from the embedding table.
  """


class SeqLengthError(ValueError):
  """A sequence length the model cannot take (shorter than [CLS] [SEP], or beyond its position embeddings)."""

  def __init__(self, seq_length: int, max_length: int):
    super().__init__(f"seq_length {seq_length} is out of range: the model has {max_length} positions "
                     f"(max_position_embeddings), so use 2 to {max_length}")
    self.seq_length = seq_length
    self.max_length = max_length
