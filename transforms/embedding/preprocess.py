"""Stage 2: text -> packed BERT inputs, with the preprocessor SavedModel's own tokenizer and packer (CPU)."""
from __future__ import annotations

import time
from typing import Iterable, Sequence

import apache_beam as beam
from apache_beam.utils import shared

from runtime.tokenizer import Tokenizer
from runtime import failure_isolation
from runtime.precision import PROBE_TEXTS
from transforms.embedding.embed_config import EmbedConfig
from transforms.names import DEAD_LETTER, NAMESPACE
from formats.records import DeadLetter, TextRecord
from runtime.saved_models import load_preprocessor


class _PreprocessBatchFn(beam.DoFn):
  """Packs a batch of TextRecords; a record that fails alone, or has no tokens, is dead-lettered. When several
  different records in a row fail alone and the probe texts of runtime/precision.py fail too, SystemicError is
  raised (the runner retries the bundle) instead (runtime/failure_isolation.py)."""

  def __init__(self, preprocessor_path: str, config: EmbedConfig):
    self._path = preprocessor_path
    self._seq_length = config.seq_length
    self._chunk_stride = config.window_stride  # None: truncate long texts; else split them into windows
    self._shared = shared.Shared()
    self._tokenizer = None
    self._packed = beam.metrics.Metrics.counter(NAMESPACE, "records_preprocessed")
    self._truncated = beam.metrics.Metrics.counter(NAMESPACE, "records_truncated")
    self._failed = beam.metrics.Metrics.counter(NAMESPACE, "records_dead_lettered_preprocess")
    self._latency = beam.metrics.Metrics.distribution(NAMESPACE, "preprocess_batch_latency_micro_secs")
    self._windows = beam.metrics.Metrics.counter(NAMESPACE, "windows_packed")
    self._retries = beam.metrics.Metrics.counter(NAMESPACE, "preprocess_isolation_retries")
    self._isolation = None

  def setup(self):
    model = self._shared.acquire(lambda: load_preprocessor(self._path), tag=self._path)
    self._model = model  # keep the shared object alive while this DoFn lives
    self._tokenizer = Tokenizer(model.obj, self._seq_length)
    # Spans this DoFn instance's batches, so that an error failing every record is raised (runtime/failure_isolation)
    probe = [TextRecord(f"probe:{i}", text) for i, text in enumerate(PROBE_TEXTS)]
    self._isolation = failure_isolation.FailureIsolation(
        on_retry=self._retries.inc, key=lambda r: (r.text, r.text_pair), probe=lambda: probe, name="the tokenizer")

  def process(self, batch: Sequence[TextRecord]) -> Iterable:
    # Outputs are collected first: a generator's downstream (fused bucketing and encoding) would run inside the
    # timed span and make the latency metric mostly encoder time.
    start = time.perf_counter()
    outputs = list(self._pack_batch(batch))
    self._latency.update(int((time.perf_counter() - start) * 1e6))
    return outputs

  def _pack_batch(self, batch: Sequence[TextRecord]) -> Iterable:
    with_pair = [r for r in batch if r.text_pair is not None]
    without = [r for r in batch if r.text_pair is None]
    for group in (without, with_pair):
      if not group:
        continue
      if self._chunk_stride is not None and group is without:
        pack = lambda rs: self._tokenizer.pack_windows(rs, self._chunk_stride)  # pylint: disable=cell-var-from-loop
      else:
        pack = lambda rs: [[p] for p in self._tokenizer.pack(rs)]
      for record, windows, error in self._isolation.run(group, pack):
        if error is not None:
          self._failed.inc()
          yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter.make(
              record.id, record.source, "preprocess", failure_isolation.describe(error), record.text))
        elif windows[0].num_tokens <= (2 if record.text_pair is None else 3):  # only [CLS]/[SEP]: no text left
          self._failed.inc()
          yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter.make(
              record.id, record.source, "preprocess", "text has no tokens after tokenizing", record.text))
        else:
          self._packed.inc()
          if windows[0].truncated:
            self._truncated.inc()
          if windows[0].chunk is not None:
            self._windows.inc(len(windows))
          yield from windows


class Preprocess(beam.PTransform):
  """PCollection[TextRecord] -> (PCollection[EncoderInput], PCollection[DeadLetter]), packed as `config` says
  (seq_length, preprocess_batch_size, long_text)."""

  def __init__(self, preprocessor_path: str, config: EmbedConfig = EmbedConfig()):
    super().__init__()
    self._path = preprocessor_path
    self._config = config

  def expand(self, records):
    size = self._config.preprocess_batch_size
    results = (
        records
        # Fixed-size batches (the last of a bundle is smaller). Adaptive sizing would time each batch together with
        # the encoder fused after it, judge large batches slow and shrink them to a few texts, where each call's
        # fixed cost dominates tokenizing (benchmarks/RESULTS.md).
        | "BatchForTokenizer" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
        | "TokenizeAndPack" >> beam.ParDo(_PreprocessBatchFn(self._path, self._config)).with_outputs(
            DEAD_LETTER, main="packed"))
    return results.packed, results[DEAD_LETTER]
