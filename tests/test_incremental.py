"""Incremental re-embedding (--previous): the id/text_sha256 join, the fingerprint decision, and the proof that a
second run encodes only new and changed records yet writes what a full recompute writes.

The end-to-end tests share one scenario (module fixtures): run 1 under ROOT, then 10% of the texts changed, some
records added and some deleted, run 2 with `--previous latest:ROOT`, a full recompute of the same corpus, and a run
with another model against run 2.
"""
import json
import os
import shutil
import types

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from snapshot import fingerprint as fingerprint_lib
from snapshot import latest_pointer
from snapshot import previous as previous_lib
from formats.usage import UsageError
from pipeline.run import run
from formats import columns as columns_lib
from transforms import drift as drift_lib
from transforms import incremental
from formats.columns import OutputColumns
from formats.records import EmbeddingRecord, TextRecord, text_sha256

SEQ = 32
DIM = 4
WORDS = ("the cat dog bird fish sat run walk jump play on the mat hat house tree car hello world good bad big "
         "small red blue green quick brown fox lazy over under").split()


# --------------------------------------------------------------------------------------------
# The join, on hand-made previous outputs (no model).


def _previous_rows():
  rng = np.random.default_rng(0)
  rows = []
  for i, text in enumerate(["kept", "edited before", "gone"]):
    rows.append(EmbeddingRecord(f"id{i}", rng.standard_normal(DIM).astype(np.float32), 3 + i, i == 1,
                                text_sha256(text), None, np.arange(3 + i, dtype=np.int32),
                                rng.standard_normal((3 + i, DIM)).astype(np.float32)))
  return rows


