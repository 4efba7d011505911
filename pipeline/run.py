"""`bert-embed run`: sharded text -> preprocessor -> encoder (RunInference) -> Parquet/TFRecord + manifest.

Usable as `python -m pipeline.run --input ... --output ... [Beam options]`.
"""
from __future__ import annotations

import datetime
import logging
import sys
import time
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import manifest as manifest_lib
from pipeline import models
from pipeline import previous as previous_lib
from pipeline.config import JobConfig, resolve
from pipeline.options import UsageError
from transforms.duplicates import ResolveDuplicateIds
from transforms.dedupe import EmbedDistinctTexts
from transforms.embed import EmbedTexts
from transforms.drift import DriftCheck
from transforms.incremental import SplitByPrevious
from transforms.read import ReadTexts
from transforms.validate import ValidateEmbeddings
from transforms.write import WriteConfig, WriteDeadLetters, WriteEmbeddings

COUNTS = ("read", "written", "rows", "dead_lettered", "blank_lines", "files_failed", "tokens", "truncated",
          "encoded", "windows",
          "new", "changed", "unchanged", "deleted", "previous_damaged")
_LOG = logging.getLogger(__name__)


class RunOutcome(NamedTuple):
  config: JobConfig
  result: object  # the Beam PipelineResult
  manifest: Optional[dict]


def _ones(pcoll, label: str):
  return pcoll | label >> beam.Map(lambda _: 1)


def _precision_used(p: beam.Pipeline, embedded):
  """{precision: records encoded in it}, as each worker resolved --precision (see transforms/precision.py)."""
  used = getattr(embedded, "precision_used", None)
  if used is None:
    used = p | "NoPrecisionReport" >> beam.Create([])
  return (used
          | "CountPrecisions" >> beam.combiners.Count.PerElement()
          | "PrecisionsToDict" >> beam.combiners.ToDict())


def build_pipeline(p: beam.Pipeline, cfg: JobConfig, start_time: str) -> dict:
  """Wires the job's transforms onto `p`; returns the main PCollections (for tests)."""
  read = p | "ReadTexts" >> ReadTexts(
      list(cfg.inputs), input_format=cfg.input_format, id_field=cfg.id_field, text_field=cfg.text_field,
      text_pair_field=cfg.text_pair_field, max_text_bytes=cfg.max_text_bytes)
  # Text ids are `<file>:<line>`, unique by construction: no shuffle for them.
  duplicates = read.records | "DuplicateIds" >> ResolveDuplicateIds(
      cfg.on_duplicate_id, ids_unique=cfg.input_format == "text")
  records = duplicates.records
  if cfg.limit:
    records = (records
               | "Limit" >> beam.combiners.Top.Of(cfg.limit, key=lambda r: r.id, reverse=True)
               | "LimitFlatten" >> beam.FlatMap(lambda rs: rs))
  # Incremental: unchanged records are copied from the previous output; the rest go on to the encoder.
  plan = previous_lib.plan(cfg)
  columns = cfg.output_columns
  split = records | "SplitByPrevious" >> SplitByPrevious(
      plan.previous_files, plan.previous_format, cfg.model_info.dim, carry_over=plan.incremental,
      columns=columns, drift_sample=plan.drift_sample, unit_norm=plan.previous_normalized)
  embed = EmbedTexts(
      cfg.model.preprocessor, cfg.model.encoder, pooling=cfg.pooling, normalize=cfg.normalize, layers=cfg.layers,
      seq_length=cfg.seq_length, emit_tokens=cfg.emit_tokens, keep_text=cfg.keep_text, batch_size=cfg.batch_size,
      min_batch_size=cfg.min_batch_size, preprocess_batch_size=cfg.preprocess_batch_size,
      embeddings=cfg.embeddings, mlm=cfg.mlm, long_text=cfg.long_text, chunk_stride=cfg.chunk_stride,
      chunk_output=cfg.chunk_output, bucket_lengths=cfg.bucket_lengths, max_batch_tokens=cfg.max_batch_tokens,
      precision=cfg.precision)
  if cfg.dedupe_texts:
    embedded = split.to_encode | "EmbedDistinctTexts" >> EmbedDistinctTexts(embed)
  else:
    embedded = split.to_encode | "EmbedTexts" >> embed
  drift = embedded.embeddings | "DriftCheck" >> DriftCheck(split.drift_sample, plan.drift_sample)
  rows = embedded.embeddings
  if plan.previous_files is not None:  # else nothing is carried, and a Flatten would only cut the fused read-to-write
    rows = (rows, split.carried) | "WithCarriedOver" >> beam.Flatten()  # stage (the DirectRunner then holds all rows)
  checked = rows | "ValidateEmbeddings" >> ValidateEmbeddings(cfg.model_info.dim, columns)
  valid, invalid = checked.valid, checked.dead_letters
  file_metadata = {"model": cfg.model.name, "dimension": str(cfg.model_info.dim), "pooling": cfg.pooling,
                   "normalize": str(cfg.normalize).lower(), "model_fingerprint": cfg.model_info.fingerprint,
                   "embeddings": str(cfg.embeddings).lower(), "mlm_scores": str(cfg.mlm is not None).lower(),
                   "long_text": cfg.long_text}
  output_files = valid | "WriteEmbeddings" >> WriteEmbeddings(cfg.output, WriteConfig(
      cfg.output_format, cfg.model_info.dim, num_shards=cfg.num_shards, columns=columns, file_metadata=file_metadata))
  dead = ((read.dead_letters, duplicates.dead_letters, embedded.dead_letters, invalid)
          | "AllDeadLetters" >> beam.Flatten())
  error_files = dead | "WriteDeadLetters" >> WriteDeadLetters(cfg.output)
  counts = {
      "read": ((_ones(records, "CountRecords"), _ones(read.dead_letters, "CountUnreadable"),
                _ones(duplicates.dead_letters, "CountDuplicates"))
               | "CountRead" >> beam.Flatten()),
      "written": valid | "CountWritten" >> beam.Map(lambda r: int(not r.chunk_index)),  # records, not windows
      "rows": _ones(valid, "CountRows"),
      "encoded": _ones(embedded.encoded, "CountEncoded"),
      "windows": embedded.encoded | "CountWindows" >> beam.Map(lambda r: int(r.parent_id is not None)),
      "dead_lettered": _ones(dead, "CountDeadLettered"),
      "blank_lines": read.blank_lines,
      "files_failed": _ones(read.files_failed, "CountFilesFailed"),
      "tokens": valid | "CountTokens" >> beam.Map(lambda r: r.num_tokens),
      "truncated": valid | "CountTruncated" >> beam.Map(lambda r: int(r.truncated)),
      **split.counts,
  }
  static = {
      "model": models.describe(cfg.model, cfg.model_info),
      "inputs": {"patterns": list(cfg.input_patterns), "files": len(cfg.inputs)},
      "options": cfg.output_shaping_options(),
      "dimension": cfg.model_info.dim,
      "start_time": start_time,
      "package_versions": manifest_lib.package_versions(),
  }
  files = (output_files, error_files) | "AllFiles" >> beam.Flatten()
  fields = {"drift": drift, "precision_used": _precision_used(p, embedded),
            "incremental": split.unreadable | "IncrementalSection" >> previous_lib.ManifestSection(plan)}
  manifest = {"files": files, "counts": counts, "fields": fields} | "WriteManifest" >> (
      manifest_lib.WriteManifest(cfg.output, static, COUNTS))
  _ = manifest | "UpdateLatest" >> previous_lib.UpdateLatest(plan.pointer, cfg.output)  # last: the run is complete
  return {"records": records, "embeddings": valid, "dead_letters": dead, "manifest": manifest}


