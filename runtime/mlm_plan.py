"""Planning MLM scoring: which masked copies to make, and how to batch them under a token budget (numpy only).

A "copy" is one packed record with a span of tokens replaced by [MASK] and one scored position: the masked span is
`[position, mask_end)`, always starting at the scored position. Without whole-word masking the span is the scored
token alone; with it (PLL-word-l2r) the span also covers the later pieces of the same word.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np


class CopyPlan(NamedTuple):
  """The masked copies of a list of records, as parallel int32 vectors of length C (copies)."""
  record: np.ndarray  # int32 [C]: index of the record in the list
  position: np.ndarray  # int32 [C]: the scored (and first masked) packed position
  mask_end: np.ndarray  # int32 [C]: exclusive end of the masked span, > position
  length: np.ndarray  # int32 [C]: num_tokens of the record (the copy's unpadded length)

  @property
  def size(self) -> int:
    return int(self.record.shape[0])


def scorable_positions(word_ids: np.ndarray, num_tokens: int, sep_id: int) -> np.ndarray:
  """Positions of the real tokens of one packed record: not [CLS] (position 0), not a [SEP], not padding.

  Args:
    word_ids: int [S] packed ids, S >= num_tokens.
    num_tokens: packed tokens, [CLS]/[SEP] included.
    sep_id: the [SEP] id (`end_of_segment_id`).

  Returns:
    int32 [K] increasing positions in [1, num_tokens).
  """
  ids = np.asarray(word_ids[:num_tokens])
  positions = np.flatnonzero(ids != sep_id).astype(np.int32)
  return positions[positions > 0]


def word_span_ends(word_ids: np.ndarray, positions: np.ndarray, num_tokens: int,
                   continuation: np.ndarray) -> np.ndarray:
  """For each position, the exclusive end of its word's remaining pieces (PLL-word-l2r masking).

  The span runs from the position over the following pieces that continue the same word (ids whose vocab string
  starts with "##"), stopping at the first piece that does not, or at num_tokens. Specials never continue a word,
  so a span never crosses [SEP]; a word cut by truncation keeps only its packed pieces.

  Args:
    word_ids: int [S] packed ids.
    positions: int [K] scored positions, each in [1, num_tokens).
    num_tokens: packed tokens.
    continuation: bool [V]; True for ids that continue the previous piece's word.

  Returns:
    int32 [K] span ends, each in (position, num_tokens].
  """
  ids = np.asarray(word_ids[:num_tokens])
  if ids.size and int(ids.max()) >= continuation.shape[0]:
    raise ValueError(f"token id {int(ids.max())} is outside the vocab of {continuation.shape[0]} tokens")
  starts = np.append(np.flatnonzero(~continuation[ids]), num_tokens)  # where a new word (or a special) begins
  return starts[np.searchsorted(starts, positions, side="right")].astype(np.int32)


def plan_copies(word_ids: Sequence[np.ndarray], num_tokens: Sequence[int], sep_id: int, *,
                continuation: Optional[np.ndarray] = None) -> CopyPlan:
  """Lists one masked copy per real token of every record.

  Args:
    word_ids: per record, int [S] packed ids.
    num_tokens: per record, packed tokens.
    sep_id: the [SEP] id.
    continuation: bool [V] "##" table for whole-word masking; None masks the scored token alone.

  Returns:
    The CopyPlan, record-major, positions increasing inside a record.
  """
  parts = []
  for r, (ids, n) in enumerate(zip(word_ids, num_tokens)):
    positions = scorable_positions(ids, int(n), sep_id)
    ends = positions + 1 if continuation is None else word_span_ends(ids, positions, int(n), continuation)
    parts.append((np.full(positions.shape, r, np.int32), positions, ends.astype(np.int32),
                  np.full(positions.shape, n, np.int32)))
  if not parts:
    empty = np.zeros([0], np.int32)
    return CopyPlan(empty, empty, empty, empty)
  return CopyPlan(*(np.concatenate(column) for column in zip(*parts)))


def token_budget_batches(lengths: np.ndarray, max_tokens: int, max_copies: int) -> Iterator[np.ndarray]:
  """Groups copies into batches of at most `max_tokens` padded tokens and `max_copies` copies.

  Copies are taken longest first, so each batch is padded to its first copy's length and holds
  min(max_copies, max_tokens // that length) copies (at least one, even when a copy alone exceeds the budget).

  Args:
    lengths: int [C] unpadded copy lengths.
    max_tokens: budget of batch_size * padded_length per model call.
    max_copies: cap on the batch size (bounds the [B, vocab] logits).

  Yields:
    int [B] indices into `lengths`; together they cover every copy exactly once.
  """
  if max_tokens < 1 or max_copies < 1:
    raise ValueError(f"max_tokens and max_copies must be positive, got {max_tokens} and {max_copies}")
  order = np.argsort(-np.asarray(lengths), kind="stable")
  start = 0
  while start < order.size:
    longest = int(lengths[order[start]])
    size = max(1, min(max_copies, max_tokens // max(longest, 1)))
    yield order[start:start + size]
    start += size
