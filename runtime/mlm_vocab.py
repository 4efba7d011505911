"""What MLM scoring needs from the preprocessor: its special token ids and, for whole-word masking, its vocab.

Word boundaries come from the preprocessor's WordPiece vocab asset, not from re-running `.tokenize`: a piece whose
vocab string is "##" followed by at least one character continues the previous piece's word. That is exactly the
word structure `.tokenize` returns (TF Text's WordPiece marks every non-initial piece with the "##" suffix indicator,
and the basic tokenizer splits "#" off as punctuation, so no word starts with a "##" piece), and it can be read off
the packed ids alone, including truncated records whose last word lost pieces to the trimmer.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from runtime.saved_models import load_preprocessor

SUFFIX_INDICATOR = "##"
VOCAB_ASSET = "vocab.txt"  # the name TF Hub BERT preprocessors and `bert-embed export` give it


def load_special_tokens(preprocessor) -> dict[str, int]:
  """`.tokenize.get_special_tokens_dict()` as plain ints.

  Args:
    preprocessor: a loaded preprocessor SavedModel, or its path.

  Returns:
    {vocab_size, start_of_sequence_id, end_of_segment_id, padding_id, mask_id} -> int.
  """
  if isinstance(preprocessor, str):
    preprocessor = load_preprocessor(preprocessor).obj  # the process-level cache
  return {k: int(v) for k, v in preprocessor.tokenize.get_special_tokens_dict().items()}


def continuation_table(tokens: Sequence[str]) -> np.ndarray:
  """bool [V]: True for ids whose vocab string is "##" plus at least one character."""
  return np.array([t.startswith(SUFFIX_INDICATOR) and len(t) > len(SUFFIX_INDICATOR) for t in tokens], bool)


def _read_lines(path: str) -> list[str]:
  from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=import-outside-toplevel
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    lines = f.read().decode("utf-8").split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  return [line[:-1] if line.endswith("\r") else line for line in lines]


def load_continuation_table(preprocessor_path: str, vocab_size: Optional[int] = None) -> np.ndarray:
  """Reads the preprocessor's vocab asset and returns its continuation table (see the module docstring).

  Args:
    preprocessor_path: directory of the preprocessor SavedModel (local or any Beam filesystem's URL).
    vocab_size: when given (from `load_special_tokens`), the asset must have this many lines; it also picks the
      vocab among several .txt assets when none is named vocab.txt.

  Returns:
    bool [V].

  Raises:
    ValueError: no vocab asset, or its size disagrees with `vocab_size`.
  """
  from runtime.saved_models import asset_files  # pylint: disable=import-outside-toplevel
  files = dict(asset_files(preprocessor_path))  # through Beam's FileSystems: any filesystem, local or remote
  names = sorted(files)
  candidates = [n for n in names if n == VOCAB_ASSET] or [n for n in names if n.endswith(".txt")]
  for name in candidates:
    tokens = _read_lines(files[name])
    if vocab_size is None or len(tokens) == vocab_size:
      return continuation_table(tokens)
  expected = f" with {vocab_size} lines" if vocab_size is not None else ""
  raise ValueError(f"whole-word MLM scoring needs the WordPiece vocab of the preprocessor {preprocessor_path}, but "
                   f"its assets/ has no vocab file{expected} (found: {names or 'nothing'})")
