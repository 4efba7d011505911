"""Reading WordPiece vocab files (one token per line, id = line number)."""

from typing import Dict, List

import tensorflow as tf

from modeling.errors import ModelSourceError

# The special tokens a BERT vocab must define, by the key TF Hub uses for them.
SPECIAL_TOKENS = {
    "padding_id": "[PAD]",
    "unknown_id": "[UNK]",
    "start_of_sequence_id": "[CLS]",
    "end_of_segment_id": "[SEP]",
    "mask_id": "[MASK]",
}


def read_vocab(path: str) -> List[str]:
  """Returns the tokens of a vocab file in id order.

  Raises:
    ModelSourceError: the file is missing, empty, or has duplicate tokens (a
      lookup table cannot hold them).
  """
  if not tf.io.gfile.exists(path):
    raise ModelSourceError(f"{path}: vocab file not found")
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ModelSourceError(f"{path}: vocab file is not UTF-8 ({e})") from e
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  tokens = [line[:-1] if line.endswith("\r") else line for line in lines]
  if not tokens:
    raise ModelSourceError(f"{path}: vocab file is empty")
  seen = {}
  for i, token in enumerate(tokens):
    if token in seen:
      raise ModelSourceError(
          f"{path}: token {token!r} appears twice (lines {seen[token] + 1} "
          f"and {i + 1})")
    seen[token] = i
  return tokens


def special_token_ids(tokens: List[str], path: str) -> Dict[str, int]:
  """Looks up the ids of [PAD], [UNK], [CLS], [SEP], [MASK].

  Returns:
    {"padding_id", "unknown_id", "start_of_sequence_id", "end_of_segment_id",
     "mask_id"} -> id.

  Raises:
    ModelSourceError: a special token is absent from the vocab.
  """
  index = {t: i for i, t in enumerate(tokens)}
  missing = [t for t in SPECIAL_TOKENS.values() if t not in index]
  if missing:
    raise ModelSourceError(f"{path}: vocab lacks special tokens {missing}")
  return {key: index[token] for key, token in SPECIAL_TOKENS.items()}
