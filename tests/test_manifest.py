"""Tests for snapshot/manifest.py and snapshot/commit.py: the checks, the commit of the staged files and the
manifest on the DirectRunner, and the clean-up of a prefix's own files."""
from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
from unittest import mock

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing import test_pipeline

from snapshot import checks as checks_lib
from transforms import commit_steps
from snapshot import staging as staging_lib
from snapshot import manifest
from transforms import write
from formats.output_files import EMBEDDINGS, ERRORS, is_error_file, is_output_file, staging_dir
from transforms.validate import ValidateEmbeddings
from formats.records import DeadLetter, EmbeddingRecord

DIM = 4
COUNT_NAMES = ("read", "written", "dead_lettered", "blank_lines", "files_failed")


def make_records(n: int) -> list[EmbeddingRecord]:
  rng = np.random.default_rng(0)
  return [EmbeddingRecord(f"doc-{i}", rng.standard_normal(DIM).astype(np.float32), 3, False, "0" * 64)
          for i in range(n)]


def ones(pcoll, label: str):
  return pcoll | label >> beam.Map(lambda _: 1)


def run_embedding_pipeline(prefix: str, records, *, read_errors=(), blank_lines=(), num_shards=0,
                           static_fields=None, count_read_errors=True, checks=checks_lib.RunChecks(1.0)) -> dict:
  """A miniature of the real pipeline's tail: validate, write (staged), dead-letter, then Finalize.

  count_read_errors=False leaves the read errors out of "read", so that the counts do not balance.
  """
  p = test_pipeline.TestPipeline()
  rows = p | "Rows" >> beam.Create(records, reshuffle=False)
  earlier_errors = p | "ReadErrors" >> beam.Create(list(read_errors), reshuffle=False)
  checked = rows | ValidateEmbeddings(DIM)
  staging = staging_dir(prefix, "f" * 32)
  config = write.WriteConfig("parquet", DIM, num_shards=num_shards)
  output_files = checked.valid | write.WriteEmbeddings(prefix, config, staging_dir=staging)
  dead_letters = (earlier_errors, checked.dead_letters) | "AllDeadLetters" >> beam.Flatten()
  error_files = dead_letters | write.WriteDeadLetters(prefix, staging_dir=staging)
  read = (ones(rows, "CountRead"), ones(earlier_errors, "CountReadErrors")) if count_read_errors else ones(rows,
                                                                                                          "CountRead")
  inputs = {
      "files": (output_files, error_files) | "AllFiles" >> beam.Flatten(),
      "dead_letters": dead_letters,
      "counts": {
          "read": read,
          "written": ones(checked.valid, "CountWritten"),
          "dead_lettered": ones(dead_letters, "CountDead"),
          "blank_lines": p | "BlankLines" >> beam.Create(list(blank_lines), reshuffle=False),
          "files_failed": p | "FilesFailed" >> beam.Create([], reshuffle=False),
      },
  }
  fields = {"dimension": DIM, "start_time": manifest.utc_now_iso()} if static_fields is None else static_fields
  kinds = {EMBEDDINGS: write.embedding_sink(config), ERRORS: write.ERRORS_SINK}
  _ = inputs | commit_steps.Finalize(prefix, staging, fields, COUNT_NAMES, kinds, checks)
  p.run().wait_until_finish()
  return manifest.read_manifest(prefix)


def shard_files(prefix: str) -> list[str]:
  return sorted(glob.glob(f"{prefix}-*-of-*.*"))