def _write_previous(tmp_path, output_format):
  rows = _previous_rows()
  if output_format == "parquet":
    path = str(tmp_path / "prev-00000-of-00001.parquet")
    pq.write_table(columns_lib.records_to_table(rows, OutputColumns(tokens=True), DIM), path)
  else:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    path = str(tmp_path / "prev-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
      for example in columns_lib.records_to_examples(rows, OutputColumns(tokens=True), DIM):
        w.write(example)
  return [path], rows


NEW_RECORDS = [TextRecord("id0", "kept"), TextRecord("id1", "edited after"), TextRecord("id3", "added"),
               TextRecord("id0", "kept")]  # a duplicate id (--on-duplicate-id keep) with the same text


@pytest.mark.parametrize("output_format", ["parquet", "tfrecord"])
def test_split_carries_unchanged_rows_and_counts_every_kind(tmp_path, output_format):
  files, old = _write_previous(tmp_path, output_format)
  p = TestPipeline()
  split = (p | beam.Create(NEW_RECORDS)) | incremental.SplitByPrevious(
      files, output_format, DIM, carry_over=True, columns=OutputColumns(text=True, tokens=True))

  def check_carried(rows):
    assert len(rows) == 2 and {r.id for r in rows} == {"id0"}
    for r in rows:
      assert r.text == "kept" and r.num_tokens == old[0].num_tokens and r.text_sha256 == old[0].text_sha256
      np.testing.assert_array_equal(r.embedding, old[0].embedding)
      np.testing.assert_array_equal(r.token_ids, old[0].token_ids)
      np.testing.assert_array_equal(r.sequence_output, old[0].sequence_output)

  assert_that(split.carried, check_carried, label="Carried")
  assert_that(split.to_encode | beam.Map(lambda r: r.id), equal_to(["id1", "id3"]), label="ToEncode")
  totals = {k: v | f"Sum{k}" >> beam.CombineGlobally(sum) for k, v in split.counts.items()}
  for kind, expected in {"new": 1, "changed": 1, "unchanged": 2, "deleted": 1}.items():
    assert_that(totals[kind], equal_to([expected]), label=f"Count{kind}")
  result = p.run()
  result.wait_until_finish()
  carried = result.metrics().query(MetricsFilter().with_name("records_carried_over"))["counters"]
  assert sum(c.committed for c in carried) == 2


def _window_rows():
  """Record w (two windows, MLM scores, no embedding column) and record x (one window), as --long-text chunk
  --chunk-output rows --mlm-scores --mlm-per-token --no-embeddings writes them."""
  rows = []
  for parent, text, windows in (("w", "a long text", 2), ("x", "short", 1)):
    for k in range(windows):
      scored = k == 0  # window 1 scores nothing: no pseudo-perplexity
      rows.append(EmbeddingRecord(
          f"{parent}#{k}", None, 3, k == 0 and windows > 1, text_sha256(text), mlm_pll=-1.5 if scored else 0.0,
          mlm_scored_tokens=int(scored), mlm_pseudo_perplexity=4.5 if scored else None,
          mlm_token_scores=np.array([np.nan, -1.5 if scored else np.nan, np.nan], np.float32),
          parent_id=parent, chunk_index=k, chunk_start_piece=k, chunk_end_piece=k + 1))
  return rows


WINDOW_COLUMNS = OutputColumns(embeddings=False, mlm=True, mlm_per_token=True, windows=True)


def _write_window_rows(tmp_path, output_format, rows) -> str:
  if output_format == "parquet":
    path = str(tmp_path / "prev-00000-of-00002.parquet")
    pq.write_table(columns_lib.records_to_table(rows, WINDOW_COLUMNS, DIM), path)
  else:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    path = str(tmp_path / "prev-00000-of-00002.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
      for example in columns_lib.records_to_examples(rows, WINDOW_COLUMNS, DIM):
        w.write(example)
  return path


@pytest.mark.parametrize("output_format", ["parquet", "tfrecord"])
def test_window_rows_with_mlm_scores_are_carried_whole(tmp_path, output_format):
  rows = _window_rows()
  columns = WINDOW_COLUMNS
  path = _write_window_rows(tmp_path, output_format, rows)
  p = TestPipeline()
  split = (p | beam.Create([TextRecord("w", "a long text"), TextRecord("y", "new")])) | incremental.SplitByPrevious(
      [path], output_format, DIM, carry_over=True, columns=columns)

  def check_carried(carried):
    assert sorted(r.id for r in carried) == ["w#0", "w#1"]
    for got in carried:
      expected = rows[int(got.id[-1])]
      for name in ("parent_id", "chunk_index", "chunk_start_piece", "chunk_end_piece", "mlm_scored_tokens",
                   "num_tokens", "truncated", "text_sha256", "embedding", "mlm_pseudo_perplexity"):
        assert getattr(got, name) == getattr(expected, name), name
      assert got.mlm_pll == pytest.approx(expected.mlm_pll)
      np.testing.assert_array_equal(got.mlm_token_scores, expected.mlm_token_scores)  # NaNs where they were

  assert_that(split.carried, check_carried, label="Carried")
  assert_that(split.to_encode | beam.Map(lambda r: r.id), equal_to(["y"]), label="ToEncode")
  totals = {k: v | f"Sum{k}" >> beam.CombineGlobally(sum) for k, v in split.counts.items()}
  for kind, expected in {"new": 1, "changed": 0, "unchanged": 1, "deleted": 1}.items():  # x: 1 record, 1 row
    assert_that(totals[kind], equal_to([expected]), label=f"Count{kind}")
  p.run().wait_until_finish()


@pytest.mark.parametrize("output_format", ["parquet", "tfrecord"])
def test_windows_are_encoded_again_when_part_of_the_previous_output_is_unreadable(tmp_path, output_format):
  """The windows that were read are intact, but others of the same record may have been in the unreadable part."""
  path = _write_window_rows(tmp_path, output_format, _window_rows())
  garbage = str(tmp_path / f"prev-00001-of-00002.{output_format}")
  with open(garbage, "wb") as f:
    f.write(b"\x00not a previous output\xff" * 5)
  p = TestPipeline()
  split = (p | beam.Create([TextRecord("w", "a long text"), TextRecord("y", "new")])) | incremental.SplitByPrevious(
      [path, garbage], output_format, DIM, carry_over=True, columns=WINDOW_COLUMNS)
  assert_that(split.carried, equal_to([]), label="NothingCarried")
  assert_that(split.to_encode | beam.Map(lambda r: r.id), equal_to(["w", "y"]), label="ToEncode")
  assert_that(split.unreadable | beam.Map(lambda u: u[0]), equal_to([garbage]), label="Unreadable")
  totals = {k: v | f"Sum{k}" >> beam.CombineGlobally(sum) for k, v in split.counts.items()}
  for kind, expected in {"new": 1, "changed": 0, "unchanged": 1, "deleted": 1, "previous_damaged": 1}.items():
    assert_that(totals[kind], equal_to([expected]), label=f"Count{kind}")
  p.run().wait_until_finish()


def test_split_without_carry_over_encodes_everything_and_samples_for_drift(tmp_path):
  files, old = _write_previous(tmp_path, "parquet")
  p = TestPipeline()
  split = (p | beam.Create(NEW_RECORDS[:3])) | incremental.SplitByPrevious(
      files, "parquet", DIM, carry_over=False, drift_sample=2)
  assert_that(split.carried, equal_to([]), label="NothingCarried")
  assert_that(split.to_encode | beam.Map(lambda r: r.id), equal_to(["id0", "id1", "id3"]), label="ToEncode")
  expected = sorted(old, key=lambda r: drift_lib.sample_key(r.id))[:2]
  assert_that(split.drift_sample | beam.Map(lambda s: [t[1] for t in s]), equal_to([[r.id for r in expected]]),
              label="Sample")
  # The drift check compares sampled records whose text is unchanged: id0 (vector negated) and id2, not id1.
  new_vectors = [EmbeddingRecord("id0", -old[0].embedding, 1, False, old[0].text_sha256),
                 EmbeddingRecord("id1", old[1].embedding, 1, False, text_sha256("edited after")),
                 EmbeddingRecord("id2", old[2].embedding, 1, False, old[2].text_sha256)]
  drift = (p | "New" >> beam.Create(new_vectors)) | drift_lib.DriftCheck(split.drift_sample, 2)
  cosines = sorted(-1.0 if r.id == "id0" else 1.0 for r in expected if r.id != "id1")

  def check_drift(summaries):
    (summary,) = summaries
    assert summary["requested"] == 2 and summary["sample_size"] == len(cosines)
    assert summary["min_cosine"] == pytest.approx(cosines[0]) and summary["max_cosine"] == pytest.approx(cosines[-1])

  assert_that(drift, check_drift, label="Drift")
  p.run().wait_until_finish()


def test_no_previous_output_sends_every_record_to_the_encoder():
  p = TestPipeline()
  split = (p | beam.Create(NEW_RECORDS[:3])) | incremental.SplitByPrevious(None)
  assert split.drift_sample is None
  assert_that(split.to_encode | beam.Map(lambda r: r.id), equal_to(["id0", "id1", "id3"]), label="ToEncode")
  assert_that(split.counts["new"] | beam.CombineGlobally(sum), equal_to([3]), label="New")
  p.run().wait_until_finish()


# --------------------------------------------------------------------------------------------
# The decision: fingerprints, reasons and where the previous output is.

OPTIONS = {"seq_length": 32, "pooling": "cls", "normalize": False, "layers": None, "precision": "fp32",
           "max_text_bytes": 1024, "keep_text": False, "emit_tokens": False, "format": "parquet",
           "input_format": "jsonl", "id_field": "id", "text_field": "text", "text_pair_field": None, "limit": None,
           "on_duplicate_id": "dead-letter"}


@pytest.fixture
def plan_cfg(job_config):
  """plan_cfg(output, previous, model=..., dim=..., **field_changes) -> a JobConfig."""
  def make(output, previous, model="m" * 64, dim=32, **changes):
    base = job_config()
    return job_config(output=output, previous=previous, drift_sample=7,
                      model_info=base.model_info._replace(fingerprint=model, dim=dim), **changes)
  return make


def _previous(manifest, prefix="/runs/1/emb", root=None):
  return latest_pointer.PreviousOutput(prefix, prefix, manifest, root)


PREVIOUS_MANIFEST = {"model": {"fingerprint": "m" * 64}, "dimension": 32, "options": OPTIONS,
                     "output_files": ["/runs/1/emb-00000-of-00001.parquet"]}


@pytest.mark.parametrize("changes,mode,reason,drift", [
    ({}, "incremental", "", 0),
    ({"output_format": "tfrecord", "keep_text": True, "limit": 5, "on_duplicate_id": "keep", "num_shards": 3,
      "dedupe_texts": True, "batch_size": 8, "max_batch_tokens": 256, "bucket_lengths": None,
      "preprocess_batch_size": 16}, "incremental", "", 0),
    ({"pooling": "mean"}, "full", 'pooling "cls" -> "mean"', 7),
    ({"normalize": True, "seq_length": 64}, "full", "normalize false -> true; seq_length 32 -> 64", 7),
    ({"long_text": "chunk", "chunk_stride": 4}, "full", 'chunk_output null -> "rows"; chunk_stride null -> 4; '
     'long_text "truncate" -> "chunk"', 7),
    ({"model": "n" * 64}, "full", "the model changed (fingerprint mmmmmmmmmmmm… -> nnnnnnnnnnnn…)", 7),
    ({"dim": 64}, "full", "dimension 32 -> 64", 0),  # vectors of other lengths cannot be compared
    ({"emit_tokens": True}, "full", "--emit-tokens needs token_ids", 0),
])
def test_plan_reuses_vectors_only_when_the_fingerprint_matches(plan_cfg, changes, mode, reason, drift):
  changes = dict(changes)
  kwargs = {k: changes.pop(k) for k in ("model", "dim", "emit_tokens") if k in changes}
  plan = previous_lib.plan(plan_cfg("/runs/2/emb", _previous(PREVIOUS_MANIFEST), **kwargs, **changes))
  assert plan.mode == mode and reason in plan.reason and plan.drift_sample == drift
  assert plan.previous_files == PREVIOUS_MANIFEST["output_files"] and plan.previous_format == "parquet"
  previous_fingerprint = fingerprint_lib.fingerprint(fingerprint_lib.manifest_fingerprint_inputs(PREVIOUS_MANIFEST))
  assert (plan.fingerprint == previous_fingerprint) == (mode == "incremental" or "emit-tokens" in reason)
  section = previous_lib.manifest_section(plan)
  assert section["mode"] == mode and section["previous"] == "/runs/1/emb" and section["latest_pointer"]
  json.dumps(section)


@pytest.mark.parametrize("precision,used,mode,reason", [
    ("bf16", {"bf16": 10}, "incremental", ""),
    ("auto", {"bf16": 10, "fp32": 0}, "incremental", ""),
    ("auto", {"bf16": 6, "fp32": 4}, "full", "mixes precisions (bf16, fp32"),
    ("fp32", {"fp32": 10}, "incremental", ""),
])
def test_plan_reuses_only_vectors_of_one_resolved_precision(plan_cfg, precision, used, mode, reason):
  options = {**OPTIONS, "precision": precision}
  manifest = {**PREVIOUS_MANIFEST, "options": options, "precision_used": used}
  plan = previous_lib.plan(plan_cfg("/runs/2/emb", _previous(manifest), precision=precision))
  assert plan.mode == mode and reason in plan.reason
  assert previous_lib.manifest_section(plan)["previous_precision_used"] == sorted(k for k, n in used.items() if n)


def test_previous_files_are_found_next_to_the_previous_prefix(plan_cfg):
  moved = {**PREVIOUS_MANIFEST, "output_files": ["out/emb-00000-of-00002.parquet", "out/emb-00001-of-00002.parquet"]}
  plan = previous_lib.plan(plan_cfg("/copy/run2/emb", _previous(moved, prefix="/copy/run1/emb")))
  assert plan.previous_files == ["/copy/run1/emb-00000-of-00002.parquet", "/copy/run1/emb-00001-of-00002.parquet"]


def test_plan_without_a_previous_output_is_full_and_says_why(plan_cfg):
  assert "no --previous" in previous_lib.plan(plan_cfg("/runs/2/emb", None)).reason
  pointer = latest_pointer.PreviousOutput("latest:/root", None, None, "/root")
  first = previous_lib.plan(plan_cfg("/root/run1/emb", pointer))
  assert first.mode == "full" and "/root/LATEST does not exist" in first.reason
  assert first.pointer == "/root/LATEST" and first.previous_files is None


def test_pointer_goes_to_the_latest_root_or_next_to_the_output(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert latest_pointer.pointer_path("gs://b/emb/2024-01-01/emb", "gs://b/emb/") == "gs://b/emb/LATEST"
  assert latest_pointer.pointer_path("gs://b/emb/2024-01-01/emb", None) == "gs://b/emb/2024-01-01/LATEST"
  assert latest_pointer.pointer_path("gs://b/other/emb", "gs://b/emb") == "gs://b/other/LATEST"
  assert latest_pointer.pointer_path("out/emb", None) == str(tmp_path / "out" / "LATEST")
  assert latest_pointer.pointer_path("root/a/b/emb", "./root") == str(tmp_path / "root" / "LATEST")
  assert not latest_pointer.is_under("rootx/emb", "root")


def test_resolve_previous_refuses_the_output_itself_and_incomplete_outputs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "root" / "run1").mkdir(parents=True)
  with pytest.raises(UsageError, match="is the previous output"):
    latest_pointer.resolve_previous("./root/run1/emb", str(tmp_path / "root" / "run1" / "emb"))
  with pytest.raises(UsageError, match="emb-manifest.json does not exist"):
    latest_pointer.resolve_previous("root/run1/emb", "root/run2/emb")
  assert latest_pointer.resolve_previous(None, "root/run2/emb") is None
  first = latest_pointer.resolve_previous("latest:root", "root/run1/emb")
  assert first.prefix is None and first.manifest is None and first.latest_root == "root"
  latest_pointer.write_pointer(str(tmp_path / "root" / "LATEST"), "root/run1/emb")
  assert (tmp_path / "root" / "LATEST").read_text() == str(tmp_path / "root" / "run1" / "emb") + "\n"
  with pytest.raises(UsageError, match="is the previous output"):  # rerunning the last run's output
    latest_pointer.resolve_previous("latest:root", "root/run1/emb")
  (tmp_path / "root" / "run1" / "emb-manifest.json").write_text(json.dumps(
      {"schema_version": 1, **PREVIOUS_MANIFEST, "output_files": []}))
  found = latest_pointer.resolve_previous("latest:root/", "root/run2/emb")
  assert found.prefix == str(tmp_path / "root" / "run1" / "emb") and found.manifest["dimension"] == 32
  with pytest.raises(UsageError, match="needs a ROOT"):
    latest_pointer.resolve_previous("latest:", "root/run2/emb")


# --------------------------------------------------------------------------------------------
# End to end with the tiny model: the proof.


def _texts(rng, n):
  return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) + "." for _ in range(n)]


