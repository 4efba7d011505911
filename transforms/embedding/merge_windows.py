"""Reassembling long texts split into windows (--long-text chunk): one row per window, or one mean per record.

A record is all or nothing: when any of its windows fails, the record is dead-lettered once (with the window's
reason) and none of its windows is written, so read == written + dead_lettered keeps holding per record. Windows
fail here when they are encoded, and again when they are validated for writing (transforms/validate.py).
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np

from runtime import text_windows
from transforms.names import DEAD_LETTER
from formats.records import EmbeddingRecord

WINDOW_FAILED = "window_failed"


def is_split(rec: EmbeddingRecord) -> bool:
  """A window of a text that needed more than one."""
  return bool(rec.num_windows and rec.num_windows > 1)


def _as_record(rec: EmbeddingRecord, embedding: np.ndarray) -> EmbeddingRecord:
  """A window standing for its whole text (mean output): the parent's id, no window fields."""
  return rec._replace(id=rec.parent_id, embedding=embedding, parent_id=None, chunk_index=None,
                      chunk_start_piece=None, chunk_end_piece=None, num_windows=None)


def _whole_text_mean(rec: EmbeddingRecord, normalize: bool) -> EmbeddingRecord:
  v = rec.embedding.astype(np.float32)
  return _as_record(rec, v / max(float(np.linalg.norm(v)), 1e-12) if normalize else v)


def _merge(element, output: str, normalize: bool):
  parent_id, group = element
  failed = sorted(group["failed"], key=lambda d: d.id)
  rows = sorted(group["rows"], key=lambda r: r.chunk_index)
  if failed:
    first = failed[0]
    yield beam.pvalue.TaggedOutput(DEAD_LETTER, first._replace(
        id=parent_id, reason=f"window {first.id} of {parent_id}: {first.reason}"))
    return
  if output == "rows":
    yield from rows
    return
  merged = text_windows.weighted_mean([r.embedding for r in rows],
                                  [r.chunk_end_piece - r.chunk_start_piece for r in rows], normalize)
  yield _as_record(rows[0], merged)._replace(num_tokens=sum(r.num_tokens for r in rows),
                                             truncated=any(r.truncated for r in rows))


class MergeWindows(beam.PTransform):
  """(window rows, (parent id, DeadLetter) window failures) -> (output rows, dead letters).

  `rows`: every window is a row (a text that fits is window 0 of 1). `mean`: one row per text under its own id;
  the encoder is asked for raw vectors so that windows are averaged before normalising, here.
  """

  def __init__(self, output: str, normalize: bool):
    super().__init__()
    if output not in text_windows.CHUNK_OUTPUTS:
      raise ValueError(f"--chunk-output must be one of {text_windows.CHUNK_OUTPUTS}")
    self._output = output
    self._normalize = normalize

  def expand(self, inputs):
    rows, window_failures = inputs
    split = rows | "SplitWindows" >> beam.Partition(lambda r, _: int(is_split(r)), 2)
    whole, windows = split[0], split[1]
    if self._output == "mean":
      whole = whole | "WholeTexts" >> beam.Map(_whole_text_mean, self._normalize)
    merged = ({"rows": windows | "KeyWindows" >> beam.Map(lambda r: (r.parent_id, r)),
               "failed": window_failures}
              | "GroupWindows" >> beam.CoGroupByKey()
              | "Merge" >> beam.FlatMap(_merge, self._output, self._normalize).with_outputs(DEAD_LETTER, main="rows"))
    return (whole, merged.rows) | "AllRows" >> beam.Flatten(), merged[DEAD_LETTER]
