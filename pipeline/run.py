"""`bert-embed run`: sharded text -> preprocessor -> encoder (RunInference) -> Parquet/TFRecord + manifest.

Usable as `python -m cli run --input ... --output ... [Beam options]`.
"""
from __future__ import annotations

import datetime
import logging
import sys
import time
import uuid
from operator import attrgetter
from typing import NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

import stores
from formats import output_files as output_files_lib
from formats.output_files import EMBEDDING_FINGERPRINT_KEY, EMBEDDINGS, ERRORS, RESUME_KEY
from pipeline import arguments
from snapshot import manifest as manifest_lib
from models import model_inspection
from snapshot import previous as previous_lib
from pipeline import progress
from models import remote
from snapshot import resume as resume_lib
from snapshot import store_plan as vector_store_lib
from pipeline.config import JobConfig, resolve
from pipeline.options import BertEmbedOptions
from formats.usage import UsageError
from snapshot.checks import RunChecks
from snapshot.commit import Finalizer
from snapshot.store_commit import StoreFinalizer
from formats import compact
from runtime import quiet
from transforms.duplicate_ids import ResolveDuplicateIds
from transforms.embedding.distinct_texts import EmbedDistinctTexts
from transforms.compact_vectors import Calibration, CompactVectors
from transforms.embedding.embed import EmbedTexts
from transforms.drift import DriftCheck
from transforms.checkpoint import WriteCheckpoints
from transforms.incremental import ManifestSection, SplitByPrevious
from transforms.commit_steps import Finalize, RemoveLeftovers, RemoveStaleStaging, UpdateLatest
from transforms.progress_counts import CountPerBundle, Measure
from transforms.resume_rows import resume_records
from transforms.read import InputError, ReadTexts
from transforms.sequencing import After
from transforms.spread import spread_records
from transforms.store_writes import write_store
from transforms.validate import ValidateEmbeddings
from transforms.write import ERRORS_SINK, WriteConfig, WriteDeadLetters, WriteEmbeddings, embedding_sink

COUNTS = ("read", "written", "rows", "dead_lettered", "blank_lines", "files_failed", "tokens", "truncated",
          "encoded", "resumed", "windows",
          "new", "changed", "unchanged", "deleted", "previous_damaged")
_LOG = logging.getLogger(__name__)


class RunOutcome(NamedTuple):
  config: JobConfig
  result: object  # the Beam PipelineResult
  manifest: Optional[dict]


def _measured(pcoll, label: str, *measures: Measure, input_format=None):
  """Count facts for Finalize's "measured": `measures` of `pcoll` in one step."""
  return pcoll | label >> beam.ParDo(CountPerBundle(measures, input_format))


def _per_record(record) -> int:
  """1 for a record's row (its window 0 when it is written as windows), 0 for its other windows."""
  return int(not record.chunk_index)


def _is_window(record) -> int:
  return int(record.parent_id is not None)