def _write_corpus(path, records):
  with open(path, "w", encoding="utf-8") as f:
    for record_id, text in records.items():
      f.write(json.dumps({"id": record_id, "text": text}) + "\n")


def _counter(outcome, name):
  results = outcome.result.metrics().query(MetricsFilter().with_name(name))["counters"]
  return sum(r.committed if r.committed is not None else r.attempted for r in results)


def _rows(outcome):
  tables = [pq.read_table(f) for f in outcome.manifest["output_files"]]
  return {r["id"]: r for r in pa.concat_tables(tables).to_pylist()}


def _run(tiny_model_dir, corpus, output, *extra, model=None):
  argv = ["--model", model or tiny_model_dir, "--input", corpus, "--input-format", "jsonl", "--output", output,
          "--seq-length", str(SEQ), "--pooling", "cls", *extra]
  return run(argv, test_pipeline=TestPipeline(argv=argv))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, tiny_model_dir):
  """Run 1 (TFRecord, tokens) under ROOT; 10% of texts changed, 5 added, 3 deleted; run 2 via latest:ROOT."""
  tmp = tmp_path_factory.mktemp("incremental")
  root = tmp / "root"
  rng = np.random.default_rng(7)
  first = {f"doc-{i:02d}": text for i, text in enumerate(_texts(rng, 40))}
  run1 = _run(tiny_model_dir, _corpus(tmp, "v1", first), str(root / "run1" / "emb"), "--format", "tfrecord",
              "--emit-tokens", "--previous", f"latest:{root}")
  pointer_after_run1 = (root / "LATEST").read_text()
  second = dict(first)
  changed = [f"doc-{i:02d}" for i in (3, 11, 25, 38)]
  deleted = [f"doc-{i:02d}" for i in (0, 17, 30)]
  added = [f"new-{i}" for i in range(5)]
  for record_id, text in zip(changed, _texts(rng, len(changed))):
    second[record_id] = text
  for record_id in deleted:
    del second[record_id]
  second.update(zip(added, _texts(rng, len(added))))
  corpus2 = _corpus(tmp, "v2", second)
  run2 = _run(tiny_model_dir, corpus2, str(root / "run2" / "emb"), "--emit-tokens", "--keep-text",
              "--previous", f"latest:{root}")
  return types.SimpleNamespace(tmp=tmp, root=root, run1=run1, run2=run2, corpus2=corpus2, second=second,
                               changed=changed, deleted=deleted, added=added, pointer_after_run1=pointer_after_run1)