def test_manifest_lists_the_files_on_disk_with_counts_and_invariant(tmp_path):
  prefix = str(tmp_path / "emb")
  bad = make_records(1)[0]._replace(id="bad", embedding=np.full(DIM, np.nan, np.float32))
  read_error = DeadLetter.make("x", "in.txt", "read", "unreadable")
  fields = {"model": "gs://models/bert", "dimension": DIM, "start_time": manifest.utc_now_iso(),
            "versions": manifest.package_versions()}
  path = manifest.manifest_path(prefix)
  opened, renames = [], []  # every file opened for writing; each rename onto the manifest, with the shards then
  real_create, real_rename = FileSystems.create, FileSystems.rename

  def create(name, *args, **kwargs):
    opened.append(name)
    return real_create(name, *args, **kwargs)

  def rename(sources, destinations):
    if path in destinations:
      renames.append((list(sources), list(destinations), shard_files(prefix)))
    return real_rename(sources, destinations)

  with mock.patch.object(FileSystems, "create", create), mock.patch.object(FileSystems, "rename", rename):
    got = run_embedding_pipeline(prefix, make_records(10) + [bad], read_errors=[read_error],
                                 blank_lines=[2, 0, 3], static_fields=fields)

  on_disk = shard_files(prefix)
  assert got["files"] == on_disk  # everything the sinks finalized, and nothing else
  assert got["output_files"] == [f for f in on_disk if f.endswith(".parquet")]
  assert got["error_files"] == [f for f in on_disk if "-errors-" in f]
  assert got["output_files"] and got["error_files"]
  assert got["schema_version"] == manifest.SCHEMA_VERSION
  for key, value in fields.items():
    assert got[key] == value
  assert got["counts"] == {"read": 12, "written": 10, "dead_lettered": 2, "blank_lines": 5, "files_failed": 0}
  assert got["invariant"] == {"read_equals_written_plus_dead_lettered": True}
  assert got["checks"] == {"max_dead_letter_fraction": 1.0, "dead_letter_fraction": 2 / 12}
  for name in on_disk:  # each file's identity, as the sink computed it while writing
    data = open(name, "rb").read()
    identity = got["shards"][os.path.basename(name)]
    assert identity["size_bytes"] == len(data) and identity["sha256"] == hashlib.sha256(data).hexdigest()
  assert sum(got["shards"][os.path.basename(f)]["rows"] for f in got["output_files"]) == 10
  end = datetime.datetime.fromisoformat(got["end_time"])
  assert end.utcoffset() == datetime.timedelta(0)
  assert end >= datetime.datetime.fromisoformat(fields["start_time"])
  # Atomic: never opened for writing under its own name, but written whole to a temporary file renamed onto it
  # once, when every file it lists was already in place; no temporary file is left behind.
  (source,), _, shards_then = renames[0]
  assert len(renames) == 1 and path not in opened and source in opened and source.startswith(path + ".tmp-")
  assert shards_then == on_disk
  assert sorted(glob.glob(f"{prefix}*")) == sorted(on_disk + [path])
  assert manifest.read_manifest(path) == got


def test_empty_input_gives_files_and_zero_counts(tmp_path):
  prefix = str(tmp_path / "emb")
  got = run_embedding_pipeline(prefix, [])
  assert [os.path.basename(f) for f in got["files"]] == ["emb-00000-of-00001.parquet",
                                                         "emb-errors-00000-of-00001.jsonl"]
  assert got["files"] == shard_files(prefix)
  assert got["counts"] == {name: 0 for name in COUNT_NAMES}
  assert got["invariant"] == {"read_equals_written_plus_dead_lettered": True}


def test_a_rerun_replaces_every_file_of_the_prefix(tmp_path):
  prefix = str(tmp_path / "emb")
  first = run_embedding_pipeline(prefix, make_records(6), num_shards=3)
  assert len(first["output_files"]) == 3
  assert first["invariant"] == {"read_equals_written_plus_dead_lettered": True}

  second = run_embedding_pipeline(prefix, make_records(4), num_shards=1)
  assert second["files"] == shard_files(prefix)  # the 3 earlier shards are gone
  assert len(second["output_files"]) == 1
  assert second["counts"]["written"] == 4
  assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in second["files"] + [
      manifest.manifest_path(prefix)])  # the staging directory is gone too


def _snapshot(directory) -> dict:
  return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))
          if (directory / name).is_file()}


def test_a_violated_invariant_fails_the_run_and_keeps_the_earlier_output(tmp_path):
  prefix = str(tmp_path / "emb")
  run_embedding_pipeline(prefix, make_records(5), num_shards=2)
  before = _snapshot(tmp_path)
  read_error = DeadLetter.make("x", "in.txt", "read", "unreadable")
  with pytest.raises(checks_lib.RunCheckError, match=r"^the counts do not balance: 6 records read, but 6 written \+ "
                                                   r"1 dead-lettered = 7; nothing was replaced at "):
    run_embedding_pipeline(prefix, make_records(6), read_errors=[read_error], count_read_errors=False)
  assert _snapshot(tmp_path) == before  # files and manifest byte-identical; the staged files stay aside
  (staged,) = [d for d in os.listdir(tmp_path) if d.startswith("bert-embed-tmp-")]
  assert sorted(f.split("-")[0] for f in os.listdir(tmp_path / staged)) == ["embeddings", "errors"]


