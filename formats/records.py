"""Typed records passed between the pipeline's stages."""
from __future__ import annotations

import hashlib
import json
from typing import NamedTuple, Optional

import numpy as np

# Stages named in dead-letter records.
STAGES = ("read", "decode", "parse", "preprocess", "encode", "write")
SNIPPET_CHARS = 200


class TextRecord(NamedTuple):
  """One input record, as read from a source file."""
  id: str
  text: str
  text_pair: Optional[str] = None
  source: str = ""
  truncated: bool = False  # cut to --max-text-bytes before tokenizing
  position: int = 0  # line number or record index inside `source` (1-based lines, 0-based records)


class EncoderInput(NamedTuple):
  """A record packed by the preprocessor: int32 vectors of length seq_length, ready for the encoder."""
  record: TextRecord
  input_word_ids: np.ndarray
  input_mask: np.ndarray
  input_type_ids: np.ndarray
  num_tokens: int  # packed tokens, [CLS]/[SEP] included
  truncated: bool  # cut by bytes or by the packer's trimming
  chunk: Optional[tuple] = None  # runtime.text_windows.ChunkInfo for a window of a long text (--long-text chunk)


class EmbeddingRecord(NamedTuple):
  """One output row."""
  id: str
  embedding: Optional[np.ndarray]  # float32 [H]; None only with --no-embeddings (MLM scores only)
  num_tokens: int
  truncated: bool
  text_sha256: str
  text: Optional[str] = None
  token_ids: Optional[np.ndarray] = None  # int32 [num_tokens]
  sequence_output: Optional[np.ndarray] = None  # float32 [num_tokens, H]
  # With --mlm-scores (pseudo-log-likelihood over the packed tokens, natural log):
  mlm_pll: Optional[float] = None
  mlm_scored_tokens: Optional[int] = None
  mlm_pseudo_perplexity: Optional[float] = None  # exp(-pll / scored tokens); None when nothing was scored
  mlm_token_scores: Optional[np.ndarray] = None  # float32 [num_tokens], NaN at [CLS]/[SEP]; with --mlm-per-token
  # With --long-text chunk --chunk-output rows, for a window of a long text (id = <parent id>#<k>):
  parent_id: Optional[str] = None
  chunk_index: Optional[int] = None
  chunk_start_piece: Optional[int] = None
  chunk_end_piece: Optional[int] = None
  num_windows: Optional[int] = None  # windows of the parent text (not written; used to reassemble it)
  source: str = ""  # the input file of the record (not written; names it in a write-stage dead letter)


class DeadLetter(NamedTuple):
  """A record that could not be read, decoded, parsed, preprocessed, encoded or written."""
  id: str
  source: str
  stage: str
  reason: str
  snippet: str = ""

  @classmethod
  def make(cls, id: str, source: str, stage: str, reason: str, text: object = "") -> "DeadLetter":
    assert stage in STAGES, stage
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    return cls(str(id), str(source), stage, str(reason), str(text or "")[:SNIPPET_CHARS])

  def to_json(self) -> str:
    return json.dumps(self._asdict(), ensure_ascii=False, sort_keys=True)


def text_sha256(text: str, text_pair: Optional[str] = None) -> str:
  """Hex SHA-256 over the text and, when present, the pair text (separated so that ("ab","c") != ("a","bc"))."""
  h = hashlib.sha256(text.encode("utf-8"))
  if text_pair is not None:
    h.update(b"\x00")
    h.update(text_pair.encode("utf-8"))
  return h.hexdigest()