def _corpus(tmp, name, records):
  path = str(tmp / f"{name}.jsonl")
  _write_corpus(path, records)
  return path


def test_first_run_under_a_root_is_full_and_points_latest_at_itself(scenario):
  m = scenario.run1.manifest
  assert m["incremental"]["mode"] == "full" and "LATEST does not exist" in m["incremental"]["reason"]
  assert m["counts"]["new"] == 40 and m["counts"]["encoded"] == 40 and m["drift"] is None
  assert scenario.pointer_after_run1.strip() == str(scenario.root / "run1" / "emb")


def test_second_run_encodes_only_new_and_changed_records(scenario):
  m, c = scenario.run2.manifest, scenario.run2.manifest["counts"]
  n_new, n_changed = len(scenario.added), len(scenario.changed)
  assert _counter(scenario.run2, "records_encoded") == n_new + n_changed == 9  # the pipeline's own metric
  assert _counter(scenario.run2, "records_carried_over") == 40 - 3 - 4
  assert {k: c[k] for k in ("new", "changed", "unchanged", "deleted", "encoded")} == {
      "new": 5, "changed": 4, "unchanged": 33, "deleted": 3, "encoded": 9}
  assert c["read"] == c["written"] == 42 and c["dead_lettered"] == 0
  assert m["incremental"]["mode"] == "incremental" and m["incremental"]["reason"] == ""
  assert m["incremental"]["previous"] == str(scenario.root / "run1" / "emb")
  assert (scenario.root / "LATEST").read_text().strip() == str(scenario.root / "run2" / "emb")