def build_pipeline(p: beam.Pipeline, cfg: JobConfig, start_time: str,
                   checks: RunChecks = RunChecks(),
                   finalizers: Sequence[Finalizer] = (), resume: bool = True) -> dict:
  """Wires the job's transforms onto `p`; returns the main PCollections (for tests).

  `checks`: what the run must satisfy to replace the earlier output; `finalizers`: what commits with it, after the
  files and before the manifest (snapshot/commit.py); `resume` False: no earlier run's checkpoint is used.
  """
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
      columns=columns, drift_sample=plan.drift_sample, unit_norm=plan.previous_normalized,
      identities=plan.previous_identities)
  to_encode = split.to_encode
  # Resuming: what killed or failed runs checkpointed is taken from their staging directories (snapshot/resume.py).
  token, started = uuid.uuid4().hex, time.time()
  staging = output_files_lib.staging_dir(cfg.output, token)
  resume_plan = resume_lib.prepare(cfg, plan, staging, token, resume, started)
  resumed = resume_records(to_encode, resume_plan, cfg)
  to_encode = resumed.to_encode
  # Records reach the encoder spread over the workers, not fused with the read of their file: through the shuffle
  # of the --previous join, of --dedupe-texts or of the duplicate-id grouping (unless --limit gathered them), or
  # through one of their own (transforms/spread.py).
  grouped_by_id = cfg.input_format != "text" and cfg.on_duplicate_id != "keep" and not cfg.limit
  if not (plan.previous_files is not None or cfg.dedupe_texts or grouped_by_id or resume_plan.files):
    to_encode = spread_records(to_encode, "SpreadRecords")
  embed = EmbedTexts(cfg.model.preprocessor, cfg.model.encoder, cfg.embed_config)
  if cfg.dedupe_texts:
    embedded = to_encode | "EmbedDistinctTexts" >> EmbedDistinctTexts(embed)
  else:
    embedded = to_encode | "EmbedTexts" >> embed
  if not resume_plan.parts:  # checkpoints of their own: the write waits for a barrier (snapshot/resume.py)
    _ = embedded.encoded | "WriteCheckpoints" >> WriteCheckpoints(
        staging, resume_plan.columns, cfg.model_info.dim, {RESUME_KEY: resume_plan.key})
  rows = embedded.embeddings
  if resumed.resumed is not None and not resume_plan.parts:  # uncompacted: one calibration, one set of checks
    rows = (rows, resumed.resumed) | "WithResumed" >> beam.Flatten()
  compacting = cfg.embeddings and (cfg.output_dtype != compact.FLOAT32 or cfg.truncate_dim is not None)
  carried_ranges = previous_lib.int8_ranges(plan, cfg)
  compactor = CompactVectors(cfg.model_info.dim, cfg.output_dtype, cfg.truncate_dim, cfg.normalize, carried_ranges)
  if compacting:
    rows = rows | "CompactVectors" >> compactor
  max_id = stores.MAX_ID_BYTES.get(cfg.vector_store.config.kind) if cfg.vector_store is not None else None
  checked = rows | "ValidateEmbeddings" >> ValidateEmbeddings(cfg.model_info.dim, columns, max_id)
  encoded_valid = checked.valid
  invalid = [checked.dead_letters]
  # Rows read back in the output's form (carried from a previous output; resumed from staged shards) are validated
  # on their own, so that the rows this run encoded stay apart (a vector store upserts only those, and the resumed
  # ones), and written on their own: a Flatten would only cut the encoded rows' fused read-to-write stage (the
  # DirectRunner then holds all rows, and their staged shards are written at the end, not as checkpoints).
  read_back, store_rows = [], [encoded_valid]
  for label, pcoll in (("Carried", split.carried), ("Resumed", resumed.resumed if resume_plan.parts else None)):
    if pcoll is not None:
      back = pcoll | f"Validate{label}" >> ValidateEmbeddings(cfg.model_info.dim, columns, max_id)
      read_back.append(back.valid)
      invalid.append(back.dead_letters)
      store_rows += [back.valid] if label == "Resumed" else []
  invalid = tuple(invalid) | "InvalidAll" >> beam.Flatten()
  # Every file is written into this run's staging directory and committed by the Finalize step, only once the run's
  # checks passed (snapshot/commit.py). The first step removes what failed runs of the prefix left; writes wait.
  cleared = p | "RemoveStaleStaging" >> RemoveStaleStaging(cfg.output, token, keep_resume_files=resume)
  file_metadata = {"model": cfg.model.name, "dimension": str(cfg.model_info.dim), "pooling": cfg.pooling,
                   "normalize": str(cfg.normalize).lower(), "model_fingerprint": cfg.model_info.fingerprint,
                   "embeddings": str(cfg.embeddings).lower(), "mlm_scores": str(cfg.mlm is not None).lower(),
                   "long_text": cfg.long_text, "output_dtype": cfg.output_dtype,
                   "truncate_dim": str(cfg.truncate_dim or cfg.model_info.dim),
                   EMBEDDING_FINGERPRINT_KEY: plan.fingerprint}
  if resume_plan.parts:  # its staged shards are its checkpoints
    file_metadata[RESUME_KEY] = resume_plan.key
  write_config = WriteConfig(cfg.output_format, cfg.model_info.dim, num_shards=cfg.num_shards, columns=columns,
                             file_metadata=file_metadata)
  branches = [encoded_valid] + read_back
  if not resume_plan.parts and read_back:  # one writer: --num-shards N writes N files
    branches = [tuple(branches) | "WithCarriedOver" >> beam.Flatten()]
  written = [branch | f"AfterCleanUp{i or ''}" >> After(cleared)
             | f"WriteEmbeddings{i or ''}" >> WriteEmbeddings(cfg.output, write_config, staging_dir=staging,
                                                              parts=resume_plan.parts and not i)
             for i, branch in enumerate(branches)]
  dead = ((read.dead_letters, duplicates.dead_letters, embedded.dead_letters, invalid)
          | "AllDeadLetters" >> beam.Flatten())
  error_files = (dead | "DeadLettersAfterCleanUp" >> After(cleared)
                 | "WriteDeadLetters" >> WriteDeadLetters(cfg.output, staging_dir=staging))
  read_one = Measure("read", progress="read")
  measured = [
      _measured(records, "CountRecords", read_one, input_format=cfg.input_format),
      _measured(read.dead_letters, "CountUnreadable", read_one),
      _measured(duplicates.dead_letters, "CountDuplicates", read_one),
      *(_measured(b, f"CountWritten{i or ''}", Measure("written", _per_record, "written"), Measure("rows"),
                  Measure("tokens", attrgetter("num_tokens")), Measure("truncated", attrgetter("truncated")))
        for i, b in enumerate(branches)),
      _measured(embedded.encoded, "CountEncoded", Measure("encoded", _per_record, "encoded"),  # records, not windows
                Measure("windows", _is_window)),
      _measured(dead, "CountDeadLettered", Measure("dead_lettered")),
      _measured(read.files_failed, "CountFilesFailed", Measure("files_failed")),
  ]
  counts = {"blank_lines": read.blank_lines,
            **{kind: pcoll for kind, pcoll in split.counts.items() if pcoll is not None}}  # None: 0 without a shuffle
  if resumed.resumed is not None:
    measured.append(_measured(resumed.resumed, "CountResumed", Measure("resumed")))
  static = {
      "model": model_inspection.describe(cfg.model, cfg.model_info),
      "inputs": {"patterns": list(cfg.input_patterns), "files": len(cfg.inputs)},
      "options": cfg.output_shaping_options(),
      "dimension": cfg.model_info.dim,
      "start_time": start_time,
      "package_versions": manifest_lib.package_versions(),
  }
  files = (*written, error_files) | "AllFiles" >> beam.Flatten()
  # The manifest's computed fields; those known at launch are static (fewer steps: see transforms/manifest_facts.py).
  fields, tallies = {}, {}
  if split.drift_sample is None:
    static["drift"] = None
  else:
    fields["drift"] = embedded.embeddings | "DriftCheck" >> DriftCheck(split.drift_sample, plan.drift_sample)
  if split.unreadable is None:  # no previous output: nothing to find unreadable
    static["incremental"] = previous_lib.manifest_section(plan)
  else:
    fields["incremental"] = split.unreadable | "IncrementalSection" >> ManifestSection(plan)
  if resumed.unreadable is None:
    static["resume"] = resume_plan.section()
  else:
    fields["resume"] = (resumed.unreadable | "UnreadableCheckpoints" >> beam.combiners.ToList()
                        | "ResumeSection" >> beam.Map(lambda unreadable, rp: rp.section(unreadable), resume_plan))
  static["vectors"] = compact.describe_form(cfg.model_info.dim, cfg.output_dtype, cfg.truncate_dim,
                                            cfg.normalize) if cfg.embeddings else None
  if compactor.calibration is not None:
    fields[previous_lib.INT8_RANGES_KEY] = compactor.calibration | "Int8RangesJson" >> beam.Map(
        lambda c: c.to_json("this run's vectors"))
  elif carried_ranges is not None:
    static[previous_lib.INT8_RANGES_KEY] = Calibration(carried_ranges, 0).to_json(
        f"the previous output {plan.previous.prefix} (kept so that its carried rows and this run's share them)")
  elif cfg.output_dtype == compact.INT8:
    static[previous_lib.INT8_RANGES_KEY] = None
  if embedded.precision_used is None:
    static["precision_used"] = {}
  else:  # {precision: records encoded in it}, as each worker resolved --precision (runtime/precision.py)
    tallies["precision_used"] = embedded.precision_used
  count_names, partials = COUNTS, {}
  if cfg.vector_store is not None:  # the job stages the store's changes; Finalize applies them after the checks
    store_plan = vector_store_lib.plan_store(cfg.vector_store, plan)
    store_encoded = store_rows[0] if len(store_rows) == 1 else tuple(store_rows) | "StoreRows" >> beam.Flatten()
    valid = branches[0] if len(branches) == 1 else tuple(branches) | "AllRows" >> beam.Flatten()
    store_counts, store_fields, partials = write_store(store_plan, cfg.model_info.dim, store_encoded, valid,
                                                       split.stale_ids, p)
    counts.update(store_counts)
    fields.update(store_fields)
    count_names += vector_store_lib.COUNTS
    finalizers = (*finalizers, StoreFinalizer(store_plan))
  kinds = {EMBEDDINGS: embedding_sink(write_config), ERRORS: ERRORS_SINK}
  manifest = ({"files": files, "counts": counts, "measured": tuple(measured), "fields": fields, "tallies": tallies,
               "partials": partials, "dead_letters": dead, "after": cleared}
              | "Finalize" >> Finalize(cfg.output, staging, static, count_names, kinds, checks, finalizers))
  latest = manifest | "UpdateLatest" >> UpdateLatest(plan.pointer, cfg.output)  # the run is complete
  _ = latest | "RemoveLeftovers" >> RemoveLeftovers(resume_plan.remove_after_commit, plan.pointer, started)
  return {"records": records, "dead_letters": dead, "manifest": manifest, "resume": resume_plan}


