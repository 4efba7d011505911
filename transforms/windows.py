"""Reassembling long texts split into windows (--long-text chunk): one row per window, or one mean per record.

A record is all or nothing: when any of its windows fails, the record is dead-lettered once (with the window's
reason) and none of its windows is written, so read == written + dead_lettered keeps holding per record.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np

from transforms import chunking
from transforms.records import DeadLetter, EmbeddingRecord

NAMESPACE = "bert_embed"
WINDOW_FAILED = "window_failed"
DEAD = "dead"


def _is_window(rec: EmbeddingRecord) -> bool:
  return rec.parent_id is not None


def _normalized(rec: EmbeddingRecord) -> EmbeddingRecord:
  v = rec.embedding.astype(np.float32)
  return rec._replace(embedding=v / max(float(np.linalg.norm(v)), 1e-12))


def _merge(element, output: str, normalize: bool):
  parent_id, group = element
  failed = sorted(group["failed"], key=lambda d: d.id)
  rows = sorted(group["rows"], key=lambda r: r.chunk_index)
  if failed:
    first = failed[0]
    yield beam.pvalue.TaggedOutput(DEAD, first._replace(
        id=parent_id, reason=f"window {first.id} of {parent_id}: {first.reason}"))
    return
  if output == "rows":
    yield from rows
    return
  merged = chunking.weighted_mean([r.embedding for r in rows],
                                  [r.chunk_end_piece - r.chunk_start_piece for r in rows], normalize)
  yield rows[0]._replace(id=parent_id, embedding=merged, num_tokens=sum(r.num_tokens for r in rows),
                         truncated=any(r.truncated for r in rows), parent_id=None, chunk_index=None,
                         chunk_start_piece=None, chunk_end_piece=None)


class MergeWindows(beam.PTransform):
  """(embedding rows, (parent id, DeadLetter) window failures) -> (records' rows, dead letters).

  Rows of texts that fitted one window pass through (normalised here in `mean` mode, where the encoder is asked
  for raw vectors so that windows are averaged before normalising).
  """

  def __init__(self, output: str, normalize: bool):
    super().__init__()
    if output not in chunking.CHUNK_OUTPUTS:
      raise ValueError(f"--chunk-output must be one of {chunking.CHUNK_OUTPUTS}")
    self._output = output
    self._normalize = normalize

  def expand(self, inputs):
    rows, window_failures = inputs
    split = rows | "SplitWindows" >> beam.Partition(lambda r, _: int(_is_window(r)), 2)
    whole, windows = split[0], split[1]
    if self._output == "mean" and self._normalize:
      whole = whole | "NormalizeWhole" >> beam.Map(_normalized)
    merged = ({"rows": windows | "KeyWindows" >> beam.Map(lambda r: (r.parent_id, r)),
               "failed": window_failures}
              | "GroupWindows" >> beam.CoGroupByKey()
              | "Merge" >> beam.FlatMap(_merge, self._output, self._normalize).with_outputs(DEAD, main="rows"))
    return (whole, merged.rows) | "AllRows" >> beam.Flatten(), merged[DEAD]