@pytest.fixture(scope="module")
def reexported_model_dir(tmp_path_factory, tiny_config_file, tiny_vocab_file):
  """The tiny model's source exported a second time, from a copy of its config at another path."""
  from modeling import export  # pylint: disable=import-outside-toplevel
  tmp = tmp_path_factory.mktemp("reexport")
  config_copy = str(tmp / "tiny.json")
  shutil.copy(tiny_config_file, config_copy)
  export.export_model(f"random:{config_copy}", str(tmp / "export"), vocab=tiny_vocab_file, seq_length=SEQ, seed=1)
  return str(tmp / "export")


@pytest.fixture(scope="module")
def full_recompute(scenario, tiny_model_dir, reexported_model_dir):
  """Corpus 2 embedded from scratch (no --previous), with the re-exported model."""
  return _run(tiny_model_dir, scenario.corpus2, str(scenario.tmp / "full" / "emb"), "--emit-tokens", "--keep-text",
              model=reexported_model_dir)


def test_second_run_output_equals_a_full_recompute(scenario, full_recompute):
  full = full_recompute
  assert full.manifest["incremental"]["mode"] == "full" and _counter(full, "records_encoded") == 42
  assert full.manifest["incremental"]["fingerprint"] == scenario.run2.manifest["incremental"]["fingerprint"]
  incremental_rows, full_rows = _rows(scenario.run2), _rows(full)
  assert sorted(incremental_rows) == sorted(full_rows) == sorted(scenario.second)
  for record_id, expected in full_rows.items():
    got = incremental_rows[record_id]
    assert got["text"] == expected["text"] == scenario.second[record_id]
    assert (got["text_sha256"], got["num_tokens"], got["truncated"], got["token_ids"]) == (
        expected["text_sha256"], expected["num_tokens"], expected["truncated"], expected["token_ids"])
    np.testing.assert_allclose(got["embedding"], expected["embedding"], atol=1e-5)
    np.testing.assert_allclose(np.array(got["sequence_output"]), np.array(expected["sequence_output"]), atol=1e-5)