def timing(seconds: float, totals: Optional[dict], end: Optional[float] = None) -> str:
  """Wall time, start-up (until the worker's encoder was loaded) and the encoding rate after it, when known.

  The rate counts encoded records over the time from the encoder's load to the last encoded record, so it leaves
  out imports, model inspection, graph construction and the model load, which a one-line job is mostly made of.
  """
  text = f"{seconds:.1f} s wall"
  totals = totals or {}
  ready, last = totals.get("encoder_ready") or 0.0, totals.get("last_encoded_at") or 0.0
  if ready:
    end = time.time() if end is None else end
    text += f", {max(0.0, seconds - (end - ready)):.1f} s start-up"
    if last > ready and totals.get("encoded"):
      text += f", encoding {totals['encoded'] / (last - ready):.1f} records/s"
  return text


def summary_line(m: dict, seconds: float, totals: Optional[dict] = None) -> str:
  """The run's counts and timings; `seconds` is the total wall time, `totals` the progress side channel's."""
  c = m["counts"]
  if totals is None or not totals.get("encoder_ready"):
    when = f"{seconds:.1f} s wall, {c['written'] / seconds if seconds > 0 else 0.0:.1f} records/s overall"
  else:
    when = timing(seconds, totals)
  ok = "ok" if c["read"] == c["written"] + c["dead_lettered"] else "VIOLATED"
  resumed = f", {c['resumed']} resumed from a stopped run's checkpoints" if c.get("resumed") else ""
  return (f"bert-embed: {c['read']} records read, {c['written']} written ({c.get('encoded', c['written'])} through "
          f"the model{resumed}), {c['dead_lettered']} dead-lettered, "
          f"{c['blank_lines']} blank lines, {c['files_failed']} files failed; {c['tokens']} tokens, "
          f"{c['truncated']} truncated; {when}; read == written + dead-lettered: {ok}")