def test_too_many_dead_letters_fail_the_run_in_one_line_with_the_commonest_reason(tmp_path):
  prefix = str(tmp_path / "emb")
  letters = ([DeadLetter.make(f"f.jsonl:{i}", "f.jsonl", "parse", f"invalid JSON at column {i}") for i in range(3)]
             + [DeadLetter.make("g.jsonl:9", "g.jsonl", "read", "gzip: bad crc")])
  with pytest.raises(checks_lib.RunCheckError) as raised:
    run_embedding_pipeline(prefix, make_records(6), read_errors=letters, checks=checks_lib.RunChecks(0.3))
  message = str(raised.value).split(" [while running")[0]
  assert "\n" not in message
  assert message.startswith("4 of 10 records dead-lettered (40.0%), above --max-dead-letter-fraction 0.3; most "
                            "common reason (3 records): parse: invalid JSON at column N; e.g. id 'f.jsonl:0'; ")
  assert not os.path.exists(manifest.manifest_path(prefix)) and not shard_files(prefix)
  got = run_embedding_pipeline(prefix, make_records(6), read_errors=letters, checks=checks_lib.RunChecks(0.4))
  assert got["counts"]["dead_lettered"] == 4  # at the threshold: committed


def test_manifest_without_invariant_counts(tmp_path):
  prefix = str(tmp_path / "emb")
  p = test_pipeline.TestPipeline()
  files = p | "Files" >> beam.Create([], reshuffle=False)
  tokens = p | "Tokens" >> beam.Create([5, 7], reshuffle=False)
  result = ({"files": files, "counts": {"tokens": tokens}}
            | commit_steps.Finalize(prefix, staging_dir(prefix, "e" * 32), {}, ("tokens",), {}, checks=None))
  _ = result | beam.Map(lambda m: m["counts"])
  p.run().wait_until_finish()
  got = manifest.read_manifest(prefix)
  assert got["files"] == [] and got["shards"] == {}
  assert got["counts"] == {"tokens": 12}
  assert "invariant" not in got and "checks" not in got


def test_measured_counts_sum_several_measures_of_one_pcollection_over_its_bundles(tmp_path):
  """CountPerBundle: one step gives several counts of its elements, summed per bundle, then over bundles; its names
  must be count names, which the Finalize step checks when the facts arrive."""
  from transforms.progress_counts import CountPerBundle, Measure  # pylint: disable=import-outside-toplevel
  prefix = str(tmp_path / "emb")
  values = list(range(-3, 40))
  p = test_pipeline.TestPipeline()
  files = p | "Files" >> beam.Create([], reshuffle=False)
  numbers = p | "Numbers" >> beam.Create(values)  # reshuffled: several bundles
  measured = numbers | "Measure" >> beam.ParDo(CountPerBundle([
      Measure("read"), Measure("tokens", abs), Measure("truncated", lambda v: v % 3 == 0),
      Measure("windows", lambda v: v < 0)]))
  _ = ({"files": files, "measured": (measured,)}
       | commit_steps.Finalize(prefix, staging_dir(prefix, "e" * 32), {}, ("read", "tokens", "truncated", "windows"),
                               {}, checks=None))
  p.run().wait_until_finish()
  assert manifest.read_manifest(prefix)["counts"] == {  # brute force
      "read": len(values), "tokens": sum(abs(v) for v in values), "truncated": sum(v % 3 == 0 for v in values),
      "windows": sum(v < 0 for v in values)}
  p = test_pipeline.TestPipeline()
  files = p | "Files" >> beam.Create([], reshuffle=False)
  typo = p | "Numbers" >> beam.Create([1]) | "Measure" >> beam.ParDo(CountPerBundle([Measure("raed")]))
  _ = ({"files": files, "measured": (typo,)}
       | commit_steps.Finalize(str(tmp_path / "typo"), staging_dir(str(tmp_path / "typo"), "f" * 32), {}, ("read",),
                               {}, checks=None))
  with pytest.raises(Exception, match=r"counts \['raed'\] are not among the count names \['read'\]"):
    p.run().wait_until_finish()
  assert not os.path.exists(str(tmp_path / "typo") + "-manifest.json")