def test_output_equal_to_previous_is_refused_before_anything_is_touched(scenario, tiny_model_dir):
  run2 = str(scenario.root / "run2" / "emb")
  before = sorted(os.listdir(scenario.root / "run2"))
  for previous in (run2, f"latest:{scenario.root}"):
    with pytest.raises(UsageError, match="is the previous output"):
      _run(tiny_model_dir, scenario.corpus2, run2, "--previous", previous)
  assert sorted(os.listdir(scenario.root / "run2")) == before


@pytest.fixture(scope="module")
def seed2_model_dir(tmp_path_factory, tiny_config_file, tiny_vocab_file):
  """The tiny model with other random weights (seed 2)."""
  from modeling import export  # pylint: disable=import-outside-toplevel
  out = tmp_path_factory.mktemp("seed2") / "export"
  export.export_model(f"random:{tiny_config_file}", str(out), vocab=tiny_vocab_file, seq_length=SEQ, seed=2)
  return str(out)


@pytest.fixture(scope="module")
def other_model_run(scenario, tiny_model_dir, seed2_model_dir):
  """Corpus 2 embedded with the seed-2 model, --previous run 2 (its model fingerprint differs)."""
  return _run(tiny_model_dir, scenario.corpus2, str(scenario.tmp / "other-model" / "emb"),
              "--previous", str(scenario.root / "run2" / "emb"), "--drift-sample", "10", model=seed2_model_dir)


def test_fingerprint_ignores_serialization_and_source_path_but_not_weights(
    scenario, full_recompute, other_model_run, tiny_model_dir, reexported_model_dir):
  from modeling import export  # pylint: disable=import-outside-toplevel
  # The same source exported twice: other SavedModel bytes and another source path in the metadata...
  assert export.read_export_metadata(reexported_model_dir)["source"] != (
      export.read_export_metadata(tiny_model_dir)["source"])
  # ... but the same fingerprint, as the pipeline computed and recorded it.
  original = scenario.run2.manifest["model"]["fingerprint"]
  assert full_recompute.manifest["model"]["fingerprint"] == original
  assert other_model_run.manifest["model"]["fingerprint"] != original  # seed 2: other weights


def test_a_model_change_re_embeds_everything_with_a_drift_check(scenario, other_model_run):
  outcome = other_model_run
  m, c = outcome.manifest, outcome.manifest["counts"]
  assert m["incremental"]["mode"] == "full" and "the model changed" in m["incremental"]["reason"]
  assert _counter(outcome, "records_encoded") == c["encoded"] == 42 and c["unchanged"] == 42
  drift = m["drift"]
  assert drift["requested"] == 10 and drift["sample_size"] == 10 and len(drift["lowest"]) == 5
  assert -1 <= drift["min_cosine"] <= drift["mean_cosine"] <= drift["max_cosine"] <= 1
  assert drift["mean_cosine"] < 0.99  # other weights, other vectors
  old, new = _rows(scenario.run2), _rows(outcome)
  lowest = drift["lowest"][0]
  a, b = np.asarray(old[lowest["id"]]["embedding"]), np.asarray(new[lowest["id"]]["embedding"])
  assert lowest["cosine"] == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-5)