def is_verbose(argv: list[str]) -> bool:
  """Whether `argv` (checked job arguments) asks for --verbose."""
  return bool(PipelineOptions(argv).view_as(BertEmbedOptions).verbose)


def run(argv: Optional[list[str]] = None, test_pipeline: Optional[beam.Pipeline] = None, *,
        started_at: Optional[float] = None) -> RunOutcome:
  """Validates the options, builds the graph on `test_pipeline` (or a new Pipeline), runs it and waits.

  Everything that can fail before the job (arguments, output, inputs, models, the graph's construction) is checked
  at launch; raises UsageError. The earlier output at the prefix is replaced by the job's last step, only when the
  run's checks pass (else the job raises snapshot.checks.RunCheckError and the earlier output stays).
  `started_at` (time.time()) is where the summary's wall time starts: command-line entry points pass their
  process's start, so the imports count; by default, this call.
  """
  start = time.time() if started_at is None else started_at
  argv = arguments.join_negative_values(argv if argv is not None else sys.argv[1:])
  arguments.check(argv)
  options = PipelineOptions(argv)
  flags = options.view_as(BertEmbedOptions)
  # Quieting the process is the command's decision (cli/main.py), not the library's. In the command's quiet
  # process this import comes first, so that no module's own `import tensorflow` prints the start-up noise.
  quiet.import_tensorflow()
  cfg = resolve(options)
  start_iso = datetime.datetime.now(datetime.timezone.utc).isoformat()
  p = test_pipeline if test_pipeline is not None else beam.Pipeline(
      runner=remote.local_runner(options.view_as(StandardOptions).runner), options=options)
  try:
    graph = build_pipeline(p, cfg, start_iso, RunChecks(flags.max_dead_letter_fraction),
                           resume=not flags.no_resume)
  except InputError as e:  # reading options the transforms refuse
    raise UsageError(str(e)) from None
  total_bytes = progress.input_bytes(cfg.inputs, cfg.input_format)
  # A runner on this machine (its workers inherit the side channel's directory): progress from the side channel.
  local = not remote.is_remote_runner(p.runner)
  reporter = progress.Reporter(total_bytes=total_bytes, print_lines=not flags.quiet) if local else None
  if not flags.quiet and (line := graph["resume"].progress_line()) is not None:
    print(line, flush=True)
  if reporter is not None:
    reporter.start()
  try:
    result = p.run()
    if reporter is None and not flags.quiet:  # a remote runner: its counters, queried while the job runs
      reporter = progress.Reporter(total_bytes=total_bytes, source=lambda: progress.metrics_totals(result)).start()
    result.wait_until_finish()
  finally:
    totals = reporter.stop() if reporter is not None else None
  manifest = None
  try:
    manifest = manifest_lib.read_manifest(cfg.output)
  except Exception:  # pylint: disable=broad-except  (a remote runner may still be running)
    _LOG.info("no manifest yet at %s", manifest_lib.manifest_path(cfg.output))
  if manifest is not None and manifest.get("start_time") != start_iso:  # an earlier run's: the job has not run
    _LOG.info("the manifest at %s is an earlier run's", manifest_lib.manifest_path(cfg.output))
    manifest = None
  if manifest is not None:
    print(summary_line(manifest, time.time() - start, totals))
    print(f"bert-embed: output {cfg.output}-*.{'parquet' if cfg.output_format == 'parquet' else 'tfrecord'}, "
          f"manifest {manifest_lib.manifest_path(cfg.output)}")
    if (incremental := previous_lib.summary_line(manifest)) is not None:
      print(incremental)
    if (store := vector_store_lib.summary_line(manifest)) is not None:
      print(store)
  return RunOutcome(cfg, result, manifest)
