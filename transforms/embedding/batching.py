"""Length-bucketed encoder batches in the pipeline: a DoFn that fills one batch per (window, bucket) and packs
a bundle's leftovers (the bucket arithmetic is runtime/buckets.py).

Why not Beam's own knobs: in a batch pipeline `BatchElements` ignores `length_fn` / `bucket_boundaries` unless
`max_batch_duration_secs` is set, and that switches to a stateful, keyed implementation (a shuffle of the packed
inputs); `ModelHandler(max_batch_weight=...)` is forwarded to `BatchElements`, which has no such argument. Here a
plain DoFn, fused with the tokenizer and the encoder, keeps one open batch per (window, bucket): a batch leaves as
soon as it is full, the rest when the bundle ends, so memory stays bounded by one batch per bucket.
"""
from __future__ import annotations

import collections
from typing import Iterable, Sequence

import apache_beam as beam
from apache_beam.transforms import window as beam_window
from apache_beam.utils import windowed_value

from runtime.buckets import BucketSpec, pack_sorted
from transforms.names import NAMESPACE


class _BucketBatchFn(beam.DoFn):
  """EncoderInput -> list[EncoderInput], at most `spec.rows` of the bucket of its longest record long."""

  def __init__(self, spec: BucketSpec):
    self._spec = spec
    self._batches = beam.metrics.Metrics.counter(NAMESPACE, "encoder_batches")
    self._real = beam.metrics.Metrics.counter(NAMESPACE, "encoder_real_tokens")
    self._padded = beam.metrics.Metrics.counter(NAMESPACE, "encoder_padded_tokens")
    self._open = None

  def start_bundle(self):
    self._open = collections.OrderedDict()

  def _emit(self, key, elements: list):
    win, bucket = key
    self._batches.inc()
    self._real.inc(sum(e.num_tokens for e in elements))
    self._padded.inc(bucket * len(elements))
    return windowed_value.WindowedValue(elements, win.max_timestamp(), (win,))

  def process(self, element, win=beam.DoFn.WindowParam) -> Iterable:
    bucket = self._spec.bucket(element.num_tokens)
    key = (win, bucket)
    batch = self._open.setdefault(key, [])
    batch.append(element)
    if len(batch) >= self._spec.rows(bucket):
      del self._open[key]
      yield self._emit(key, batch)

  def finish_bundle(self) -> Iterable:
    leftovers = collections.defaultdict(list)  # window -> the records of its partial batches
    for (win, _), batch in self._open.items():
      leftovers[win].extend(batch)
    self._open = collections.OrderedDict()
    for win, elements in leftovers.items():
      for bucket, batch in pack_sorted(elements, self._spec):
        yield self._emit((win, bucket), batch)


class BucketBatches(beam.PTransform):
  """PCollection[EncoderInput] -> PCollection[list[EncoderInput]], each batch padded to the bucket of its longest
  record (see the module doc)."""

  def __init__(self, spec: BucketSpec):
    super().__init__()
    self._spec = spec

  def expand(self, packed):
    return packed | "BucketByLength" >> beam.ParDo(_BucketBatchFn(self._spec))


def bucket_batches(elements: Sequence, spec: BucketSpec) -> list[list]:
  """The batches `BucketBatches` makes of `elements` in one bundle (for code outside Beam, e.g. benchmarks)."""
  fn = _BucketBatchFn(spec)
  fn.start_bundle()
  win = beam_window.GlobalWindow()
  out = [wv.value for e in elements for wv in fn.process(e, win)]
  return out + [wv.value for wv in fn.finish_bundle()]