# --------------------------------------------------------------------------------------------
# Damaged previous outputs: never copied. Run 1 (normalised, Parquet) is the fresh full run every repair must equal.

DAMAGE_RECORDS = 12


@pytest.fixture(scope="module")
def normalized_run(tmp_path_factory, tiny_model_dir):
  tmp = tmp_path_factory.mktemp("damage")
  rng = np.random.default_rng(11)
  corpus = _corpus(tmp, "corpus", {f"d{i:02d}": text for i, text in enumerate(_texts(rng, DAMAGE_RECORDS))})
  outcome = _run(tiny_model_dir, corpus, str(tmp / "run1" / "emb"), "--normalize", "--format", "parquet")
  assert len(outcome.manifest["output_files"]) == 1
  return types.SimpleNamespace(tmp=tmp, corpus=corpus, outcome=outcome, rows=_rows(outcome))


def _copy_previous(run, name, identities=True):
  """A copy of run 1's directory (its manifest lists paths under run1/: they are found next to the prefix).

  identities=False drops the manifest's `shards` (as a manifest written before it recorded them), so that damage is
  found where the rows are read (checksums, row checks) instead of by the whole file's hash."""
  shutil.copytree(run.tmp / "run1", run.tmp / name)
  if not identities:
    path = run.tmp / name / "emb-manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["shards"]
    path.write_text(json.dumps(manifest))
  return str(run.tmp / name / "emb"), str(run.tmp / name / os.path.basename(run.outcome.manifest["output_files"][0]))


def _assert_equals_fresh_run(outcome, fresh_rows):
  rows = _rows(outcome)
  assert sorted(rows) == sorted(fresh_rows)
  for record_id, expected in fresh_rows.items():
    np.testing.assert_allclose(rows[record_id]["embedding"], expected["embedding"], atol=1e-5)
    assert abs(np.linalg.norm(rows[record_id]["embedding"]) - 1) < 1e-5


def _counts(outcome):
  c = outcome.manifest["counts"]
  return {k: c[k] for k in ("new", "changed", "unchanged", "deleted", "previous_damaged", "encoded", "written",
                            "dead_lettered")}


def test_damaged_previous_rows_are_encoded_again_not_copied(normalized_run, tiny_model_dir):
  prefix, shard = _copy_previous(normalized_run, "rows-damaged", identities=False)
  table = pq.read_table(shard)
  vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
  ids = table.column("id").to_pylist()
  nan_id, far_id = ids[2], ids[7]
  vectors[2, 5] = np.nan
  vectors[7] *= 8945.0  # finite, right dimension, wrong norm
  embedding = pa.array([list(v) for v in vectors], type=table.schema.field("embedding").type)
  damaged = table.set_column(table.schema.get_field_index("embedding"), table.schema.field("embedding"), embedding)
  pq.write_table(damaged, shard)
  outcome = _run(tiny_model_dir, normalized_run.corpus, str(normalized_run.tmp / "rows-run2" / "emb"), "--normalize",
                 "--previous", prefix)
  assert outcome.manifest["incremental"]["mode"] == "incremental"
  assert _counts(outcome) == {"new": 0, "changed": 0, "unchanged": DAMAGE_RECORDS, "deleted": 0,
                              "previous_damaged": 2, "encoded": 2, "written": DAMAGE_RECORDS, "dead_lettered": 0}
  assert _counter(outcome, "records_carried_over") == DAMAGE_RECORDS - 2
  assert _counter(outcome, "records_previous_damaged") == 2
  assert {nan_id, far_id} <= set(ids)
  _assert_equals_fresh_run(outcome, normalized_run.rows)


def _flip(path, needle: bytes, count: int):
  data = bytearray(open(path, "rb").read())
  offset = data.find(needle)
  assert offset >= 0 and data.find(needle, offset + 1) < 0
  data[offset:offset + count] = bytes(b ^ 0xA5 for b in data[offset:offset + count])
  open(path, "wb").write(bytes(data))


def _assert_part_encoded_again(outcome, damaged_file, lost: int):
  """`lost` records were in the unreadable part: encoded again (as new); the others carried."""
  section = outcome.manifest["incremental"]
  assert section["mode"] == "incremental" and "could not be read" in section["reason"]
  assert "the records in it, and records written as windows, were encoded again" in section["reason"]
  assert [entry["file"].split(" ")[0] for entry in section["previous_unreadable"]] == [damaged_file]
  assert _counts(outcome) == {"new": lost, "changed": 0, "unchanged": DAMAGE_RECORDS - lost, "deleted": 0,
                              "previous_damaged": 0, "encoded": lost, "written": DAMAGE_RECORDS, "dead_lettered": 0}
  assert _counter(outcome, "records_carried_over") == DAMAGE_RECORDS - lost


