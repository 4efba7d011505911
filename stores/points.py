"""Output rows as store points: the vector and the payload a store keeps for each row."""
from __future__ import annotations

from typing import Optional

from formats.records import EmbeddingRecord
from stores.base import StorePoint


def point_from_record(record: EmbeddingRecord, *, keep_text: bool = False, source: Optional[str] = None) -> StorePoint:
  """The store point of one output row: `text_sha256` and `source` always, `text` with `keep_text`, the window
  fields for a window row (--long-text chunk --chunk-output rows)."""
  if record.embedding is None:
    raise ValueError(f"row {record.id!r} has no embedding to store")
  payload = {"text_sha256": record.text_sha256, "source": record.source if source is None else source}
  if keep_text and record.text is not None:
    payload["text"] = record.text
  if record.parent_id is not None:
    payload.update(parent_id=record.parent_id, chunk_index=record.chunk_index,
                   chunk_start_piece=record.chunk_start_piece, chunk_end_piece=record.chunk_end_piece)
  return StorePoint(record.id, record.embedding, payload)