def test_finalize_checks_its_arguments():
  kinds = {ERRORS: write.ERRORS_SINK}
  with pytest.raises(ValueError, match="own keys"):
    commit_steps.Finalize("out/emb", "out/s", {"counts": 1}, (), kinds, checks=None)
  with pytest.raises(TypeError):
    commit_steps.Finalize("out/emb", "out/s", {"when": object()}, (), kinds, checks=None)
  with pytest.raises(ValueError, match="checks need the counts"):
    commit_steps.Finalize("out/emb", "out/s", {}, ("read",), kinds)
  with pytest.raises(ValueError, match=r"in \[0, 1\]"):
    checks_lib.RunChecks(1.5)
  p = test_pipeline.TestPipeline()
  files = p | beam.Create([], reshuffle=False)
  with pytest.raises(ValueError, match=r"counts \['raed'\] are not among the count names \['read'\]"):
    _ = ({"files": files, "counts": {"raed": files}}
         | "Typo" >> commit_steps.Finalize("out/emb", "out/s", {}, ("read",), kinds, checks=None))
  with pytest.raises(ValueError, match="each other's names"):
    _ = ({"files": files, "fields": {"drift": files}, "tallies": {"drift": files}}
         | "Clash" >> commit_steps.Finalize("out/emb", "out/s", {}, (), kinds, checks=None))


# ------------------------------------------------------------------------------------------------
# Clean-up of earlier outputs.


def touch(path) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("x")
  return str(path)


def test_a_commit_replaces_only_its_own_prefix_files(tmp_path):
  out = tmp_path / "out"
  own = [touch(out / name) for name in (
      "emb-manifest.json.tmp-" + "0" * 32, "emb-00000-of-00002.parquet",
      "emb-00001-of-00002.parquet", "emb-00000-of-00001.tfrecord", "emb-errors-00000-of-00001.jsonl",
      "emb-errors-00003-of-00004.jsonl")]
  others = [touch(out / name) for name in (
      "emb2-00000-of-00001.parquet", "emb2-manifest.json", "emb2-errors-00000-of-00001.jsonl",
      "emb-x-00000-of-00001.parquet", "emb-errors-manifest.json", "emb-errors2-00000-of-00001.jsonl",
      "emb-0000-of-00001.parquet", "emb.parquet", "emb-notes.txt", "xemb-00000-of-00001.parquet",
      "sub/emb-00000-of-00001.parquet", "emb-large-00000-of-00001.parquet", "emb-large-manifest.json",
      "emb-large-errors-00000-of-00001.jsonl", "emb-00007-of-00009.parquet.bak", "emb-00000-of-00001.jsonl",
      "emb-errors-00000-of-00001.parquet", "emb-errors-errors-00000-of-00001.jsonl",
      "emb-errors-00000-of-00001.jsonl.bak", "emb-000000-of-000001.parquet", "emb-manifest.json.bak",
      "emb-manifest.json.tmp-xyz")]
  prefix = str(out / "emb")
  staging = staging_dir(prefix, "a" * 32)
  assert staging_lib.remove_stale_staging(prefix, "a" * 32) == [own[0]]
  kinds = {EMBEDDINGS: write.embedding_sink(write.WriteConfig("parquet", DIM)), ERRORS: write.ERRORS_SINK}
  committed = staging_lib.commit_files(prefix, staging, [], kinds)  # no files: one empty shard of each kind
  assert [os.path.basename(f.path) for f in committed] == ["emb-00000-of-00001.parquet",
                                                           "emb-errors-00000-of-00001.jsonl"]
  assert all(not os.path.exists(p) for p in own[:4] + own[5:])
  assert os.path.getsize(own[4]) == 0  # emb-errors-00000-of-00001.jsonl: replaced by the new (empty) shard
  assert pq.read_table(str(out / "emb-00000-of-00001.parquet")).num_rows == 0
  assert all(os.path.exists(p) for p in others)
  assert all((out / n).read_bytes() == b"x" for n in os.listdir(out) if str(out / n) in others)


def _corpus(path, lines: list[str]) -> str:
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return str(path)


def _run(model_dir: str, corpus: str, prefix: str, *extra: str):
  from pipeline.run import run  # pylint: disable=import-outside-toplevel
  argv = ["--model", model_dir, "--input", corpus, "--input-format", "jsonl", "--output", prefix,
          "--seq-length", "32", "--pooling", "mean", *extra]
  return run(argv, test_pipeline=test_pipeline.TestPipeline(argv=argv))