def test_a_parquet_page_with_flipped_bytes_costs_only_its_row_group(normalized_run, tiny_model_dir):
  prefix, shard = _copy_previous(normalized_run, "page-damaged", identities=False)
  table = pq.read_table(shard)  # rewritten in row groups of 5 rows, with page checksums and the same metadata
  pq.write_table(table, shard, row_group_size=5, write_page_checksum=True)
  assert pq.ParquetFile(shard).num_row_groups == 3
  ids = table.column("id").to_pylist()
  group = ids.index("d05") // 5
  some_vector = np.asarray(normalized_run.rows["d05"]["embedding"], dtype=np.float32)
  _flip(shard, some_vector.tobytes()[16:96], 64)  # 64 bytes inside the vector data
  outcome = _run(tiny_model_dir, normalized_run.corpus, str(normalized_run.tmp / "page-run2" / "emb"), "--normalize",
                 "--previous", prefix)
  _assert_part_encoded_again(outcome, shard, len(ids[group * 5:group * 5 + 5]))
  unreadable = outcome.manifest["incremental"]["previous_unreadable"][0]
  assert "checksum" in unreadable["reason"] and unreadable["file"] == f"{shard} (row group {group})"
  _assert_equals_fresh_run(outcome, normalized_run.rows)


def test_a_tfrecord_with_a_changed_value_costs_the_records_from_it_on(normalized_run, tiny_model_dir, monkeypatch):
  """Records are decoded in batches (2 here): the verified batches before the damaged record are used."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(columns_lib, "TFRECORD_BATCH", 2)
  directory = normalized_run.tmp / "tfrecord-damaged"
  directory.mkdir()
  table = pq.read_table(normalized_run.outcome.manifest["output_files"][0])
  rows = columns_lib.arrow_to_records(table, OutputColumns().carried(), 32)
  shard = str(directory / "emb-00000-of-00001.tfrecord")
  with tf.io.TFRecordWriter(shard) as w:
    for example in columns_lib.records_to_examples(rows, OutputColumns(), 32):
      w.write(example)
  manifest = dict(normalized_run.outcome.manifest)
  del manifest["shards"]  # (a manifest without identities: damage is found by the records' CRCs)
  manifest.update(options={**manifest["options"], "format": "tfrecord"}, output_files=[shard], files=[shard])
  (directory / "emb-manifest.json").write_text(json.dumps(manifest))
  _flip(shard, rows[4].embedding[3:4].tobytes(), 2)  # one float changed: the record's data CRC no longer matches
  outcome = _run(tiny_model_dir, normalized_run.corpus, str(normalized_run.tmp / "tfrecord-run2" / "emb"),
                 "--normalize", "--previous", str(directory / "emb"))
  _assert_part_encoded_again(outcome, shard, DAMAGE_RECORDS - 4)  # records 0-3 read, 4 damaged, the rest not read
  _assert_equals_fresh_run(outcome, normalized_run.rows)


def test_carried_row_checks():
  good = EmbeddingRecord("a", np.eye(DIM, dtype=np.float32)[0], 3, False, "0" * 64, text="t")
  columns = OutputColumns()
  check = incremental.carried_row_problem
  assert check(good, DIM, columns, unit_norm=True) is None
  assert check(good._replace(embedding=good.embedding * 2), DIM, columns, unit_norm=False) is None
  assert "norm 2" in check(good._replace(embedding=good.embedding * 2), DIM, columns, unit_norm=True)
  assert check(good._replace(embedding=np.zeros(DIM, np.float32)), DIM, columns,
               unit_norm=True) is None  # normalising a zero vector leaves it zero
  assert "shape" in check(good._replace(embedding=np.ones(DIM + 1, np.float32)), DIM, columns, unit_norm=False)
  assert "non-finite" in check(good._replace(embedding=np.array([np.nan, 0, 0, 1], np.float32)), DIM, columns,
                               unit_norm=False)
  assert "token_ids is missing" in check(good, DIM, OutputColumns(tokens=True), unit_norm=False)
  windowed = OutputColumns(windows=True)
  assert "parent_id is missing" in check(good, DIM, windowed, unit_norm=False)
  window = good._replace(id="a#0", parent_id="a", chunk_index=0, chunk_start_piece=0, chunk_end_piece=1)
  assert check(window, DIM, windowed, unit_norm=False) is None
  assert "chunk_end_piece is missing" in check(window._replace(chunk_end_piece=None), DIM, windowed, unit_norm=False)