def summary_line(m: dict, seconds: float) -> str:
  c = m["counts"]
  rate = c["written"] / seconds if seconds > 0 else 0.0
  ok = "ok" if c["read"] == c["written"] + c["dead_lettered"] else "VIOLATED"
  return (f"bert-embed: {c['read']} records read, {c['written']} written ({c.get('encoded', c['written'])} through "
          f"the model), {c['dead_lettered']} dead-lettered, "
          f"{c['blank_lines']} blank lines, {c['files_failed']} files failed; {c['tokens']} tokens, "
          f"{c['truncated']} truncated; {rate:.1f} records/s; read == written + dead-lettered: {ok}")


def run(argv: Optional[list[str]] = None, test_pipeline: Optional[beam.Pipeline] = None) -> RunOutcome:
  """Validates the options, builds the graph on `test_pipeline` (or a new Pipeline), runs it and waits."""
  options = PipelineOptions(argv if argv is not None else sys.argv[1:])
  cfg = resolve(options)
  manifest_lib.delete_previous_outputs(cfg.output)  # a rerun replaces a partial or stale output
  start = time.time()
  start_iso = datetime.datetime.now(datetime.timezone.utc).isoformat()
  p = test_pipeline if test_pipeline is not None else beam.Pipeline(options=options)
  build_pipeline(p, cfg, start_iso)
  result = p.run()
  result.wait_until_finish()
  manifest = None
  try:
    manifest = manifest_lib.read_manifest(cfg.output)
  except Exception:  # pylint: disable=broad-except  (a remote runner may still be running)
    _LOG.info("no manifest yet at %s", manifest_lib.manifest_path(cfg.output))
  if manifest is not None:
    print(summary_line(manifest, time.time() - start))
    print(f"bert-embed: output {cfg.output}-*.{'parquet' if cfg.output_format == 'parquet' else 'tfrecord'}, "
          f"manifest {manifest_lib.manifest_path(cfg.output)}")
    if (incremental := previous_lib.summary_line(manifest)) is not None:
      print(incremental)
  return RunOutcome(cfg, result, manifest)


def main(argv: Optional[list[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  try:
    run(argv)
  except UsageError as e:
    print(f"bert-embed: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