def _own_files(directory, prefix: str) -> list[str]:
  names = (str(directory / n) for n in os.listdir(directory))
  return sorted(p for p in names if is_output_file(p, prefix) or is_error_file(p, prefix))


def test_runs_with_overlapping_prefixes_in_one_directory_keep_each_others_outputs(tmp_path, tiny_model_dir):
  out = tmp_path / "out"
  out.mkdir()
  decoys = {name: f"{name} is not an output".encode() for name in (
      "emb-00007-of-00009.parquet.bak", "emb-notes.txt", "emb-00000-of-00001.json", "emb-manifest.json.bak")}
  for name, data in decoys.items():
    (out / name).write_bytes(data)
  runs = {  # prefix -> (texts, extra options); each has one bad line, so each writes a dead letter
      "emb-large": (["a big dog.", "the red car.", "hello world."], ["--format", "tfrecord"]),
      "emb": (["good day.", "blue tree.", "big house.", "a bird."], ["--format", "parquet"]),
  }  # (the sinks' own test covers emb-errors)
  manifests = {}
  for prefix, (texts, extra) in runs.items():
    lines = [json.dumps({"id": f"{prefix}:{i}", "text": t}) for i, t in enumerate(texts)] + ["{not json"]
    outcome = _run(tiny_model_dir, _corpus(tmp_path / f"{prefix}.jsonl", lines), str(out / prefix), *extra,
                   "--max-dead-letter-fraction", "1")
    manifests[prefix] = outcome.manifest
  for prefix, (texts, extra) in runs.items():
    m = manifest.read_manifest(str(out / prefix))
    assert m == manifests[prefix]
    assert m["files"] == _own_files(out, str(out / prefix))  # exactly its files, all still there
    assert m["counts"]["written"] == len(texts) and m["counts"]["dead_lettered"] == 1
    ids = []
    for path in m["output_files"]:
      if extra[1] == "parquet":
        ids += pq.read_table(path, columns=["id"]).column("id").to_pylist()
      else:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        ids += [tf.train.Example.FromString(r.numpy()).features.feature["id"].bytes_list.value[0].decode()
                for r in tf.data.TFRecordDataset(path)]
    assert sorted(ids) == sorted(f"{prefix}:{i}" for i in range(len(texts)))
    errors = [json.loads(line) for path in m["error_files"] for line in open(path, encoding="utf-8")]
    assert [e["snippet"] for e in errors] == ["{not json"]
  for name, data in decoys.items():
    assert (out / name).read_bytes() == data
  assert not [n for n in os.listdir(out) if n.startswith(("beam-temp-", "bert-embed-tmp-"))]


def test_prefixes_with_glob_characters_are_refused(tmp_path):
  survivor = touch(tmp_path / "emb-00000-of-00001.parquet")
  for prefix in ("e*b", "e?b", "e[m]b"):
    with pytest.raises(ValueError, match="glob"):
      commit_steps.RemoveStaleStaging(str(tmp_path / prefix), "a" * 32)
  with pytest.raises(ValueError, match="glob"):
    commit_steps.Finalize(str(tmp_path / "e*b"), str(tmp_path), {}, (), {}, checks=None)
  assert os.path.exists(survivor)


# ------------------------------------------------------------------------------------------------
# Small pieces.


def test_paths_versions_and_reading():
  assert manifest.manifest_path("gs://b/out/emb") == "gs://b/out/emb-manifest.json"
  versions = manifest.package_versions()
  assert set(versions) == {"apache-beam", "tensorflow", "tensorflow-text", "tfx-bsl", "pyarrow", "numpy",
                           "bert-embed"}
  assert versions["apache-beam"] == beam.__version__
  assert manifest.package_versions(("no-such-package-xyz",)) == {"no-such-package-xyz": None}


def test_write_atomically_replaces_and_read_manifest_checks_version(tmp_path):
  path = str(tmp_path / "emb-manifest.json")
  manifest.write_atomically(path, json.dumps({"schema_version": 1, "n": 1}).encode())
  manifest.write_atomically(path, json.dumps({"schema_version": 1, "n": 2}).encode())
  assert manifest.read_manifest(str(tmp_path / "emb")) == {"schema_version": 1, "n": 2}
  assert os.listdir(tmp_path) == ["emb-manifest.json"]
  manifest.write_atomically(path, json.dumps({"schema_version": manifest.SCHEMA_VERSION + 1}).encode())
  with pytest.raises(ValueError, match="schema_version"):
    manifest.read_manifest(path)
